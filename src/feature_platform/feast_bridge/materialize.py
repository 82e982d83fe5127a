"""Loading each online view's served build into the online store, and recording it in Feast's registry."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from feature_platform import build as builds
from feature_platform import registries
from feature_platform.contracts import FeatureSetContract
from feature_platform.environments import EnvironmentContract, Settings
from feature_platform.errors import (
    FeastError,
    OnlineStoreUnavailable,
)
from feature_platform.feast_bridge.apply import check_registry_matches, registry_lock
from feature_platform.feast_bridge.config import one_line, open_store
from feature_platform.feast_bridge.definitions import TAG_PREFIX
from feature_platform.locks import lease
from feature_platform.online.stores import online_store
from feature_platform.registries import registry
from feature_platform.store import ObjectStore

if TYPE_CHECKING:
    from feast import FeatureStore




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
    with lease(own_lease, settings.s3_endpoint_url, registries.LOCK_TIMEOUT, settings.lease_seconds()) as view_held:
        build_id = view.tags[TAG_PREFIX + "build_id"]

        def record_interval(start: datetime, end: datetime) -> None:
            """Feast's own materialize records the interval (for `feast materialize-incremental` and the UI)."""
            loaded.append((view, start, end))

        try:
            return materialization.load_view(settings, env, object_store, contract, build_id,
                                             incremental=incremental, progress=progress, store=store,
                                             view_lease=view_held, record_interval=record_interval,
                                             shard=shard, view_lease_for_finish=partial(
                                                 lease, view_lease, settings.s3_endpoint_url,
                                                 registries.LOCK_TIMEOUT, settings.lease_seconds()))
        except online_store(settings, env).unavailable_errors() as exc:
            raise OnlineStoreUnavailable(
                f"online store of {env.name} unreachable while materializing {contract.feature_view_name}: "
                f"{one_line(exc)}; check Redis is up and the address/password variables are right, then "
                "re-run (it is idempotent)") from exc


def _record_intervals(settings: Settings, env: EnvironmentContract, store: FeatureStore,
                      loaded: list[tuple[Any, datetime, datetime]]) -> None:
    """Record the loaded views' intervals in Feast's registry under the registry lease, held only for this write:
    the file registry is read afresh (its commit is conditional on the version read) and written once; the SQL
    registry writes each view's row."""
    if not loaded:
        return
    with registry_lock(settings, env) as registry_held:
        registry_held.check()
        try:
            if registry(settings, env).refresh_before_write:
                store.registry.refresh(store.project)
            for view, start, end in loaded:
                store.registry.apply_materialization(view, store.project, start, end, commit=False)
            registry_held.check()
            store.registry.commit()
        except Exception as exc:
            names = ", ".join(view.name for view, _, _ in loaded)
            raise FeastError(f"recording the materialized intervals of {names} failed: {one_line(exc)}") from exc
