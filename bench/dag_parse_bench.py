"""DAG parse time as Airflow's dag-processor pays it, local mode against kubernetes mode, idle and under load.

The dag-processor imports the `airflow.*` modules a DAG file names once, before it forks each parse
(`parsing_pre_import_modules`); what every parse then pays, under `dagbag_import_timeout` (30 s by default), is
the import of the DAG file itself. Each sample is a fresh process that does exactly that: pre-import, then time
`DagBag(dags/)`. Modes and catalogue sizes (the repo's contracts, and a generated catalogue of 100 feature sets)
are interleaved, round by round; the load is two busy loops (one per core).

    .venv/bin/python bench/dag_parse_bench.py [--rounds 5] [--sets 100]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import importlib, json, pathlib, sys, time
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.file import iter_airflow_imports
start = time.perf_counter()
for path in pathlib.Path(sys.argv[1]).glob("*.py"):
    for module in iter_airflow_imports(str(path)):
        importlib.import_module(module)
pre_imported = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
parsed = time.perf_counter()
assert not bag.import_errors, bag.import_errors
print(json.dumps({"pre_import": pre_imported - start, "parse": parsed - pre_imported, "dags": len(bag.dags)}))
"""


def catalogue(root: Path, sets: int) -> Path:
    """The repo's contracts plus ``sets`` generated feature sets of five features sharing one entity."""
    contracts = root / "contracts"
    shutil.copytree(REPO / "contracts", contracts)
    for i in range(sets):
        name = f"generated_{i:03d}"
        document = {"kind": "FeatureSet", "name": name, "version": 1, "description": "Generated for the bench.",
                    "owner": "bench@example.com",
                    "entity": {"name": "customer", "join_key": "customer_id", "dtype": "int64",
                               "description": "Internal customer number."},
                    "timestamp_field": "event_timestamp", "ttl": "7d", "online": True, "pii": False,
                    "source": {"table": "transactions",
                               "sql": "SELECT customer_id, ts AS event_timestamp, "
                                      + ", ".join(f"amount * {k} AS f{k}" for k in range(5)) + " FROM source"},
                    "features": [{"name": f"f{k}", "dtype": "float64", "description": f"feature {k}"}
                                 for k in range(5)]}
        path = contracts / "feature_sets" / name / "v1.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
    return contracts


def sample(contracts: Path, mode: str, home: Path) -> dict[str, float]:
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "FEATURE_PLATFORM_CONTRACTS": str(contracts), "FEATURE_PLATFORM_DAG_MODE": mode,
           "FEATURE_PLATFORM_ENV": "dev" if mode == "kubernetes" else "local",
           "FEATURE_PLATFORM_IMAGE": "registry.example.com/feature-platform@sha256:" + "0" * 64,
           "FEATURE_PLATFORM_NAMESPACE": "feature-platform-dev"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / "dags")], env=env, capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def busy() -> None:
    while True:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sets", type=int, default=100, help="generated feature sets in the large catalogue")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dag-parse-bench-") as tmp:
        root = Path(tmp)
        catalogues = {"repo": REPO / "contracts", f"{args.sets} sets": catalogue(root / "large", args.sets)}
        figures: dict[str, dict] = {}
        for load in ("idle", "2 busy loops"):
            hogs = [multiprocessing.Process(target=busy, daemon=True) for _ in range(2 if load != "idle" else 0)]
            for hog in hogs:
                hog.start()
            try:
                samples: dict[str, list[dict[str, float]]] = {}
                for _ in range(args.rounds):  # interleaved: each round runs every mode and catalogue once
                    for name, contracts in catalogues.items():
                        for mode in ("local", "kubernetes"):
                            samples.setdefault(f"{mode}, {name}", []).append(sample(contracts, mode, root / "af"))
            finally:
                for hog in hogs:
                    hog.terminate()
            figures[load] = {key: {"parse_median_s": round(statistics.median(s["parse"] for s in runs), 3),
                                   "parse_max_s": round(max(s["parse"] for s in runs), 3),
                                   "pre_import_median_s": round(statistics.median(s["pre_import"] for s in runs), 3),
                                   "dags": runs[0]["dags"]}
                             for key, runs in samples.items()}
            for name in catalogues:
                local = figures[load][f"local, {name}"]["parse_median_s"]
                kube = figures[load][f"kubernetes, {name}"]["parse_median_s"]
                figures[load][f"kubernetes / local, {name}"] = round(kube / local, 2) if local else None
    for load, rows in figures.items():
        print(f"{load}:")
        for key, value in rows.items():
            print(f"  {key}: {value}")
    print(f"results: {write_results('dag_parse', figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
