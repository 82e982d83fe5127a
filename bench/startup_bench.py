"""The fixed cost of a command: each main `featurectl` command's wall time end to end as users run it (a fresh
process), next to its floor, the interpreter start-up (`python -c pass`), and `import feast` as a plain
program pays it (typeguard instrumenting Feast) and as the platform's entry points do (no instrumentation).

Samples are interleaved round by round so machine noise hits every command alike; medians are printed.

    .venv/bin/python bench/startup_bench.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SKIP = "from feature_platform.startup import skip_feast_typechecks; skip_feast_typechecks(); "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    env = {**os.environ, "FEATURE_PLATFORM_HOME": str(home), "FEATURE_PLATFORM_ENV": "local",
           "FEATURE_PLATFORM_CONTRACTS": str(REPO / "contracts")}
    env.pop("FEATURE_PLATFORM_FEAST_TYPECHECKS", None)
    featurectl = str(BIN / "featurectl")
    # A loaded `local` environment, so reads and plans have something to do.
    subprocess.run([featurectl, "demo", "--scale", "0.05", "--json"], env=env, check=True, capture_output=True)
    commands = {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "import feast (plain)": [sys.executable, "-c", "import feast"],
        "import feast (entry points)": [sys.executable, "-c", SKIP + "import feast"],
        "featurectl --help": [featurectl, "--help"],
        "featurectl contracts validate": [featurectl, "contracts", "validate"],
        "featurectl versions": [featurectl, "versions", "customer_profile"],
        "featurectl apply (no-op)": [featurectl, "apply"],
        "featurectl plan": [featurectl, "plan"],
        "featurectl online": [featurectl, "online", "customer_profile", "1001"],
        "featurectl step validate_contract": [featurectl, "step", "validate_contract", "customer_profile"],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, command in commands.items():
            start = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            samples[name].append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed: {done.stderr[-2000:]}")
    figures = {name: round(statistics.median(values), 2) for name, values in samples.items()}
    figures["feast_import_plain_over_entry_points"] = round(
        figures["import feast (plain)"] / figures["import feast (entry points)"], 2)
    figures["rounds"] = args.rounds
    path = write_results("startup", figures)
    print(json.dumps(figures, indent=2))
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
