"""Planned online reads from Feast's Redis layout: one pipelined HMGET per entity and view, decoded in bulk.

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

from feature_platform.online.layout import FeaturePlan, ViewPlan, decode_timestamp_micros, decode_value

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


def queue_reads(pipe: Any, plan: ViewPlan, features: Sequence[FeaturePlan], entity_values: Sequence[Any]
                ) -> tuple[list[int], int]:
    """Queue one HMGET per distinct entity on ``pipe``; returns (index of each entity's reply, replies queued)."""
    distinct: dict[Any, int] = {}
    order = []
    for value in entity_values:
        order.append(distinct.setdefault(value, len(distinct)))
    fields = [f.field for f in features] + [plan.ts_field]
    for key in plan.keys(list(distinct)):
        pipe.execute_command("HMGET", key, *fields)
    return order, len(distinct)


def decode_reads(plan: ViewPlan, features: Sequence[FeaturePlan], order: list[int], replies: Sequence[Any],
                 now: int, enforce_ttl: bool = True) -> ViewRead:
    """Turn the HMGET replies queued by :func:`queue_reads` into values, statuses and timestamps."""
    max_age = plan.ttl_seconds * 1_000_000 if enforce_ttl and plan.ttl_seconds > 0 else None
    decoded = []
    for reply in replies:
        stamp = decode_timestamp_micros(reply[-1])
        if stamp is None:
            decoded.append((None, [None] * len(features), [NOT_FOUND] * len(features)))
        elif max_age is not None and now - stamp > max_age:
            decoded.append((stamp, [None] * len(features), [OUTSIDE_MAX_AGE] * len(features)))
        else:
            values = [decode_value(raw) for raw in reply[:-1]]
            decoded.append((stamp, values, [PRESENT if v is not None else NULL_VALUE for v in values]))
    rows = [decoded[i] for i in order]
    return ViewRead(
        plan=plan, features=list(features),
        values=[[row[1][j] for row in rows] for j in range(len(features))],
        statuses=[[row[2][j] for row in rows] for j in range(len(features))],
        event_micros=[row[0] for row in rows],
    )


def read_view(client: Any, plan: ViewPlan, entity_values: Sequence[Any], features: Sequence[FeaturePlan] | None = None,
              enforce_ttl: bool = True, now: int | None = None) -> ViewRead:
    """Read one view for ``entity_values`` (already of the join key's type)."""
    features = list(features or plan.features)
    pipe = client.pipeline(transaction=False)
    order, _ = queue_reads(pipe, plan, features, entity_values)
    return decode_reads(plan, features, order, pipe.execute(), now or now_micros(), enforce_ttl)


def _glob_escape(data: bytes) -> bytes:
    out = bytearray()
    for byte in data:
        if byte in b"*?[]\\":
            out.append(0x5C)
        out.append(byte)
    return bytes(out)


def count_entities(client: Any, plan: ViewPlan, scan_count: int = 10_000) -> int:
    """How many entities hold this view online: keys of the view's join key and project whose hash has the
    view's ``_ts`` field (one SCAN of the database, HEXISTS pipelined)."""
    from feature_platform.online.layout import key_prefix

    pattern = _glob_escape(key_prefix(plan.join_key)) + b"*" + _glob_escape(plan.project.encode())
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
