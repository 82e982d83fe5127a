"""Shared bits of the benchmarks: a results file, percentiles, a throwaway redis-server."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, figures: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "at": datetime.now(UTC).isoformat(), "machine": {
        "python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "figures": figures}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise SystemExit("redis-server is missing: run `scripts/dev setup`")
        self.port = free_port()
        self.process = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], stdout=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def wait_healthy(port: int, seconds: float = 120) -> Any:
    """An HTTP connection to a server on ``port`` once its /health answers (starting up takes seconds)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    deadline = time.monotonic() + seconds
    while True:
        try:
            connection.request("GET", "/health")
            if connection.getresponse().read() is not None:
                return connection
        except OSError:
            connection.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start_platform_server(settings: Any) -> tuple[subprocess.Popen, int]:
    """``featurectl serve`` for the bench environment of ``settings`` on a free port (not yet healthy)."""
    import sys

    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).parent / "featurectl"), "serve", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **settings.values,
                                    "FEATURE_PLATFORM_CONTRACTS": str(settings.contracts_dir),
                                    "FEATURE_PLATFORM_HOME": str(settings.home), "FEATURE_PLATFORM_ENV": "bench"})
    return process, port


def stop_server(process: subprocess.Popen | None) -> None:
    if process is not None:
        process.terminate()
        process.wait(timeout=30)


def report(name: str, figures: dict[str, Any]) -> None:
    """Write the figures to bench/results/<name>.json and print them."""
    path = write_results(name, figures)
    print(json.dumps(figures, indent=2))
    print(f"results: {path}")
