"""Online reads of a feature set or a model's feature service, with the platform's statuses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from feature_platform.contracts import FeatureSetContract
from feature_platform.environments import EnvironmentContract, Settings
from feature_platform.errors import (
    ConfigError,
    FeastError,
    OnlineStoreUnavailable,
    PlatformError,
)
from feature_platform.feast_bridge.apply import check_registry_matches
from feature_platform.feast_bridge.config import one_line, open_store
from feature_platform.feast_bridge.definitions import TAG_PREFIX
from feature_platform.feast_bridge.historical import service_columns
from feature_platform.online.layout import plan_contract
from feature_platform.online.stores import load_unfinished, online_store

if TYPE_CHECKING:
    from feast import FeatureStore




def entity_ids(contract: FeatureSetContract, entities: dict[str, list[Any]], reader: str | None = None
               ) -> list[Any]:
    """The rows' entity ids from one column of values per join key (more columns may be given: a service's
    other sets' keys): the value for one join key, a tuple in join key order for a composite key. A missing
    key or a value of the wrong type is a ConfigError naming the key."""
    from feature_platform.online.layout import parse_entity_value

    columns = []
    for key, dtype in contract.key_dtypes.items():
        if key not in entities:
            keyed = " + ".join(contract.join_keys)
            rows = " ".join(f"{k}=VALUE" for k in contract.join_keys)
            raise ConfigError(f"{reader or contract.feature_view_name} reads {contract.feature_view_name}, keyed by "
                              f"{keyed}: the join key {key} is missing; give {rows} for each row")
        try:
            columns.append([parse_entity_value(dtype, value) for value in entities[key]])
        except ValueError as exc:
            raise ConfigError(f"{key} is {dtype}: {exc}") from exc
    return columns[0] if len(columns) == 1 else list(zip(*columns, strict=True))


def view_read(settings: Settings, env: EnvironmentContract, store: FeatureStore, contract: FeatureSetContract,
              ids: list[Any], enforce_ttl: bool = True) -> Any:
    """One contract version's online values for entity ``ids`` (see :func:`entity_ids`), from the
    environment's online store."""
    backend = online_store(settings, env)
    try:
        return backend.read(plan_contract(env.feast_project, contract), ids, enforce_ttl, store)
    except backend.unavailable_errors() as exc:
        raise OnlineStoreUnavailable(f"online store unreachable: {one_line(exc)}") from exc
    except PlatformError:
        raise
    except Exception as exc:
        raise FeastError(f"online read of {contract.feature_view_name} failed: {one_line(exc)}") from exc


def rows_of(contract: FeatureSetContract, ids: list[Any], read: Any) -> list[dict[str, Any]]:
    """Per entity: its join keys, each feature, ``event_timestamp`` (UTC, None when not found) and ``status``
    (NOT_FOUND, OUTSIDE_MAX_AGE, or PRESENT when the entity's row is served)."""
    out = []
    for i, value in enumerate(ids):
        row: dict[str, Any] = dict(zip(contract.join_keys, value if contract.composite else (value,), strict=True))
        for j, feature in enumerate(read.features):
            cell = read.values[j][i]
            if feature.dtype == "timestamp" and isinstance(cell, int):
                cell = datetime.fromtimestamp(cell, UTC)
            row[feature.name] = cell
        micros = read.event_micros[i]
        row["event_timestamp"] = datetime.fromtimestamp(micros / 1_000_000, UTC) if micros is not None else None
        statuses = {column[i] for column in read.statuses}
        row["status"] = next((s for s in ("NOT_FOUND", "OUTSIDE_MAX_AGE") if s in statuses), "PRESENT")
        out.append(row)
    return out


def read_online(settings: Settings, feature_set: str, keys: list[Any] | dict[str, list[Any]],
                version: int | None = None, env: EnvironmentContract | None = None, enforce_ttl: bool = True
                ) -> list[dict[str, Any]]:
    """Online rows of one feature set: ``keys`` are values of its join key, ``JOIN_KEY=VALUE`` strings (the
    command line's; per row one of each key), or {join key: values} (one value per row; every join key of a
    composite key)."""
    env = env or settings.environment()
    contracts = settings.contracts()
    contract = contracts.get(feature_set, version)
    if not isinstance(keys, dict) and keys and all(
            isinstance(k, str) and "=" in k and k.partition("=")[0] in contract.join_keys for k in keys):
        pairs: dict[str, list[Any]] = {}  # the command line's customer_id=1 merchant_id=m-7 (per row)
        for pair in keys:
            key, _, value = pair.partition("=")
            pairs.setdefault(key, []).append(value)
        keys = pairs
    if not isinstance(keys, dict):
        if contract.composite:
            asked = " ".join(f"{k}=VALUE" for k in contract.join_keys)
            raise ConfigError(f"{contract.feature_view_name} is keyed by {' + '.join(contract.join_keys)}: give "
                              f"{asked} for each row")
        keys = {contract.join_keys[0]: list(keys)}
    _same_lengths(keys)
    ids = entity_ids(contract, keys)
    store = open_store(settings, env)
    registered = check_registry_matches(store, [contract])
    rows = rows_of(contract, ids, view_read(settings, env, store, contract, ids, enforce_ttl))
    unfinished = _load_unfinished(settings, env, store, contract, registered)
    return [{**row, "status": _flagged(row["status"], unfinished)} for row in rows]


def _load_unfinished(settings: Settings, env: EnvironmentContract, store: FeatureStore,
                     contract: FeatureSetContract, registered: dict[str, Any]) -> bool:
    served = registered[contract.feature_view_name].tags[TAG_PREFIX + "build_id"]
    return load_unfinished(online_record(settings, env, store, contract), served)


def _flagged(status: str, unfinished: bool) -> str:
    """A found row of a view whose load is unfinished (or whose store holds another build) may mix builds."""
    return "PRESENT_LOAD_UNFINISHED" if unfinished and status == "PRESENT" else status


def read_online_service(settings: Settings, service: str, entities: dict[str, list[Any]],
                        version: int | None = None, env: EnvironmentContract | None = None,
                        full_feature_names: bool = False) -> list[dict[str, Any]]:
    """A model's online features: per entity row, each join key, each feature (plain or full names) and the
    status of each feature view (NOT_FOUND, OUTSIDE_MAX_AGE, PRESENT or PRESENT_LOAD_UNFINISHED)."""
    env = env or settings.environment()
    contracts = settings.contracts()
    model = contracts.service(service, version)
    resolved = contracts.resolve(model)
    rows_count = _same_lengths(entities)
    ids = [entity_ids(contract, entities, model.service_name) for contract, _ in resolved]
    store = open_store(settings, env)
    registered = check_registry_matches(store, [c for c, _ in resolved])
    output = service_columns(resolved, full_feature_names)
    rows: list[dict[str, Any]] = [{} for _ in range(rows_count)]
    for (contract, names), columns, keys in zip(resolved, output, ids, strict=True):
        read = rows_of(contract, keys, view_read(settings, env, store, contract, keys))
        unfinished = _load_unfinished(settings, env, store, contract, registered)
        for row, got in zip(rows, read, strict=True):
            row.update((key, got[key]) for key in contract.join_keys)
            for name, column in zip(names, columns, strict=True):
                row[column] = got[name]
            row.setdefault("__statuses", {})[contract.feature_view_name] = _flagged(got["status"], unfinished)
    return [{**{k: v for k, v in row.items() if k != "__statuses"}, "statuses": row["__statuses"]} for row in rows]


def _same_lengths(entities: dict[str, list[Any]]) -> int:
    lengths = {len(v) for v in entities.values()}
    if len(lengths) > 1:
        raise ConfigError("every join key needs one value per entity row; got " +
                          ", ".join(f"{k}: {len(v)}" for k, v in entities.items()))
    return lengths.pop() if lengths else 0


def online_record(settings: Settings, env: EnvironmentContract, store: FeatureStore | None,
                  contract: FeatureSetContract) -> dict[str, Any] | None:
    """The online store's own record of the build it holds for this view ({build_id, state}), or None."""
    backend = online_store(settings, env)
    try:
        return backend.target(plan_contract(env.feast_project, contract), store).recorded()
    except backend.unavailable_errors() as exc:
        raise OnlineStoreUnavailable(f"online store unreachable: {one_line(exc)}") from exc


def online_entity_count(settings: Settings, env: EnvironmentContract, contract: FeatureSetContract) -> int:
    """How many entities hold this contract version's view in the online store right now."""
    return online_store(settings, env).count(plan_contract(env.feast_project, contract))
