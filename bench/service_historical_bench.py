"""A model's training set over three feature sets: the platform's path against a floor, same files, interleaved.

Three builds (one per feature set, different TTLs and keys spaces) and one entity file are generated once. Each
method runs in its own child process (its peak RSS is its own), reading the entity file and writing the
training set to Parquet:

- platform: what `featurectl historical --feature-service` runs after its registry look-up: the entity file read
  and checked (`offline.read_entity_file`), the join of every set in one query (`point_in_time_join_many`, one
  ASOF join per set, contract dtypes back in pandas), the result written;
- floor: DuckDB alone, one `COPY (SELECT ... ASOF LEFT JOIN ... x3) TO parquet` over the same files.

    .venv/bin/python bench/service_historical_bench.py [--rows 10000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

SETS = [("spend", 7 * 86400, 200_000), ("profile", 30 * 86400, 200_000), ("risk", 2 * 86400, 50_000)]
START = np.datetime64("2026-10-01T00:00:00", "us")
SPAN_SECONDS = 60 * 86400


def generate(root: Path, rows: int) -> None:
    rng = np.random.default_rng(3)
    for name, _, entities in SETS:
        n = entities * 10
        keys = rng.integers(0, entities, n)
        stamps = START + rng.integers(0, SPAN_SECONDS, n).astype("timedelta64[s]")
        order = np.lexsort((stamps, keys))
        table = pa.table({"customer_id": pa.array(keys[order], pa.int64()),
                          "event_timestamp": pa.array(stamps[order], pa.timestamp("us", tz="UTC")),
                          f"{name}_f": pa.array(rng.normal(size=n)[order], pa.float64()),
                          f"{name}_n": pa.array(rng.integers(0, 100, n)[order], pa.int64()),
                          f"{name}_s": pa.array(rng.choice(["a", "b", "c"], n)[order], pa.string())})
        pq.write_table(table, root / f"{name}.parquet")
    pq.write_table(pa.table({
        "customer_id": pa.array(rng.integers(0, 220_000, rows), pa.int64()),
        "event_timestamp": pa.array(START + rng.integers(0, SPAN_SECONDS, rows).astype("timedelta64[s]"),
                                    pa.timestamp("us", tz="UTC")),
        "label": pa.array(rng.integers(0, 2, rows), pa.int64())}), root / "entities.parquet")


def run_platform(root: Path) -> None:
    from feature_platform.offline import JoinPart, point_in_time_join_many, read_entity_file

    entities = read_entity_file(root / "entities.parquet")
    parts = [JoinPart(name, {"customer_id": "int64"}, "event_timestamp", ttl, str(root / f"{name}.parquet"),
                      {f"{name}_f": "float64", f"{name}_n": "int64", f"{name}_s": "string"},
                      [f"{name}_f", f"{name}_n", f"{name}_s"]) for name, ttl, _ in SETS]
    frame = point_in_time_join_many(entities, parts, None)
    frame.to_parquet(root / "out-platform.parquet", index=False)


def run_floor(root: Path) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    ctes, joins, selected = [], [], []
    for i, (name, ttl, _) in enumerate(SETS):
        ctes.append(f"f{i} AS (SELECT customer_id AS k, event_timestamp AS ts, {name}_f, {name}_n, {name}_s "
                    f"FROM '{root / name}.parquet')")
        joins.append(f"ASOF LEFT JOIN f{i} ON e.customer_id = f{i}.k AND e.event_timestamp >= f{i}.ts")
        valid = f"f{i}.ts >= e.event_timestamp - INTERVAL {ttl} SECOND"
        selected += [f"CASE WHEN {valid} THEN f{i}.{name}_{c} END AS {name}_{c}" for c in "fns"]
    query = (f"WITH e AS (SELECT *, row_number() OVER () AS r FROM '{root}/entities.parquet'), {', '.join(ctes)} "
             f"SELECT e.customer_id, e.event_timestamp, e.label, {', '.join(selected)} FROM e {' '.join(joins)} "
             "ORDER BY e.r")
    con.execute(f"COPY ({query}) TO '{root}/out-floor.parquet' (FORMAT parquet)")


def child(method: str, root: Path) -> dict[str, float]:
    result = subprocess.run([sys.executable, __file__, "--child", method, "--root", str(root)], capture_output=True,
                            text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="entity rows (default 10M)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["platform", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        start = time.perf_counter()
        (run_platform if args.child == "platform" else run_floor)(args.root)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
        print(json.dumps({"seconds": seconds, "peak_rss_mb": peak}))
        return 0
    with tempfile.TemporaryDirectory(prefix="service-historical-bench-") as tmp:
        root = Path(tmp)
        generate(root, args.rows)
        samples: dict[str, list[dict[str, float]]] = {"platform": [], "floor": []}
        for _ in range(args.rounds):  # interleaved
            for method in ("floor", "platform"):
                samples[method].append(child(method, root))
        rows = pq.read_metadata(root / "out-platform.parquet").num_rows
        assert rows == args.rows == pq.read_metadata(root / "out-floor.parquet").num_rows
    figures: dict[str, object] = {"entity_rows": args.rows, "feature_sets": len(SETS), "rounds": args.rounds}
    for method, runs in samples.items():
        figures[method] = {"median_s": round(statistics.median(r["seconds"] for r in runs), 2),
                           "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs))}
    platform, floor = figures["platform"]["median_s"], figures["floor"]["median_s"]  # type: ignore[index]
    figures["platform_throughput_vs_floor"] = round(floor / platform, 2)
    print(json.dumps(figures, indent=2))
    print(f"results: {write_results('service_historical', figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
