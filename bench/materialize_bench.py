"""Materialization at scale: the platform's engine, Feast's own materialize and the floor (raw pipelined HSET of
the same hashes, pre-encoded), each in its own child process so peak RSS (ru_maxrss) is its own, on the same
build and a real redis-server, at 1M rows / 100k entities and 5M rows / 1M entities.

    .venv/bin/python bench/materialize_bench.py [--sizes 1000000:100000,5000000:1000000] [--skip-feast-above N]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RedisProcess, write_results
from serving_bench import make_contracts, make_raw

from feature_platform import pipeline
from feature_platform.environments import Settings


def child(method: str, contracts: str, home: str, redis_address: str) -> None:
    """Runs in its own process: one method, then prints {seconds, peak_rss_mb}."""
    import contextlib

    from feature_platform import build as builds
    from feature_platform import feast_bridge
    from feature_platform.feast_modes import feast_writer
    from feature_platform.materialization import event_range

    settings = Settings.from_env({"FEATURE_PLATFORM_REDIS_ADDRESS": redis_address}, contracts_dir=contracts,
                                 home=home, env_name="bench")
    env = settings.environment()
    contract = settings.contracts().get("bench_features")
    metadata = builds.read_metadata(pipeline.object_store(settings, env), contract,
                                                 pipeline.versions(settings, "bench_features")[1]["build_id"])
    if method == "floor":
        # The same hashes, encoded before the clock starts: only pipelined HSET is timed.
        from feature_platform.online import materialize as engine
        from feature_platform.online.layout import plan_contract
        from feature_platform.online.redis_client import connect

        plan = plan_contract("bench", contract)
        fs = pipeline.object_store(settings, env).fs
        encoded = [engine.hset_commands(plan, batch) for batch in engine.newest_rows(fs, metadata, plan)]
        client = connect(settings, env)
        start = time.perf_counter()
        for keys, columns in encoded:
            for offset in range(0, len(keys), 1000):
                pipe = client.pipeline(transaction=False)
                for i, key in enumerate(keys[offset:offset + 1000], start=offset):
                    pipe.hset(key, mapping=dict(zip(plan.fields, (c[i] for c in columns), strict=True)))
                pipe.execute()
        seconds = time.perf_counter() - start
    elif method == "platform":
        feast_bridge.open_store(settings, env)  # imports Feast and loads the registry, as Feast's run below
        start = time.perf_counter()
        pipeline.materialize(settings)
        seconds = time.perf_counter() - start
    else:
        store = feast_bridge.open_store(settings, env)
        begin, end = event_range(metadata)
        start = time.perf_counter()
        # Feast's own writer: the generated config's provider would otherwise run the platform's engine.
        with contextlib.redirect_stdout(sys.stderr), \
                feast_writer():
            store.materialize(start_date=begin, end_date=end, feature_views=["bench_features_v1"])
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(peak_rss_mb())}))


def peak_rss_mb() -> float:
    """This process's own peak RSS. Not ru_maxrss: Linux keeps it across exec, so a child would report its
    parent's high-water mark; VmHWM belongs to the address space the exec created."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(method: str, settings: Settings, redis: RedisProcess) -> dict:
    redis.client.flushall()
    out = subprocess.run([sys.executable, __file__, "--child", method, str(settings.contracts_dir),
                          str(settings.home), redis.address], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"{method} failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    from feature_platform.online.stores import redis_record_key

    # Entity hashes only: the platform also keeps its load record (one hash per project) beside them.
    result["hashes"] = redis.client.dbsize() - redis.client.exists(redis_record_key("bench"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000000:100000,5000000:1000000", help="rows:entities,...")
    parser.add_argument("--skip-feast-above", type=int, default=10_000_000, help="rows above which Feast is skipped")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    redis = RedisProcess()
    figures: dict[str, dict] = {}
    try:
        for size in args.sizes.split(","):
            rows, entities = (int(x) for x in size.split(":"))
            tmp = Path(tempfile.mkdtemp(prefix="materialize-bench-"))
            try:
                make_contracts(tmp / "contracts")
                settings = Settings.from_env({"FEATURE_PLATFORM_REDIS_ADDRESS": redis.address},
                                             contracts_dir=tmp / "contracts", home=tmp / "home", env_name="bench")
                make_raw(pipeline.raw_store(settings, settings.environment()), rows, entities, tmp)
                pipeline.build_and_promote(settings, "bench_features")
                pipeline.apply(settings)
                methods = ["floor", "platform"] + (["feast"] if rows <= args.skip_feast_above else [])
                result = {m: run_child(m, settings, redis) for m in methods}
                assert all(r["hashes"] == entities for r in result.values()), result
                result["platform_share_of_floor_throughput"] = round(
                    result["floor"]["seconds"] / result["platform"]["seconds"], 2)
                if "feast" in result:
                    result["feast_over_platform"] = round(result["feast"]["seconds"] / result["platform"]["seconds"], 1)
                figures[f"{rows}_rows_{entities}_entities"] = result
                print(size, json.dumps(result))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        print(f"results: {write_results('materialize', figures)}")
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
