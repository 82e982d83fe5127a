"""Shared fixtures. Services (redis-server, moto S3, helm) live in tests/services.py and start only when asked."""

from __future__ import annotations

import shutil
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
