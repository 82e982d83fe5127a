"""Point-in-time training sets: the platform's DuckDB ASOF join vs Feast's file offline store, same build, same
entity rows (1M feature rows x 100k entity rows by default). Prints time and how many input rows each returns.

    .venv/bin/python bench/historical_bench.py [--rows 1000000 --entities 100000 --entity-rows 100000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results
from serving_bench import make_contracts, make_raw

from feature_platform import feast_bridge, pipeline
from feature_platform.environments import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--entity-rows", type=int, default=100_000)
    parser.add_argument("--skip-feast", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="historical-bench-"))
    try:
        make_contracts(tmp / "contracts")
        settings = Settings.from_env({"FEATURE_PLATFORM_REDIS_ADDRESS": "127.0.0.1:1"},
                                     contracts_dir=tmp / "contracts", home=tmp / "home", env_name="bench")
        env = settings.environment()
        make_raw(pipeline.raw_store(settings, env), args.rows, args.entities, tmp)
        build_id = pipeline.build_and_promote(settings, "bench_features")["build_id"]
        pipeline.apply(settings)
        rng = np.random.default_rng(3)
        now = pd.Timestamp.now(tz="UTC").floor("h")
        entity_df = pd.DataFrame({
            "entity_id": rng.integers(1, int(args.entities * 1.1), args.entity_rows),  # ~9% unknown entities
            "event_timestamp": now - pd.to_timedelta(rng.integers(0, 12 * 60, args.entity_rows), unit="m"),
            "label": rng.integers(0, 2, args.entity_rows)})
        start = time.perf_counter()
        frame, _ = feast_bridge.historical(settings, entity_df, "bench_features", build_id=build_id)
        platform_seconds = time.perf_counter() - start
        figures: dict[str, object] = {
            "feature_rows": args.rows, "entity_rows": args.entity_rows,
            "platform_seconds": round(platform_seconds, 2), "platform_rows_returned": len(frame),
            "platform_rows_with_values": int(frame["f0"].notna().sum()),
        }
        if not args.skip_feast:
            store = feast_bridge.open_store(settings, env)
            refs = [f"bench_features_v1:f{i}" for i in range(5)]
            start = time.perf_counter()
            feast_frame = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
            figures["feast_file_offline_store_seconds"] = round(time.perf_counter() - start, 2)
            figures["feast_rows_returned"] = len(feast_frame)
            figures["feast_over_platform"] = round(figures["feast_file_offline_store_seconds"] / platform_seconds, 1)
        for key, value in figures.items():
            print(f"{key:34} {value}")
        print(f"results: {write_results('historical', figures)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
