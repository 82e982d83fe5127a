"""Loading one feature view's served build into the online store, exactly, and recording it.

The record ``<feature_set>/<version>/online.json`` says which build the online store holds for the view. Before
a load starts, the build being loaded is added to its ``pending_build_ids``; only a load that finished (writes
and deletions) clears them. So an interrupted load is finished by the next run (incremental included), and the
entities of every build that may have reached the store are considered when deleting departed ones.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from feature_platform import build as builds
from feature_platform.contracts import FeatureSetContract
from feature_platform.environments import EnvironmentContract, Settings
from feature_platform.errors import StoreError
from feature_platform.locks import Lease
from feature_platform.online import materialize as engine
from feature_platform.online.layout import plan_contract
from feature_platform.online.materialize import Shard
from feature_platform.online.stores import LOADING, complete_record, online_store
from feature_platform.store import ObjectStore

ONLINE_MARKER = "online.json"


def marker_key(contract: FeatureSetContract) -> str:
    return f"{builds.version_key(contract)}/{ONLINE_MARKER}"


def read_marker(object_store: ObjectStore, contract: FeatureSetContract) -> dict[str, Any]:
    try:
        return object_store.read_json(marker_key(contract))
    except FileNotFoundError:
        return {}


def event_range(metadata: dict[str, Any]) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(metadata["event_time_min"])
    return start, datetime.fromisoformat(metadata["event_time_max"]) + timedelta(seconds=1)  # Feast: end exclusive


class _Progress:
    """Entities written, rate and ETA on stderr (tqdm), or nothing."""

    def __init__(self, enabled: bool, total: int, name: str) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=name, unit=" entities", file=sys.stderr, mininterval=1.0,
                            leave=False, dynamic_ncols=True)

    @property
    def enabled(self) -> bool:
        return self.bar is not None

    def __call__(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def shard_marker_key(contract: FeatureSetContract, shard: Shard) -> str:
    return f"{builds.version_key(contract)}/online-shards/{shard.count}/{shard.index}.json"


def load_view(settings: Settings, env: EnvironmentContract, object_store: ObjectStore,
              contract: FeatureSetContract, build_id: str, *, incremental: bool, progress: bool, store: Any,
              view_lease: Lease, record_interval: Callable[[datetime, datetime], None],
              shard: Shard | None = None,
              view_lease_for_finish: Callable[[], AbstractContextManager[Lease]] | None = None) -> dict[str, Any]:
    """Make the online store hold exactly ``build_id``'s newest row per entity for this view (or, with
    ``shard``, for the entities of that shard; the view's record is written when every shard has finished).

    ``view_lease`` is checked before each record write (a writer that lost it stops); ``record_interval``
    records the loaded interval in Feast's registry (Redis: the platform's writer replaces Feast's)."""
    metadata = builds.read_metadata(object_store, contract, build_id)
    start, end = event_range(metadata)
    marker = read_marker(object_store, contract)
    plan = plan_contract(env.feast_project, contract)
    backend = online_store(settings, env)
    online = backend.target(plan, store, shard, keep_newer=contract.push)
    own_key = shard_marker_key(contract, shard) if shard else marker_key(contract)
    own = _read_json(object_store, own_key) if shard else marker
    loaded = own.get("build_id") == build_id and not own.get("pending_build_ids")
    written = deleted = 0
    # Trust the object-store record only when the online store says the same: its own record names this build
    # as completely loaded (a restored snapshot, a replaced file or an emptied store does not) and sampled
    # entities hold this build's event times.
    stored = online.recorded() or {}
    base = _partition_base(object_store, contract, own, stored, metadata) if incremental and not shard else None
    if incremental and loaded and stored == complete_record(build_id) and online.holds(object_store.fs, metadata):
        mode = "incremental"  # this immutable build is completely loaded and still there: nothing to write
    elif base is not None and online.holds(object_store.fs, base):
        # Incremental builds, from a completely loaded one: only the entities of the partitions that changed
        # (their newest rows written, those left with none deleted): the online cost follows the new data.
        mode = "partitions"
        view_lease.check()
        object_store.write_json_atomic(own_key, {**own, "pending_build_ids": sorted({base["build_id"], build_id})})
        online.record({"build_id": build_id, "state": LOADING})
        rows, gone = engine.changed_entities(object_store.fs, metadata, base, plan)
        bar = _Progress(progress, rows.num_rows, contract.feature_view_name)
        try:
            written = online.write(object_store.fs, metadata, start, end, bar, iter(rows.to_batches()))
        finally:
            bar.close()
        deleted = online.delete(iter(gone.to_batches()))
    else:
        mode = "full"
        previous = {b for m in (marker, own) for b in [m.get("build_id"), *m.get("pending_build_ids", [])] if b}
        previous |= {stored["build_id"]} if stored.get("build_id") and stored["build_id"] != build_id else set()
        pending = sorted({*own.get("pending_build_ids", []), build_id})
        view_lease.check()
        object_store.write_json_atomic(own_key, {**own, "pending_build_ids": pending})
        online.record({"build_id": build_id, "state": LOADING})
        total = int(metadata.get("entity_count") or 0) // (shard.count if shard else 1)
        bar = _Progress(progress, total, contract.feature_view_name + (f" shard {shard.label}" if shard else ""))
        try:
            written = online.write(object_store.fs, metadata, start, end, bar)
        finally:
            bar.close()
        old = [_metadata_if_kept(object_store, contract, b) for b in sorted(previous - {build_id})]
        departed = engine.departed_keys(object_store.fs, metadata, [m for m in old if m], plan.join_keys)
        deleted = online.delete(departed)
    record = {"feature_view": contract.feature_view_name, "build_id": build_id, "start": start.isoformat(),
              "end": end.isoformat(), "rows": metadata["row_count"], "entities": metadata.get("entity_count"),
              "written": written, "deleted": deleted, "mode": mode, "at": datetime.now(UTC).isoformat()}
    if shard:
        record["shard"] = shard.label
        view_lease.check()
        object_store.write_json_atomic(own_key, record)
        assert view_lease_for_finish is not None
        with view_lease_for_finish() as finishing:  # the last shard to finish records the view as loaded
            shards = [_read_json(object_store, shard_marker_key(contract, Shard(i, shard.count)))
                      for i in range(shard.count)]
            if all(m.get("build_id") == build_id and not m.get("pending_build_ids") for m in shards):
                record_interval(start, end)
                finishing.check()
                online.record(complete_record(build_id))
                object_store.write_json_atomic(marker_key(contract), {
                    **record, "shard": None, "shards": shard.count, "written": sum(m["written"] for m in shards),
                    "deleted": sum(m["deleted"] for m in shards),
                    "mode": "full" if any(m["mode"] == "full" for m in shards) else "incremental"})
        return record
    if backend.platform_writer or contract.push:  # Feast's own materialize records the interval itself
        record_interval(start, end)
    view_lease.check()
    online.record(complete_record(build_id))
    object_store.write_json_atomic(marker_key(contract), record)
    return record


def _partition_base(object_store: ObjectStore, contract: FeatureSetContract, own: dict[str, Any],
                    stored: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The incremental build the store holds completely, when ``metadata`` is one too (else None)."""
    held = own.get("build_id")
    if (not builds.is_manifest(metadata) or not held or held == metadata["build_id"] or own.get("pending_build_ids")
            or stored != complete_record(held)):
        return None
    base = _metadata_if_kept(object_store, contract, held)
    return base if base is not None and builds.is_manifest(base) else None


def _read_json(object_store: ObjectStore, key: str) -> dict[str, Any]:
    try:
        return object_store.read_json(key)
    except FileNotFoundError:
        return {}


def _metadata_if_kept(object_store: ObjectStore, contract: FeatureSetContract, build_id: str
                      ) -> dict[str, Any] | None:
    try:
        return builds.read_metadata(object_store, contract, build_id)
    except StoreError:
        return None  # deleted by gc: its entities cannot be listed (gc never deletes the recorded build)
