"""Online reads of a composite key (customer_id x merchant_id) next to the same reads of a single key, on a real
redis-server, through the platform's server over HTTP, in one run, interleaved request by request.

Two feature sets with the same five float64 features and the same number of entities: one keyed by
``entity_id`` (int64), one by ``entity_id`` x ``merchant_id`` (int64 x string). Each request reads 100
entities; the floor is raw pipelined HMGET + protobuf decode of the pair hashes. Target: the pair read's p99
within 1.5x of the single-key read's.

    .venv/bin/python bench/composite_bench.py [--entities 100000 --reads 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RedisProcess, report, start_platform_server, stop_server, wait_healthy
from serving_bench import ENVIRONMENT, FEATURES, stats

from feature_platform import pipeline
from feature_platform.environments import Settings

KEYS = {"single_features": [{"name": "bench_entity", "join_key": "entity_id", "dtype": "int64"}],
        "pair_features": [{"name": "bench_entity", "join_key": "entity_id", "dtype": "int64"},
                          {"name": "bench_merchant", "join_key": "merchant_id", "dtype": "string"}]}


def _contract(name: str) -> dict:
    return {"kind": "FeatureSet", "name": name, "version": 1, "description": "Benchmark features.",
            "owner": "bench@example.com", "entities": KEYS[name], "timestamp_field": "event_timestamp",
            "ttl": "30d", "online": True, "pii": False, "source": {"table": name, "sql": "SELECT * FROM source"},
            "features": [{"name": f, "dtype": "float64", "description": f, "nullable": False} for f in FEATURES]}


def merchant(i: int) -> str:
    return f"m-{i % 997:04d}"


def loaded(redis_address: str, tmp: Path, entities: int) -> Settings:
    """Both sets built from one row per entity, applied and materialized."""
    root = tmp / "contracts"
    (root / "environments").mkdir(parents=True)
    (root / "environments/bench.yaml").write_text(yaml.safe_dump(ENVIRONMENT))
    settings = Settings.from_env({"FEATURE_PLATFORM_REDIS_ADDRESS": redis_address}, contracts_dir=root,
                                 home=tmp / "home", env_name="bench")
    raw = pipeline.raw_store(settings, settings.environment())
    rng = np.random.default_rng(1)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    ids = np.arange(1, entities + 1, dtype=np.int64)
    for name in KEYS:
        (root / "feature_sets" / name).mkdir(parents=True)
        (root / "feature_sets" / name / "v1.yaml").write_text(yaml.safe_dump(_contract(name)))
        columns = {"entity_id": ids, **({"merchant_id": [merchant(int(i)) for i in ids]} if "pair" in name else {}),
                   "event_timestamp": pa.array([now] * entities, pa.timestamp("us", "UTC")),
                   **{f: rng.random(entities) for f in FEATURES}}
        pq.write_table(pa.table(columns), tmp / f"{name}.parquet")
        raw.upload(tmp / f"{name}.parquet", f"{name}/part-00000.parquet")
        pipeline.build_and_promote(settings, name)
    pipeline.apply(settings)
    pipeline.materialize(settings)
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=1000)
    args = parser.parse_args()
    redis = RedisProcess()
    tmp = Path(tempfile.mkdtemp(prefix="composite-bench-"))
    server = None
    try:
        settings = loaded(redis.address, tmp, args.entities)
        from feast.protos.feast.types.Value_pb2 import Value
        from google.protobuf.timestamp_pb2 import Timestamp

        from feature_platform.online.layout import plan_contract

        pair = plan_contract("bench", settings.contracts().get("pair_features"))
        fields = pair.fields
        server, port = start_platform_server(settings)
        connection = wait_healthy(port)
        rng = np.random.default_rng(2)
        requests = [[int(i) for i in rng.integers(1, args.entities + 1, 100)] for _ in range(args.reads)]

        def floor(ids: list[int]) -> None:
            pipe = redis.client.pipeline(transaction=False)
            for key in pair.keys([ids, [merchant(i) for i in ids]]):
                pipe.hmget(key, fields)
            for values in pipe.execute():
                for raw in values[:-1]:
                    Value.FromString(raw)
                Timestamp.FromString(values[-1])

        def http(view: str, entities: dict) -> list:
            body = json.dumps({"features": [f"{view}:{f}" for f in FEATURES], "entities": entities})
            connection.request("POST", "/get-online-features", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200, answer
            return answer["results"]

        def single(ids: list[int]) -> list:
            return http("single_features_v1", {"entity_id": ids})

        def composite(ids: list[int]) -> list:
            return http("pair_features_v1", {"entity_id": ids, "merchant_id": [merchant(i) for i in ids]})

        found = composite(requests[0])
        if any(s != "PRESENT" for r in found for s in r["statuses"]):  # misses would flatter every figure
            raise SystemExit("composite reads were not all PRESENT: materialization did not reach Redis")
        methods = {"floor_pair_hmget": floor, "single_key_http": single, "composite_key_http": composite}
        samples: dict[str, list[float]] = {name: [] for name in methods}
        for ids in requests:  # interleaved: every method reads in the same moment
            for name, run in methods.items():
                begin = time.perf_counter()
                run(ids)
                samples[name].append((time.perf_counter() - begin) * 1000)
        figures: dict[str, object] = {"entities": args.entities, "requests": args.reads, "entities_per_request": 100}
        figures.update({name: stats(values) for name, values in samples.items()})
        for q in ("p50", "p99"):
            figures[f"composite_over_single_{q}"] = round(figures["composite_key_http"][f"{q}_ms"]  # type: ignore[index]
                                                          / figures["single_key_http"][f"{q}_ms"], 2)  # type: ignore[index]
            figures[f"composite_over_floor_{q}"] = round(figures["composite_key_http"][f"{q}_ms"]  # type: ignore[index]
                                                         / figures["floor_pair_hmget"][f"{q}_ms"], 2)  # type: ignore[index]
        figures["target_composite_over_single_p99"] = 1.5
        report("composite", figures)
    finally:
        stop_server(server)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
