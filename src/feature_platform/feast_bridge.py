"""Contracts -> Feast: feature_store.yaml, Entities, FeatureViews and FeatureServices; apply, materialize, reads.

Feast objects are derived from the contracts and the ``latest`` pointers, never written by hand:
one FeatureView per contract version (``<feature_set>_v<N>``), reading the build its version's pointer names,
and one FeatureService per feature set (``<feature_set>``) serving its newest version.

``import feast`` takes seconds, so it happens inside the functions that need it, once per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from feature_platform import build as builds
from feature_platform import feast_modes
from feature_platform.contracts import ContractSet, FeatureSetContract
from feature_platform.environments import (
    EnvironmentContract,
    FileRegistryConfig,
    RedisConfig,
    Settings,
    SqliteConfig,
    SqlRegistryConfig,
)
from feature_platform.errors import (
    ConfigError,
    FeastError,
    OnlineStoreUnavailable,
    PlatformError,
    PointerMissingError,
    RegistryMismatchError,
)
from feature_platform.locks import Lease, lease
from feature_platform.materialization import complete_record, load_unfinished, read_marker
from feature_platform.online.layout import plan_contract
from feature_platform.store import ObjectStore, write_file_atomic

if TYPE_CHECKING:
    from feast import FeatureStore

TAG_PREFIX = "feature_platform."
DEFINITION_TAG = TAG_PREFIX + "definition_hash"
LOCK_TIMEOUT = 600.0  # seconds to wait for the registry or a view lease


# ---------------------------------------------------------------------------------------- feature_store.yaml


def feature_store_config(settings: Settings, env: EnvironmentContract) -> dict[str, Any]:
    """feature_store.yaml for one environment. Secrets stay ``${VAR}`` references that Feast expands at load."""
    home = settings.env_home(env)
    registry = env.registry
    if isinstance(registry, SqlRegistryConfig):
        registry_cfg: dict[str, Any] = {"registry_type": "sql", "path": f"${{{registry.url_env}}}",
                                        "cache_ttl_seconds": registry.cache_ttl_seconds}
    else:
        path = settings.resolve_uri(env, registry.uri)
        registry_cfg = {"registry_type": "file", "path": path, "cache_ttl_seconds": registry.cache_ttl_seconds}
        # Local: written atomically (Feast writes in place). S3: each commit conditional on the version read.
        registry_cfg["registry_store_type"] = ("feature_platform.registry_store.ConditionalS3RegistryStore"
                                               if path.startswith("s3://") else
                                               "feature_platform.registry_store.AtomicFileRegistryStore")
    online = env.online_store
    if isinstance(online, RedisConfig):
        # A cluster's seed list is the variable's comma-separated host:port entries; it has only database 0.
        connection = f"${{{online.address_env}}}" + ("" if online.cluster else f",db={online.db}")
        if online.password_env:
            connection += f",password=${{{online.password_env}}}"
        # skip_dedup: Feast's Redis store otherwise keeps a row unless the new one is strictly newer, so a
        # corrected or rolled-back build (same event timestamps) would never reach Redis. Each materialization
        # writes one row per entity from one build, and one DAG run per feature set at a time writes them.
        online_cfg: dict[str, Any] = {"type": feast_modes.ONLINE_STORES["redis"], "connection_string": connection,
                                      "skip_dedup": True}
        if online.cluster:
            online_cfg["redis_type"] = "redis_cluster"
    else:
        online_cfg = {"type": feast_modes.ONLINE_STORES["sqlite"], "path": str(home / online.path)}
    # Feast's SDK and CLI go through the platform's engines (feast_plugins.py): the exact point-in-time join
    # for training sets, the online read rules (TTL, NOT_FOUND), and the platform's materialization.
    return {
        "project": env.feast_project,
        "provider": feast_modes.PROVIDER,
        "registry": registry_cfg,
        "online_store": online_cfg,
        "offline_store": {"type": feast_modes.OFFLINE_STORE,
                          "platform_environment": env.name, "platform_contracts": str(settings.contracts_dir),
                          "platform_home": str(settings.home)},
        "entity_key_serialization_version": 3,
    }


def config_path(settings: Settings, env: EnvironmentContract) -> Path:
    return settings.env_home(env) / "feature_store.yaml"


def write_feature_store_yaml(settings: Settings, env: EnvironmentContract) -> Path:
    path = config_path(settings, env)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Generated by `featurectl feast-config --env {env.name}` from contracts/environments/"
              f"{env.name}.yaml; do not edit.\n")
    text = header + yaml.safe_dump(feature_store_config(settings, env), sort_keys=False)
    if not path.exists() or path.read_text() != text:
        write_file_atomic(path, text)
    online = env.online_store
    if isinstance(online, SqliteConfig):
        (settings.env_home(env) / online.path).parent.mkdir(parents=True, exist_ok=True)
    if isinstance(env.registry, FileRegistryConfig) and not env.registry.uri.startswith("s3://"):
        Path(settings.resolve_uri(env, env.registry.uri)).parent.mkdir(parents=True, exist_ok=True)
    return path


def check_runtime_env(settings: Settings, env: EnvironmentContract) -> None:
    """Fail early, with the variable's name, when a referenced secret or address is not set."""
    online = env.online_store
    if isinstance(online, RedisConfig):
        settings.require(online.address_env, "the Redis address host:port of the online store")
        if online.password_env:
            settings.require(online.password_env, "the Redis password (from the Secret, never from Git)")
    if isinstance(env.registry, SqlRegistryConfig):
        settings.require(env.registry.url_env, "the SQL registry URL, e.g. postgresql+psycopg://user:pw@host/db")
    if env.is_s3:
        try:
            import s3fs  # noqa: F401  (Feast needs it for s3:// sources, but no Feast extra installs it)
        except ImportError as exc:
            raise ConfigError("s3fs is not installed, so Feast cannot read s3:// sources or materialize; "
                              "pip install s3fs (the platform image includes it)") from exc


_ENVIRON_LOCK = threading.RLock()


@contextmanager
def feast_process_environment(settings: Settings) -> Iterator[None]:
    """Feast reads its S3 endpoint and secrets only from the process environment; set them for the call.

    In a deployment they are already there and nothing changes. The lock keeps threads with different
    settings (tests, embedded use) from seeing each other's values; never take a registry lease inside it.
    """
    wanted = {k: v for k, v in settings.values.items() if k.startswith(("FEATURE_PLATFORM_", "AWS_"))}
    if settings.s3_endpoint_url:
        wanted["FEAST_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    with _ENVIRON_LOCK:
        saved = {k: os.environ.get(k) for k in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def open_store(settings: Settings, env: EnvironmentContract) -> FeatureStore:
    check_runtime_env(settings, env)
    path = write_feature_store_yaml(settings, env)
    with feast_process_environment(settings):
        from feast import FeatureStore

        try:
            store = FeatureStore(repo_path=str(path.parent), fs_yaml_file=path)
            _ = store.registry  # loaded lazily; load it now, while the S3 endpoint variable is set
            return store
        except Exception as exc:
            raise FeastError(f"cannot open the Feast store for {env.name} ({path}): {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# ------------------------------------------------------------------------------------------------ definitions

FEAST_TYPES = {"int32": "Int32", "int64": "Int64", "float32": "Float32", "float64": "Float64",
               "string": "String", "bool": "Bool", "timestamp": "UnixTimestamp"}


@dataclass(frozen=True)
class Definitions:
    entities: list[Any]
    feature_views: list[Any]
    feature_services: list[Any]
    permissions: list[Any]  # who may read (governance.permissions)

    def all(self) -> list[Any]:
        return [*self.entities, *self.feature_views, *self.feature_services, *self.permissions]


def definition_hash(contract: FeatureSetContract, pointer: dict[str, Any]) -> str:
    """Changes whenever the Feast objects derived from this contract would change."""
    payload = {"schema": contract.schema_hash, "build": pointer["build_id"], "data": pointer["data"],
               "online": contract.online, "tags": contract.tags, "description": contract.description,
               "owner": contract.owner, "pii": contract.pii}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def feature_view(contract: FeatureSetContract, pointer: dict[str, Any], entity: Any,
                 s3_endpoint: str | None) -> Any:
    from feast import FeatureView, Field, FileSource
    from feast import types as feast_types

    data = str(pointer["data"])
    source = FileSource(
        name=f"{contract.feature_view_name}_source",
        path=data,
        timestamp_field=contract.timestamp_field,
        s3_endpoint_override=s3_endpoint if data.startswith("s3://") else None,
    )
    schema = [Field(name=contract.entity.join_key, dtype=getattr(feast_types, FEAST_TYPES[contract.entity.dtype]))]
    schema += [Field(name=f.name, dtype=getattr(feast_types, FEAST_TYPES[f.dtype]), description=f.description)
               for f in contract.features]
    tags = {**contract.tags,
            TAG_PREFIX + "feature_set": contract.name,
            TAG_PREFIX + "version": contract.version_label,
            TAG_PREFIX + "schema_hash": contract.schema_hash,
            TAG_PREFIX + "build_id": str(pointer["build_id"]),
            TAG_PREFIX + "pii": str(contract.pii).lower(),
            DEFINITION_TAG: definition_hash(contract, pointer)}
    return FeatureView(
        name=contract.feature_view_name,
        entities=[entity],
        ttl=timedelta(seconds=contract.ttl_seconds),
        schema=schema,
        online=contract.online,
        source=source,
        tags=tags,
        owner=contract.owner,
        description=contract.description,
    )


def definitions(settings: Settings, env: EnvironmentContract, contracts: ContractSet | None = None,
                pins: dict[str, str] | None = None, feature_sets: list[str] | None = None) -> Definitions:
    """Feast objects for every contract version (or those of ``feature_sets``), each reading its version's
    ``latest`` build.

    ``pins`` maps a feature view name to a build id to read instead (reproducing an old training set).
    """
    from feast import FeatureService

    contracts = contracts or settings.contracts()
    store = settings.object_store(env)
    entities: dict[str, Any] = {}
    views: dict[str, Any] = {}
    missing = []
    selected = [c for c in contracts.live() if not feature_sets or c.name in feature_sets]
    for contract in selected:
        e = contract.entity
        if e.name not in entities:
            entities[e.name] = feast_entity(contract)
        try:
            if pins and contract.feature_view_name in pins:
                pointer = builds.find_build(store, contract.name, pins[contract.feature_view_name])
            else:
                pointer = builds.read_pointer(store, contract.name, contract.version_label)
        except PointerMissingError:
            missing.append(f"{contract.name} {contract.version_label}")
            continue
        views[contract.feature_view_name] = feature_view(contract, pointer, entities[e.name],
                                                         settings.s3_endpoint_url)
    if missing:
        raise PointerMissingError(missing, store.url())
    # One service per contract version, so a model pins the version it was trained on; a moving alias named
    # after the feature set follows the newest version only where its newest contract opts in (latest_alias).
    services = [FeatureService(name=c.feature_view_name, features=[views[c.feature_view_name]],
                               description=f"{c.description} ({c.version_label})",
                               tags={TAG_PREFIX + "version": c.version_label}, owner=c.owner)
                for c in selected if c.feature_view_name in views]
    services += [FeatureService(name=c.name, features=[views[c.feature_view_name]],
                                description=f"{c.description} (moving alias: newest version, {c.version_label})",
                                tags={TAG_PREFIX + "version": c.version_label, TAG_PREFIX + "alias": "latest"},
                                owner=c.owner)
                 for c in contracts.latest_versions()
                 if c.latest_alias and c.feature_view_name in views and (not feature_sets or c.name in feature_sets)]
    # Models' services across feature sets (contracts/feature_services/): with ``feature_sets``, those that read
    # any of them; a set outside the selection lends its view as a projection source only (not applied here).
    models = [m for m in contracts.live_services()
              if not feature_sets or any(c.name in feature_sets for c, _ in contracts.resolve(m))]
    context = dict(views)
    for model in list(models):
        for contract, _ in contracts.resolve(model):
            if contract.feature_view_name not in context:
                try:
                    pointer = builds.read_pointer(store, contract.name, contract.version_label)
                except PointerMissingError:  # not built yet: the apply of the set built last registers it
                    models.remove(model)
                    break
                entity = entities.get(contract.entity.name) or feast_entity(contract)
                context[contract.feature_view_name] = feature_view(contract, pointer, entity, settings.s3_endpoint_url)
    services += [model_service(contracts, model, context) for model in models]
    from feature_platform.governance import permissions

    served = [c for c in selected if c.feature_view_name in views]
    return Definitions(list(entities.values()), list(views.values()), services,
                       permissions(env, contracts, served, models))


def feast_entity(contract: FeatureSetContract) -> Any:
    from feast import Entity, ValueType

    e = contract.entity
    return Entity(name=e.name, join_keys=[e.join_key], description=e.description,
                  value_type=ValueType.INT64 if e.dtype == "int64" else ValueType.STRING)


def model_service(contracts: ContractSet, model: Any, views: dict[str, Any]) -> Any:
    """Feast's FeatureService ``<name>_v<N>`` for a model's service contract: one projection per feature-set
    version, holding the features the model takes, in the contract's order."""
    from feast import FeatureService

    projections = [views[c.feature_view_name][names] for c, names in contracts.resolve(model)]
    return FeatureService(name=model.service_name, features=projections,
                          description=f"{model.description} ({model.version_label})", owner=model.owner,
                          tags={**model.tags, TAG_PREFIX + "version": model.version_label,
                                TAG_PREFIX + "model": model.name,
                                TAG_PREFIX + "schema_hash": contracts.service_schema_hash(model)})


# ------------------------------------------------------------------------------------------------------ apply


@contextmanager
def registry_lock(settings: Settings, env: EnvironmentContract) -> Iterator[Lease]:
    """The registry writers' lease; call ``.check()`` right before each registry write (fencing)."""
    registry = env.registry
    if isinstance(registry, SqlRegistryConfig):
        yield Lease("sql registry")  # transactional; Feast serializes writers itself
        return
    with lease(settings.resolve_uri(env, registry.uri) + ".lock", settings.s3_endpoint_url, LOCK_TIMEOUT) as held:
        yield held


def keep_registry_state(views: list[Any], registered: dict[str, Any]) -> None:
    """Carry what the registry records about a view, not what the contracts define, into the derived views: the
    materialized intervals and the source's creation times. Feast compares both, so without this `plan` (ours and
    plain `feast plan`) reports every materialized view as changed, and an apply would drop the intervals."""
    for view in views:
        before = registered.get(view.name)
        if before is None:
            continue
        view.materialization_intervals = list(before.materialization_intervals)
        source, old = view.batch_source, before.batch_source
        if source is not None and source == old:  # same name, path and options: only the times differ
            source.created_timestamp = old.created_timestamp
            source.last_updated_timestamp = old.last_updated_timestamp


def registered_views(store: FeatureStore) -> dict[str, Any]:
    try:
        return {fv.name: fv for fv in store.list_feature_views(allow_cache=False)}
    except Exception as exc:  # a missing registry is empty, anything else is an error worth its name
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            return {}
        raise FeastError(f"cannot read the Feast registry: {_one_line(exc)}") from exc


@dataclass(frozen=True)
class ApplyResult:
    changed: list[str]
    unchanged: list[str]
    unmanaged: list[str]  # in the registry but in no contract: reported, never pruned automatically


def apply(settings: Settings, env: EnvironmentContract | None = None,
          feature_sets: list[str] | None = None) -> ApplyResult:
    """Register the contracts' Feast objects (all, or only ``feature_sets``: a per-feature-set DAG owns just its
    own); never deletes anything. A no-op when nothing changed. Serialized per environment."""
    from feature_platform import audit
    from feature_platform.governance import permission_fingerprint

    env = env or settings.environment()
    contracts = settings.contracts()
    settings.writable_contracts(env, [c for c in contracts.all() if not feature_sets or c.name in feature_sets])
    wanted = definitions(settings, env, contracts, feature_sets=feature_sets)
    retired = [c for c in contracts.all() if c.retired and (not feature_sets or c.name in feature_sets)]
    store = open_store(settings, env)
    with registry_lock(settings, env) as held, feast_process_environment(settings):
        existing = registered_views(store)
        _reconcile_interrupted_applies(settings, env, store, existing)
        keep_registry_state(wanted.feature_views, existing)
        changed = [fv.name for fv in wanted.feature_views
                   if fv.tags[DEFINITION_TAG] != getattr(existing.get(fv.name), "tags", {}).get(DEFINITION_TAG)]
        services = {fs.name: fs for fs in store.registry.list_feature_services(store.project, allow_cache=False)}
        missing_services = [fs.name for fs in wanted.feature_services
                            if fs.name not in services or _service_views(services[fs.name]) != _service_views(fs)]
        granted = {p.name: p for p in store.registry.list_permissions(store.project, allow_cache=False)}
        new_permissions = [p.name for p in wanted.permissions
                           if p.name not in granted or permission_fingerprint(granted[p.name])
                           != permission_fingerprint(p)]
        # Retiring a version is the one deletion apply makes: its view, services and permission go.
        alias_names = {c.name for c in contracts.latest_versions() if c.latest_alias}
        removals = [existing[c.feature_view_name] for c in retired if c.feature_view_name in existing]
        removals += [services[name] for c in retired for name in (c.feature_view_name, c.name)
                     if name in services and name not in alias_names
                     and [v.split("[")[0] for v in _service_views(services[name])] == [c.feature_view_name]]
        removals += [services[m.service_name] for m in contracts.all_services()
                     if m.retired and m.service_name in services]
        removals += [granted[f"{m.service_name}_readers"] for m in contracts.all_services()
                     if m.retired and f"{m.service_name}_readers" in granted]
        removals += [granted[f"{c.feature_view_name}_readers"] for c in retired
                     if f"{c.feature_view_name}_readers" in granted]
        open_read = f"{env.feast_project}_open_read"  # the environment stopped being open: close it
        if env.access.default == "deny" and open_read in granted:
            removals.append(granted[open_read])
        if changed or missing_services or new_permissions or removals:
            held.check()
            changes = _audit_changes(contracts, wanted, existing, changed, missing_services, new_permissions,
                                     removals)
            # Written ahead: Feast's SQL registry commits object by object, so a crash may leave part of this
            # apply in the registry; the pending entry lets the next apply record what landed.
            intent = audit.begin(settings, env, "apply", [x["feature_set"] for x in changes if x["feature_set"]],
                                 changes)
            try:
                store.apply(wanted.all(), objects_to_delete=removals, partial=not removals)
            except Exception as exc:
                raise FeastError(f"feast apply failed for {env.name}: {_one_line(exc)}; the audit trail holds it "
                                 "as pending and the next `featurectl apply` records what landed") from exc
            audit.confirm(settings, env, intent, changes)
        held.check()
        _record_infra(store)
    names = {fv.name for fv in wanted.feature_views}
    known = {c.feature_view_name for c in settings.contracts().all()}
    return ApplyResult(changed=changed, unchanged=sorted(names - set(changed)),
                       unmanaged=sorted(set(existing) - known - {r.name for r in removals}))


def _reconcile_interrupted_applies(settings: Settings, env: EnvironmentContract, store: FeatureStore,
                                   existing: dict[str, Any]) -> None:
    """Applies written ahead in the audit trail whose outcome was never recorded (the writer or the registry's
    database died mid-apply): record which of their changes the registry holds now, so none goes unaudited."""
    from feature_platform import audit

    interrupted = [entry for entry in audit.pending(settings, env) if entry["action"] == "apply"]
    if not interrupted:
        return
    services = {fs.name for fs in store.registry.list_feature_services(store.project, allow_cache=False)}
    granted = {p.name for p in store.registry.list_permissions(store.project, allow_cache=False)}

    def landed(change: dict[str, Any]) -> bool:
        name, kind = change["object"], change["kind"]
        if change["change"] == "removed":
            return name not in existing and name not in services and name not in granted
        if kind == "FeatureView":
            view = existing.get(name)
            return view is not None and view.tags.get(TAG_PREFIX + "build_id") == change.get("build_id")
        return name in (services if kind == "FeatureService" else granted)

    for entry in interrupted:
        audit.confirm(settings, env, entry, [c for c in entry["changes"] if landed(c)],
                      note="the apply was interrupted; these changes were found in the registry by a later apply")


def _audit_changes(contracts: ContractSet, wanted: Definitions, existing: dict[str, Any], changed: list[str],
                   services: list[str], permissions: list[str], removals: list[Any]) -> list[dict[str, Any]]:
    """What one apply changed, each object classified: a new version against the one before it (the contracts
    diff: compatible or breaking), a re-pointed view by its builds, access and retirement as such."""
    from feature_platform.contracts import diff_contracts

    by_view = {c.feature_view_name: c for c in contracts.all()}
    changes: list[dict[str, Any]] = []
    for view in wanted.feature_views:
        if view.name not in changed:
            continue
        contract = by_view[view.name]
        before = existing.get(view.name)
        if before is None:
            older = [c for c in contracts.versions(contract.name) if c.version < contract.version]
            diff = diff_contracts(older[-1], contract) if older else []
            changes.append({"object": view.name, "kind": "FeatureView", "change": "added",
                            "classification": "breaking" if any(d.breaking for d in diff) else
                            ("compatible" if older else "new feature set"),
                            "detail": [d.what for d in diff] if older else [],
                            "build_id": view.tags[TAG_PREFIX + "build_id"],
                            "schema_hash": contract.schema_hash})
        else:
            old_build = before.tags.get(TAG_PREFIX + "build_id")
            new_build = view.tags[TAG_PREFIX + "build_id"]
            changes.append({"object": view.name, "kind": "FeatureView", "change": "updated",
                            "classification": "data (new build)" if old_build != new_build else "metadata",
                            "detail": [f"build {old_build} -> {new_build}"] if old_build != new_build else
                            ["description, owner, tags, pii or online flag"],
                            "build_id": new_build, "schema_hash": contract.schema_hash})
    changes += [{"object": name, "kind": "FeatureService", "change": "added or re-pointed",
                 "classification": "serving"} for name in services]
    changes += [{"object": name, "kind": "Permission", "change": "added or updated", "classification": "access",
                 "detail": [f"readers: {', '.join(p.policy.get_roles())}"]}
                for p in wanted.permissions for name in [p.name] if name in permissions]
    changes += [{"object": obj.name, "kind": type(obj).__name__, "change": "removed",
                 "classification": "retired", "detail": ["contract status: retired"]} for obj in removals]
    names = contracts.names()
    for change in changes:
        stem = change["object"].removesuffix("_readers")
        change["feature_set"] = by_view[stem].name if stem in by_view else (stem if stem in names else None)
    return changes


def _record_infra(store: FeatureStore) -> None:
    """Record in the registry the online tables the registered views need, as `feast apply` does (store.apply
    creates them but does not record them), so `feast plan` right after an apply reports no changes."""
    try:
        wanted = store.provider.plan_infra(store.config, store.registry.proto())
        if wanted.to_proto() != store.registry.get_infra(store.project).to_proto():
            store.registry.update_infra(wanted, store.project, commit=True)
    except Exception as exc:
        raise FeastError(f"recording the online store's tables in the registry failed: {_one_line(exc)}") from exc


def plan(settings: Settings, env: EnvironmentContract | None = None) -> dict[str, Any]:
    """What `featurectl apply` (and `feast apply` on feature_repo/) would change: Feast's own plan of the
    contracts' definitions against the registry. Objects in no contract show as deletions (`feast apply` would
    prune them; `featurectl apply` never does)."""
    from feast import Project
    from feast.feature_view import DUMMY_ENTITY
    from feast.repo_contents import RepoContents

    env = env or settings.environment()
    wanted = definitions(settings, env)
    store = open_store(settings, env)
    with feast_process_environment(settings):
        keep_registry_state(wanted.feature_views, registered_views(store))
        # As `feast plan` parses feature_repo/: the project and Feast's dummy entity are part of the repo.
        contents = RepoContents(
            projects=[Project(name=store.project, description="")],
            data_sources=[fv.batch_source for fv in wanted.feature_views],
            feature_views=wanted.feature_views, on_demand_feature_views=[], stream_feature_views=[],
            label_views=[], entities=[*wanted.entities, DUMMY_ENTITY], feature_services=wanted.feature_services,
            permissions=wanted.permissions)
        try:
            registry_diff, infra_diff, _ = store.plan(contents)
        except Exception as exc:
            raise FeastError(f"feast plan failed for {env.name}: {_one_line(exc)}") from exc
    changes = [f"{diff.transition_type.name.lower()} {getattr(diff.feast_object_type, 'value', diff.feast_object_type)}"
               f" {diff.name}" + (f" ({', '.join(p.property_name for p in diff.feast_object_property_diffs)})"
                                  if diff.feast_object_property_diffs else "")
               for diff in registry_diff.feast_object_diffs if diff.transition_type.name != "UNCHANGED"]
    infra = [f"{diff.transition_type.name.lower()} {diff.infra_object_type} {diff.name}"
             for diff in infra_diff.infra_object_diffs if diff.transition_type.name != "UNCHANGED"]
    return {"environment": env.name, "registry_changes": changes, "infra_changes": infra,
            "registry_text": registry_diff.to_string(), "infra_text": infra_diff.to_string()}


def _service_views(service: Any) -> list[str]:
    """What a service serves: its views, each with the features it takes (a model may take a subset)."""
    return sorted(f"{p.name}[{','.join(f.name for f in p.features)}]" for p in service.feature_view_projections)


def check_registry_matches(store: FeatureStore, contracts: list[FeatureSetContract]) -> dict[str, Any]:
    """Each given contract version is registered with its schema_hash, or a clear error says which is not."""
    existing = registered_views(store)
    problems = []
    for contract in contracts:
        view = existing.get(contract.feature_view_name)
        if view is None:
            problems.append(f"{contract.feature_view_name} is not in the registry")
        elif view.tags.get(TAG_PREFIX + "schema_hash") != contract.schema_hash:
            problems.append(f"{contract.feature_view_name} was applied from schema "
                            f"{view.tags.get(TAG_PREFIX + 'schema_hash')} but the contract is {contract.schema_hash}")
    if problems:
        raise RegistryMismatchError("registry does not match the contracts: " + "; ".join(problems)
                                    + "; run `featurectl apply`")
    return existing


# ------------------------------------------------------------------------------------------------ materialize


def _online_errors() -> tuple[type[BaseException], ...]:
    from feature_platform.online.redis_client import unavailable_errors

    return unavailable_errors()


def materialize(settings: Settings, env: EnvironmentContract | None = None, incremental: bool = False,
                feature_views: list[str] | None = None, progress: bool = False, shard: Any = None
                ) -> list[dict[str, Any]]:
    """Load each online feature view's served build into the online store, exactly.

    After a view is materialized the online store holds exactly the entities of the build the registry serves,
    each with its newest row: entities that left the build (a rebuild without them, a correction, a rollback)
    lose this view's fields, other views' fields in the same Redis hash stay. Redis goes through the platform's
    vectorized writer (:mod:`feature_platform.online.materialize`), SQLite through Feast's. ``incremental``
    skips a view whose served build is already completely loaded (recorded in ``<version>/online.json``) and
    still present; anything else is a full load. The interval is recorded in the registry as Feast does.
    """
    env = env or settings.environment()
    contracts = settings.contracts()
    selected = [c for c in contracts.live()
                if c.online and (not feature_views or c.feature_view_name in feature_views)]
    settings.writable_contracts(env, selected)
    store = open_store(settings, env)
    object_store = settings.object_store(env)
    with feast_process_environment(settings):
        registered = check_registry_matches(store, selected)
    done: list[dict[str, Any]] = []
    loaded: list[tuple[Any, datetime, datetime]] = []  # Feast's materialized intervals, recorded together
    try:
        for contract in selected:
            done.append(_materialize_view(settings, env, store, object_store, contract,
                                          registered[contract.feature_view_name], incremental, progress, shard,
                                          loaded))
    finally:
        # One registry write for every loaded view (not one refresh and commit per view, which grows with the
        # catalogue squared); views loaded before a failure are recorded too.
        _record_intervals(settings, env, store, loaded)
    return done


def _materialize_view(settings: Settings, env: EnvironmentContract, store: FeatureStore, object_store: ObjectStore,
                      contract: FeatureSetContract, view: Any, incremental: bool, progress: bool, shard: Any,
                      loaded: list[tuple[Any, datetime, datetime]]) -> dict[str, Any]:
    from feature_platform import materialization

    # One writer per view: a lease per view in the object store.
    view_lease = object_store.url(f"{builds.version_key(contract)}/materialize.lock")
    # Shards of one view run in parallel, each under its own lease; the view's lease only to finish.
    own_lease = view_lease.replace("materialize.lock", f"materialize.shard-{shard.label}.lock") if shard \
        else view_lease
    with lease(own_lease, settings.s3_endpoint_url, LOCK_TIMEOUT) as view_held, \
            feast_process_environment(settings):
        build_id = view.tags[TAG_PREFIX + "build_id"]

        def record_interval(start: datetime, end: datetime) -> None:
            """Feast's own materialize records the interval (for `feast materialize-incremental` and the UI)."""
            loaded.append((view, start, end))

        try:
            return materialization.load_view(settings, env, object_store, contract, build_id,
                                             incremental=incremental, progress=progress, store=store,
                                             view_lease=view_held, record_interval=record_interval,
                                             shard=shard, view_lease_for_finish=partial(
                                                 lease, view_lease, settings.s3_endpoint_url, LOCK_TIMEOUT))
        except _online_errors() as exc:
            raise OnlineStoreUnavailable(
                f"online store of {env.name} unreachable while materializing {contract.feature_view_name}: "
                f"{_one_line(exc)}; check Redis is up and the address/password variables are right, then "
                "re-run (it is idempotent)") from exc


def _record_intervals(settings: Settings, env: EnvironmentContract, store: FeatureStore,
                      loaded: list[tuple[Any, datetime, datetime]]) -> None:
    """Record the loaded views' intervals in Feast's registry under the registry lease, held only for this write:
    the file registry is read afresh (its commit is conditional on the version read) and written once; the SQL
    registry writes each view's row."""
    if not loaded:
        return
    with registry_lock(settings, env) as registry_held, feast_process_environment(settings):
        registry_held.check()
        try:
            if not isinstance(env.registry, SqlRegistryConfig):
                store.registry.refresh(store.project)
            for view, start, end in loaded:
                store.registry.apply_materialization(view, store.project, start, end, commit=False)
            registry_held.check()
            store.registry.commit()
        except Exception as exc:
            names = ", ".join(view.name for view, _, _ in loaded)
            raise FeastError(f"recording the materialized intervals of {names} failed: {_one_line(exc)}") from exc


# ----------------------------------------------------------------------------------------------------- reads


def _parse_key(contract: FeatureSetContract, key: Any) -> Any:
    from feature_platform.online.layout import parse_entity_value

    try:
        return parse_entity_value(contract.entity.dtype, key)
    except ValueError as exc:
        raise ConfigError(f"{contract.entity.join_key} is {contract.entity.dtype}; {key!r} is not valid: {exc}"
                          ) from exc


def _feast_view_read(store: FeatureStore, plan: Any, values: list[Any], enforce_ttl: bool) -> Any:
    """Feast's own online read (stores the planner does not cover, e.g. SQLite), with the platform's semantics:
    NOT_FOUND entities get a null timestamp, and the TTL is enforced."""
    from feast.type_map import feast_value_type_to_python_type

    from feature_platform.online import reader

    refs = [f"{plan.view}:{f.name}" for f in plan.features]
    with contextlib.nullcontext() if enforce_ttl else feast_modes.ttl_not_enforced():
        response = store.get_online_features(features=refs, entity_rows=[{plan.join_key: v} for v in values])
    by_name = dict(zip(response.proto.metadata.feature_names.val, response.proto.results, strict=True))
    results = [by_name[f.name] for f in plan.features]
    status_names = {0: "INVALID", 1: reader.PRESENT, 2: reader.NULL_VALUE, 3: reader.NOT_FOUND,
                    4: reader.OUTSIDE_MAX_AGE}
    now = reader.now_micros()
    max_age = plan.ttl_seconds * 1_000_000 if enforce_ttl and plan.ttl_seconds > 0 else None
    stamps: list[int | None] = []
    for i in range(len(values)):
        found = [r for r in results if r.statuses[i] != 3]
        stamps.append(max(r.event_timestamps[i].ToMicroseconds() for r in found) if found else None)
    out_values, out_statuses = [], []
    for result in results:
        column, statuses = [], []
        for i, value in enumerate(result.values):
            status = status_names.get(result.statuses[i], "INVALID")
            python = feast_value_type_to_python_type(value) if status == reader.PRESENT else None
            stamp = stamps[i]
            if stamp is not None and max_age is not None and now - stamp > max_age:
                status, python = reader.OUTSIDE_MAX_AGE, None
            column.append(python)
            statuses.append(status)
        out_values.append(column)
        out_statuses.append(statuses)
    return reader.ViewRead(plan=plan, features=list(plan.features), values=out_values, statuses=out_statuses,
                           event_micros=stamps)


def view_read(settings: Settings, env: EnvironmentContract, store: FeatureStore, contract: FeatureSetContract,
              values: list[Any], enforce_ttl: bool = True) -> Any:
    """One contract version's online values for join-key ``values``: the planner on Redis, Feast elsewhere."""
    import sqlite3

    from feature_platform.online.layout import plan_contract
    from feature_platform.online.reader import read_view
    from feature_platform.online.redis_client import connect

    plan = plan_contract(env.feast_project, contract)
    try:
        if isinstance(env.online_store, RedisConfig):
            return read_view(connect(settings, env), plan, values, enforce_ttl=enforce_ttl)
        return _feast_view_read(store, plan, values, enforce_ttl)
    except _online_errors() as exc:
        raise OnlineStoreUnavailable(f"online store unreachable: {_one_line(exc)}") from exc
    except PlatformError:
        raise
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise FeastError(f"online read of {contract.feature_view_name} failed: {_one_line(exc)}") from exc
        # The store file was deleted or replaced: nothing is served (verify reports it; materialize refills it).
        return _not_found(plan, values)
    except Exception as exc:
        raise FeastError(f"online read of {contract.feature_view_name} failed: {_one_line(exc)}") from exc


def _not_found(plan: Any, values: list[Any]) -> Any:
    from feature_platform.online import reader

    return reader.ViewRead(plan=plan, features=list(plan.features),
                           values=[[None] * len(values) for _ in plan.features],
                           statuses=[[reader.NOT_FOUND] * len(values) for _ in plan.features],
                           event_micros=[None] * len(values))


def _rows(contract: FeatureSetContract, values: list[Any], read: Any) -> list[dict[str, Any]]:
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
    with feast_process_environment(settings):
        registered = check_registry_matches(store, [contract])
        rows = _rows(contract, values, view_read(settings, env, store, contract, values, enforce_ttl))
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
    with feast_process_environment(settings):
        registered = check_registry_matches(store, [c for c, _ in resolved])
    output = service_columns(resolved, full_feature_names)
    rows: list[dict[str, Any]] = [{} for _ in range(rows_count)]
    for (contract, names), columns in zip(resolved, output, strict=True):
        key = contract.entity.join_key
        values = [_parse_key(contract, v) for v in entities[key]]
        with feast_process_environment(settings):
            read = _rows(contract, values, view_read(settings, env, store, contract, values))
        unfinished = _load_unfinished(settings, env, store, contract, registered)
        for row, got in zip(rows, read, strict=True):
            row[key] = got[key]
            for name, column in zip(names, columns, strict=True):
                row[column] = got[name]
            row.setdefault("__statuses", {})[contract.feature_view_name] = _flagged(got["status"], unfinished)
    return [{**{k: v for k, v in row.items() if k != "__statuses"}, "statuses": row["__statuses"]} for row in rows]


def _close(a: Any, b: Any, dtype: str) -> bool:
    if isinstance(a, float) and math.isnan(a):
        a = None  # NaN is stored as null online, as Feast does
    if isinstance(b, float) and math.isnan(b):
        b = None
    if a is None or b is None:
        return a is None and b is None
    if dtype == "timestamp":
        left, right = _as_utc(a), _as_utc(b)
        assert left is not None and right is not None  # neither is None here
        return int(left.timestamp()) == int(right.timestamp())  # Feast keeps whole seconds
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-6 if dtype == "float32" else 1e-12, abs_tol=1e-9)
    return bool(a == b)


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int | float):  # Feast returns online event timestamps as epoch seconds
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, datetime):
        value = value.to_pydatetime() if hasattr(value, "to_pydatetime") else datetime.fromisoformat(str(value))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def online_record(settings: Settings, env: EnvironmentContract, store: FeatureStore | None,
                  contract: FeatureSetContract) -> dict[str, Any] | None:
    """The online store's own record of the build it holds for this view ({build_id, state}), or None."""
    from feature_platform.materialization import online_target

    try:
        return online_target(settings, env, store, plan_contract(env.feast_project, contract)).recorded()
    except _online_errors() as exc:
        raise OnlineStoreUnavailable(f"online store unreachable: {_one_line(exc)}") from exc


def online_entity_count(settings: Settings, env: EnvironmentContract, contract: FeatureSetContract) -> int:
    """How many entities hold this contract version's view in the online store right now."""
    from feature_platform.materialization import SqliteTarget
    from feature_platform.online.layout import plan_contract
    from feature_platform.online.reader import count_entities
    from feature_platform.online.redis_client import connect

    plan = plan_contract(env.feast_project, contract)
    if isinstance(env.online_store, RedisConfig):
        return count_entities(connect(settings, env), plan)
    import sqlite3

    try:
        return SqliteTarget(settings, env, None, plan).count()
    except sqlite3.Error:
        return 0


def _sample_newest(object_store: ObjectStore, metadata: dict[str, Any], plan: Any, sample: int
                   ) -> tuple[list[dict[str, Any]], Any]:
    """About ``sample`` entities' newest rows, evenly spread over the build, streamed (bounded memory however
    large the view), and a key that is in no build (it must read NOT_FOUND)."""
    import pyarrow.compute as pc

    from feature_platform.online import materialize as engine

    step = max(1, int(metadata.get("entity_count") or 0) // max(sample, 1))
    expected: list[dict[str, Any]] = []
    largest = 0
    seen = 0
    for batch in engine.newest_rows(object_store.fs, metadata, plan):
        first = (-seen) % step
        positions = list(range(first, batch.num_rows, step))
        if positions and len(expected) < sample:
            expected += batch.take(positions).to_pylist()[:sample - len(expected)]
        if plan.entity_dtype == "int64" and batch.num_rows:
            largest = max(largest, int(pc.max(batch.column(plan.join_key)).as_py() or 0))
        seen += batch.num_rows
    probe: Any = (largest + 1_000_003 if plan.entity_dtype == "int64"
                  else "feature-platform-absent-" + hashlib.sha256(str(metadata["build_id"]).encode()).hexdigest()[:12])
    return expected, probe


def verify(settings: Settings, env: EnvironmentContract | None = None, sample: int = 20,
           now: datetime | None = None, feature_views: list[str] | None = None) -> list[dict[str, Any]]:
    """Offline/online consistency of each online view, on the build the registry serves:

    - sampled entities: the online row equals the build's newest row per entity;
    - exactness: the online store holds exactly the build's entities (count equal; a key in no build reads
      NOT_FOUND), so entities that left the build are not served;
    - freshness: the newest online timestamp is within the view's TTL;
    - the served build is the one recorded as completely materialized (``online.json``).
    """
    env = env or settings.environment()
    contracts = settings.contracts()
    store = open_store(settings, env)
    object_store = settings.object_store(env)
    now = now or datetime.now(UTC)
    results = []
    selected = [c for c in contracts.live()
                if c.online and (not feature_views or c.feature_view_name in feature_views)]
    with feast_process_environment(settings):
        registered = check_registry_matches(store, selected)
        for contract in selected:
            build_id = registered[contract.feature_view_name].tags[TAG_PREFIX + "build_id"]
            metadata = builds.read_metadata(object_store, contract, build_id)
            expected, probe = _sample_newest(object_store, metadata, plan_contract(env.feast_project, contract),
                                             sample)
            keys = [row[contract.entity.join_key] for row in expected]
            online = _rows(contract, [*keys, probe],
                           view_read(settings, env, store, contract, [*keys, probe], enforce_ttl=False))
            absent_row = online.pop()  # the probe key
            mismatches = []
            for want, got in zip(expected, online, strict=True):
                for feature in contract.features:
                    if not _close(want[feature.name], got[feature.name], feature.dtype):
                        mismatches.append(f"{contract.entity.join_key}={want[contract.entity.join_key]} "
                                          f"{feature.name}: online {got[feature.name]!r} != offline "
                                          f"{want[feature.name]!r}")
            missing = sum(1 for row in online if row["status"] == "NOT_FOUND")
            stamps = [s for r in online if (s := _as_utc(r["event_timestamp"])) is not None]
            newest_online = max(stamps, default=None)
            age = (now - newest_online).total_seconds() if newest_online else None
            fresh = age is not None and age <= contract.ttl_seconds
            marker = read_marker(object_store, contract)
            materialized = marker.get("build_id") if not marker.get("pending_build_ids") else None
            stored = online_record(settings, env, store, contract)
            online_count = online_entity_count(settings, env, contract)
            build_count = int(metadata["entity_count"])
            results.append({
                "feature_view": contract.feature_view_name, "build_id": build_id,
                "materialized_build_id": materialized, "sampled": len(keys),
                # A load started and not finished (killed, Redis down, shards missing): the store may hold a
                # mix of builds until a run completes it.
                "pending_build_ids": marker.get("pending_build_ids", []),
                # What the online store itself says it holds: missing after a flush or a new store file, an
                # older build after a snapshot restore, `loading` while a load is unfinished.
                "online_record": stored,
                "missing": missing, "mismatches": mismatches[:5], "mismatch_count": len(mismatches),
                "online_entities": online_count, "build_entities": build_count,
                "absent_key_served": absent_row["status"] != "NOT_FOUND",
                "newest_online": newest_online.isoformat() if newest_online else None,
                "age_seconds": age, "ttl_seconds": contract.ttl_seconds, "fresh": fresh,
                "ok": (not mismatches and missing == 0 and fresh and materialized == build_id
                       and stored == complete_record(build_id)
                       and online_count == build_count and absent_row["status"] == "NOT_FOUND"),
            })
    return results


# ------------------------------------------------------------------------------------------------ historical


def historical(settings: Settings, entity_df: Any, feature_set: str, version: int | None = None,
               build_id: str | None = None, env: EnvironmentContract | None = None,
               caller: Any = None) -> tuple[Any, dict[str, Any]]:
    """Point-in-time join of ``entity_df`` (join key + ``event_timestamp`` + any label columns) with one contract
    version: one row per input row, in input order (see :mod:`feature_platform.offline`).

    ``build_id`` pins the build, so a training set can be reproduced exactly from its recorded metadata; by
    default the build the registry serves is used. Returns (dataframe, provenance).

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
        with feast_process_environment(settings):
            registered = check_registry_matches(store, [contract])
        build_id = registered[contract.feature_view_name].tags[TAG_PREFIX + "build_id"]
    metadata = builds.read_metadata(object_store, contract, build_id)
    if metadata["schema_hash"] != contract.schema_hash:
        raise RegistryMismatchError(f"build {build_id} was made from schema {metadata['schema_hash']} but "
                                    f"{contract.feature_view_name} is {contract.schema_hash}")
    frame = point_in_time_join(entity_df, contract, str(metadata["data"]).removeprefix("s3://"), object_store.fs)
    frame, masking = governance.mask_frame(frame, contract, caller,
                                           governance.masking_key(settings, env, contract, caller))
    provenance = {"feature_set": contract.name, "version": contract.version_label, "build_id": build_id,
                  "schema_hash": contract.schema_hash, "rows": len(frame),
                  "data": metadata["data"], "ttl_seconds": contract.ttl_seconds,
                  "caller": caller.describe(), "pii_masked": masking["masked"], "pii_dropped": masking["dropped"]}
    governance.record_read(settings, env, contract, caller, "historical", provenance)
    return frame, provenance


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
                       caller: Any = None, full_feature_names: bool = False) -> tuple[Any, dict[str, Any]]:
    """A model's training set: ``entity_df`` (every join key the service needs + ``event_timestamp`` + labels)
    with the service's features, each feature-set version joined point-in-time with its own TTL against the
    build the registry serves (or ``builds_by_set[feature_set]``), in one query; one row per input row, in order.

    Features keep their plain names unless two sets share one (an error that suggests ``full_feature_names``,
    which names them ``<feature_set>_v<N>__<feature>``). The caller must be allowed to read every set; PII is
    masked as for single sets. Returns (dataframe, provenance naming every build)."""
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
    unpinned = [c for c, _ in resolved if c.feature_view_name not in pins]
    if unpinned:
        store = open_store(settings, env)
        with feast_process_environment(settings):
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
        parts.append(JoinPart.of(contract, str(metadata["data"]).removeprefix("s3://"), names, columns))
        used.append({"feature_set": contract.name, "version": contract.version_label,
                     "build_id": pins[contract.feature_view_name], "schema_hash": contract.schema_hash,
                     "data": metadata["data"],
                     "ttl_seconds": contract.ttl_seconds, "features": columns})
    frame = point_in_time_join_many(entity_df, parts, object_store.fs)
    masked: list[str] = []
    dropped: list[str] = []
    per_set = []
    for part, (contract, _) in zip(parts, resolved, strict=True):
        column_of = dict(zip(part.features, part.names, strict=True))
        frame, masking = governance.mask_frame(frame, contract, caller, governance.masking_key(
            settings, env, contract, caller), column_of=column_of)
        masked += masking["masked"]
        dropped += masking["dropped"]
        plain = {column: feature for feature, column in column_of.items()}
        per_set.append({"pii_masked": [plain[c] for c in masking["masked"]],
                        "pii_dropped": [plain[c] for c in masking["dropped"]], "features_read": part.features})
    provenance = {"feature_service": model.service_name, "version": model.version_label,
                  "schema_hash": contracts.service_schema_hash(model), "rows": len(frame),
                  "full_feature_names": full_feature_names, "builds": used, "caller": caller.describe(),
                  "pii_masked": masked, "pii_dropped": dropped}
    for (contract, _), read in zip(resolved, per_set, strict=True):
        governance.record_read(settings, env, contract, caller, "historical", {
            **provenance, **read, "feature_set": contract.name, "build_id": pins[contract.feature_view_name]})
    return frame, provenance
