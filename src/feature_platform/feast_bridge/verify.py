"""Offline/online consistency of each online view: sampled values, exactness, freshness, the load record."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from feature_platform import build as builds
from feature_platform.environments import EnvironmentContract, Settings
from feature_platform.feast_bridge.apply import check_registry_matches
from feature_platform.feast_bridge.config import open_store
from feature_platform.feast_bridge.definitions import TAG_PREFIX
from feature_platform.feast_bridge.online_reads import online_entity_count, online_record, rows_of, view_read
from feature_platform.materialization import read_marker
from feature_platform.online.layout import plan_contract
from feature_platform.online.stores import complete_record
from feature_platform.store import ObjectStore

if TYPE_CHECKING:
    pass


def _pushed_since(build_time: Any, online_time: Any) -> bool:
    built, served = _as_utc(build_time), _as_utc(online_time)
    return built is not None and served is not None and int(served.timestamp()) > int(built.timestamp())


def values_close(a: Any, b: Any, dtype: str) -> bool:
    if dtype.startswith("array<") and a is not None and b is not None:
        # Element by element (offline an array may come back as numpy), a null element offline as Feast writes
        # it online: NaN for floats, "" for strings, False for bools, left out of integer arrays.
        element = dtype[len("array<"):-1]
        stand_in = {"float32": math.nan, "float64": math.nan, "string": "", "bool": False}.get(element)
        offline = [stand_in if x is None else x for x in a if x is not None or stand_in is not None]
        online = list(b)
        return len(offline) == len(online) and all(values_close(x, y, element)
                                                   for x, y in zip(offline, online, strict=True))
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


def _sample_newest(object_store: ObjectStore, metadata: dict[str, Any], plan: Any, sample: int
                   ) -> tuple[list[dict[str, Any]], Any]:
    """About ``sample`` entities' newest rows, evenly spread over the build, streamed (bounded memory however
    large the view), and an entity id that is in no build (it must read NOT_FOUND)."""
    import pyarrow.compute as pc

    from feature_platform.online import materialize as engine

    step = max(1, int(metadata.get("entity_count") or 0) // max(sample, 1))
    expected: list[dict[str, Any]] = []
    largest = dict.fromkeys(plan.join_keys, 0)
    seen = 0
    for batch in engine.newest_rows(object_store.fs, metadata, plan):
        first = (-seen) % step
        positions = list(range(first, batch.num_rows, step))
        if positions and len(expected) < sample:
            expected += batch.take(positions).to_pylist()[:sample - len(expected)]
        for key, dtype in zip(plan.join_keys, plan.key_dtypes, strict=True):
            if dtype != "string" and batch.num_rows:
                largest[key] = max(largest[key], int(pc.max(batch.column(key)).as_py() or 0))
        seen += batch.num_rows
    absent = "feature-platform-absent-" + hashlib.sha256(str(metadata["build_id"]).encode()).hexdigest()[:12]
    # A key beyond the build's largest (an int32 key at its maximum wraps to the smallest value instead).
    probe = tuple(absent if dtype == "string" else largest[key] + 1_000_003 if dtype == "int64"
                  else largest[key] + 1 if largest[key] < 2**31 - 1 else -(2**31)
                  for key, dtype in zip(plan.join_keys, plan.key_dtypes, strict=True))
    return expected, probe if plan.composite else probe[0]


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
    registered = check_registry_matches(store, selected)
    for contract in selected:
        build_id = registered[contract.feature_view_name].tags[TAG_PREFIX + "build_id"]
        metadata = builds.read_metadata(object_store, contract, build_id)
        expected, probe = _sample_newest(object_store, metadata, plan_contract(env.feast_project, contract),
                                         sample)
        keys = [tuple(row[k] for k in contract.join_keys) if contract.composite else row[contract.join_keys[0]]
                for row in expected]
        online = rows_of(contract, [*keys, probe],
                         view_read(settings, env, store, contract, [*keys, probe], enforce_ttl=False))
        absent_row = online.pop()  # the probe key
        mismatches = []
        for want, got in zip(expected, online, strict=True):
            if contract.push and _pushed_since(want[contract.timestamp_field], got["event_timestamp"]):
                continue  # a row pushed after the build's: newer than what the build can say
            for feature in contract.features:
                if not values_close(want[feature.name], got[feature.name], feature.dtype):
                    entity = ", ".join(f"{k}={want[k]}" for k in contract.join_keys)
                    mismatches.append(f"{entity} {feature.name}: online {got[feature.name]!r} != offline "
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
                   # Pushes may add entities no build has (and keep departed ones pushed since).
                   and (online_count >= build_count if contract.push else online_count == build_count)
                   and absent_row["status"] == "NOT_FOUND"),
        })
    return results
