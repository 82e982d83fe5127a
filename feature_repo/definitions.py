"""Feast entry point for the plain `feast` CLI: every object is derived from the contracts by the library.

    featurectl feast-config --env dev            # writes .feature-platform/dev/feature_store.yaml
    FEATURE_PLATFORM_ENV=dev feast -c feature_repo -f .feature-platform/dev/feature_store.yaml apply

Nothing here is hand-written schema: edit contracts/, not this file.
"""

from pathlib import Path

from feature_platform.environments import Settings
from feature_platform.feast_bridge import (
    definitions,
    keep_registry_state,
    open_store,
    registered_views,
)

_settings = Settings.from_env(repo_root=Path(__file__).resolve().parent.parent)
_env = _settings.environment()
_objects = definitions(_settings, _env)
# The registry's state (materialized intervals) is not ours to change.
keep_registry_state(_objects.feature_views, registered_views(open_store(_settings, _env)))

# Feast collects objects from module globals.
globals().update({f"_feast_{type(obj).__name__}_{obj.name}": obj for obj in _objects.all()})
