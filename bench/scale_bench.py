"""A catalogue at scale, end to end through `featurectl` as users run it, next to its floors, in one run.

N feature sets x 5 features sharing one entity, E entities (2 rows each), a real redis-server, the SQL registry
on a real PostgreSQL (a file registry where PostgreSQL is not installed). Measured, in this order:

- `featurectl build --all` (one process for the catalogue), per set;
- the first `apply`, a no-op `apply` and `plan` (which must report no changes), at the first 10 sets and at N,
  with the cost per view of each;
- `materialize` of every view through the CLI (its peak RSS included), interleaved with the floor: raw
  pipelined HSETs of the same hashes (one HSET per entity with every view's fields, encoded before the clock);
- HTTP reads of a feature service over 20 views x 5 features at 50 entities on `featurectl serve`, interleaved
  with the floor (one pipelined HMGET per entity of the same fields, plus protobuf decode), and the 20-view /
  1-view latency ratio next to Feast's published one (1.32 ms -> 21.2 ms at 50 entities).

    .venv/bin/python bench/scale_bench.py [--sets 50 --entities 100000 --reads 300 --rounds 2]

50 x 1M entities needs ~6 GB of Redis and about an hour on 2 cores; the defaults fit this machine in minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.services: a real PostgreSQL
from _common import RedisProcess, free_port, percentile, write_results

FEATURES = [f"f{i}" for i in range(5)]
SERVICE_VIEWS = 20
FEAST_PUBLISHED = {"one_view_ms": 1.32, "twenty_views_ms": 21.2}  # Feast's docs, 50 entities


def contract(index: int) -> dict:
    columns = ", ".join(f"{f} + {index} AS {f}" for f in FEATURES)
    return {"kind": "FeatureSet", "name": f"scale_{index:03d}", "version": 1, "description": "Scale bench.",
            "owner": "bench@example.com", "entity": {"name": "user", "join_key": "user_id", "dtype": "int64"},
            "timestamp_field": "event_timestamp", "ttl": "30d", "online": True, "pii": False,
            "source": {"table": "scale_raw", "sql": f"SELECT user_id, event_timestamp, {columns} FROM source"},
            "features": [{"name": f, "dtype": "float64", "description": f, "nullable": False} for f in FEATURES]}


def write_catalogue(root: Path, sets: int, registry: dict) -> None:
    for index in range(sets):
        path = root / "feature_sets" / f"scale_{index:03d}" / "v1.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(contract(index), sort_keys=False))
    environment = {"kind": "Environment", "name": "scale", "feast_project": "scale", "object_store": {"uri": "store"},
                   "raw_data": {"uri": "raw"}, "registry": registry,
                   "online_store": {"type": "redis", "address_env": "FEATURE_PLATFORM_REDIS_ADDRESS", "db": 0}}
    (root / "environments").mkdir(parents=True, exist_ok=True)
    (root / "environments" / "scale.yaml").write_text(yaml.safe_dump(environment))
    views = min(SERVICE_VIEWS, sets)
    service = {"kind": "FeatureService", "name": "scale_model", "version": 1, "description": "Scale bench.",
               "owner": "bench@example.com",
               "features": [{"feature_set": f"scale_{i:03d}", "version": 1} for i in range(views)]}
    path = root / "feature_services" / "scale_model" / "v1.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(service, sort_keys=False))


def write_raw(home: Path, entities: int) -> None:
    rng = np.random.default_rng(7)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)  # naive UTC for numpy
    ids = np.repeat(np.arange(1, entities + 1, dtype=np.int64), 2)
    stamps = np.tile(np.array([now - timedelta(hours=2), now - timedelta(hours=1)], dtype="datetime64[us]"),
                     entities)
    table = pa.table({"user_id": ids, "event_timestamp": pa.array(stamps, pa.timestamp("us", "UTC")),
                      **{f: rng.random(len(ids)) for f in FEATURES}})
    out = home / "scale" / "raw" / "scale_raw"  # the environment's raw_data.uri ("raw") under its home
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "part-00000.parquet")


class Catalogue:
    """The bench's environment, and `featurectl` run on it as a user would (a new process per command)."""

    def __init__(self, tmp: Path, redis: RedisProcess, registry_url: str | None) -> None:
        self.contracts, self.home = tmp / "contracts", tmp / "home"
        self.env = {**os.environ, "FEATURE_PLATFORM_CONTRACTS": str(self.contracts),
                    "FEATURE_PLATFORM_HOME": str(self.home), "FEATURE_PLATFORM_ENV": "scale",
                    "FEATURE_PLATFORM_REDIS_ADDRESS": redis.address}
        if registry_url:
            self.env["FEATURE_PLATFORM_REGISTRY_URL"] = registry_url
        self.registry = ({"type": "sql", "url_env": "FEATURE_PLATFORM_REGISTRY_URL", "cache_ttl_seconds": 600}
                         if registry_url else {"type": "file", "uri": "registry/registry.db", "cache_ttl_seconds": 600})

    def featurectl(self, *args: str, measure_rss: bool = False) -> tuple[float, str, float | None]:
        """Seconds, stdout and (``measure_rss``) the command's own peak RSS in MB."""
        command = [str(Path(sys.executable).parent / "featurectl"), *args]
        if measure_rss:  # the same entry point, reporting its VmHWM at exit
            command = [sys.executable, "-c", RSS_WRAPPER, *args]
        start = time.perf_counter()
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=7200)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"featurectl {' '.join(args)} failed ({done.returncode}): {done.stderr[-3000:]}")
        rss = None
        if measure_rss:
            rss = float(next(line for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_MB "))
                        .split()[1])
        return seconds, done.stdout, rss


RSS_WRAPPER = """
import atexit, sys
from pathlib import Path
def _peak():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print("PEAK_RSS_MB", int(line.split()[1]) / 1024, file=sys.stderr)
atexit.register(_peak)
from feature_platform.cli import main
sys.argv = ["featurectl", *sys.argv[1:]]
code = main()
sys.stderr.flush()
raise SystemExit(code)
"""


def floor_write(catalogue: Catalogue, sets: int) -> float:
    """Pipelined HSETs of the same hashes, one per entity with every view's fields: encoded batch by batch
    before the clock, only the writes timed."""
    from feature_platform import pipeline
    from feature_platform.build import read_metadata
    from feature_platform.environments import Settings
    from feature_platform.online import materialize as engine
    from feature_platform.online.layout import plan_contract
    from feature_platform.online.redis_client import connect

    settings = Settings.from_env(catalogue.env)
    env = settings.environment()
    contracts = settings.contracts()
    store = pipeline.object_store(settings, env)
    streams = []
    for index in range(sets):
        c = contracts.get(f"scale_{index:03d}")
        pointer = pipeline.versions(settings, c.name)[1]
        plan = plan_contract("scale", c)
        streams.append((plan, engine.newest_rows(store.fs, read_metadata(store, c, pointer["build_id"]), plan)))
    client = connect(settings, env)
    elapsed = 0.0
    for batches in zip(*(s for _, s in streams), strict=True):
        encoded = [engine.hset_commands(plan, batch) for (plan, _), batch in zip(streams, batches, strict=True)]
        keys = encoded[0][0]
        fields = [field for (plan, _) in streams for field in plan.fields]
        assert all(e[0] == keys for e in encoded), "the views' builds hold the same entities in the same order"
        rows = [[value for _, columns in encoded for value in (column[i] for column in columns)]
                for i in range(len(keys))]
        start = time.perf_counter()
        for offset in range(0, len(keys), 200):
            pipe = client.pipeline(transaction=False)
            for key, values in zip(keys[offset:offset + 200], rows[offset:offset + 200], strict=True):
                pipe.hset(key, mapping=dict(zip(fields, values, strict=True)))
            pipe.execute()
        elapsed += time.perf_counter() - start
    return elapsed


def stats(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(samples, 50), 3), "p99_ms": round(percentile(samples, 99), 3)}


@contextlib.contextmanager
def serving(catalogue: Catalogue) -> Iterator[http.client.HTTPConnection]:
    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).parent / "featurectl"), "serve", "--port", str(port)],
                               env=catalogue.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                connection.request("GET", "/health")
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    break
            except OSError:
                connection.close()
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("featurectl serve did not become ready")
            time.sleep(0.2)
        yield connection
    finally:
        process.terminate()
        process.wait(timeout=30)


def reads(catalogue: Catalogue, sets: int, entities: int, count: int) -> dict[str, object]:
    import redis as redis_py
    from feast.infra.online_stores.helpers import _mmh3, _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from google.protobuf.timestamp_pb2 import Timestamp

    host, port = catalogue.env["FEATURE_PLATFORM_REDIS_ADDRESS"].split(":")
    client = redis_py.Redis(host=host, port=int(port))
    views = [f"scale_{i:03d}_v1" for i in range(min(SERVICE_VIEWS, sets))]
    rng = np.random.default_rng(3)
    requests = [[int(i) for i in rng.integers(1, entities + 1, 50)] for _ in range(count)]

    def floor(ids: list[int], among: list[str]) -> None:
        fields = [f for view in among for f in [*(_mmh3(f"{view}:{x}") for x in FEATURES), f"_ts:{view}".encode()]]
        pipe = client.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(_redis_key("scale", EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=i)]), 3),
                       fields)
        for values in pipe.execute():
            for j, raw in enumerate(values):
                (Timestamp if j % 6 == 5 else Value).FromString(raw)

    with serving(catalogue) as connection:
        def http(body: dict) -> None:
            connection.request("POST", "/get-online-features", json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            assert response.status == 200, answer[:500]

        methods = {
            "service_http": lambda ids: http({"feature_service": "scale_model_v1",
                                                       "entities": {"user_id": ids}}),
            "service_floor": lambda ids: floor(ids, views),
            "one_view_http": lambda ids: http({"features": [f"{views[0]}:{f}" for f in FEATURES],
                                               "entities": {"user_id": ids}}),
            "one_view_floor": lambda ids: floor(ids, views[:1]),
        }
        samples: dict[str, list[float]] = {name: [] for name in methods}
        for run in methods.values():
            run(requests[0])
        for ids in requests:  # interleaved: every method reads the same keys in the same moment
            for name, run in methods.items():
                start = time.perf_counter()
                run(ids)
                samples[name].append((time.perf_counter() - start) * 1000)
    out: dict[str, object] = {"service_views": len(views), **{name: stats(v) for name, v in samples.items()}}
    out["service_http_over_floor_p99"] = round(
        out["service_http"]["p99_ms"] / out["service_floor"]["p99_ms"], 2)
    out["service_over_one_view_http_p50"] = round(
        out["service_http"]["p50_ms"] / out["one_view_http"]["p50_ms"], 2)
    out["feast_published_twenty_over_one_view"] = round(
        FEAST_PUBLISHED["twenty_views_ms"] / FEAST_PUBLISHED["one_view_ms"], 2)
    return out


def control_plane(catalogue: Catalogue, sets: int) -> dict[str, float]:
    """First apply, no-op apply and plan at this catalogue size (plan must report no changes)."""
    first, _, _ = catalogue.featurectl("apply", "--json")
    noop, out, _ = catalogue.featurectl("apply", "--json")
    changed = json.loads(out)["changed"]
    if changed:
        raise SystemExit(f"a second apply changed {changed}: it must be a no-op")
    plan, out, _ = catalogue.featurectl("plan", "--json")
    planned = json.loads(out)
    if planned["registry_changes"] or planned["infra_changes"]:
        raise SystemExit(f"plan after apply reports changes: {out[:500]}")
    return {"apply_first_s": round(first, 2), "apply_noop_s": round(noop, 2), "plan_s": round(plan, 2),
            "apply_noop_ms_per_view": round(noop * 1000 / sets, 1), "plan_ms_per_view": round(plan * 1000 / sets, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=50)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2, help="materialize / floor rounds, interleaved")
    args = parser.parse_args()
    small = min(10, args.sets)
    tmp = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    redis = RedisProcess()
    postgres = contextlib.ExitStack()
    try:
        registry_url = None
        try:
            from tests.services import running_postgres

            registry_url = postgres.enter_context(running_postgres()).url()
        except (SystemExit, FileNotFoundError, OSError, subprocess.CalledProcessError) as exc:
            print(f"PostgreSQL unavailable ({exc}); the file registry instead", file=sys.stderr)
        catalogue = Catalogue(tmp, redis, registry_url)
        write_raw(catalogue.home, args.entities)
        figures: dict[str, object] = {"sets": args.sets, "features_per_set": len(FEATURES),
                                      "entities": args.entities, "registry": "sql" if registry_url else "file"}

        write_catalogue(catalogue.contracts, small, catalogue.registry)
        seconds, _, _ = catalogue.featurectl("build", "--all", "--quiet")
        figures[f"build_all_{small}_sets_s"] = round(seconds, 2)
        figures[f"control_plane_{small}_views"] = control_plane(catalogue, small)

        write_catalogue(catalogue.contracts, args.sets, catalogue.registry)
        seconds, _, _ = catalogue.featurectl("build", "--all", "--quiet")  # the first sets' builds are reused
        figures[f"build_all_{args.sets}_sets_s"] = round(seconds, 2)
        figures["build_s_per_new_set"] = round(seconds / max(1, args.sets - small), 2)
        figures[f"control_plane_{args.sets}_views"] = control_plane(catalogue, args.sets)

        platform, floor, rss = [], [], []
        for _ in range(args.rounds):  # interleaved: each round flushes, then the platform, flushes, the floor
            redis.client.flushall()
            seconds, _, peak = catalogue.featurectl("materialize", "--quiet", measure_rss=True)
            platform.append(seconds)
            rss.append(peak or 0.0)
            redis.client.flushall()
            floor.append(floor_write(catalogue, args.sets))
        redis.client.flushall()
        catalogue.featurectl("materialize", "--quiet")
        figures["materialize"] = {
            "platform_cli_s": [round(s, 2) for s in platform], "floor_hset_s": [round(s, 2) for s in floor],
            "platform_over_floor_throughput": round(min(floor) / min(platform), 2),
            "peak_rss_mb": round(max(rss)), "view_rows": args.sets * args.entities,
            "platform_view_rows_per_s": round(args.sets * args.entities / min(platform))}
        figures["reads_50_entities"] = reads(catalogue, args.sets, args.entities, args.reads)
        figures["redis_used_memory_mb"] = round(redis.client.info("memory")["used_memory"] / 2**20)
        path = write_results("scale", figures)
        print(json.dumps(figures, indent=2))
        print(f"written to {path}", file=sys.stderr)
    finally:
        postgres.close()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
