"""What an entry point does before it imports Feast (the CLI, the feature server's workers, DAG steps).

Feast decorates about forty classes and functions with typeguard's ``@typechecked``, which re-compiles each one
at import: about half of ``import feast`` (6.7 s of 13.5 s here, measured side by side). typeguard documents the
decorator as a development aid, a no-op under ``python -O``; the platform's entry points make it one the same
way, for the decorator alone (``python -O`` would also drop every ``assert``). Set
``FEATURE_PLATFORM_FEAST_TYPECHECKS=1`` to keep Feast's run-time type checks. Library users who import Feast
themselves are not affected: nothing happens unless an entry point calls :func:`skip_feast_typechecks` first.
"""

from __future__ import annotations

import os
import sys
from typing import Any

KEEP_TYPECHECKS = "FEATURE_PLATFORM_FEAST_TYPECHECKS"


def _not_instrumented(target: Any = None, **_options: Any) -> Any:
    """``@typechecked`` and ``@typechecked(...)`` as ``python -O`` makes them: the target, unchanged."""
    return target if target is not None else (lambda inner: inner)


def skip_feast_typechecks() -> bool:
    """Make typeguard's decorator a no-op for Feast's import; True if it was done (too late once Feast is in)."""
    if os.environ.get(KEEP_TYPECHECKS) == "1" or "feast" in sys.modules:
        return False
    try:
        import typeguard
    except ImportError:
        return False
    typeguard.typechecked = _not_instrumented
    return True
