"""Deterministic sample raw data for the example contracts.

The same ``seed``, ``scale`` and ``as_of`` always give the same rows, so demos, tests and benchmarks are
reproducible. ``as_of`` (default: the current hour, UTC) is the end of the generated history, so freshness
checks pass on the day you run the demo while the rows stay a pure function of the arguments.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from feature_platform.store import ObjectStore

COUNTRIES = ["DE", "FR", "GB", "NL", "PL", "ES", "US"]
TIERS = ["bronze", "silver", "gold"]
CATEGORIES = ["grocery", "travel", "electronics", "fashion", "restaurants"]
ROWS_PER_FILE = 250_000


@dataclass(frozen=True)
class SampleSpec:
    seed: int = 7
    scale: float = 1.0  # 1.0 ~ 130k raw rows; 10 ~ 1.3M
    as_of: datetime | None = None

    @property
    def end(self) -> datetime:
        end = self.as_of or datetime.now(UTC)
        return end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _ts(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype("datetime64[us]"), type=pa.timestamp("us", tz="UTC"))


def transactions(spec: SampleSpec) -> pa.Table:
    """Card transactions of ``1000 * scale`` customers over 30 days."""
    rng = np.random.default_rng(spec.seed)
    customers = max(10, int(1000 * spec.scale))
    n = customers * 90
    # Whole days only: a day's spend is known at the following midnight, which must not lie in the future.
    start = np.datetime64(spec.end.replace(hour=0, tzinfo=None)) - np.timedelta64(30, "D")
    offsets = rng.integers(0, 30 * 86400, size=n).astype("timedelta64[s]")
    return pa.table({
        "txn_id": pa.array(np.arange(n, dtype=np.int64)),
        "customer_id": pa.array(rng.integers(1001, 1001 + customers, size=n, dtype=np.int64)),
        "amount": pa.array(np.round(rng.gamma(2.0, 30.0, size=n), 2)),
        "merchant_category": pa.array(rng.choice(CATEGORIES, size=n)),
        "ts": _ts(start + offsets),
    })


def customers(spec: SampleSpec) -> pa.Table:
    """One profile snapshot per customer per week over four weeks."""
    rng = np.random.default_rng(spec.seed + 1)
    count = max(10, int(1000 * spec.scale))
    ids = np.arange(1001, 1001 + count, dtype=np.int64)
    signup = np.datetime64(spec.end.replace(tzinfo=None)) - rng.integers(30, 2000, size=count).astype(
        "timedelta64[D]")
    country = rng.choice(COUNTRIES, size=count)
    domains = np.array(["example.com", "mail.example", "post.example"])
    parts = []
    for week in range(4):
        snapshot = np.datetime64(spec.end.replace(tzinfo=None)) - np.timedelta64(7 * (3 - week), "D")
        parts.append(pa.table({
            "customer_id": pa.array(ids),
            "signup_date": _ts(signup),
            "country": pa.array(country),
            "tier": pa.array(rng.choice(TIERS, size=count, p=[0.6, 0.3, 0.1])),
            "email": pa.array([f"user{i}@{d}" for i, d in zip(ids, rng.choice(domains, size=count), strict=True)]),
            "updated_at": _ts(np.full(count, snapshot)),
        }))
    return pa.concat_tables(parts)


def driver_trips(spec: SampleSpec) -> pa.Table:
    """Ride requests of ``200 * scale`` drivers over 7 days."""
    rng = np.random.default_rng(spec.seed + 2)
    drivers = max(5, int(200 * spec.scale))
    n = drivers * 7 * 24
    start = np.datetime64(spec.end.replace(tzinfo=None)) - np.timedelta64(7, "D")
    accepted = rng.random(n) < 0.8
    completed = accepted & (rng.random(n) < 0.9)
    rating = np.where(completed, np.round(rng.uniform(3.0, 5.0, size=n), 1), np.nan)
    return pa.table({
        "trip_id": pa.array(np.arange(n, dtype=np.int64)),
        "driver_id": pa.array(rng.integers(5001, 5001 + drivers, size=n, dtype=np.int64)),
        "requested_at": _ts(start + rng.integers(0, 7 * 86400, size=n).astype("timedelta64[s]")),
        "accepted": pa.array(accepted),
        "completed": pa.array(completed),
        "rating": pa.array(rating, from_pandas=True),
    })


EMBEDDING_DIMS = 16


def customer_embeddings(spec: SampleSpec) -> pa.Table:
    """A 16-dim unit embedding per customer per week over four weeks, as a recommender's training job would
    write them: a stable direction per customer, drifting a little each week."""
    rng = np.random.default_rng(spec.seed + 3)
    count = max(10, int(1000 * spec.scale))
    ids = np.arange(1001, 1001 + count, dtype=np.int64)
    base = rng.normal(size=(count, EMBEDDING_DIMS))
    parts = []
    for week in range(4):
        vectors = base + 0.1 * rng.normal(size=base.shape)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        computed = np.datetime64(spec.end.replace(tzinfo=None)) - np.timedelta64(7 * (3 - week), "D")
        parts.append(pa.table({
            "customer_id": pa.array(ids),
            "computed_at": _ts(np.full(count, computed)),
            "embedding": pa.array(list(np.round(vectors, 6)), pa.list_(pa.float64())),
            "model": pa.array(np.full(count, f"two-tower-2026w{week + 1}")),
        }))
    return pa.concat_tables(parts)


TABLES: dict[str, Callable[[SampleSpec], pa.Table]] = {
    "transactions": transactions,
    "customers": customers,
    "driver_trips": driver_trips,
    "customer_embeddings": customer_embeddings,
}


def write_sample_data(raw: ObjectStore, spec: SampleSpec, tables: list[str] | None = None) -> dict[str, int]:
    """Write each raw table as Parquet files under ``<raw>/<table>/``; returns rows per table.

    Existing files of a table are replaced, so a second run with the same arguments changes nothing.
    """
    written = {}
    for name in tables or sorted(TABLES):
        table = TABLES[name](spec)
        raw.delete(name)
        with tempfile.TemporaryDirectory() as tmp:
            for index, offset in enumerate(range(0, max(table.num_rows, 1), ROWS_PER_FILE)):
                local = Path(tmp) / f"part-{index:05d}.parquet"
                pq.write_table(table.slice(offset, ROWS_PER_FILE), local)
                raw.upload(local, f"{name}/part-{index:05d}.parquet")
        written[name] = table.num_rows
    return written


def default_as_of() -> datetime:
    return SampleSpec().end


def parse_as_of(text: str | None) -> datetime | None:
    if not text:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


__all__ = ["TABLES", "SampleSpec", "default_as_of", "parse_as_of", "write_sample_data"]
