"""Small helpers shared by tests that drive the platform through its library API."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from feature_platform import pipeline
from feature_platform.environments import Settings
from feature_platform.sample_data import SampleSpec
from feature_platform.store import ObjectStore

AS_OF = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
SMALL = SampleSpec(seed=7, scale=0.1, as_of=AS_OF)


def seed_raw(settings: Settings, spec: SampleSpec = SMALL) -> dict[str, int]:
    return pipeline.generate_sample_data(settings, spec)


def raw_store(settings: Settings) -> ObjectStore:
    env = settings.environment()
    return pipeline.raw_store(settings, env)


def data_store(settings: Settings) -> ObjectStore:
    env = settings.environment()
    return pipeline.object_store(settings, env)


def read_raw(settings: Settings, table: str) -> pa.Table:
    raw = raw_store(settings)
    return pq.read_table(raw.path(table), filesystem=raw.fs)


def replace_raw(settings: Settings, table: str, data: pa.Table) -> None:
    """Overwrite a raw table with ``data`` (one Parquet file), as an upstream system would."""
    raw = raw_store(settings)
    raw.delete(table)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "part-00000.parquet"
        pq.write_table(data, local)
        raw.upload(local, f"{table}/part-00000.parquet")


def configmap_mount(contracts: Path, mount: Path, stamp: str = "..2026_11_23_07_00_00.000000001") -> Path:
    """Lay out ``contracts`` exactly as the kubelet mounts a ConfigMap: keys are paths with "/" -> ".",
    stored in a hidden timestamped directory, reached through ``..data`` and one visible symlink per key."""
    data_dir = mount / stamp
    data_dir.mkdir(parents=True)
    for path in [*sorted(contracts.rglob("*.yaml")), contracts / "contracts.lock"]:
        if path.exists():
            key = path.relative_to(contracts).as_posix().replace("/", ".")
            (data_dir / key).write_bytes(path.read_bytes())
    link = mount / "..data"
    if link.is_symlink():
        link.unlink()
    os.symlink(stamp, link)
    for key in os.listdir(data_dir):
        if not (mount / key).is_symlink():
            os.symlink(f"..data/{key}", mount / key)
    return mount
