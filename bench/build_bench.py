"""Build throughput: N feature rows through `featurectl build` (SQL -> conform -> gate -> Parquet -> metadata)
against the floor of writing the same table once with pyarrow.parquet.write_table.

    .venv/bin/python bench/build_bench.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

from feature_platform import build as builds
from feature_platform import pipeline
from feature_platform.environments import Settings
from feature_platform.sample_data import SampleSpec, default_as_of, write_sample_data

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="build-bench-") as tmp:
        settings = Settings.from_env({}, contracts_dir=REPO / "contracts", home=Path(tmp), env_name="local")
        env = settings.environment()
        # customer_profile passes rows through (4 weekly snapshots per customer): rows == 4 * customers.
        spec = SampleSpec(scale=args.rows / 4000, as_of=default_as_of())
        write_sample_data(pipeline.raw_store(settings, env), spec, tables=["customers"])
        contract = settings.contracts().get("customer_profile")
        store, raw = pipeline.object_store(settings, env), pipeline.raw_store(settings, env)

        start = time.perf_counter()
        result = builds.build_version(contract, store, raw, environment=env.name)
        build_seconds = time.perf_counter() - start
        build_peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the floor loads the table
        rows = result.metadata["row_count"]

        table = builds.read_build_table(store, result.metadata)
        start = time.perf_counter()
        pq.write_table(table, Path(tmp) / "floor.parquet", compression="zstd")
        floor_seconds = time.perf_counter() - start

    figures = {
        "rows": rows,
        "build_seconds": round(build_seconds, 3),
        "build_rows_per_second": round(rows / build_seconds),
        "floor_pyarrow_write_seconds": round(floor_seconds, 3),
        "floor_rows_per_second": round(rows / floor_seconds),
        "build_over_floor": round(build_seconds / floor_seconds, 2),
        "build_peak_rss_mib": round(build_peak_rss / 1024),
    }
    for key, value in figures.items():
        print(f"{key:32} {value}")
    print(f"results: {write_results('build', figures)}")


if __name__ == "__main__":
    main()
