"""A Redis Cluster online store (three real masters): the loop, values equal to a single node, the server,
a stopped master (a clear error, not a hang) and its return."""

from __future__ import annotations

import time

import pytest
import yaml

from feature_platform import feast_bridge, pipeline
from feature_platform.errors import OnlineStoreUnavailable
from tests.helpers import every_dtype_contract, merchant_events, replace_raw, seed_raw, write_contract

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
