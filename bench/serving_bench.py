"""Materialize throughput and online-read latency on a real redis-server, each next to its floor measured in the
same run on the same keys: raw redis-py pipelined HSET (writes) and pipelined HMGET + protobuf decode (reads).

    .venv/bin/python bench/serving_bench.py [--rows 1000000 --entities 100000 --reads 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RedisProcess, free_port, percentile, write_results

from feature_platform import feast_bridge, pipeline
from feature_platform.environments import Settings
from feature_platform.store import ObjectStore

FEATURES = [f"f{i}" for i in range(5)]
CONTRACT = {
    "kind": "FeatureSet", "name": "bench_features", "version": 1, "description": "Benchmark features.",
    "owner": "bench@example.com", "entity": {"name": "bench_entity", "join_key": "entity_id", "dtype": "int64"},
    "timestamp_field": "event_timestamp", "ttl": "30d", "online": True, "pii": False,
    "source": {"table": "bench_raw", "sql": "SELECT * FROM source"},
    "features": [{"name": f, "dtype": "float64", "description": f, "nullable": False} for f in FEATURES],
}
ENVIRONMENT = {
    "kind": "Environment", "name": "bench", "feast_project": "bench", "object_store": {"uri": "store"},
    "raw_data": {"uri": "raw"}, "registry": {"type": "file", "uri": "registry/registry.db", "cache_ttl_seconds": 600},
    "online_store": {"type": "redis", "address_env": "FEATURE_PLATFORM_REDIS_ADDRESS", "db": 0},
}


def make_contracts(root: Path) -> None:
    (root / "feature_sets/bench_features").mkdir(parents=True)
    (root / "environments").mkdir()
    (root / "feature_sets/bench_features/v1.yaml").write_text(yaml.safe_dump(CONTRACT))
    (root / "environments/bench.yaml").write_text(yaml.safe_dump(ENVIRONMENT))


def make_raw(raw: ObjectStore, rows: int, entities: int, tmp: Path) -> None:
    rng = np.random.default_rng(1)
    per_entity = rows // entities
    end = np.datetime64(datetime.now(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None))
    ids = np.repeat(np.arange(1, entities + 1, dtype=np.int64), per_entity)
    hours = np.tile(np.arange(per_entity), entities).astype("timedelta64[h]")
    table = pa.table({"entity_id": ids,
                      "event_timestamp": pa.array((end - hours).astype("datetime64[us]"), pa.timestamp("us", "UTC")),
                      **{f: rng.random(len(ids)) for f in FEATURES}})
    import pyarrow.parquet as pq

    pq.write_table(table, tmp / "bench_raw.parquet")
    raw.upload(tmp / "bench_raw.parquet", "bench_raw/part-00000.parquet")


def timed(fn, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def stats(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(samples, 50), 3), "p99_ms": round(percentile(samples, 99), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=300)
    args = parser.parse_args()
    redis = RedisProcess()
    tmp = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    server = None
    try:
        make_contracts(tmp / "contracts")
        settings = Settings.from_env({"FEATURE_PLATFORM_REDIS_ADDRESS": redis.address},
                                     contracts_dir=tmp / "contracts", home=tmp / "home", env_name="bench")
        env = settings.environment()
        make_raw(pipeline.raw_store(settings, env), args.rows, args.entities, tmp)
        pipeline.build_and_promote(settings, "bench_features")
        pipeline.apply(settings)

        start = time.perf_counter()
        pipeline.materialize(settings)
        materialize_seconds = time.perf_counter() - start

        # Floor for writes: the same keys, fields and protobuf values, raw pipelined HSET.
        from feast.infra.online_stores.helpers import _mmh3, _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from google.protobuf.timestamp_pb2 import Timestamp

        view = "bench_features_v1"
        fields = [_mmh3(f"{view}:{f}") for f in FEATURES]
        keys = [_redis_key("bench", EntityKey(join_keys=["entity_id"], entity_values=[Value(int64_val=i)]), 3)
                for i in range(1, args.entities + 1)]
        ts = Timestamp()
        ts.FromDatetime(datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1))
        payload = {**{field: Value(double_val=0.5).SerializeToString() for field in fields},
                   f"_ts:{view}".encode(): ts.SerializeToString()}
        floor_client = redis.client
        start = time.perf_counter()
        for offset in range(0, len(keys), 1000):
            pipe = floor_client.pipeline(transaction=False)
            for key in keys[offset:offset + 1000]:
                pipe.hset(key + b"floor", mapping=payload)
            pipe.execute()
        floor_write_seconds = time.perf_counter() - start

        store = feast_bridge.open_store(settings, env)
        refs = [f"{view}:{f}" for f in FEATURES]
        rng = np.random.default_rng(2)
        batches = {n: [[{"entity_id": int(i)} for i in rng.integers(1, args.entities + 1, n)]
                       for _ in range(args.reads)] for n in (1, 100)}

        def sdk(n: int):
            it = iter(batches[n])
            return lambda: store.get_online_features(features=refs, entity_rows=next(it)).to_dict()

        def floor_read(n: int):
            it = iter(batches[n])

            def run() -> None:
                rows = next(it)
                pipe = floor_client.pipeline(transaction=False)
                for row in rows:
                    pipe.hmget(keys[row["entity_id"] - 1], [*fields, f"_ts:{view}".encode()])
                for values in pipe.execute():
                    for raw in values[:-1]:
                        Value.FromString(raw)
                    Timestamp.FromString(values[-1])

            return run

        probe = store.get_online_features(features=refs, entity_rows=batches[100][0]).to_dict()
        if any(value is None for value in probe["f0"]):  # a benchmark of misses would flatter every figure
            raise SystemExit("online reads returned None: materialization did not reach Redis")

        port = free_port()
        config = feast_bridge.config_path(settings, env)
        feast_bin = str(Path(sys.executable).parent / "feast")
        with feast_bridge.feast_process_environment(settings):
            server = subprocess.Popen([feast_bin, "-f", str(config), "serve", "-p", str(port), "-r", "600",
                                       "--no-access-log"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            try:
                connection.request("GET", "/health")
                if connection.getresponse().read() is not None:
                    break
            except OSError:
                connection.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        def http_read(n: int):
            it = iter(batches[n])

            def run() -> None:
                body = json.dumps({"features": refs, "entities": {"entity_id": [r["entity_id"] for r in next(it)]}})
                connection.request("POST", "/get-online-features", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                assert response.status == 200
                response.read()

            return run

        figures: dict[str, object] = {
            "rows": args.rows, "entities": args.entities,
            "materialize_seconds": round(materialize_seconds, 2),
            "materialize_rows_per_second": round(args.rows / materialize_seconds),
            "materialize_entities_per_second": round(args.entities / materialize_seconds),
            "floor_hset_seconds": round(floor_write_seconds, 2),
            "floor_hset_entities_per_second": round(args.entities / floor_write_seconds),
            "materialize_over_floor": round(materialize_seconds / floor_write_seconds, 1),
        }
        for n in (1, 100):
            for name, make in (("sdk", sdk), ("http", http_read), ("floor", floor_read)):
                make(n)()  # warm-up outside the samples
                samples = timed(make(n), args.reads - 1)
                figures[f"read_{n}_{name}"] = stats(samples)
            floor = figures[f"read_{n}_floor"]["p50_ms"]
            figures[f"read_{n}_sdk_over_floor_p50"] = round(figures[f"read_{n}_sdk"]["p50_ms"] / floor, 1)
            figures[f"read_{n}_http_over_floor_p50"] = round(figures[f"read_{n}_http"]["p50_ms"] / floor, 1)
        for key, value in figures.items():
            print(f"{key:34} {value}")
        print(f"results: {write_results('serving', figures)}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
