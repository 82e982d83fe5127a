"""Build throughput: `featurectl build` (SQL -> conform -> one-pass gate -> Parquet -> metadata) against a floor
that reads the same source, runs the contract's SQL and writes Parquet with the same DuckDB settings (memory
limit, time zone, threads, the same ORDER BY), interleaved three times, medians reported; for a row-level
contract (customer_profile) and an aggregating one (customer_spend v2).

    .venv/bin/python bench/build_bench.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

from feature_platform import build as builds
from feature_platform import pipeline
from feature_platform.environments import Settings
from feature_platform.sample_data import SampleSpec, default_as_of, write_sample_data

REPO = Path(__file__).resolve().parent.parent


def floor(contract, raw, target: Path) -> float:
    """The contract's SQL, ordered as builds are, written to Parquet by DuckDB itself."""
    snapshot = builds.source_snapshot(raw, contract)
    con = builds._duckdb()
    con.register("source", ds.dataset([e["path"].removeprefix("s3://") for e in snapshot], format="parquet",
                                      filesystem=raw.fs))
    con.execute(f"SET threads = {builds.execution_threads(con, contract.source.sql)}")
    key, ts = contract.join_keys[0], contract.timestamp_field
    start = time.perf_counter()
    con.execute(f"COPY (SELECT * FROM ({contract.source.sql}) ORDER BY \"{key}\", \"{ts}\") TO '{target}' "
                "(FORMAT parquet, COMPRESSION zstd)")
    seconds = time.perf_counter() - start
    con.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="build-bench-") as tmp:
        settings = Settings.from_env({}, contracts_dir=REPO / "contracts", home=Path(tmp), env_name="local")
        env = settings.environment()
        spec = SampleSpec(scale=args.rows / 4000, as_of=default_as_of())  # ~rows customers rows, more transactions
        write_sample_data(pipeline.raw_store(settings, env), spec, tables=["customers", "transactions"])
        store, raw = pipeline.object_store(settings, env), pipeline.raw_store(settings, env)
        for name in ("customer_profile", "customer_spend"):
            contract = settings.contracts().get(name)
            platform, floors, rows = [], [], 0
            for attempt in range(args.repeats):
                target = Path(tmp) / f"floor-{name}-{attempt}.parquet"
                floors.append(floor(contract, raw, target))
                for build in builds.list_builds(store, name):  # rebuild for real, not reuse
                    store.delete(builds.build_key(contract, build["build_id"]))
                start = time.perf_counter()
                result = builds.build_version(contract, store, raw, environment=env.name)
                platform.append(time.perf_counter() - start)
                rows = result.metadata["row_count"]
            build_s, floor_s = statistics.median(platform), statistics.median(floors)
            figures[name] = {"rows": rows,
                             "build_seconds": round(build_s, 3), "floor_seconds": round(floor_s, 3),
                             "threads": result.metadata.get("threads"),
                             "build_share_of_floor_throughput": round(floor_s / build_s, 2)}
            print(name, figures[name])
    print(f"results: {write_results('build', figures)}")


if __name__ == "__main__":
    main()
