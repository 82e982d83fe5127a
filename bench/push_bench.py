"""Push latency on a real redis-server and the platform server over HTTP, next to its floor measured in the same
run on the same hashes: raw redis-py pipelined HSET of the pre-encoded rows (Feast's layout).

Interleaved request by request: a POST /push of N fresh rows (N = 1 and 100; every row newer than the stored one,
so every row is written), then the floor HSETs the same hashes. Read-after-write: a push followed at once by a
read of the pushed entities; the lag is from the push's send to the answer holding the pushed values. Sustained:
4 concurrent clients pushing 100 rows per request.

    .venv/bin/python bench/push_bench.py [--entities 200000 --requests 500]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RedisProcess, percentile, report, start_platform_server, stop_server, wait_healthy
from serving_bench import CONTRACT, FEATURES, loaded, stats

SOURCE = "bench_features_v1_push"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entities", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0, help="sustained phase length")
    args = parser.parse_args()
    redis = RedisProcess()
    tmp = Path(tempfile.mkdtemp(prefix="push-bench-"))
    server = None
    try:
        settings = loaded(redis.address, tmp, args.entities, args.entities, {**CONTRACT, "push": True})

        from feature_platform.online.layout import plan_contract
        from feature_platform.online.materialize import hset_commands

        plan = plan_contract("bench", settings.contracts().get("bench_features"))
        server, port = start_platform_server(settings)
        connection = wait_healthy(port)

        rng = np.random.default_rng(3)
        fresh = iter(range(1, args.entities + 1))  # every request pushes entities not pushed before
        stamp = datetime.now(UTC).replace(microsecond=0)

        def rows(n: int, when: datetime) -> dict[str, list]:
            ids = [next(fresh) for _ in range(n)]
            return {"entity_id": ids, "event_timestamp": [when.isoformat()] * n,
                    **{f: rng.random(n).tolist() for f in FEATURES}}

        def encode_push(df: dict[str, list]) -> bytes:
            return json.dumps({"push_source_name": SOURCE, "df": df, "to": "online"}).encode()

        def push(conn: http.client.HTTPConnection, df: dict[str, list] | bytes) -> dict:
            conn.request("POST", "/push", df if isinstance(df, bytes) else encode_push(df),
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, body
            return json.loads(body)

        def floor_commands(df: dict[str, list]) -> list[tuple[bytes, dict[bytes, bytes]]]:
            batch = pa.record_batch({"entity_id": pa.array(df["entity_id"], pa.int64()),
                                     "event_timestamp": pa.array([stamp] * len(df["entity_id"]),
                                                                 pa.timestamp("us", tz="UTC")),
                                     **{f: pa.array(df[f], pa.float64()) for f in FEATURES}})
            keys, columns = hset_commands(plan, batch)
            return [(key, dict(zip(plan.fields, (column[i] for column in columns), strict=True)))
                    for i, key in enumerate(keys)]

        def floor(commands: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
            pipe = redis.client.pipeline(transaction=False)
            for key, mapping in commands:
                pipe.hset(key, mapping=mapping)
            pipe.execute()

        figures: dict[str, object] = {"entities": args.entities, "requests": args.requests}
        for n in (1, 100):
            platform, floor_ms = [], []
            for _ in range(args.requests):
                df = rows(n, stamp)
                # Both encoded outside the timing: the client's JSON as the floor's commands (the floor is the
                # HSET alone; the platform is the request, from send to answer).
                commands, encoded = floor_commands(df), encode_push(df)
                begin = time.perf_counter()
                answer = push(connection, encoded)
                platform.append((time.perf_counter() - begin) * 1000)
                assert answer["written_online"] == n, answer  # every row written, none skipped as older
                begin = time.perf_counter()
                floor(commands)
                floor_ms.append((time.perf_counter() - begin) * 1000)
            figures[f"push_{n}_platform_http"] = stats(platform)
            figures[f"push_{n}_floor_hset"] = stats(floor_ms)
            figures[f"push_{n}_over_floor_p99"] = round(percentile(platform, 99) / percentile(floor_ms, 99), 2)
            figures[f"push_{n}_over_floor_p50"] = round(percentile(platform, 50) / percentile(floor_ms, 50), 2)

        # Read-after-write: push 100 rows, read them back at once; the lag is push sent -> values read.
        lags = []
        for _ in range(min(args.requests, 200)):
            df = rows(100, stamp)
            encoded = encode_push(df)
            begin = time.perf_counter()
            push(connection, encoded)
            connection.request("POST", "/get-online-features", json.dumps(
                {"features": [f"bench_features_v1:{FEATURES[0]}"], "entities": {"entity_id": df["entity_id"]}}),
                {"Content-Type": "application/json"})
            read = json.loads(connection.getresponse().read())
            lags.append((time.perf_counter() - begin) * 1000)
            assert read["results"][1]["values"] == df[FEATURES[0]], "a pushed value was not read back"
        figures["read_after_write_100"] = stats(lags)

        # Sustained: 4 clients, 100 rows per push, each push one second newer than the last (always written).
        counter = {"rows": 0, "pushes": 0}
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds
        ids = np.arange(1, args.entities + 1)

        def client(offset: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            when = stamp + timedelta(seconds=1 + offset)
            while time.monotonic() < stop_at:
                picked = rng.choice(ids, 100, replace=False).tolist()
                push(conn, {"entity_id": picked, "event_timestamp": [when.isoformat()] * 100,
                            **{f: [0.5] * 100 for f in FEATURES}})
                when += timedelta(seconds=1)
                with lock:
                    counter["rows"] += 100
                    counter["pushes"] += 1
            conn.close()

        began = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert counter["pushes"], "the sustained clients pushed nothing (see the errors above)"
        elapsed = time.monotonic() - began
        figures["sustained_4_clients_rows_per_s"] = round(counter["rows"] / elapsed)
        figures["sustained_4_clients_pushes_per_s"] = round(counter["pushes"] / elapsed)
        report("push", figures)
    finally:
        stop_server(server)
        redis.stop()


if __name__ == "__main__":
    main()
