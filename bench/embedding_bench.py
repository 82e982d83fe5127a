"""Embeddings (array<float32>, 768 dims) on a real redis-server, each figure next to its floor in the same run on
the same hashes.

- Reads, interleaved request by request: POST /get-online-features of 100 entities x one embedding on the
  platform's server over HTTP (the client decodes the JSON), against raw redis-py pipelined HMGET of the same
  hashes plus protobuf decode of each value into a Python list.
- Materialization, each in its own child process (peak RSS its own): `materialize` of N embeddings against raw
  pipelined HSET of the same hashes, pre-encoded before the clock starts.

    .venv/bin/python bench/embedding_bench.py [--entities 1000000 --dims 768 --reads 300]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RedisProcess, report, start_platform_server, stop_server, wait_healthy
from materialize_bench import peak_rss_mb
from serving_bench import make_contracts, stats

from feature_platform import pipeline
from feature_platform.environments import Settings

VIEW = "bench_features_v1"


def contract(dims: int) -> dict:
    return {"kind": "FeatureSet", "name": "bench_features", "version": 1, "description": "Benchmark embeddings.",
            "owner": "bench@example.com", "entity": {"name": "item", "join_key": "entity_id", "dtype": "int64"},
            "timestamp_field": "event_timestamp", "ttl": "30d", "online": True, "pii": False,
            "source": {"table": "bench_raw", "sql": "SELECT * FROM source"},
            "features": [{"name": "emb", "dtype": "array<float32>", "dims": dims, "nullable": False,
                          "description": "an embedding"}]}


def make_raw(settings: Settings, entities: int, dims: int, tmp: Path) -> None:
    """One row per entity, written in slices so the raw table never sits in memory whole."""
    raw = pipeline.raw_store(settings, settings.environment())
    rng = np.random.default_rng(1)
    stamp = np.datetime64(datetime.now(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None), "us")
    schema = pa.schema([("entity_id", pa.int64()), ("event_timestamp", pa.timestamp("us", "UTC")),
                        ("emb", pa.list_(pa.float32()))])
    path = tmp / "bench_raw.parquet"
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, entities, 50_000):
            n = min(50_000, entities - start)
            values = rng.standard_normal(n * dims, dtype=np.float32)
            emb = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * dims, dims, dtype=np.int32)),
                                           pa.array(values))
            writer.write_table(pa.table({"entity_id": np.arange(start + 1, start + n + 1, dtype=np.int64),
                                         "event_timestamp": pa.array(np.full(n, stamp), pa.timestamp("us", "UTC")),
                                         "emb": emb}, schema=schema))
    raw.upload(path, "bench_raw/part-00000.parquet")


def child(method: str, contracts: str, home: str, address: str) -> None:
    """One materialization in its own process; prints {seconds, peak_rss_mb}."""
    from feature_platform import build as builds
    from feature_platform import feast_bridge

    settings = Settings.from_env({"FEATURE_PLATFORM_REDIS_ADDRESS": address}, contracts_dir=contracts, home=home,
                                 env_name="bench")
    env = settings.environment()
    if method == "floor":
        from feature_platform.online import materialize as engine
        from feature_platform.online.layout import plan_contract
        from feature_platform.online.redis_client import connect

        item = settings.contracts().get("bench_features")
        metadata = builds.read_metadata(pipeline.object_store(settings, env), item,
                                        pipeline.versions(settings, "bench_features")[1]["build_id"])
        plan = plan_contract("bench", item)
        fs = pipeline.object_store(settings, env).fs
        client = connect(settings, env)
        seconds = 0.0
        # Encoded batch by batch outside the clock (all at once would not fit memory): only HSET is timed.
        for batch in engine.newest_rows(fs, metadata, plan):
            keys, columns = engine.hset_commands(plan, batch)
            start = time.perf_counter()
            for offset in range(0, len(keys), 1000):
                pipe = client.pipeline(transaction=False)
                for i, key in enumerate(keys[offset:offset + 1000], start=offset):
                    pipe.hset(key, mapping=dict(zip(plan.fields, (c[i] for c in columns), strict=True)))
                pipe.execute()
            seconds += time.perf_counter() - start
    else:
        feast_bridge.open_store(settings, env)  # Feast imported and the registry loaded before the clock
        start = time.perf_counter()
        pipeline.materialize(settings)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(peak_rss_mb())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    redis = RedisProcess()
    tmp = Path(tempfile.mkdtemp(prefix="embedding-bench-"))
    server = None
    try:
        make_contracts(tmp / "contracts", contract(args.dims))
        settings = Settings.from_env({"FEATURE_PLATFORM_REDIS_ADDRESS": redis.address},
                                     contracts_dir=tmp / "contracts", home=tmp / "home", env_name="bench")
        make_raw(settings, args.entities, args.dims, tmp)
        pipeline.build_and_promote(settings, "bench_features")
        pipeline.apply(settings)
        figures: dict[str, object] = {"entities": args.entities, "dims": args.dims}
        for method in ("floor", "platform"):  # the platform last: its load is what the reads below read
            redis.client.flushall()
            out = subprocess.run([sys.executable, __file__, "--child", method, str(settings.contracts_dir),
                                  str(settings.home), redis.address], capture_output=True, text=True, timeout=7200)
            if out.returncode != 0:
                raise SystemExit(f"{method} failed: {out.stderr[-2000:]}")
            figures[f"materialize_{method}"] = json.loads(out.stdout.strip().splitlines()[-1])
        figures["materialize_platform_share_of_floor_throughput"] = round(
            figures["materialize_floor"]["seconds"] / figures["materialize_platform"]["seconds"], 2)  # type: ignore[index]

        from feast.protos.feast.types.Value_pb2 import Value

        from feature_platform.online.layout import plan_contract

        plan = plan_contract("bench", settings.contracts().get("bench_features"))
        fields = [*plan.fields]
        server, port = start_platform_server(settings)
        connection = wait_healthy(port)
        rng = np.random.default_rng(2)
        requests = [[int(i) for i in rng.integers(1, args.entities + 1, 100)] for _ in range(args.reads)]

        def floor(ids: list[int]) -> list[list[float]]:
            pipe = redis.client.pipeline(transaction=False)
            for key in plan.keys([ids]):
                pipe.hmget(key, fields)
            return [list(Value.FromString(reply[0]).float_list_val.val) for reply in pipe.execute()]

        def platform(ids: list[int]) -> list[list[float]]:
            connection.request("POST", "/get-online-features", json.dumps(
                {"features": [f"{VIEW}:emb"], "entities": {"entity_id": ids}}), {"Content-Type": "application/json"})
            answer = json.loads(connection.getresponse().read())
            return answer["results"][1]["values"]

        def platform_arrow(ids: list[int]) -> np.ndarray:
            """The same read answered as an Arrow stream (Accept header), as a (100, 768) float32 matrix."""
            connection.request("POST", "/get-online-features", json.dumps(
                {"features": [f"{VIEW}:emb"], "entities": {"entity_id": ids}}),
                {"Content-Type": "application/json", "Accept": "application/vnd.apache.arrow.stream"})
            table = pa.ipc.open_stream(connection.getresponse().read()).read_all()
            column = table.column("emb").combine_chunks()
            return column.flatten().to_numpy().reshape(len(column), -1)

        def platform_arrow_lists(ids: list[int]) -> list[list[float]]:
            """Arrow, then Python lists (what the floor returns): the client's cost of Python floats included."""
            return platform_arrow(ids).tolist()

        assert floor(requests[0]) == platform(requests[0]), "the platform and the floor read different values"
        assert np.array_equal(np.array(floor(requests[0]), np.float32), platform_arrow(requests[0]))
        methods = {"floor": floor, "platform": platform, "platform_arrow": platform_arrow,
                   "platform_arrow_lists": platform_arrow_lists}
        timings: dict[str, list[float]] = {name: [] for name in methods}
        for ids in requests:  # interleaved: machine noise hits every method alike
            for name, method in methods.items():
                begin = time.perf_counter()
                method(ids)
                timings[name].append((time.perf_counter() - begin) * 1000)
        figures["read_100_floor"] = stats(timings["floor"])
        for name, label in (("platform", "http"), ("platform_arrow", "http_arrow"),
                            ("platform_arrow_lists", "http_arrow_lists")):
            figures[f"read_100_platform_{label}"] = stats(timings[name])
            for q in ("p50", "p99"):
                figures[f"read_100_{label}_over_floor_{q}"] = round(
                    figures[f"read_100_platform_{label}"][f"{q}_ms"]  # type: ignore[index]
                    / figures["read_100_floor"][f"{q}_ms"], 2)  # type: ignore[index]
        report("embedding", figures)
    finally:
        stop_server(server)
        redis.stop()


if __name__ == "__main__":
    main()
