"""Online-read latency on a real redis-server next to its floor measured in the same run on the same keys:
raw redis-py pipelined HMGET + protobuf decode. (Materialization: bench/materialize_bench.py.)

Reads, interleaved request by request (so machine noise hits every method alike): the floor, the platform's
server over HTTP, `feast serve` over HTTP, and the in-process planner, for 1 and 100 entities x 5 features.

    .venv/bin/python bench/serving_bench.py [--rows 1000000 --entities 100000 --reads 1000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RedisProcess, free_port, percentile, wait_healthy, write_results

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


def make_contracts(root: Path, contract: dict | None = None) -> None:
    (root / "feature_sets/bench_features").mkdir(parents=True)
    (root / "environments").mkdir()
    (root / "feature_sets/bench_features/v1.yaml").write_text(yaml.safe_dump(contract or CONTRACT))
    (root / "environments/bench.yaml").write_text(yaml.safe_dump(ENVIRONMENT))


def loaded(redis_address: str, tmp: Path, rows: int, entities: int, contract: dict | None = None) -> Settings:
    """The bench environment in ``tmp``: contracts, raw rows, a promoted build, applied and materialized."""
    make_contracts(tmp / "contracts", contract)
    settings = Settings.from_env({"FEATURE_PLATFORM_REDIS_ADDRESS": redis_address},
                                 contracts_dir=tmp / "contracts", home=tmp / "home", env_name="bench")
    make_raw(pipeline.raw_store(settings, settings.environment()), rows, entities, tmp)
    pipeline.build_and_promote(settings, "bench_features")
    pipeline.apply(settings)
    pipeline.materialize(settings)  # materialize figures: bench/materialize_bench.py
    return settings


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


def stats(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(samples, 50), 3), "p99_ms": round(percentile(samples, 99), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=1000)
    args = parser.parse_args()
    redis = RedisProcess()
    tmp = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    servers: list[subprocess.Popen] = []
    try:
        settings = loaded(redis.address, tmp, args.rows, args.entities)
        env = settings.environment()

        from feast.infra.online_stores.helpers import _mmh3, _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from google.protobuf.timestamp_pb2 import Timestamp

        view = "bench_features_v1"
        fields = [_mmh3(f"{view}:{f}") for f in FEATURES]
        keys = [_redis_key("bench", EntityKey(join_keys=["entity_id"], entity_values=[Value(int64_val=i)]), 3)
                for i in range(1, args.entities + 1)]
        floor_client = redis.client
        refs = [f"{view}:{f}" for f in FEATURES]
        rng = np.random.default_rng(2)
        requests = {n: [[int(i) for i in rng.integers(1, args.entities + 1, n)] for _ in range(args.reads)]
                    for n in (1, 100)}

        from feature_platform.online.layout import plan_contract
        from feature_platform.online.reader import read_view
        from feature_platform.online.redis_client import connect

        plan = plan_contract("bench", settings.contracts().get("bench_features"))
        planner_client = connect(settings, env)

        def in_process(ids: list[int]) -> None:
            read_view(planner_client, plan, ids)

        def floor_read(ids: list[int]) -> None:
            pipe = floor_client.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(keys[i - 1], [*fields, f"_ts:{view}".encode()])
            for values in pipe.execute():
                for raw in values[:-1]:
                    Value.FromString(raw)
                Timestamp.FromString(values[-1])

        probe = read_view(planner_client, plan, requests[100][0])
        if any(value is None for value in probe.values[0]):  # a benchmark of misses would flatter every figure
            raise SystemExit("online reads returned None: materialization did not reach Redis")

        def start_server(command: list[str]) -> tuple[subprocess.Popen, http.client.HTTPConnection]:
            port = free_port()
            process = subprocess.Popen([*command, "--port" if "featurectl" in command[0] else "-p", str(port)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       env={**os.environ, **settings.values,
                                            "FEATURE_PLATFORM_CONTRACTS": str(settings.contracts_dir),
                                            "FEATURE_PLATFORM_HOME": str(settings.home),
                                            "FEATURE_PLATFORM_ENV": "bench"})
            return process, wait_healthy(port)

        config = feast_bridge.config_path(settings, env)
        bin_dir = Path(sys.executable).parent
        feast_server, feast_connection = start_server([str(bin_dir / "feast"), "-f", str(config), "serve", "-r",
                                                       "600", "--no-access-log", "--max-requests", "0"])
        servers.append(feast_server)
        platform_server, platform_connection = start_server([str(bin_dir / "featurectl"), "serve"])
        servers.append(platform_server)

        def http_read(connection: http.client.HTTPConnection):
            def run(ids: list[int]) -> None:
                body = json.dumps({"features": refs, "entities": {"entity_id": ids}})
                connection.request("POST", "/get-online-features", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                assert response.status == 200
                response.read()

            return run

        methods = {"floor": floor_read, "in_process": in_process, "platform_http": http_read(platform_connection),
                   "feast_http": http_read(feast_connection)}
        figures: dict[str, object] = {"rows": args.rows, "entities": args.entities, "requests": args.reads}
        for n in (1, 100):
            samples: dict[str, list[float]] = {name: [] for name in methods}
            for run in methods.values():
                run(requests[n][0])  # warm-up outside the samples
            for ids in requests[n]:  # interleaved: every method reads the same keys in the same moment
                for name, run in methods.items():
                    begin = time.perf_counter()
                    run(ids)
                    samples[name].append((time.perf_counter() - begin) * 1000)
            for name in methods:
                figures[f"read_{n}_{name}"] = stats(samples[name])
            floor = figures[f"read_{n}_floor"]
            for name in ("in_process", "platform_http", "feast_http"):
                figures[f"read_{n}_{name}_over_floor_p99"] = round(figures[f"read_{n}_{name}"]["p99_ms"]
                                                                    / floor["p99_ms"], 2)
                figures[f"read_{n}_{name}_over_floor_p50"] = round(figures[f"read_{n}_{name}"]["p50_ms"]
                                                                    / floor["p50_ms"], 2)
            figures[f"read_{n}_feast_http_over_platform_http_p50"] = round(
                figures[f"read_{n}_feast_http"]["p50_ms"] / figures[f"read_{n}_platform_http"]["p50_ms"], 1)
        # Throughput: 4 concurrent clients (own connections), 100 entities per request, for each server.
        import threading

        def throughput(port: int, per_client: int = 500) -> float:
            def client(ids_list: list[list[int]]) -> None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                run = http_read(connection)
                for ids in ids_list:
                    run(ids)
                connection.close()

            threads = [threading.Thread(target=client, args=(requests[100][i::4][:per_client],)) for i in range(4)]
            begin = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return round(sum(min(per_client, len(requests[100][i::4])) for i in range(4))
                         / (time.perf_counter() - begin))

        figures["throughput_4_clients_100_entities_platform_rps"] = throughput(platform_connection.port)
        figures["throughput_4_clients_100_entities_feast_rps"] = throughput(feast_connection.port)
        for key, value in figures.items():
            print(f"{key:34} {value}")
        print(f"results: {write_results('serving', figures)}")
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
