"""Shared fixtures. Services (redis-server, moto S3, helm) live in tests/services.py and start only when asked."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import *  # noqa: F403  (service fixtures)

REPO = Path(__file__).resolve().parent.parent
CONTRACTS = REPO / "contracts"
SHARED = REPO.parent / "shared"


@pytest.fixture
def contracts_copy(tmp_path: Path) -> Path:
    """A private, editable copy of the repo's contracts directory."""
    target = tmp_path / "contracts"
    shutil.copytree(CONTRACTS, target)
    return target


@pytest.fixture
def local_settings(tmp_path: Path, contracts_copy: Path):
    """Settings for the `local` environment in a private work directory."""
    from feature_platform.environments import Settings

    return Settings.from_env(environ={}, contracts_dir=contracts_copy, home=tmp_path / "home", env_name="local")


# ------------------------------------------------------------------- every online backend, with its faults

@dataclass
class Backend:
    settings: object
    snapshot: Callable[[], object]  # what a backup takes
    restore: Callable[[object], None]  # what a restore from that backup does
    empty: Callable[[], None]  # a new, empty store (restart without persistence, a deleted file)


def _redis_backend(settings, clients: list) -> Backend:
    def snapshot() -> list:
        return [(c, k, c.dump(k)) for c in clients for k in c.scan_iter(count=1000)]

    def empty() -> None:
        for c in clients:
            c.flushall()

    def restore(saved: list) -> None:
        empty()
        for client, key, payload in saved:
            client.restore(key, 0, payload)

    return Backend(settings, snapshot, restore, empty)


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def backend(request, local_settings, contracts_copy) -> Iterator[Backend]:
    if request.param == "sqlite":
        settings = local_settings
        path = settings.env_home(settings.environment()) / "online" / "online_store.db"

        def snapshot() -> bytes:
            return path.read_bytes()

        def restore(saved: bytes) -> None:
            path.write_bytes(saved)

        yield Backend(settings, snapshot, restore, lambda: path.unlink())
        return
    dev = request.getfixturevalue("dev_settings")
    if request.param == "redis":
        yield _redis_backend(dev, [request.getfixturevalue("redis_clean").client()])
        return
    import redis

    from tests.test_redis_cluster import _as_cluster

    cluster = request.getfixturevalue("redis_cluster")
    settings = _as_cluster(dev, contracts_copy, cluster)
    yield _redis_backend(settings, [redis.Redis(port=p, password=cluster.password) for p in cluster.ports])
