"""How the platform's own calls into Feast steer its Feast plugins (:mod:`feature_platform.feast_plugins`).

Context variables, so a setting holds for one call on one thread and never leaks into other requests.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

# The plugins the generated feature_store.yaml names (Feast loads them by class path); here, not in
# feast_plugins, so writing the file needs no Feast import.
_PLUGINS = "feature_platform.feast_plugins."
OFFLINE_STORE = _PLUGINS + "PlatformOfflineStore"
ONLINE_STORES = {"redis": _PLUGINS + "PlatformRedisOnlineStore", "sqlite": _PLUGINS + "PlatformSqliteOnlineStore"}
PROVIDER = _PLUGINS + "PlatformProvider"

_enforce_ttl: contextvars.ContextVar[bool] = contextvars.ContextVar("feature_platform_enforce_ttl", default=True)
_feast_writes: contextvars.ContextVar[bool] = contextvars.ContextVar("feature_platform_feast_writes", default=False)


@contextlib.contextmanager
def _holding(variable: contextvars.ContextVar[bool], value: bool) -> Iterator[None]:
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def ttl_not_enforced() -> contextlib.AbstractContextManager[None]:
    """Reads that must see stored rows whatever their age (``verify`` compares the store with the build)."""
    return _holding(_enforce_ttl, False)


def ttl_enforced() -> bool:
    return _enforce_ttl.get()


def feast_writer() -> contextlib.AbstractContextManager[None]:
    """The platform's own call into Feast's writer (SQLite loads): the provider runs Feast's materialization."""
    return _holding(_feast_writes, True)


def feast_writes() -> bool:
    """Whether Feast's own materialization should run (the platform asked for it), not the platform's."""
    return _feast_writes.get()


def bind_settings(config: Any, settings: Any) -> None:
    """Hand the platform's Settings to the plugins of a Feast RepoConfig the platform built (open_store): they
    act on that environment without reading the process environment."""
    config.offline_store._platform_settings = settings


def bound_settings(config: Any) -> Any:
    """The Settings bound to this RepoConfig, or None (plain ``feast`` loaded the file itself)."""
    return getattr(config.offline_store, "_platform_settings", None)
