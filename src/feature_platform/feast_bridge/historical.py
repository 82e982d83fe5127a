"""Training sets: point-in-time joins of an entity frame with one feature set or a model's feature service."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from feature_platform import build as builds
from feature_platform.contracts import FeatureSetContract
from feature_platform.environments import EnvironmentContract, Settings
from feature_platform.errors import (
    ConfigError,
    RegistryMismatchError,
)
from feature_platform.feast_bridge.apply import check_registry_matches
from feature_platform.feast_bridge.config import open_store
from feature_platform.feast_bridge.definitions import TAG_PREFIX

if TYPE_CHECKING:
    pass




def historical(settings: Settings, entity_df: Any, feature_set: str, version: int | None = None,
               build_id: str | None = None, env: EnvironmentContract | None = None,
               caller: Any = None, pushed_through: datetime | None = None) -> tuple[Any, dict[str, Any]]:
    """Point-in-time join of ``entity_df`` (join key + ``event_timestamp`` + any label columns) with one contract
    version: one row per input row, in input order (see :mod:`feature_platform.offline`).

    ``build_id`` pins the build and ``pushed_through`` the pushed rows (those recorded at or before it), so a
    training set can be reproduced exactly from its recorded metadata; by default the build the registry serves
    is used, with every push recorded so far. Returns (dataframe, provenance).

    ``caller`` (default: the CLI identity, see governance.caller_from_cli) must be allowed to read the view; PII
    features come back masked unless its team may see them.
    """
    from feature_platform import governance
    from feature_platform.offline import point_in_time_join

    env = env or settings.environment()
    contracts = settings.contracts()
    contract = contracts.get(feature_set, version)
    caller = caller or governance.caller_from_cli(settings, env)
    governance.check_offline_read(settings, env, contract, caller, action="historical")
    object_store = settings.object_store(env)
    if build_id is None:
        store = open_store(settings, env)
        registered = check_registry_matches(store, [contract])
        build_id = registered[contract.feature_view_name].tags[TAG_PREFIX + "build_id"]
    metadata = builds.read_metadata(object_store, contract, build_id)
    if metadata["schema_hash"] != contract.schema_hash:
        raise RegistryMismatchError(f"build {build_id} was made from schema {metadata['schema_hash']} but "
                                    f"{contract.feature_view_name} is {contract.schema_hash}")
    pushed, through = pushed_rows(object_store, contract, pushed_through)
    frame = point_in_time_join(entity_df, contract, builds.data_paths(metadata), object_store.fs, pushed, through)
    provenance = {"feature_set": contract.name, "version": contract.version_label, "build_id": build_id,
                  "schema_hash": contract.schema_hash, "data": metadata["data"], "ttl_seconds": contract.ttl_seconds,
                  **pushed_provenance(contract, pushed, through)}
    return governance.release(settings, env, frame, caller, "historical", provenance, [governance.ReadPart(
        contract, build_id, [f.name for f in contract.features])])


def pushed_rows(object_store: Any, contract: FeatureSetContract, through: datetime | None
                ) -> tuple[tuple[str, ...], datetime | None]:
    """The recorded pushes a training set of this version reads (none unless it takes pushes) and the cutoff it
    reads them to: ``through`` when replaying, else the newest push recorded so far (what its provenance names,
    so that a replay leaves out every later push)."""
    from feature_platform.push import pushed_files, recorded_through

    if not contract.push:
        return (), None
    files = tuple(pushed_files(object_store, contract))
    return files, through if through is not None else recorded_through(object_store, files)


def pushed_provenance(contract: FeatureSetContract, files: tuple[str, ...], through: datetime | None
                      ) -> dict[str, Any]:
    if not contract.push:
        return {}
    return {"pushed_files": len(files), "pushed_through": through.isoformat() if through else None}


def service_columns(resolved: list[tuple[FeatureSetContract, list[str]]], full_feature_names: bool
                    ) -> list[list[str]]:
    """Output names of a service's features, per feature-set version: plain, unless asked for full names
    (``<feature_set>_v<N>__<feature>``, Feast's); two sets sharing a plain name is an error that says so."""
    if full_feature_names:
        return [[f"{contract.feature_view_name}__{n}" for n in names] for contract, names in resolved]
    seen: dict[str, str] = {}
    for contract, names in resolved:
        for name in names:
            if name in seen:
                raise ConfigError(f"feature {name!r} is in both {seen[name]} and {contract.feature_view_name}; "
                                  "ask for full feature names (--full-feature-names) to get "
                                  f"{seen[name]}__{name} and {contract.feature_view_name}__{name}")
            seen[name] = contract.feature_view_name
    return [list(names) for _, names in resolved]


def historical_service(settings: Settings, entity_df: Any, service: str, version: int | None = None,
                       builds_by_set: dict[str, str] | None = None, env: EnvironmentContract | None = None,
                       caller: Any = None, full_feature_names: bool = False,
                       pushed_through: dict[str, datetime] | None = None) -> tuple[Any, dict[str, Any]]:
    """A model's training set: ``entity_df`` (every join key the service needs + ``event_timestamp`` + labels)
    with the service's features, each feature-set version joined point-in-time with its own TTL against the
    build the registry serves (or ``builds_by_set[feature_set]``), in one query; one row per input row, in order.

    Features keep their plain names unless two sets share one (an error that suggests ``full_feature_names``,
    which names them ``<feature_set>_v<N>__<feature>``). The caller must be allowed to read every set; PII is
    masked as for single sets. ``pushed_through`` ({feature view: cutoff}) replays a training set's pushed rows.
    Returns (dataframe, provenance naming every build, and each push-enabled set's cutoff)."""
    from feature_platform import governance
    from feature_platform.offline import JoinPart, point_in_time_join_many

    env = env or settings.environment()
    contracts = settings.contracts()
    model = contracts.service(service, version)
    if model.retired:
        raise ConfigError(f"feature service {model.name} {model.version_label} is retired; use a live version")
    resolved = contracts.resolve(model)
    caller = caller or governance.caller_from_cli(settings, env)
    for contract, _ in resolved:
        governance.check_offline_read(settings, env, contract, caller, action="historical")
    # Pins by feature view (customer_spend_v2=ID), or by feature set where the service reads one version of it.
    views_of: dict[str, list[str]] = {}
    for contract, _ in resolved:
        views_of.setdefault(contract.name, []).append(contract.feature_view_name)
        views_of[contract.feature_view_name] = [contract.feature_view_name]
    pins: dict[str, str] = {}
    for name, build_id in (builds_by_set or {}).items():
        if name not in views_of:
            raise ConfigError(f"--build names {name}, which {model.service_name} does not read; it reads "
                              f"{', '.join(c.feature_view_name for c, _ in resolved)}")
        if len(views_of[name]) > 1:
            raise ConfigError(f"--build {name}=...: {model.service_name} reads {' and '.join(views_of[name])}; "
                              "pin each by its view name")
        pins[views_of[name][0]] = build_id
    for name in pushed_through or {}:
        if name not in {c.feature_view_name for c, _ in resolved}:
            raise ConfigError(f"pushed_through names {name}, which {model.service_name} does not read; it reads "
                              f"{', '.join(c.feature_view_name for c, _ in resolved)}")
    unpinned = [c for c, _ in resolved if c.feature_view_name not in pins]
    if unpinned:
        store = open_store(settings, env)
        registered = check_registry_matches(store, unpinned)
        pins.update({c.feature_view_name: registered[c.feature_view_name].tags[TAG_PREFIX + "build_id"]
                     for c in unpinned})
    output = service_columns(resolved, full_feature_names)
    object_store = settings.object_store(env)
    parts, used = [], []
    for (contract, names), columns in zip(resolved, output, strict=True):
        metadata = builds.read_metadata(object_store, contract, pins[contract.feature_view_name])
        if metadata["schema_hash"] != contract.schema_hash:
            raise RegistryMismatchError(f"build {pins[contract.feature_view_name]} was made from schema "
                                        f"{metadata['schema_hash']} but {contract.feature_view_name} is "
                                        f"{contract.schema_hash}")
        pushed, through = pushed_rows(object_store, contract, (pushed_through or {}).get(contract.feature_view_name))
        parts.append(JoinPart.of(contract, builds.data_paths(metadata), names, columns, pushed, through))
        used.append({"feature_set": contract.name, "version": contract.version_label,
                     "build_id": pins[contract.feature_view_name], "schema_hash": contract.schema_hash,
                     "data": metadata["data"], "ttl_seconds": contract.ttl_seconds, "features": columns,
                     **pushed_provenance(contract, pushed, through)})
    frame = point_in_time_join_many(entity_df, parts, object_store.fs)
    provenance = {"feature_service": model.service_name, "version": model.version_label,
                  "schema_hash": contracts.service_schema_hash(model), "full_feature_names": full_feature_names,
                  "builds": used}
    return governance.release(settings, env, frame, caller, "historical", provenance, [
        governance.ReadPart(contract, pins[contract.feature_view_name], part.features,
                            dict(zip(part.features, part.names, strict=True)))
        for part, (contract, _) in zip(parts, resolved, strict=True)])
