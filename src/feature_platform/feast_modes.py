"""How the platform's own calls into Feast steer its Feast plugins (:mod:`feature_platform.feast_plugins`).

Context variables, so a setting holds for one call on one thread and never leaks into other requests.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_enforce_ttl: contextvars.ContextVar[bool] = contextvars.ContextVar("feature_platform_enforce_ttl", default=True)


@contextlib.contextmanager
def ttl_not_enforced() -> Iterator[None]:
    """Reads that must see stored rows whatever their age (``verify`` compares the store with the build)."""
    token = _enforce_ttl.set(False)
    try:
        yield
    finally:
        _enforce_ttl.reset(token)


def ttl_enforced() -> bool:
    return _enforce_ttl.get()


_feast_writes: contextvars.ContextVar[bool] = contextvars.ContextVar("feature_platform_feast_writes", default=False)


@contextlib.contextmanager
def feast_writer() -> Iterator[None]:
    """The platform's own call into Feast's writer (SQLite loads): the provider runs Feast's materialization."""
    token = _feast_writes.set(True)
    try:
        yield
    finally:
        _feast_writes.reset(token)


def feast_writes() -> bool:
    """Whether Feast's own materialization should run (the platform asked for it), not the platform's."""
    return _feast_writes.get()
