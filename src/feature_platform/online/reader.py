"""Planned online reads from Feast's Redis layout: one pipelined HMGET per entity key (the views of one entity
share its hash), decoded in bulk.

Statuses follow Feast's ``FieldStatus``: ``NOT_FOUND`` (no ``_ts:view`` field: the entity was never
materialized for this view, or it left the served build), ``NULL_VALUE``, ``PRESENT``, and ``OUTSIDE_MAX_AGE``
when the row is older than the view's TTL (Feast 0.67 does not enforce TTL online, feast issue 6821; the
platform does by default). A value that is not ``PRESENT`` is returned as null, and so is the event timestamp of
a ``NOT_FOUND`` entity.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feature_platform.online.layout import FeaturePlan, ViewPlan, decode_column, decode_timestamp_micros

PRESENT, NULL_VALUE, NOT_FOUND, OUTSIDE_MAX_AGE = "PRESENT", "NULL_VALUE", "NOT_FOUND", "OUTSIDE_MAX_AGE"


@dataclass
class ViewRead:
    """One view's answer for a list of entities (in request order, duplicates included)."""

    plan: ViewPlan
    features: list[FeaturePlan]
    values: list[list[Any]]          # per feature, per entity
    statuses: list[list[str]]        # per feature, per entity
    event_micros: list[int | None]   # per entity; None when NOT_FOUND


def now_micros() -> int:
    return time.time_ns() // 1000


def _bulk(item: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(item), item)


@dataclass
class Reads:
    """HMGETs for one view: one per distinct entity (duplicates are read once, as Feast does)."""

    order: list[int]      # for each requested entity, the index of its reply
    keys: list[bytes]
    fields: list[bytes]   # the requested features' fields, then the view's _ts field

    def packed(self) -> bytes:
        head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(self.fields))
        tail = b"".join(_bulk(name) for name in self.fields)
        return b"".join(head + _bulk(key) + tail for key in self.keys)


def plan_reads(plan: ViewPlan, features: Sequence[FeaturePlan], entity_ids: Sequence[Any]) -> Reads:
    """``entity_ids``: per requested row, the join key's value (a tuple of values for a composite key)."""
    distinct: dict[Any, int] = {}
    order = [distinct.setdefault(value, len(distinct)) for value in entity_ids]
    return Reads(order, plan.keys(plan.id_columns(list(distinct))), [f.field for f in features] + [plan.ts_field])


def fetch(client: Any, reads: Sequence[Reads]) -> list[Any]:
    """Every HMGET of ``reads`` in one round trip: one packed buffer on a single node; on a cluster, redis-py's
    cluster pipeline (commands grouped by the node that owns each key's slot)."""
    from feature_platform.online.redis_client import is_cluster

    total = sum(len(r.keys) for r in reads)
    if not total:
        return []
    if is_cluster(client):
        pipe = client.pipeline(transaction=False)
        for r in reads:
            for key in r.keys:
                pipe.execute_command("HMGET", key, *r.fields)
        return pipe.execute()
    return execute_packed(client, b"".join(r.packed() for r in reads), total)


def fetch_shared(client: Any, reads: Sequence[Reads]) -> list[list[Any]]:
    """Each ``Reads``' replies, in one round trip, with the reads of the same keys merged: views of one entity
    share Feast's hash, so a request over many views sends one HMGET per entity key, whatever their number."""
    groups: dict[tuple[bytes, ...], list[int]] = {}
    for index, read in enumerate(reads):
        groups.setdefault(tuple(read.keys), []).append(index)
    merged = [Reads(reads[members[0]].order, reads[members[0]].keys,
                    [name for i in members for name in reads[i].fields]) for members in groups.values()]
    replies = fetch(client, merged)
    out: list[list[Any]] = [[] for _ in reads]
    offset = 0
    for read, members in zip(merged, groups.values(), strict=True):
        chunk = replies[offset:offset + len(read.keys)]
        offset += len(read.keys)
        if len(members) == 1:
            out[members[0]] = chunk
            continue
        start = 0
        for i in members:
            width = len(reads[i].fields)
            out[i] = [reply[start:start + width] for reply in chunk]
            start += width
    return out


def execute_packed(client: Any, packed: bytes, replies: int) -> list[Any]:
    """Send pre-packed commands on one pooled connection and parse every reply with one hiredis reader (a
    per-reply Python parser was most of a read's cost). An error reply raises; a broken or timed-out
    connection is dropped, so the next request reconnects (the server recovers by itself)."""
    import hiredis
    import redis

    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command([packed], check_health=False)
        parser = hiredis.Reader(replyError=redis.exceptions.ResponseError)
        out: list[Any] = []
        sock = connection._sock
        while len(out) < replies:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise redis.exceptions.ConnectionError("Redis closed the connection")
            parser.feed(chunk)
            while (reply := parser.gets()) is not False:
                out.append(reply)
        for reply in out:
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply
        return out
    except (TimeoutError, OSError) as exc:
        connection.disconnect()
        raise redis.exceptions.ConnectionError(f"Redis read failed: {exc}") from exc
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


_stamps: dict[bytes | None, int | None] = {None: None}


def _stamp(raw: bytes | None) -> int | None:
    """Decoded ``_ts`` values, cached: entities of one build share few distinct event times."""
    try:
        return _stamps[raw]
    except KeyError:
        if len(_stamps) > 100_000:
            _stamps.clear()
            _stamps[None] = None
        value = _stamps[raw] = decode_timestamp_micros(raw)
        return value


def row_statuses(plan: ViewPlan, replies: Sequence[Any], now: int, enforce_ttl: bool = True
                 ) -> tuple[list[int | None], list[str]]:
    """Per reply: its event time (epoch µs; None when the view's row is absent) and its status before nulls:
    NOT_FOUND, OUTSIDE_MAX_AGE (older than the view's TTL) or PRESENT."""
    max_age = plan.ttl_seconds * 1_000_000 if enforce_ttl and plan.ttl_seconds > 0 else None
    stamps = [_stamp(reply[-1]) for reply in replies]
    return stamps, [NOT_FOUND if stamp is None else OUTSIDE_MAX_AGE if max_age is not None and now - stamp > max_age
                    else PRESENT for stamp in stamps]


def decode_reads(plan: ViewPlan, features: Sequence[FeaturePlan], order: list[int], replies: Sequence[Any],
                 now: int, enforce_ttl: bool = True) -> ViewRead:
    """Turn the HMGET replies of :func:`plan_reads` into values, statuses and timestamps (column by column)."""
    stamps, base = row_statuses(plan, replies, now, enforce_ttl)
    served = [i for i, status in enumerate(base) if status is PRESENT]
    everything = len(served) == len(replies)
    identity = order == list(range(len(replies)))
    values_out, statuses_out = [], []
    for j, feature in enumerate(features):
        decoded = decode_column(feature.dtype, [replies[i][j] for i in served])
        if everything:
            column = decoded
        else:
            column = [None] * len(replies)
            for i, value in zip(served, decoded, strict=True):
                column[i] = value
        statuses = [NULL_VALUE if status is PRESENT and value is None else status
                    for status, value in zip(base, column, strict=True)]
        if not identity:
            column = [column[i] for i in order]
            statuses = [statuses[i] for i in order]
        values_out.append(column)
        statuses_out.append(statuses)
    return ViewRead(plan=plan, features=list(features), values=values_out, statuses=statuses_out,
                    event_micros=stamps if identity else [stamps[i] for i in order])


def read_view(client: Any, plan: ViewPlan, entity_ids: Sequence[Any], features: Sequence[FeaturePlan] | None = None,
              enforce_ttl: bool = True, now: int | None = None) -> ViewRead:
    """Read one view for ``entity_ids`` (of the join key's type; tuples in join key order for a composite key)."""
    features = list(features or plan.features)
    reads = plan_reads(plan, features, entity_ids)
    return decode_reads(plan, features, reads.order, fetch(client, [reads]), now or now_micros(), enforce_ttl)


def _glob_escape(data: bytes) -> bytes:
    out = bytearray()
    for byte in data:
        if byte in b"*?[]\\":
            out.append(0x5C)
        out.append(byte)
    return bytes(out)


def count_entities(client: Any, plan: ViewPlan, scan_count: int = 10_000) -> int:
    """How many entities hold this view online: keys of the view's join keys and project whose hash has the
    view's ``_ts`` field (one SCAN of the database, HEXISTS pipelined)."""
    from feature_platform.online.layout import key_prefix

    pattern = _glob_escape(key_prefix(plan.join_keys)) + b"*" + _glob_escape(plan.project.encode())
    total = 0
    batch: list[bytes] = []

    def flush() -> int:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.hexists(key, plan.ts_field)
        found = sum(1 for present in pipe.execute() if present)
        batch.clear()
        return found

    for key in client.scan_iter(match=pattern, count=scan_count):
        batch.append(key)
        if len(batch) >= scan_count:
            total += flush()
    if batch:
        total += flush()
    return total
