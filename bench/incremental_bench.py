"""Builds whose cost follows new data: one daily incremental build against a full build, over raw histories of
30, 90 and 180 days at a fixed number of rows per day, and a 180-day backfill on one and on two workers.

Each repetition appends late rows for the newest day (as upstream does), then times, interleaved, the full
build (the SQL over the whole history) and the incremental build of that day (the SQL over the day plus its
lookback, one new partition, a new manifest). Same SQL in both: daily aggregates and a 3-day window.
Target: the daily build's time within 1.5x from 30 to 180 days, while the full build grows with the history.

    .venv/bin/python bench/incremental_bench.py [--rows-per-day 20000 --repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report

from feature_platform import pipeline
from feature_platform.environments import Settings

DAY = timedelta(days=1)
SQL = """
WITH daily AS (
  SELECT customer_id, CAST(date_trunc('day', ts) + INTERVAL 1 DAY AS TIMESTAMP) AS event_timestamp,
         count(*) AS txn_count_1d, round(sum(amount), 2) AS amount_1d
  FROM source GROUP BY customer_id, date_trunc('day', ts))
SELECT customer_id, event_timestamp, txn_count_1d, amount_1d,
       round(sum(amount_1d) OVER (PARTITION BY customer_id ORDER BY event_timestamp
                                  RANGE BETWEEN INTERVAL 2 DAYS PRECEDING AND CURRENT ROW), 2) AS amount_3d
FROM daily
"""
ENVIRONMENT = {"kind": "Environment", "name": "bench", "feast_project": "bench", "object_store": {"uri": "store"},
               "raw_data": {"uri": "raw"}, "registry": {"type": "file", "uri": "registry/registry.db"},
               "online_store": {"type": "sqlite", "path": "online.db"}}


def contract(name: str, incremental: bool) -> dict:
    return {"kind": "FeatureSet", "name": name, "version": 1, "description": "Benchmark.", "owner": "b@example.com",
            "entity": {"name": "customer", "join_key": "customer_id", "dtype": "int64"},
            "timestamp_field": "event_timestamp", "ttl": "30d", "pii": False,
            "source": {"table": "events", "sql": SQL},
            **({"build": {"mode": "incremental", "partition": "1d", "lookback": "3d", "time_column": "ts"}}
               if incremental else {}),
            "features": [{"name": n, "dtype": t, "description": n} for n, t in
                         (("txn_count_1d", "int64"), ("amount_1d", "float64"), ("amount_3d", "float64"))]}


def events(first: datetime, days: int, per_day: int, seed: int) -> pa.Table:
    """``per_day`` rows on each day, written day by day (files ordered by time, as upstream appends)."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    day = np.repeat(np.arange(days), per_day)
    seconds = day * 86400 + rng.integers(0, 86400, size=n)
    stamps = np.datetime64(first.replace(tzinfo=None), "s") + seconds.astype("timedelta64[s]")
    return pa.table({"customer_id": pa.array(rng.integers(1, 2001, size=n), pa.int64()),
                     "amount": pa.array(np.round(rng.gamma(2.0, 20.0, size=n), 2)),
                     "ts": pa.array(stamps.astype("datetime64[us]"), pa.timestamp("us", tz="UTC"))})


def environment(tmp: Path, days: int, per_day: int) -> tuple[Settings, datetime]:
    root = tmp / f"d{days}"
    (root / "contracts/environments").mkdir(parents=True)
    (root / "contracts/environments/bench.yaml").write_text(yaml.safe_dump(ENVIRONMENT))
    for name, incremental in (("full_build", False), ("daily_build", True)):
        (root / "contracts/feature_sets" / name).mkdir(parents=True)
        (root / "contracts/feature_sets" / name / "v1.yaml").write_text(yaml.safe_dump(contract(name, incremental)))
    settings = Settings.from_env({}, contracts_dir=root / "contracts", home=root / "home", env_name="bench")
    raw = pipeline.raw_store(settings, settings.environment())
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = end - days * DAY
    for month in range(0, days, 30):  # one file per 30 days: pruning skips whole files
        span = min(30, days - month)
        pq.write_table(events(first + month * DAY, span, per_day, seed=month), root / "part.parquet",
                       row_group_size=per_day)
        raw.upload(root / "part.parquet", f"events/part-{month:05d}.parquet")
    return settings, end


def late_rows(settings: Settings, end: datetime, repetition: int) -> None:
    """Rows of the day before ``end - 1d``: they change the partition ending at ``end`` (its features are
    published at the next midnight), so each build makes a new partition and a new manifest."""
    raw = pipeline.raw_store(settings, settings.environment())
    path = settings.home / "late.parquet"
    settings.home.mkdir(parents=True, exist_ok=True)
    pq.write_table(events(end - 2 * DAY, 1, 50, seed=10_000 + repetition), path)
    raw.upload(path, f"events/late-{repetition:03d}.parquet")


def timed(function, *args, **kwargs) -> float:
    begin = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows-per-day", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="incremental-bench-"))
    figures: dict[str, object] = {"rows_per_day": args.rows_per_day, "repeat": args.repeat}
    try:
        setups = {days: environment(tmp, days, args.rows_per_day) for days in (30, 90, 180)}
        for settings, _ in setups.values():  # the history once (every partition), untimed here
            pipeline.build_and_promote(settings, "daily_build")
        samples: dict[str, list[float]] = {f"{kind}_{days}d": [] for days in setups for kind in ("full", "daily")}
        for repetition in range(args.repeat):
            for days, (settings, end) in setups.items():  # interleaved: every size in every repetition
                late_rows(settings, end, repetition)
                samples[f"full_{days}d"].append(timed(pipeline.build_and_promote, settings, "full_build"))
                samples[f"daily_{days}d"].append(timed(pipeline.build_and_promote, settings, "daily_build",
                                                       interval=(end - DAY, end)))
        for name, values in samples.items():
            figures[f"{name}_seconds"] = round(statistics.median(values), 3)
        for kind in ("full", "daily"):
            figures[f"{kind}_180d_over_30d"] = round(figures[f"{kind}_180d_seconds"]  # type: ignore[operator]
                                                     / figures[f"{kind}_30d_seconds"], 2)
        figures["target_daily_180d_over_30d"] = 1.5
        settings, end = setups[180]
        for workers in (1, 2, 1, 2):  # interleaved; a new late file each time: nothing is reused
            late_rows(settings, end, 100 + len(samples))
            samples.setdefault(f"backfill_180d_{workers}_workers", []).append(timed(
                pipeline.build_and_promote, settings, "daily_build", interval=(end - 180 * DAY, end),
                parallel=workers))
            for day in range(0, 180, 37):  # change partitions across the range, or the backfill reuses them
                late_rows(settings, end - day * DAY, 200 + day + len(samples[f"backfill_180d_{workers}_workers"]))
        for workers in (1, 2):
            figures[f"backfill_180d_{workers}_workers_seconds"] = round(
                statistics.median(samples[f"backfill_180d_{workers}_workers"]), 3)
        figures["backfill_2_over_1_workers"] = round(figures["backfill_180d_2_workers_seconds"]  # type: ignore[operator]
                                                     / figures["backfill_180d_1_workers_seconds"], 2)
        report("incremental", figures)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
