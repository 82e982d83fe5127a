"""A Redis Cluster online store (three real masters): the loop, values equal to a single node, the server,
a stopped master (a clear error, not a hang) and its return."""

from __future__ import annotations

import time

import pytest
import yaml

from feature_platform import feast_bridge, pipeline
from feature_platform.errors import OnlineStoreUnavailable
from tests.helpers import every_dtype_contract, merchant_events, read_raw, replace_raw, seed_raw, write_contract

pytestmark = pytest.mark.e2e

MERCHANTS = [f"m{i:03d}" for i in range(120)]


def _as_cluster(settings, contracts, cluster):
    path = contracts / "environments/dev.yaml"
    env = yaml.safe_load(path.read_text())
    env["online_store"] = {**env["online_store"], "cluster": True, "db": 0}
    path.write_text(yaml.safe_dump(env))
    return settings.replace(values={**settings.values, "FEATURE_PLATFORM_REDIS_ADDRESS": cluster.address})


def test_cluster_serves_what_a_single_node_serves(dev_settings, contracts_copy, redis_cluster) -> None:
    """Apply, materialize (deletions included), online reads, verify and the server on a cluster; every value
    equals the single-node answer for the same builds; the keys are spread over all three masters."""
    from tests.test_server import Server

    write_contract(contracts_copy, every_dtype_contract())
    seed_raw(dev_settings)
    replace_raw(dev_settings, "merchant_events", merchant_events(MERCHANTS))
    pipeline.run_loop(dev_settings)
    probes = {("customer_spend", 2): [1001, 1002, 1003, 999999], ("merchant_risk", 1): [*MERCHANTS[:30], "nope"]}
    single = {k: feast_bridge.read_online(dev_settings, k[0], v, version=k[1]) for k, v in probes.items()}

    settings = _as_cluster(dev_settings, contracts_copy, redis_cluster)
    pipeline.apply(settings)
    done = pipeline.materialize(settings)
    assert all(d["mode"] == "full" for d in done)
    clustered = {k: feast_bridge.read_online(settings, k[0], v, version=k[1]) for k, v in probes.items()}
    assert clustered == single
    import redis

    sizes = [redis.Redis(port=p, password=redis_cluster.password).dbsize() for p in redis_cluster.ports]
    assert all(size > 0 for size in sizes)
    pipeline.verify(settings)

    replace_raw(settings, "merchant_events", merchant_events(MERCHANTS[10:]))  # 10 merchants leave
    pipeline.build_and_promote(settings, "merchant_risk")
    pipeline.apply(settings, feature_sets=["merchant_risk"])
    [done] = pipeline.materialize(settings, incremental=True, feature_views=["merchant_risk_v1"])
    assert done["deleted"] == 10
    rows = feast_bridge.read_online(settings, "merchant_risk", MERCHANTS[:12])
    assert [r["status"] for r in rows] == ["NOT_FOUND"] * 10 + ["PRESENT"] * 2
    pipeline.verify(settings, feature_views=["merchant_risk_v1"])

    server = Server(settings)
    try:
        code, body = server.post({"features": ["customer_spend_v2:txn_count_1d"],
                                  "entities": {"customer_id": [1001, 1002, 1003, 999999]}})
        assert code == 200
        assert body["results"][1]["values"] == [r["txn_count_1d"] for r in single[("customer_spend", 2)]]
    finally:
        server.stop()


def test_a_stopped_master_is_a_clear_error_and_its_return_recovers(dev_settings, contracts_copy,
                                                                    redis_cluster) -> None:
    """One master down: reads of its keys fail quickly with a clear error; back (empty, no persistence), a full
    materialize refills it and every key reads again."""
    settings = _as_cluster(dev_settings, contracts_copy, redis_cluster)
    seed_raw(settings)
    pipeline.run_loop(settings)
    keys = [str(k) for k in range(1001, 1041)]
    before = feast_bridge.read_online(settings, "customer_profile", keys)

    port = redis_cluster.ports[1]
    redis_cluster.stop_node(port)
    started = time.monotonic()
    with pytest.raises(OnlineStoreUnavailable, match="online store unreachable"):
        feast_bridge.read_online(settings, "customer_profile", keys)
    assert time.monotonic() - started < 20  # an error, not a hang

    redis_cluster.start_node(port)
    from tests.services import wait_until

    wait_until(redis_cluster.healthy, "cluster state ok after the master returned", timeout=60)
    pipeline.materialize(settings, incremental=True)  # the emptied master is detected and refilled
    assert feast_bridge.read_online(settings, "customer_profile", keys) == before


def _cluster_dump(cluster) -> dict[bytes, dict[bytes, bytes]]:
    import redis

    dump: dict[bytes, dict[bytes, bytes]] = {}
    for port in cluster.ports:
        node = redis.Redis(port=port, password=cluster.password)
        dump.update({key: node.hgetall(key) for key in node.scan_iter(count=1000)})
    return dump


def _flush(cluster) -> None:
    import redis

    for port in cluster.ports:
        redis.Redis(port=port, password=cluster.password).flushall()


def _run_shards(settings, view: str, count: int, *extra: str) -> list[dict]:
    """`featurectl materialize --shard I/N` as N processes at once, like N pods."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import REPO

    env = {**os.environ, **settings.values, "FEATURE_PLATFORM_CONTRACTS": str(settings.contracts_dir),
           "FEATURE_PLATFORM_HOME": str(settings.home), "FEATURE_PLATFORM_ENV": settings.env_name,
           "PYTHONPATH": str(REPO / "src")}
    featurectl = str(Path(sys.executable).parent / "featurectl")
    children = [subprocess.Popen([featurectl, "materialize", "--feature-view", view, "--shard", f"{i}/{count}",
                                  "--json", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for i in range(count)]
    results = [(c.wait(timeout=600), c.stdout.read(), c.stderr.read()) for c in children]
    assert all(code == 0 for code, _, _ in results), [err[-1500:] for code, _, err in results if code]
    return [json.loads(out)[0] for _, out, _ in results]


def test_shards_together_write_exactly_what_one_run_writes(dev_settings, contracts_copy, redis_cluster) -> None:
    """Three `--shard I/3` processes at once write every hash exactly as one unsharded run does, each writing
    only its own entities; the view's record is written once all three finished; a rebuild without some
    entities is deleted shard by shard; an incremental shard run writes nothing."""
    from feature_platform import build as builds
    from feature_platform.materialization import read_marker

    settings = _as_cluster(dev_settings, contracts_copy, redis_cluster)
    write_contract(contracts_copy, every_dtype_contract())
    seed_raw(settings)
    replace_raw(settings, "merchant_events", merchant_events(MERCHANTS))
    pipeline.build_and_promote(settings, "merchant_risk")
    pipeline.apply(settings, feature_sets=["merchant_risk"])
    view = "merchant_risk_v1"

    [whole] = pipeline.materialize(settings, feature_views=[view])
    expected = _cluster_dump(redis_cluster)
    _flush(redis_cluster)

    shards = _run_shards(settings, view, 3)
    assert sorted(s["shard"] for s in shards) == ["0-of-3", "1-of-3", "2-of-3"]
    assert sum(s["written"] for s in shards) == whole["written"] == len(MERCHANTS)
    assert all(0 < s["written"] < len(MERCHANTS) for s in shards)
    assert _cluster_dump(redis_cluster) == expected
    contract = settings.contracts().get("merchant_risk", 1)
    store = pipeline.object_store(settings, settings.environment())
    marker = read_marker(store, contract)
    assert marker["shards"] == 3 and marker["written"] == len(MERCHANTS)
    assert marker["build_id"] == builds.read_pointer(store, "merchant_risk")["build_id"]

    # Deletions: ten merchants leave; the shards delete exactly what an unsharded run deletes.
    replace_raw(settings, "merchant_events", merchant_events(MERCHANTS[10:]))
    pipeline.build_and_promote(settings, "merchant_risk")
    pipeline.apply(settings, feature_sets=["merchant_risk"])
    shards = _run_shards(settings, view, 3, "--incremental")
    assert sum(s["deleted"] for s in shards) == 10
    after_shards = _cluster_dump(redis_cluster)
    pipeline.materialize(settings, feature_views=[view])  # unsharded, same build: nothing may change
    assert _cluster_dump(redis_cluster) == after_shards
    rows = feast_bridge.read_online(settings, "merchant_risk", MERCHANTS[:12])
    assert [r["status"] for r in rows] == ["NOT_FOUND"] * 10 + ["PRESENT"] * 2

    again = [pipeline.materialize(settings, incremental=True, feature_views=[view], shard=f"{i}/3")[0]
             for i in range(3)]
    assert {s["mode"] for s in again} == {"incremental"} and sum(s["written"] for s in again) == 0


def test_a_missing_shard_leaves_the_view_unrecorded(dev_settings, contracts_copy, redis_cluster) -> None:
    """Until every shard has finished, online.json does not claim the build: verify/proof say it is not loaded."""
    from feature_platform.materialization import read_marker

    settings = _as_cluster(dev_settings, contracts_copy, redis_cluster)
    seed_raw(settings)
    pipeline.build_and_promote(settings, "customer_profile")
    pipeline.apply(settings, feature_sets=["customer_profile"])
    _run_shards(settings, "customer_profile_v1", 1)  # N=1 is the unsharded path
    customers = read_raw(settings, "customers")
    replace_raw(settings, "customers", customers.slice(0, customers.num_rows - 40))  # a new build
    built = pipeline.build_and_promote(settings, "customer_profile")
    pipeline.apply(settings, feature_sets=["customer_profile"])
    contract = settings.contracts().get("customer_profile", 1)
    store = pipeline.object_store(settings, settings.environment())
    before = read_marker(store, contract)
    assert before["build_id"] != built["build_id"]
    pipeline.materialize(settings, feature_views=["customer_profile_v1"], shard="0/2")
    assert read_marker(store, contract) == before  # shard 1 of 2 has not run: the new build is not claimed
    [check] = feast_bridge.verify(settings, feature_views=["customer_profile_v1"])
    assert not check["ok"] and check["pending_build_ids"] == []  # the view's record is untouched meanwhile
    from feature_platform.errors import FeastError

    with pytest.raises(FeastError, match=f"registry serves build {built['build_id']}"):
        pipeline.verify(settings, feature_views=["customer_profile_v1"])
    pipeline.materialize(settings, feature_views=["customer_profile_v1"], shard="1/2")
    marker = read_marker(store, contract)
    assert marker["shards"] == 2 and marker["build_id"] == built["build_id"]
    assert feast_bridge.verify(settings, feature_views=["customer_profile_v1"])[0]["ok"]
    with pytest.raises(ValueError, match="give I/N"):
        pipeline.materialize(settings, feature_views=["customer_profile_v1"], shard="2/2")
