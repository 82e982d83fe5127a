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




def _parse_key(contract: FeatureSetContract, key: Any) -> Any:
    from feature_platform.online.layout import parse_entity_value

    try:
        return parse_entity_value(contract.entity.dtype, key)
    except ValueError as exc:
        raise ConfigError(f"{contract.entity.join_key} is {contract.entity.dtype}; {key!r} is not valid: {exc}"
                          ) from exc


def view_read(settings: Settings, env: EnvironmentContract, store: FeatureStore, contract: FeatureSetContract,
              values: list[Any], enforce_ttl: bool = True) -> Any:
    """One contract version's online values for join-key ``values``, from the environment's online store."""
    backend = online_store(settings, env)
    try:
        return backend.read(plan_contract(env.feast_project, contract), values, enforce_ttl, store)
    except backend.unavailable_errors() as exc:
        raise OnlineStoreUnavailable(f"online store unreachable: {one_line(exc)}") from exc
    except PlatformError:
        raise
    except Exception as exc:
        raise FeastError(f"online read of {contract.feature_view_name} failed: {one_line(exc)}") from exc


def rows_of(contract: FeatureSetContract, values: list[Any], read: Any) -> list[dict[str, Any]]:
    """Per entity: join key, each feature, ``event_timestamp`` (UTC, None when not found) and ``status``
    (NOT_FOUND, OUTSIDE_MAX_AGE, or PRESENT when the entity's row is served)."""
    out = []
    for i, value in enumerate(values):
        row: dict[str, Any] = {contract.entity.join_key: value}
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


def read_online(settings: Settings, feature_set: str, keys: list[Any], version: int | None = None,
                env: EnvironmentContract | None = None, enforce_ttl: bool = True) -> list[dict[str, Any]]:
    env = env or settings.environment()
    contracts = settings.contracts()
    contract = contracts.get(feature_set, version)
    values = [_parse_key(contract, k) for k in keys]
    store = open_store(settings, env)
    registered = check_registry_matches(store, [contract])
    rows = rows_of(contract, values, view_read(settings, env, store, contract, values, enforce_ttl))
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
    lengths = {len(v) for v in entities.values()}
    if len(lengths) > 1:
        raise ConfigError("every join key needs one value per entity row; got " +
                          ", ".join(f"{k}: {len(v)}" for k, v in entities.items()))
    rows_count = lengths.pop()
    for contract, _ in resolved:
        if contract.entity.join_key not in entities:
            raise ConfigError(f"{model.service_name} reads {contract.feature_view_name}, keyed by "
                              f"{contract.entity.join_key}: give {contract.entity.join_key}=VALUE for each row")
    store = open_store(settings, env)
    registered = check_registry_matches(store, [c for c, _ in resolved])
    output = service_columns(resolved, full_feature_names)
    rows: list[dict[str, Any]] = [{} for _ in range(rows_count)]
    for (contract, names), columns in zip(resolved, output, strict=True):
        key = contract.entity.join_key
        values = [_parse_key(contract, v) for v in entities[key]]
        read = rows_of(contract, values, view_read(settings, env, store, contract, values))
        unfinished = _load_unfinished(settings, env, store, contract, registered)
        for row, got in zip(rows, read, strict=True):
            row[key] = got[key]
            for name, column in zip(names, columns, strict=True):
                row[column] = got[name]
            row.setdefault("__statuses", {})[contract.feature_view_name] = _flagged(got["status"], unfinished)
    return [{**{k: v for k, v in row.items() if k != "__statuses"}, "statuses": row["__statuses"]} for row in rows]


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
