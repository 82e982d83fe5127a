"""The environment's online store behind one small interface, chosen once by its type.

An :class:`OnlineStore` says how Feast reaches it (its ``feature_store.yaml`` section), reads a view's values,
counts a view's entities, keeps the store's own record of which build it holds for each view, and hands out an
:class:`OnlineTarget` per view that writes, deletes and checks a build's rows. Redis and Redis Cluster go through
the platform's vectorized engine (:mod:`feature_platform.online.materialize` and ``reader``); SQLite through
Feast's own writer and reader. Adding a backend is one config class and one class here, named in ``BACKENDS``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import sqlite3
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from feature_platform import feast_modes
from feature_platform.environments import Backend, EnvironmentContract, RedisConfig, Settings, SqliteConfig
from feature_platform.errors import ConfigError, FeastError
from feature_platform.online import materialize as engine
from feature_platform.online import reader
from feature_platform.online.layout import ViewPlan, composite_keys, decode_timestamp_micros
from feature_platform.online.materialize import Shard, framed
from feature_platform.online.redis_client import SOCKET_TIMEOUT_SECONDS, connect

PRESENCE_SAMPLE = 64  # entities of a loaded build checked before an incremental run trusts the record

# The store's own record of the build it holds per view: {build_id, state}.
LOADING, COMPLETE = "loading", "complete"
SQLITE_RECORD_TABLE = "feature_platform_online_load"


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


def _parse_record(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None  # damaged: treated as no record, so the next materialize reloads
    return record if isinstance(record, dict) else None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _sample_newest(fs: Any, metadata: dict[str, Any], plan: ViewPlan, count: int
                   ) -> tuple[list[list[Any]], list[int]]:
    """Up to ``count`` entities spread evenly over the build (one column per join key), with each one's newest
    event time (epoch µs)."""
    keys, timestamp = list(plan.join_keys), plan.timestamp_field
    import pyarrow.dataset as ds

    from feature_platform.build import data_paths

    table = ds.dataset(data_paths(metadata), format="parquet", filesystem=fs).to_table(columns=[*keys, timestamp])
    newest = table.group_by(keys).aggregate([(timestamp, "max")]).sort_by([(k, "ascending") for k in keys])
    if newest.num_rows == 0:
        return [[] for _ in keys], []
    step = max(newest.num_rows // count, 1)
    picked = newest.take(list(range(0, newest.num_rows, step))[:count])
    micros = picked.column(f"{timestamp}_max").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return [picked.column(k).to_pylist() for k in keys], micros.to_pylist()


class OnlineTarget(ABC):
    """Where one view's rows go: write the newest rows, delete departed entities, check presence, and keep a
    record of which build the store holds (``{build_id, state: loading|complete}``) inside the store."""

    plan: ViewPlan

    @abstractmethod
    def recorded(self) -> dict[str, Any] | None: ...

    @abstractmethod
    def record(self, record: dict[str, Any]) -> None: ...

    @abstractmethod
    def write(self, fs: Any, metadata: dict[str, Any], start: datetime, end: datetime,
              progress: Callable[[int], None], rows: Iterator[pa.RecordBatch] | None = None) -> int:
        """Write the build's newest row per entity (or ``rows``: some entities' newest rows of it)."""

    @abstractmethod
    def delete(self, keys: Iterator[pa.RecordBatch]) -> int: ...

    @abstractmethod
    def holds(self, fs: Any, metadata: dict[str, Any]) -> bool: ...


class OnlineStore(Backend):
    """One environment's online store."""

    name: str  # the contract's ``type``, for messages
    shardable = False  # whether one view can be loaded by several processes (--shard I/N)
    # Whether the platform writes the rows itself, so it records Feast's materialized interval; Feast's own
    # writer records it.
    platform_writer = False
    needs_feast_store = False  # whether its writes and reads go through an opened Feast store

    def __init__(self, settings: Settings, env: EnvironmentContract,
                 socket_timeout: float = SOCKET_TIMEOUT_SECONDS) -> None:
        super().__init__(settings, env)
        self.socket_timeout = socket_timeout  # for network stores: how long a call may wait

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for logs (variables by name, never secrets)."""

    @abstractmethod
    def target(self, plan: ViewPlan, feast_store: Any = None, shard: Shard | None = None,
               keep_newer: bool = False) -> OnlineTarget:
        """The store for one view's load. ``keep_newer`` (views that take pushes): a build row never replaces a
        newer stored row, and an entity that left the build keeps a row stored after the build's newest event."""

    @abstractmethod
    def records(self, project: str) -> dict[str, dict[str, Any]]:
        """Every view's load record, in one read."""

    @abstractmethod
    def count(self, plan: ViewPlan) -> int:
        """How many entities hold this view right now."""

    @abstractmethod
    def read(self, plan: ViewPlan, ids: Sequence[Any], enforce_ttl: bool, feast_store: Any) -> reader.ViewRead:
        """One view's values for entity ``ids`` (see ``ViewPlan.entity_ids``), with the platform's statuses
        and TTL rule."""

    @abstractmethod
    def push_rows(self, plan: ViewPlan, table: pa.Table, features: list[str], feast_store: Any,
                  replace_equal: bool = False) -> tuple[int, int]:
        """Write ``features`` of each row of ``table`` (one row per entity), unless the store holds a row at least
        as new for that entity (Feast's rule: a write must be strictly newer, in whole seconds; ``replace_equal``:
        as new is enough, for a build's corrections). Returns (written, skipped)."""

    def unavailable_errors(self) -> tuple[type[BaseException], ...]:
        """What the client raises when the store is down or unreachable."""
        return ()

    def redis_client(self) -> Any:
        """A client speaking Feast's Redis layout, for the server's pipelined reads; None: reads go through Feast."""
        return None


class RedisOnlineStore(OnlineStore):
    """Redis or Redis Cluster, in Feast's exact layout, read and written by the platform's engine."""

    name = "redis"
    shardable = True
    platform_writer = True

    def __init__(self, settings: Settings, env: EnvironmentContract,
                 socket_timeout: float = SOCKET_TIMEOUT_SECONDS) -> None:
        super().__init__(settings, env, socket_timeout)
        assert isinstance(env.online_store, RedisConfig)
        self.config: RedisConfig = env.online_store

    @property
    def client(self) -> Any:
        return connect(self.settings, self.env, socket_timeout=self.socket_timeout)

    def feast_config(self) -> dict[str, Any]:
        online = self.config
        # A cluster's seed list is the variable's comma-separated host:port entries; it has only database 0.
        connection = f"${{{online.address_env}}}" + ("" if online.cluster else f",db={online.db}")
        if online.password_env:
            connection += f",password=${{{online.password_env}}}"
        # skip_dedup: Feast's Redis store otherwise keeps a row unless the new one is strictly newer, so a
        # corrected or rolled-back build (same event timestamps) would never reach Redis. Each materialization
        # writes one row per entity from one build, and one DAG run per feature set at a time writes them.
        config: dict[str, Any] = {"type": feast_modes.ONLINE_STORES["redis"], "connection_string": connection,
                                  "skip_dedup": True}
        if online.cluster:
            config["redis_type"] = "redis_cluster"
        return config

    def describe(self) -> str:
        return f"Redis{' Cluster' if self.config.cluster else ''} at ${self.config.address_env}"

    def require(self) -> None:
        self.settings.require(self.config.address_env, "the Redis address host:port of the online store")
        if self.config.password_env:
            self.settings.require(self.config.password_env, "the Redis password (from the Secret, never from Git)")

    def target(self, plan: ViewPlan, feast_store: Any = None, shard: Shard | None = None,
               keep_newer: bool = False) -> OnlineTarget:
        return RedisTarget(self.client, plan, shard, keep_newer)

    def records(self, project: str) -> dict[str, dict[str, Any]]:
        raw = self.client.hgetall(redis_record_key(project))
        parsed = {view.decode(): _parse_record(value) for view, value in raw.items()}
        return {view: record for view, record in parsed.items() if record is not None}

    def count(self, plan: ViewPlan) -> int:
        return reader.count_entities(self.client, plan)

    def read(self, plan: ViewPlan, ids: Sequence[Any], enforce_ttl: bool, feast_store: Any) -> reader.ViewRead:
        return reader.read_view(self.client, plan, ids, enforce_ttl=enforce_ttl)

    def push_rows(self, plan: ViewPlan, table: pa.Table, features: list[str], feast_store: Any,
                  replace_equal: bool = False) -> tuple[int, int]:
        """One round trip: one script call (per hash slot on a cluster) comparing each entity's stored event
        time with the row's inside Redis and writing Feast's fields only when the row is newer (atomic per
        entity)."""
        wanted = tuple(f for f in plan.features if f.name in features)
        subset = plan if len(wanted) == len(plan.features) else dataclasses.replace(plan, features=wanted)
        batches = table.to_batches()
        batch = batches[0] if len(batches) == 1 else table.combine_chunks().to_batches()[0]
        keys, columns = engine.hset_commands(subset, batch)
        done = _compare_and_set(self.client, plan.ts_field, subset.fields, keys, columns, replace_equal)
        written = sum(done)
        return written, table.num_rows - written

    def unavailable_errors(self) -> tuple[type[BaseException], ...]:
        from feature_platform.online.redis_client import unavailable_errors

        return unavailable_errors()

    def redis_client(self) -> Any:
        return self.client


class SqliteOnlineStore(OnlineStore):
    """Feast's SQLite store (``local``): Feast writes and reads (fast enough for one machine), the platform
    deletes departed entities and keeps the load record in a table of the same file."""

    name = "sqlite"
    needs_feast_store = True

    def __init__(self, settings: Settings, env: EnvironmentContract,
                 socket_timeout: float = SOCKET_TIMEOUT_SECONDS) -> None:
        super().__init__(settings, env, socket_timeout)
        assert isinstance(env.online_store, SqliteConfig)
        self.path: Path = settings.env_home(env) / env.online_store.path

    def feast_config(self) -> dict[str, Any]:
        return {"type": feast_modes.ONLINE_STORES["sqlite"], "path": str(self.path)}

    def describe(self) -> str:
        return f"SQLite {self.path}"

    def prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def target(self, plan: ViewPlan, feast_store: Any = None, shard: Shard | None = None,
               keep_newer: bool = False) -> OnlineTarget:
        if shard:
            raise ConfigError(f"--shard needs a Redis online store; {self.env.name} uses {self.name}: "
                              "materialize without --shard")
        return SqliteTarget(self.path, f"{self.env.feast_project}_{plan.view}", feast_store, plan, keep_newer,
                            self)

    def records(self, project: str) -> dict[str, dict[str, Any]]:
        return {view: record for view, record in _sqlite_records(self.path).items() if record is not None}

    def count(self, plan: ViewPlan) -> int:
        try:
            return SqliteTarget(self.path, f"{self.env.feast_project}_{plan.view}", None, plan).count()
        except sqlite3.Error:
            return 0

    def read(self, plan: ViewPlan, ids: Sequence[Any], enforce_ttl: bool, feast_store: Any) -> reader.ViewRead:
        try:
            return _feast_view_read(feast_store, plan, ids, enforce_ttl)
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            # The store file was deleted or replaced: nothing is served (verify reports it; materialize refills).
            return not_found(plan, ids)


    def push_rows(self, plan: ViewPlan, table: pa.Table, features: list[str], feast_store: Any,
                  replace_equal: bool = False) -> tuple[int, int]:
        target = SqliteTarget(self.path, f"{self.env.feast_project}_{plan.view}", feast_store, plan)
        stored = target.stored_micros([table.column(k).to_pylist() for k in plan.join_keys])
        newer = _strictly_newer(table.column(plan.timestamp_field), stored, replace_equal)
        rows = table.filter(pa.array(newer))
        if rows.num_rows:
            self.feast_write(plan, rows, features, feast_store)
        return rows.num_rows, table.num_rows - rows.num_rows

    def feast_write(self, plan: ViewPlan, rows: pa.Table, features: list[str], feast_store: Any) -> None:
        """``rows`` (one per entity) through Feast's own writer, whatever the store holds."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
        from feast.type_map import python_values_to_proto_values

        key_columns = [python_values_to_proto_values(rows.column(k).to_pylist(),
                                                     _FEAST_VALUE_TYPES[dtype])
                       for k, dtype in zip(plan.join_keys, plan.key_dtypes, strict=True)]
        columns = {name: rows.column(name).to_pylist() for name in features}
        dtypes = {f.name: f.dtype for f in plan.features}
        protos = {name: python_values_to_proto_values(column, _FEAST_VALUE_TYPES[dtypes[name]])
                  for name, column in columns.items()}
        stamps = rows.column(plan.timestamp_field).to_pylist()
        data = [(EntityKeyProto(join_keys=list(plan.join_keys), entity_values=list(key)),
                 {name: protos[name][i] for name in features}, stamps[i], None)
                for i, key in enumerate(zip(*key_columns, strict=True))]
        view = feast_store.get_feature_view(plan.view)
        # Feast's own writer, as `feast materialize` and Feast's push write the store: byte for byte its layout.
        feast_store.provider.online_store.online_write_batch(feast_store.config, view, data, None)


# Compare-and-set of entities' rows inside Redis, Feast's rule: for each key, write its fields unless the stored
# event time is as new as the row's, in whole seconds (both are google.protobuf.Timestamps, the ts field); with
# eq = "1" only an older stored row is replaced (a build's correction at the same time). ARGV: ts field, eq, the
# number of fields n, the n field names (the ts field last), then per key its n values. Returns 1/0 per key.
# The HSET's arguments are spelled out for each field count (no table filled and unpacked per key: a fifth of
# the script's time).
_CAS_TEMPLATE = """
local tsf, eq, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local base = 3 + n
local function seconds(ts)
  -- A Timestamp's seconds: field 1, a varint (0 when absent). Ten bytes: before 1970, in two's complement,
  -- decoded from the inverted low 63 bits so that the value stays exact in Lua's doubles.
  if string.byte(ts, 1) ~= 8 then return 0 end
  local s, inv, scale, i = 0, 0, 1, 2
  while true do
    local b = string.byte(ts, i)
    if i < 11 then
      s = s + (b % 128) * scale
      inv = inv + (127 - b % 128) * scale
    end
    if b < 128 then break end
    scale, i = scale * 128, i + 1
  end
  if i >= 11 then return -(inv + 1) end
  return s
end
local out = {}
for k = 1, #KEYS do
  local off = base + (k - 1) * n
  local stored = redis.call('HGET', KEYS[k], tsf)
  local write = true
  if stored then
    local old, new = seconds(stored), seconds(ARGV[off + n])
    write = old < new or (old == new and eq == '1')
  end
  if write then
    redis.call('HSET', KEYS[k], FIELDS)
    out[k] = 1
  else
    out[k] = 0
  end
end
return out
"""


@functools.cache
def _cas_script(fields: int) -> tuple[str, bytes]:
    """The compare-and-set script for rows of ``fields`` fields, and its SHA1."""
    pairs = ", ".join(f"ARGV[{3 + j}], ARGV[off + {j}]" for j in range(1, fields + 1))
    script = _CAS_TEMPLATE.replace("FIELDS", pairs)
    return script, hashlib.sha1(script.encode()).hexdigest().encode()


def _compare_and_set(client: Any, ts_field: bytes, fields: list[bytes], keys: list[bytes],
                     columns: list[list[bytes]], replace_equal: bool) -> list[int]:
    """Whether each key was written. One script call for all keys on one Redis; on a cluster one per hash slot
    (a script's keys share a slot), pipelined per primary."""
    from feature_platform.online.redis_client import is_cluster

    script, sha = _cas_script(len(fields))
    head = [framed(item) for item in (ts_field, b"1" if replace_equal else b"0", b"%d" % len(fields), *fields)]

    def call(indexes: list[int] | None) -> bytes:
        """One EVALSHA in RESP, assembled by slice assignment (C speed): per key its values."""
        picked = [keys, *columns] if indexes is None else [
            [items[i] for i in indexes] for items in (keys, *columns)]
        count, stride = len(picked[0]), 2 * (len(picked) - 1)
        named: list[bytes] = [b""] * (2 * count)
        engine.put_bulk(named, 0, 2, picked[0])
        rows: list[bytes] = [b""] * (count * stride)
        for j, items in enumerate(picked[1:]):
            engine.put_bulk(rows, 2 * j, stride, items)
        parts = [b"*%d\r\n$7\r\nEVALSHA" % (3 + count + len(head) + len(rows) // 2), framed(sha),
                 framed(b"%d" % count), *named, *head]
        return engine.crlf_join(parts + rows)

    if not is_cluster(client):
        return list(_eval_on(client, script, [call(None)])[0])
    from redis.crc import key_slot
    from redis.exceptions import ResponseError

    by_node: dict[str, dict[int, list[int]]] = {}
    nodes: dict[str, Any] = {}
    for index, key in enumerate(keys):
        slot = key_slot(key)
        node = client.nodes_manager.get_node_from_slot(slot)
        by_node.setdefault(node.name, {}).setdefault(slot, []).append(index)
        nodes[node.name] = node
    done = [0] * len(keys)
    try:
        for name, slots in by_node.items():
            groups = list(slots.values())
            replies = _eval_on(client.get_redis_connection(nodes[name]), script, [call(g) for g in groups])
            for group, reply in zip(groups, replies, strict=True):
                for index, flag in zip(group, reply, strict=True):
                    done[index] = flag
    except ResponseError as exc:
        if not str(exc).startswith(("MOVED", "ASK")):
            raise
        # A slot moved (resharding): one call per key through the cluster client, which follows redirections.
        client.nodes_manager.initialize()
        client.script_load(script)
        plain = [ts_field, b"1" if replace_equal else b"0", b"%d" % len(fields), *fields]
        for index in range(len(keys)):
            args = [column[index] for column in columns]
            done[index] = client.evalsha(sha.decode(), 1, keys[index], *plain, *args)[0]
    return done


def _eval_on(client: Any, script: str, calls: list[bytes]) -> list[Any]:
    """On one node: the packed script calls sent at once; the script is loaded on first use."""
    from redis.exceptions import ResponseError

    from feature_platform.online.reader import execute_packed

    for attempt in (1, 2):
        try:
            return execute_packed(client, b"".join(calls), len(calls))
        except ResponseError as exc:
            if attempt == 2 or not str(exc).startswith("NOSCRIPT"):
                raise
            client.script_load(script)
    return []


def _strictly_newer(stamps: pa.ChunkedArray | pa.Array, stored: list[int | None], or_equal: bool = False
                    ) -> list[bool]:
    """Per row, whether its event time is after the stored one in whole seconds (Feast keeps whole seconds; with
    ``or_equal``, not before it), or nothing is stored."""
    micros = stamps.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
    if or_equal:
        return [old is None or new // 1_000_000 >= old // 1_000_000 for new, old in zip(micros, stored, strict=True)]
    return [old is None or new // 1_000_000 > old // 1_000_000 for new, old in zip(micros, stored, strict=True)]


_FEAST_VALUE_TYPES_BY_NAME = {"int32": "INT32", "int64": "INT64", "float32": "FLOAT", "float64": "DOUBLE",
                              "string": "STRING", "bool": "BOOL", "timestamp": "UNIX_TIMESTAMP"}


class _ValueTypes(dict[str, Any]):
    """Feast's ValueType per contract dtype, imported on first use (Feast is slow to import)."""

    def __missing__(self, dtype: str) -> Any:
        from feast.value_type import ValueType

        element = dtype[len("array<"):-1] if dtype.startswith("array<") else None
        self[dtype] = getattr(ValueType, _FEAST_VALUE_TYPES_BY_NAME[element] + "_LIST" if element
                              else _FEAST_VALUE_TYPES_BY_NAME[dtype])
        return self[dtype]


_FEAST_VALUE_TYPES = _ValueTypes()


# Each environment contract's online_store type and the class that serves it.
BACKENDS: dict[type, type[OnlineStore]] = {RedisConfig: RedisOnlineStore, SqliteConfig: SqliteOnlineStore}


def online_store(settings: Settings, env: EnvironmentContract,
                 socket_timeout: float = SOCKET_TIMEOUT_SECONDS) -> OnlineStore:
    """The environment's online store: the one place that chooses by backend."""
    return BACKENDS[type(env.online_store)](settings, env, socket_timeout)


def not_found(plan: ViewPlan, ids: Sequence[Any]) -> reader.ViewRead:
    return reader.ViewRead(plan=plan, features=list(plan.features),
                           values=[[None] * len(ids) for _ in plan.features],
                           statuses=[[reader.NOT_FOUND] * len(ids) for _ in plan.features],
                           event_micros=[None] * len(ids))


def _feast_view_read(store: Any, plan: ViewPlan, ids: Sequence[Any], enforce_ttl: bool) -> reader.ViewRead:
    """Feast's own online read with the platform's semantics: NOT_FOUND entities get a null timestamp, and the
    TTL is enforced."""
    from feast.type_map import feast_value_type_to_python_type

    refs = [f"{plan.view}:{f.name}" for f in plan.features]
    with contextlib.nullcontext() if enforce_ttl else feast_modes.ttl_not_enforced():
        columns = plan.id_columns(ids)
        rows = [dict(zip(plan.join_keys, values, strict=True)) for values in zip(*columns, strict=True)]
        response = store.get_online_features(features=refs, entity_rows=rows)
    by_name = dict(zip(response.proto.metadata.feature_names.val, response.proto.results, strict=True))
    results = [by_name[f.name] for f in plan.features]
    status_names = {0: "INVALID", 1: reader.PRESENT, 2: reader.NULL_VALUE, 3: reader.NOT_FOUND,
                    4: reader.OUTSIDE_MAX_AGE}
    now = reader.now_micros()
    max_age = plan.ttl_seconds * 1_000_000 if enforce_ttl and plan.ttl_seconds > 0 else None
    stamps: list[int | None] = []
    for i in range(len(ids)):
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


class RedisTarget(OnlineTarget):
    def __init__(self, client: Any, plan: ViewPlan, shard: Shard | None = None, keep_newer: bool = False) -> None:
        self.client, self.plan, self.shard, self.keep_newer = client, plan, shard, keep_newer
        self.build_newest: int | None = None  # epoch µs of the loaded build's newest event (keep_newer)

    def _stored(self, keys: list[bytes]) -> list[int | None]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, self.plan.ts_field)
        return [decode_timestamp_micros(raw) for raw in pipe.execute()]

    def _not_superseded(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Each batch without the rows older than what the store holds for their entity (a pushed row)."""
        for batch in batches:
            stored = self._stored(self.plan.keys_of(batch))
            micros = batch.column(self.plan.timestamp_field).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
            keep = [old is None or old // 1_000_000 <= new // 1_000_000
                    for new, old in zip(micros.to_pylist(), stored, strict=True)]
            yield batch.filter(pa.array(keep))

    def recorded(self) -> dict[str, Any] | None:
        return _parse_record(self.client.hget(redis_record_key(self.plan.project), self.plan.view))

    def record(self, record: dict[str, Any]) -> None:
        self.client.hset(redis_record_key(self.plan.project), self.plan.view, json.dumps(record, sort_keys=True))

    def write(self, fs: Any, metadata: dict[str, Any], start: datetime, end: datetime,
              progress: Callable[[int], None], rows: Iterator[pa.RecordBatch] | None = None) -> int:
        rows = engine.only_shard(self.plan, self.shard, rows if rows is not None
                                 else engine.newest_rows(fs, metadata, self.plan))
        if self.keep_newer:
            rows = self._not_superseded(rows)
            self.build_newest = _micros(metadata["event_time_max"])
        return engine.write_view(self.client, self.plan, rows, progress)

    def delete(self, keys: Iterator[pa.RecordBatch]) -> int:
        keys = engine.only_shard(self.plan, self.shard, keys)
        if self.keep_newer and self.build_newest is not None:
            keys = self._pushed_kept(keys, self.build_newest)
        return engine.delete_view_fields(self.client, self.plan, keys)

    def _pushed_kept(self, keys: Iterator[pa.RecordBatch], newest: int) -> Iterator[pa.RecordBatch]:
        """Departed entities without those whose stored row is newer than the build (pushed since)."""
        for batch in keys:
            stored = self._stored(self.plan.keys_of(batch))
            yield batch.filter(pa.array([old is None or old // 1_000_000 <= newest // 1_000_000 for old in stored]))

    def holds(self, fs: Any, metadata: dict[str, Any]) -> bool:
        """Entities spread over the build are present with this build's newest event time: catches an emptied
        or replaced Redis, and one restored from an older snapshot (AOF/RDB) that holds older rows."""
        columns, micros = _sample_newest(fs, metadata, self.plan,
                                         PRESENCE_SAMPLE * (self.shard.count if self.shard else 1))
        keys = self.plan.keys(columns)
        if self.shard:
            mine = self.shard.mask(keys)
            keys = [k for k, keep in zip(keys, mine, strict=True) if keep]
            micros = [m for m, keep in zip(micros, mine, strict=True) if keep]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, self.plan.ts_field)
        found = [decode_timestamp_micros(raw) for raw in pipe.execute()]
        return all(f is not None and f // 1_000_000 == m // 1_000_000 for f, m in zip(found, micros, strict=True))


def _micros(iso: str) -> int:
    stamp = datetime.fromisoformat(iso)
    return int((stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp() * 1_000_000)


def _sqlite_seconds(stored: Any) -> int:
    """Feast 0.67 stores epoch seconds (older releases naive UTC text); whole seconds either way."""
    if isinstance(stored, int | float):
        return int(stored)
    return int(datetime.fromisoformat(str(stored)).replace(tzinfo=UTC).timestamp())


class SqliteTarget(OnlineTarget):
    """Feast writes the rows (through its provider, as `feast materialize` would); the platform deletes."""

    def __init__(self, path: Path, table: str, store: Any, plan: ViewPlan, keep_newer: bool = False,
                 backend: SqliteOnlineStore | None = None) -> None:
        self.path, self.table, self.store, self.plan = path, table, store, plan
        self.keep_newer, self.backend = keep_newer, backend
        self.build_newest: int | None = None

    def write(self, fs: Any, metadata: dict[str, Any], start: datetime, end: datetime,
              progress: Callable[[int], None], rows: Iterator[pa.RecordBatch] | None = None) -> int:
        try:
            # The table may be gone (a deleted or replaced store file): create it as `feast apply` would, so the
            # next materialize refills the store with no manual step.
            view = self.store.get_feature_view(self.plan.view)
            self.store.provider.online_store.update(config=self.store.config, tables_to_delete=[],
                                                    tables_to_keep=[view], entities_to_delete=[],
                                                    entities_to_keep=[], partial=True)
            # An incremental build (Feast cannot read its partitions) or some entities' rows: the platform reads.
            platform_rows = isinstance(metadata["data"], list) or rows is not None
            if (self.keep_newer or platform_rows) and self.backend is not None:
                # Feast's writer fed the build's newest rows by the platform, in batches; for a view that takes
                # pushes, leaving newer (pushed) rows in place.
                self.build_newest = _micros(metadata["event_time_max"]) if self.keep_newer else None
                written = 0
                features = [f.name for f in self.plan.features]
                for batch in rows if rows is not None else engine.newest_rows(fs, metadata, self.plan):
                    table = pa.Table.from_batches([batch])
                    if self.keep_newer:
                        done, _ = self.backend.push_rows(self.plan, table, features, self.store, replace_equal=True)
                    else:
                        self.backend.feast_write(self.plan, table, features, self.store)
                        done = table.num_rows
                    written += done
                    progress(batch.num_rows)
                return written
            # Feast prints progress: to stderr (stdout is for results), or nowhere when the caller is quiet.
            quiet = not getattr(progress, "enabled", True)
            with contextlib.redirect_stdout(io.StringIO() if quiet else sys.stderr), \
                    contextlib.redirect_stderr(io.StringIO() if quiet else sys.stderr), feast_modes.feast_writer():
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

    def _keys(self, columns: Sequence[Any]) -> list[bytes]:
        """Feast's SQLite rows are keyed by the serialized entity key without a project."""
        return composite_keys(self.plan.join_keys, self.plan.key_dtypes, columns, project="")

    def delete(self, keys: Iterator[pa.RecordBatch]) -> int:
        if self.keep_newer and self.build_newest is not None:
            newest = self.build_newest // 1_000_000
            keys = (batch.filter(pa.array([old is None or old // 1_000_000 <= newest
                                           for old in self.stored_micros(batch.columns)])) for batch in keys)
        deleted = 0
        with contextlib.closing(sqlite3.connect(self.path)) as con, con:
            con.execute("CREATE TEMP TABLE IF NOT EXISTS departed (k BLOB PRIMARY KEY)")
            for batch in keys:
                con.execute("DELETE FROM departed")
                con.executemany("INSERT OR IGNORE INTO departed VALUES (?)",
                                [(k,) for k in self._keys(batch.columns)])
                deleted += con.execute(f'SELECT count(DISTINCT entity_key) FROM "{self.table}" '
                                       "WHERE entity_key IN (SELECT k FROM departed)").fetchone()[0]
                con.execute(f'DELETE FROM "{self.table}" WHERE entity_key IN (SELECT k FROM departed)')
        return deleted

    def holds(self, fs: Any, metadata: dict[str, Any]) -> bool:
        """As on Redis: sampled entities are present with this build's newest event time, so a deleted, emptied
        or older (restored) store file is reloaded."""
        columns, micros = _sample_newest(fs, metadata, self.plan, PRESENCE_SAMPLE)
        keys = self._keys(columns)
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
            if _sqlite_seconds(stored) != want // 1_000_000:
                return False
        return True

    def stored_micros(self, columns: Sequence[Any]) -> list[int | None]:
        """Each entity's stored event time (epoch µs, whole seconds), or None; one column per join key."""
        keys = self._keys(columns)
        if not keys or not self.path.exists():
            return [None] * len(keys)
        try:
            with contextlib.closing(sqlite3.connect(self.path)) as con:
                rows = dict(con.execute(f'SELECT entity_key, max(event_ts) FROM "{self.table}" WHERE entity_key IN '
                                        f'({",".join("?" * len(keys))}) GROUP BY entity_key', keys).fetchall())
        except sqlite3.Error:
            return [None] * len(keys)
        return [None if (stored := rows.get(key)) is None else _sqlite_seconds(stored) * 1_000_000 for key in keys]

    def count(self) -> int:
        with contextlib.closing(sqlite3.connect(self.path)) as con:
            return int(con.execute(f'SELECT count(DISTINCT entity_key) FROM "{self.table}"').fetchone()[0])
