"""Contracts -> Feast, one module per job:

- :mod:`.config`: the environment's ``feature_store.yaml`` and the Feast store opened from it;
- :mod:`.definitions`: Entities, FeatureViews and FeatureServices derived from the contracts and ``latest``;
- :mod:`.apply`: registering them (apply), Feast's plan of them, the registry check;
- :mod:`.materialize`: loading the served builds into the online store;
- :mod:`.online_reads` and :mod:`.verify`: online reads, and offline/online consistency;
- :mod:`.historical`: training sets (point-in-time joins), governed like every offline read.

``import feast`` takes seconds, so it happens inside the functions that need it, once per process.
"""

from feature_platform.feast_bridge.apply import (
    ApplyResult,
    apply,
    check_registry_matches,
    keep_registry_state,
    plan,
    registered_views,
)
from feature_platform.feast_bridge.config import (
    config_path,
    feature_store_config,
    open_store,
    repo_config,
    write_feature_store_yaml,
)
from feature_platform.feast_bridge.definitions import TAG_PREFIX, Definitions, definitions
from feature_platform.feast_bridge.historical import historical, historical_service, service_columns
from feature_platform.feast_bridge.materialize import materialize
from feature_platform.feast_bridge.online_reads import read_online, read_online_service, view_read
from feature_platform.feast_bridge.verify import verify

__all__ = ["TAG_PREFIX", "ApplyResult", "Definitions", "apply", "check_registry_matches", "config_path",
           "definitions", "feature_store_config", "historical", "historical_service",
           "keep_registry_state", "materialize", "open_store", "plan", "read_online", "read_online_service",
           "registered_views", "repo_config", "service_columns", "verify", "view_read", "write_feature_store_yaml"]
