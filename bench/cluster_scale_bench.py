"""Scale-out: one view of N entities (default 5M) into a local 3-master Redis Cluster, loaded by 1, 2 and 4
`featurectl materialize --shard I/S` processes at once (as S pods would), against the floor: the same hashes,
encoded before the clock starts, sent as raw pipelined HSET per master (RESP on one connection per node).
Wall time, entities/s, and each process's peak RSS (VmHWM). Every run starts from an empty cluster and is
checked for the full entity count.

    .venv/bin/python bench/cluster_scale_bench.py [--entities 5000000] [--shards 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, write_results
from serving_bench import make_contracts, make_raw

from feature_platform import pipeline
from feature_platform.environments import Settings

PASSWORD = "bench-only"


class Cluster:
    """Three masters, no replicas, no persistence."""

    def __init__(self, root: Path) -> None:
        self.ports = []
        while len(self.ports) < 3:
            port = free_port()
            if port + 10000 <= 65535 and port not in self.ports:
                self.ports.append(port)
        self.processes = []
        for port in self.ports:
            (root / str(port)).mkdir(parents=True)
            self.processes.append(subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--cluster-enabled", "yes", "--dir", str(root / str(port)),
                 "--requirepass", PASSWORD, "--masterauth", PASSWORD], stdout=subprocess.DEVNULL))
        import redis

        for port in self.ports:
            self._wait(lambda port=port: redis.Redis(port=port, password=PASSWORD).ping())
        subprocess.run(["redis-cli", "-a", PASSWORD, "--no-auth-warning", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports], "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self._wait(lambda: all(b"cluster_state:ok" in redis.Redis(port=p, password=PASSWORD).execute_command(
            "CLUSTER", "INFO") for p in self.ports))

    @staticmethod
    def _wait(check) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if check():
                    return
            except Exception:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)  # readiness poll

    @property
    def address(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def nodes(self) -> list:
        import redis

        return [redis.Redis(port=p, password=PASSWORD) for p in self.ports]

    def flush(self) -> None:
        for node in self.nodes():
            node.flushall()

    def size(self) -> int:
        return sum(node.dbsize() for node in self.nodes())

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(timeout=10)


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.values, "FEATURE_PLATFORM_CONTRACTS": str(settings.contracts_dir),
            "FEATURE_PLATFORM_HOME": str(settings.home), "FEATURE_PLATFORM_ENV": settings.env_name}


FLOOR_CHILD = """
import json, sys, time
from pathlib import Path
from feature_platform import build as builds
from feature_platform import pipeline
from feature_platform.environments import Settings
from feature_platform.online import materialize as engine
from feature_platform.online.layout import plan_contract
from feature_platform.online.redis_client import connect
settings = Settings.from_env(contracts_dir=sys.argv[1], home=sys.argv[2], env_name="bench")
env = settings.environment()
contract = settings.contracts().get("bench_features")
store = pipeline.object_store(settings, env)
build_id = pipeline.versions(settings, "bench_features")[1]["build_id"]
metadata = builds.read_metadata(store, contract, build_id)
plan = plan_contract(env.feast_project, contract)
encoded = [engine.hset_commands(plan, b) for b in engine.newest_rows(store.fs, metadata, plan)]
client = connect(settings, env)
start = time.perf_counter()
for keys, columns in encoded:
    engine._write_cluster(client, plan.fields, keys, columns)
seconds = time.perf_counter() - start
hwm = next(int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
           if line.startswith("VmHWM:"))
print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": [round(hwm)]}))
"""


def run_floor(settings: Settings) -> dict:
    out = subprocess.run([sys.executable, "-c", FLOOR_CHILD, str(settings.contracts_dir), str(settings.home)],
                         env=_env(settings), capture_output=True, text=True, timeout=7200)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


WRAPPER = """
import runpy, sys, json, atexit
from pathlib import Path
def report():
    hwm = next(int(l.split()[1]) / 1024 for l in Path("/proc/self/status").read_text().splitlines()
               if l.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mb": round(hwm)}), file=sys.stderr)
atexit.register(report)
sys.argv = ["featurectl", *sys.argv[1:]]
from feature_platform.cli import main
code = main()
report(); atexit.unregister(report)
sys.exit(code)
"""


def run_shards(settings: Settings, shards: int) -> dict:
    """`featurectl materialize --shard I/S` as S processes at once; wall time and each one's peak RSS."""
    start = time.perf_counter()
    children = [subprocess.Popen([sys.executable, "-c", WRAPPER, "materialize", "--quiet", "--json",
                                  *(["--shard", f"{i}/{shards}"] if shards > 1 else [])],
                                 env=_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(shards)]
    results = [(c.wait(timeout=7200), c.stdout.read(), c.stderr.read()) for c in children]
    seconds = time.perf_counter() - start
    if any(code for code, _, _ in results):
        raise SystemExit([err[-2000:] for code, _, err in results if code])
    peaks = [json.loads(err.strip().splitlines()[-1])["peak_rss_mb"] for _, _, err in results]
    return {"seconds": round(seconds, 2), "peak_rss_mb": peaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entities", type=int, default=5_000_000)
    parser.add_argument("--shards", default="1,2,4")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cluster-scale-bench-"))
    cluster = Cluster(tmp / "cluster")
    try:
        make_contracts(tmp / "contracts")
        path = tmp / "contracts" / "environments" / "bench.yaml"
        import yaml

        env = yaml.safe_load(path.read_text())
        env["online_store"] = {**env["online_store"], "cluster": True, "db": 0,
                               "password_env": "FEATURE_PLATFORM_REDIS_PASSWORD"}
        path.write_text(yaml.safe_dump(env))
        settings = Settings.from_env({"FEATURE_PLATFORM_REDIS_ADDRESS": cluster.address,
                                      "FEATURE_PLATFORM_REDIS_PASSWORD": PASSWORD},
                                     contracts_dir=tmp / "contracts", home=tmp / "home", env_name="bench")
        started = time.perf_counter()
        make_raw(pipeline.raw_store(settings, settings.environment()), args.entities, args.entities, tmp)
        pipeline.build_and_promote(settings, "bench_features")
        pipeline.apply(settings)
        print(f"built {args.entities:,} entities in {time.perf_counter() - started:.0f}s", flush=True)
        figures: dict[str, dict] = {"entities": args.entities, "masters": 3, "cpus": os.cpu_count()}
        cluster.flush()
        figures["floor"] = run_floor(settings)
        assert cluster.size() == args.entities, cluster.size()
        print("floor", figures["floor"], flush=True)
        for shards in (int(s) for s in args.shards.split(",")):
            cluster.flush()
            result = run_shards(settings, shards)
            assert cluster.size() == args.entities, (shards, cluster.size())
            result["entities_per_second"] = round(args.entities / result["seconds"])
            result["share_of_floor"] = round(figures["floor"]["seconds"] / result["seconds"], 2)
            figures[f"{shards}_shards"] = result
            print(f"{shards} shard(s)", result, flush=True)
        print(f"results: {write_results('cluster_scale', figures)}")
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
