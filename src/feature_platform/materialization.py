"""Loading one feature view's served build into the online store, exactly, and recording it.

The record ``<feature_set>/<version>/online.json`` says which build the online store holds for the view. Before
a load starts, the build being loaded is added to its ``pending_build_ids``; only a load that finished (writes
and deletions) clears them. So an interrupted load is finished by the next run (incremental included), and the
entities of every build that may have reached the store are considered when deleting departed ones.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from feature_platform import build as builds
from feature_platform.contracts import FeatureSetContract
from feature_platform.environments import EnvironmentContract, RedisConfig, Settings, SqliteConfig
from feature_platform.errors import ConfigError, FeastError, StoreError
from feature_platform.locks import Lease
from feature_platform.online import materialize as engine
from feature_platform.online.layout import ViewPlan, decode_timestamp_micros, entity_keys, plan_contract
from feature_platform.online.materialize import Shard
from feature_platform.online.redis_client import connect
from feature_platform.store import ObjectStore

ONLINE_MARKER = "online.json"
PRESENCE_SAMPLE = 64  # entities of a loaded build checked before an incremental run trusts the record


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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


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
    if shard and not isinstance(env.online_store, RedisConfig):
        raise ConfigError(f"--shard needs a Redis online store; {env.name} uses {env.online_store.type}: "
                          "materialize without --shard")
    online = online_target(settings, env, store, plan, shard)
    own_key = shard_marker_key(contract, shard) if shard else marker_key(contract)
    own = _read_json(object_store, own_key) if shard else marker
    loaded = own.get("build_id") == build_id and not own.get("pending_build_ids")
    written = deleted = 0
    # Trust the object-store record only when the online store says the same: its own record names this build
    # as completely loaded (a restored snapshot, a replaced file or an emptied store does not) and sampled
    # entities hold this build's event times.
    stored = online.recorded() or {}
    if incremental and loaded and stored == complete_record(build_id) and online.holds(object_store.fs, metadata):
        mode = "incremental"  # this immutable build is completely loaded and still there: nothing to write
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
        departed = engine.departed_keys(object_store.fs, metadata, [m for m in old if m], plan.join_key)
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
    if isinstance(env.online_store, RedisConfig):
        record_interval(start, end)
    view_lease.check()
    online.record(complete_record(build_id))
    object_store.write_json_atomic(marker_key(contract), record)
    return record


def _parse_record(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None  # damaged: treated as no record, so the next materialize reloads
    return record if isinstance(record, dict) else None


def load_records(settings: Settings, env: EnvironmentContract, project: str, client: Any = None
                 ) -> dict[str, dict[str, Any]]:
    """Every view's load record in the environment's online store, in one read (Redis: one HGETALL)."""
    if isinstance(env.online_store, RedisConfig):
        raw = (client or connect(settings, env)).hgetall(redis_record_key(project))
        records = {view.decode(): _parse_record(value) for view, value in raw.items()}
    else:
        records = _sqlite_records(settings.env_home(env) / env.online_store.path)
    return {view: record for view, record in records.items() if record is not None}


def _sqlite_records(path: Path, view: str | None = None) -> dict[str, dict[str, Any] | None]:
    if not path.exists():
        return {}
    where, args = ("WHERE view = ?", (view,)) if view else ("", ())
    try:
        with contextlib.closing(sqlite3.connect(path)) as con:
            rows = con.execute(f"SELECT view, record FROM {SQLITE_RECORD_TABLE} {where}", args).fetchall()
    except sqlite3.Error:
        return {}  # no table yet: nothing recorded
    return {name: _parse_record(record) for name, record in rows}


def online_target(settings: Settings, env: EnvironmentContract, store: Any, plan: ViewPlan,
                  shard: Shard | None = None) -> OnlineTarget:
    """The environment's online store for one view: the one place that chooses by backend."""
    if isinstance(env.online_store, RedisConfig):
        return RedisTarget(connect(settings, env), plan, shard)
    return SqliteTarget(settings, env, store, plan)


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


def _sample_newest(fs: Any, metadata: dict[str, Any], join_key: str, timestamp: str, count: int
                   ) -> tuple[list[Any], list[int]]:
    """Up to ``count`` entities spread evenly over the build, with each one's newest event time (epoch µs)."""
    with fs.open(str(metadata["data"]).removeprefix("s3://"), "rb") as handle:
        table = pq.read_table(handle, columns=[join_key, timestamp])
    newest = table.group_by(join_key).aggregate([(timestamp, "max")]).sort_by(join_key)
    if newest.num_rows == 0:
        return [], []
    step = max(newest.num_rows // count, 1)
    picked = newest.take(list(range(0, newest.num_rows, step))[:count])
    micros = picked.column(f"{timestamp}_max").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return picked.column(join_key).to_pylist(), micros.to_pylist()


LOADING, COMPLETE = "loading", "complete"


def complete_record(build_id: str) -> dict[str, str]:
    return {"build_id": build_id, "state": COMPLETE}


def load_unfinished(record: dict[str, Any] | None, served_build: str) -> bool:
    """Whether reads of a view must be flagged: the store records a load under way, or another build than the
    registry serves (a restored snapshot). No record at all (a store written by plain `feast materialize`)
    is not flagged; verify and `materialize --incremental` still refuse to trust it."""
    return record is not None and record != complete_record(served_build)


def redis_record_key(project: str) -> str:
    """The load records inside Redis itself, so a snapshot restore or a flush takes each record with the data it
    describes: one hash per project (a field per view, a JSON value), beside Feast's entity hashes and matching
    none of Feast's key patterns; a hash, so tools that walk every key as a hash keep working."""
    return f"feature_platform:online_load:{project}"


SQLITE_RECORD_TABLE = "feature_platform_online_load"


class OnlineTarget:
    """Where a view's rows go: write the newest rows, delete departed entities, check presence, and keep a
    record of which build the store holds (``{build_id, state: loading|complete}``) inside the store."""

    plan: ViewPlan

    def recorded(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def record(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def write(self, fs: Any, metadata: dict[str, Any], start: datetime, end: datetime,
              progress: Callable[[int], None]) -> int:
        raise NotImplementedError

    def delete(self, keys: Iterator[pa.Array]) -> int:
        raise NotImplementedError

    def holds(self, fs: Any, metadata: dict[str, Any]) -> bool:
        raise NotImplementedError


class RedisTarget(OnlineTarget):
    def __init__(self, client: Any, plan: ViewPlan, shard: Shard | None = None) -> None:
        self.client, self.plan, self.shard = client, plan, shard

    def recorded(self) -> dict[str, Any] | None:
        return _parse_record(self.client.hget(redis_record_key(self.plan.project), self.plan.view))

    def record(self, record: dict[str, Any]) -> None:
        self.client.hset(redis_record_key(self.plan.project), self.plan.view, json.dumps(record, sort_keys=True))

    def write(self, fs: Any, metadata: dict[str, Any], start: datetime, end: datetime,
              progress: Callable[[int], None]) -> int:
        rows = engine.only_shard(self.plan, self.shard, engine.newest_rows(fs, metadata, self.plan))
        return engine.write_view(self.client, self.plan, rows, progress)

    def delete(self, keys: Iterator[pa.Array]) -> int:
        return engine.delete_view_fields(self.client, self.plan, engine.only_shard_keys(self.plan, self.shard, keys))

    def holds(self, fs: Any, metadata: dict[str, Any]) -> bool:
        """Entities spread over the build are present with this build's newest event time: catches an emptied
        or replaced Redis, and one restored from an older snapshot (AOF/RDB) that holds older rows."""
        values, micros = _sample_newest(fs, metadata, self.plan.join_key, self.plan.timestamp_field,
                                        PRESENCE_SAMPLE * (self.shard.count if self.shard else 1))
        if self.shard:
            mine = self.shard.mask(self.plan.keys(values))
            values = [v for v, keep in zip(values, mine, strict=True) if keep]
            micros = [m for m, keep in zip(micros, mine, strict=True) if keep]
        pipe = self.client.pipeline(transaction=False)
        for key in self.plan.keys(values):
            pipe.hget(key, self.plan.ts_field)
        found = [decode_timestamp_micros(raw) for raw in pipe.execute()]
        return all(f is not None and f // 1_000_000 == m // 1_000_000 for f, m in zip(found, micros, strict=True))


class SqliteTarget(OnlineTarget):
    """Feast's SQLite store (``local``): Feast writes (fast enough for one machine), the platform deletes."""

    def __init__(self, settings: Settings, env: EnvironmentContract, store: Any, plan: ViewPlan) -> None:
        assert isinstance(env.online_store, SqliteConfig)
        self.path = settings.env_home(env) / env.online_store.path
        self.store, self.plan = store, plan
        self.table = f"{env.feast_project}_{plan.view}"

    def write(self, fs: Any, metadata: dict[str, Any], start: datetime, end: datetime,
              progress: Callable[[int], None]) -> int:
        from feature_platform.feast_modes import feast_writer

        try:
            # The table may be gone (a deleted or replaced store file): create it as `feast apply` would, so the
            # next materialize refills the store with no manual step.
            view = self.store.get_feature_view(self.plan.view)
            self.store.provider.online_store.update(config=self.store.config, tables_to_delete=[],
                                                    tables_to_keep=[view], entities_to_delete=[],
                                                    entities_to_keep=[], partial=True)
            # Feast prints progress: to stderr (stdout is for results), or nowhere when the caller is quiet.
            quiet = not getattr(progress, "enabled", True)
            with contextlib.redirect_stdout(io.StringIO() if quiet else sys.stderr), \
                    contextlib.redirect_stderr(io.StringIO() if quiet else sys.stderr), feast_writer():
                self.store.materialize(start_date=start, end_date=end, feature_views=[self.plan.view])
        except Exception as exc:
            raise FeastError(f"materialize of {self.plan.view} failed: {_one_line(exc)}") from exc
        count = int(metadata.get("entity_count") or 0)
        progress(count)
        return count

    def recorded(self) -> dict[str, Any] | None:
        return _sqlite_records(self.path, self.plan.view).get(self.plan.view)

    def record(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(self.path)) as con, con:
            con.execute(f"CREATE TABLE IF NOT EXISTS {SQLITE_RECORD_TABLE} (view TEXT PRIMARY KEY, record TEXT)")
            con.execute(f"INSERT OR REPLACE INTO {SQLITE_RECORD_TABLE} VALUES (?, ?)",
                        (self.plan.view, json.dumps(record, sort_keys=True)))

    def _keys(self, values: pa.Array | list[Any]) -> list[bytes]:
        return entity_keys(self.plan.join_key, self.plan.entity_dtype, values, project="")

    def delete(self, keys: Iterator[pa.Array]) -> int:
        deleted = 0
        with contextlib.closing(sqlite3.connect(self.path)) as con, con:
            con.execute("CREATE TEMP TABLE IF NOT EXISTS departed (k BLOB PRIMARY KEY)")
            for batch in keys:
                con.execute("DELETE FROM departed")
                con.executemany("INSERT OR IGNORE INTO departed VALUES (?)", [(k,) for k in self._keys(batch)])
                deleted += con.execute(f'SELECT count(DISTINCT entity_key) FROM "{self.table}" '
                                       "WHERE entity_key IN (SELECT k FROM departed)").fetchone()[0]
                con.execute(f'DELETE FROM "{self.table}" WHERE entity_key IN (SELECT k FROM departed)')
        return deleted

    def holds(self, fs: Any, metadata: dict[str, Any]) -> bool:
        """As on Redis: sampled entities are present with this build's newest event time, so a deleted, emptied
        or older (restored) store file is reloaded."""
        values, micros = _sample_newest(fs, metadata, self.plan.join_key, self.plan.timestamp_field,
                                        PRESENCE_SAMPLE)
        keys = self._keys(values)
        if not self.path.exists():
            return not keys
        try:
            with contextlib.closing(sqlite3.connect(self.path)) as con:
                rows = dict(con.execute(f'SELECT entity_key, max(event_ts) FROM "{self.table}" WHERE entity_key IN '
                                        f'({",".join("?" * len(keys))}) GROUP BY entity_key', keys).fetchall())
        except sqlite3.Error:
            return False
        for key, want in zip(keys, micros, strict=True):
            stored = rows.get(key)
            if stored is None:
                return False
            # Feast 0.67 stores epoch seconds (older releases naive UTC text); compare whole seconds.
            seconds = int(stored) if isinstance(stored, int | float) else int(
                datetime.fromisoformat(str(stored)).replace(tzinfo=UTC).timestamp())
            if seconds != want // 1_000_000:
                return False
        return True

    def count(self) -> int:
        with contextlib.closing(sqlite3.connect(self.path)) as con:
            return int(con.execute(f'SELECT count(DISTINCT entity_key) FROM "{self.table}"').fetchone()[0])
