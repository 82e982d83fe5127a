"""The platform's materialization engine: a build -> Feast's Redis layout, streamed, in bulk.

Per feature view it (1) streams the build's newest row per entity in record batches (builds are sorted by
entity and event time, so the newest row is the last of each run of equal keys; older unsorted builds go
through DuckDB in bounded memory), (2) encodes every column at once with :mod:`layout` and sends pipelined
HSETs, and (3) removes this view's fields from the hashes of entities that are no longer in the served build
(a rebuild without them, a correction, a rollback), leaving other views' fields in shared hashes alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from feature_platform.online.layout import ViewPlan, encode_event_timestamps, encode_values

BATCH_ROWS = 20_000  # rows read and entities written per pipeline: bounds memory, amortizes round trips
DELETE_BATCH = 10_000

Progress = Callable[[int], None]  # called with the number of entities just written


@dataclass
class ViewLoad:
    entities: int = 0
    deleted: int = 0


def _sorted_batches(fs: Any, path: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    # Streamed through a small buffer: Parquet's pre-buffering keeps the column chunks it read, so a build of
    # 1M embeddings (3 GB) held most of them at once; this way memory stays at about two row groups.
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle, pre_buffer=False, buffer_size=1 << 20)
        yield from _read_ahead(parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns))


def _read_ahead(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The next batch decoded by a thread while this one is encoded and written (Parquet decoding and socket
    writes release the GIL): reading overlaps writing, at most two batches in memory."""
    import queue
    import threading

    ready: queue.Queue[Any] = queue.Queue(maxsize=1)
    done = object()
    stop = threading.Event()

    def offer(item: Any) -> bool:
        """Hand ``item`` over unless the consumer has stopped."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for batch in batches:
                if not offer(batch):
                    return
            offer(done)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(exc)

    reader = threading.Thread(target=read, name="materialize-read-ahead", daemon=True)
    reader.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            ready.get_nowait()  # unblock a reader waiting to put
        reader.join()


def _row_key(batch: pa.RecordBatch, join_keys: Sequence[str], row: int) -> tuple[Any, ...]:
    return tuple(batch.column(k)[row].as_py() for k in join_keys)


def newest_per_entity(batches: Iterator[pa.RecordBatch], join_keys: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """Newest row of each entity from batches sorted by (entity key columns, event time): the last row of each
    key run (a run ends where any join key changes).

    The last row of a batch is held back until the next batch shows whether its run continues. Where every
    row is its entity's newest (one row per entity), the batch is passed on as a slice: no copy.
    """
    carry: pa.RecordBatch | None = None
    for batch in batches:
        rows = batch.num_rows
        if rows == 0:
            continue
        if carry is not None and _row_key(carry, join_keys, 0) != _row_key(batch, join_keys, 0):
            yield carry  # its run ended with the previous batch
        last = np.zeros(rows, dtype=bool)
        for key in join_keys if rows > 1 else ():
            keys = batch.column(key)
            last[:-1] |= pc.not_equal(keys.slice(0, rows - 1), keys.slice(1)).to_numpy(zero_copy_only=False)
        carry = batch.slice(rows - 1, 1)
        if last[:-1].all():
            if rows > 1:
                yield batch.slice(0, rows - 1)
        elif last.any():
            yield batch.filter(pa.array(last))
    if carry is not None:
        yield carry


def _newest_unsorted(fs: Any, path: str | list[str], join_keys: Sequence[str], timestamp_field: str, columns: list[str]
                     ) -> Iterator[pa.RecordBatch]:
    """Builds written before builds were sorted: DuckDB picks the newest row per entity, spilling to disk."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET memory_limit = '1GB'")
    con.register("build", ds.dataset(path, format="parquet", filesystem=fs))
    selected = ", ".join(f'"{c}"' for c in columns)
    partition = ", ".join(f'"{k}"' for k in join_keys)
    reader = con.sql(f'SELECT {selected} FROM build QUALIFY row_number() OVER (PARTITION BY {partition} '
                     f'ORDER BY "{timestamp_field}" DESC) = 1').to_arrow_reader(BATCH_ROWS)
    try:
        yield from reader
    finally:
        con.close()


def newest_rows(fs: Any, metadata: dict[str, Any], plan: ViewPlan) -> Iterator[pa.RecordBatch]:
    """The newest row of every entity of one build, in batches of at most ``BATCH_ROWS``."""
    from feature_platform.build import data_paths

    paths = data_paths(metadata)
    columns = [*plan.join_keys, plan.timestamp_field, *(f.name for f in plan.features)]
    if metadata.get("sorted_by") == [*plan.join_keys, plan.timestamp_field] and len(paths) == 1:
        return newest_per_entity(_sorted_batches(fs, paths[0], columns), plan.join_keys)
    # An incremental build's partitions (sorted within each) or an old unsorted build.
    return _newest_unsorted(fs, paths, plan.join_keys, plan.timestamp_field, columns)


SLOTS = 16384  # Redis Cluster hash slots


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the entities whose Redis key falls in the ``index``-th of ``count`` equal
    ranges of Redis Cluster hash slots. Contiguous slot ranges: on a cluster, a shard writes to few nodes."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` with 0 <= I < N."""
        index, _, count = text.partition("/")
        if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
            raise ValueError(f"shard {text!r}: give I/N with 0 <= I < N, e.g. 0/4")
        return cls(int(index), int(count))

    @property
    def label(self) -> str:
        return f"{self.index}-of-{self.count}"

    def mask(self, keys: list[bytes]) -> np.ndarray:
        from redis.crc import key_slot

        slots = np.fromiter((key_slot(key) for key in keys), dtype=np.int64, count=len(keys))
        return (slots * self.count // SLOTS) == self.index


def only_shard(plan: ViewPlan, shard: Shard | None, batches: Iterator[pa.RecordBatch]
               ) -> Iterator[pa.RecordBatch]:
    """The rows of ``batches`` (holding the join key columns) whose entity belongs to ``shard`` (all of them
    without one)."""
    for batch in batches:
        if shard is None:
            yield batch
            continue
        kept = batch.filter(pa.array(shard.mask(plan.keys_of(batch))))
        if kept.num_rows:
            yield kept


def hset_commands(plan: ViewPlan, batch: pa.RecordBatch) -> tuple[list[bytes], list[list[bytes]]]:
    """The keys and, per field of ``plan.fields``, the value of each key: exactly what Feast's writer HSETs."""
    keys = plan.keys_of(batch)
    columns = [encode_values(f.dtype, batch.column(f.name)) for f in plan.features]
    columns.append(encode_event_timestamps(batch.column(plan.timestamp_field)))
    return keys, columns


class _LengthHeads(dict[int, bytes]):
    """``$<n>``, the head of a RESP bulk string of n bytes, made once per length."""

    def __missing__(self, length: int) -> bytes:
        self[length] = b"$%d" % length
        return self[length]


_HEADS = _LengthHeads()


def put_bulk(parts: list[bytes], start: int, stride: int, items: list[bytes]) -> None:
    """Place ``items`` as RESP bulk strings in every ``stride``-th pair of ``parts`` from ``start`` (head, then
    data), by slice assignment: C speed, where formatting each item was most of a write's Python time. The
    parts are joined with CRLF (:func:`crlf_join`), which ends each head and each data."""
    parts[start::stride] = map(_HEADS.__getitem__, map(len, items))
    parts[start + 1::stride] = items


def crlf_join(parts: list[bytes]) -> bytes:
    """RESP from parts that each end with CRLF: raw heads (``*3\\r\\n$5\\r\\nHMGET``), ``$<n>``, data."""
    return b"\r\n".join(parts) + b"\r\n"


def framed(item: bytes) -> bytes:
    """A constant bulk string as one part for :func:`crlf_join` (its closing CRLF comes from the join)."""
    return b"$%d\r\n%b" % (len(item), item)


def pack_hsets(fields: list[bytes], keys: list[bytes], columns: list[list[bytes]]) -> bytes:
    """One buffer of ``HSET key field value ...`` commands in RESP, assembled with slice assignment (C speed)
    instead of per-command packing: this is where redis-py's pipeline spent most of a materialization."""
    count = len(keys)
    stride = 3 + 3 * len(fields)  # command head, key (head, data), then per field: name, value (head, data)
    parts: list[bytes] = [b""] * (count * stride)
    parts[0::stride] = [b"*%d\r\n$4\r\nHSET" % (2 + 2 * len(fields))] * count
    put_bulk(parts, 1, stride, keys)
    for j, (name, column) in enumerate(zip(fields, columns, strict=True)):
        parts[3 + 3 * j::stride] = [framed(name)] * count
        put_bulk(parts, 4 + 3 * j, stride, column)
    return crlf_join(parts)


def write_view(client: Any, plan: ViewPlan, batches: Iterator[pa.RecordBatch], progress: Progress) -> int:
    """Pipelined HSET of every entity's newest row; returns the number of entities written."""
    from feature_platform.online.reader import execute_packed
    from feature_platform.online.redis_client import is_cluster

    written = 0
    fields = plan.fields
    cluster = is_cluster(client)
    for batch in batches:
        keys, columns = hset_commands(plan, batch)
        if cluster:
            _write_cluster(client, fields, keys, columns)
        else:
            execute_packed(client, pack_hsets(fields, keys, columns), len(keys))
        written += batch.num_rows
        progress(batch.num_rows)
    return written


def _write_cluster(client: Any, fields: list[bytes], keys: list[bytes], columns: list[list[bytes]]) -> None:
    """Per master: the keys whose slot it owns, packed as RESP and sent on one connection (the single-node
    path, once per node). A slot that moved meanwhile (MOVED/ASK during resharding): redis-py's cluster
    pipeline, which follows redirections, writes the batch instead."""
    from redis.crc import key_slot
    from redis.exceptions import ResponseError

    from feature_platform.online.reader import execute_packed

    by_node: dict[str, list[int]] = {}
    nodes: dict[str, Any] = {}
    for index, key in enumerate(keys):
        node = client.nodes_manager.get_node_from_slot(key_slot(key))
        by_node.setdefault(node.name, []).append(index)
        nodes[node.name] = node
    try:
        for name, indexes in by_node.items():
            connection = client.get_redis_connection(nodes[name])
            subset = [keys[i] for i in indexes]
            execute_packed(connection, pack_hsets(fields, subset, [[column[i] for i in indexes] for column in columns]),
                           len(subset))
    except ResponseError as exc:
        if not str(exc).startswith(("MOVED", "ASK")):
            raise
        client.nodes_manager.initialize()  # learn the new slot owners
        pipe = client.pipeline(transaction=False)
        for index, key in enumerate(keys):
            pipe.hset(key, mapping=dict(zip(fields, (column[index] for column in columns), strict=True)))
        pipe.execute()


def departed_keys(fs: Any, new_metadata: dict[str, Any], old_metadatas: list[dict[str, Any]],
                  join_keys: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """Entity keys present in any of the old builds but not in the new one, in batches of the join key columns
    (DuckDB anti-join over every key column)."""
    import duckdb

    from feature_platform.build import data_paths

    old = [m for m in old_metadatas if m["build_id"] != new_metadata["build_id"]]
    if not old:
        return
    con = duckdb.connect()
    con.execute("SET memory_limit = '1GB'")
    try:
        con.register("new_build", ds.dataset(data_paths(new_metadata), format="parquet", filesystem=fs))
        con.register("old_builds", ds.dataset(sorted({p for m in old for p in data_paths(m)}), format="parquet",
                                              filesystem=fs))
        keys = ", ".join(f'"{k}"' for k in join_keys)
        reader = con.sql(f"SELECT DISTINCT {keys} FROM old_builds EXCEPT SELECT DISTINCT {keys} FROM new_build "
                         f"ORDER BY {keys}").to_arrow_reader(DELETE_BATCH)
        yield from reader
    finally:
        con.close()


def changed_entities(fs: Any, new: dict[str, Any], old: dict[str, Any], plan: ViewPlan
                     ) -> tuple[pa.Table, pa.Table]:
    """Between two incremental builds (manifests): the entities of the partitions one has and the other not,
    as (their newest rows in ``new``, those of them ``new`` no longer has). What a load from ``old`` to ``new``
    must write and delete; the rest of the store already holds ``new``'s rows."""
    import duckdb

    keys_new = {p["key"]: p["file"] for p in new["partitions"]}
    keys_old = {p["key"]: p["file"] for p in old["partitions"]}
    changed = [f for k, f in {**keys_new, **keys_old}.items() if (k in keys_new) != (k in keys_old)]
    columns = [*plan.join_keys, plan.timestamp_field, *(f.name for f in plan.features)]
    listed = ", ".join(f'"{c}"' for c in plan.join_keys)
    if not changed:
        empty = pa.table({c: [] for c in columns})
        return empty, empty.select(list(plan.join_keys))
    con = duckdb.connect()
    con.execute("SET memory_limit = '1GB'")
    try:
        con.register("changed", ds.dataset([f.removeprefix("s3://") for f in changed], format="parquet",
                                           filesystem=fs))
        con.register("build", ds.dataset([f.removeprefix("s3://") for f in keys_new.values()], format="parquet",
                                         filesystem=fs))
        con.execute(f"CREATE TEMP TABLE candidates AS SELECT DISTINCT {listed} FROM changed")
        selected = ", ".join(f'"{c}"' for c in columns)
        rows = con.sql(f"SELECT {selected} FROM (SELECT * FROM build SEMI JOIN candidates USING ({listed})) "
                       f'QUALIFY row_number() OVER (PARTITION BY {listed} ORDER BY "{plan.timestamp_field}" DESC) = 1'
                       ).to_arrow_table()
        con.register("written", rows)
        gone = con.sql(f"SELECT {listed} FROM candidates EXCEPT SELECT {listed} FROM written ORDER BY {listed}"
                       ).to_arrow_table()
    finally:
        con.close()
    return rows, gone


def delete_view_fields(client: Any, plan: ViewPlan, keys: Iterator[pa.RecordBatch]) -> int:
    """Remove this view's fields from each key's hash (Redis drops a hash when its last field goes), so other
    views sharing the hash keep theirs. Returns how many entities held this view."""
    removed = 0
    fields = plan.fields
    ts_field = plan.ts_field
    for batch in keys:
        pipe = client.pipeline(transaction=False)
        for key in plan.keys_of(batch):
            pipe.hexists(key, ts_field)
            pipe.hdel(key, *fields)
        replies = pipe.execute()
        removed += sum(1 for present in replies[0::2] if present)
    return removed
