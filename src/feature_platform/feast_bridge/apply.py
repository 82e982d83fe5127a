"""Registering the contracts' Feast objects (apply), Feast's plan of them, and checking the registry matches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from feature_platform.contracts import ContractSet, FeatureSetContract
from feature_platform.environments import EnvironmentContract, Settings
from feature_platform.errors import (
    FeastError,
    RegistryMismatchError,
)
from feature_platform.feast_bridge.config import one_line, open_store
from feature_platform.feast_bridge.definitions import DEFINITION_TAG, TAG_PREFIX, Definitions, definitions
from feature_platform.locks import Lease
from feature_platform.registries import registry

if TYPE_CHECKING:
    from feast import FeatureStore




@contextmanager
def registry_lock(settings: Settings, env: EnvironmentContract) -> Iterator[Lease]:
    """The registry writers' lease; call ``.check()`` right before each registry write (fencing)."""
    with registry(settings, env).lock() as held:
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
        raise FeastError(f"cannot read the Feast registry: {one_line(exc)}") from exc


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
    with registry_lock(settings, env) as held:
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
                raise FeastError(f"feast apply failed for {env.name}: {one_line(exc)}; the audit trail holds it "
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
        raise FeastError(f"recording the online store's tables in the registry failed: {one_line(exc)}") from exc


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
        raise FeastError(f"feast plan failed for {env.name}: {one_line(exc)}") from exc
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
