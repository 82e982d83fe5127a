"""An online store that is missing, emptied, older than the registry or half loaded, on every backend.

Each backend (SQLite for `local`, a single redis-server, a three-master Redis Cluster) meets the same faults:
the store is emptied (a new file, a restart without persistence), restored from a snapshot taken before a
correction build (same event times, other values), and left with a load unfinished. `verify` must name each,
`materialize --incremental` (the DAG's mode) must refill it without a manual step, and reads of an unfinished
load must say so instead of passing as settled.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.compute as pc
import pytest

from feature_platform import feast_bridge, pipeline
from feature_platform.errors import FeastError
from feature_platform.online.stores import LOADING, complete_record
from tests.conftest import Backend
from tests.helpers import every_dtype_contract, merchant_events, replace_raw, write_contract

pytestmark = pytest.mark.e2e

MERCHANTS = [f"m{i:03d}" for i in range(60)]
VIEW = "merchant_risk_v1"


def _setup(settings) -> None:
    write_contract(settings.contracts_dir, every_dtype_contract())
    replace_raw(settings, "merchant_events", merchant_events(MERCHANTS))
    pipeline.build_and_promote(settings, "merchant_risk")
    pipeline.apply(settings, feature_sets=["merchant_risk"])


def _materialize(settings) -> str:
    [done] = pipeline.materialize(settings, incremental=True, feature_views=[VIEW])
    return done["mode"]


def _correct_scores(settings) -> None:
    """A correction build: the same rows and event times, every score doubled."""
    table = merchant_events(MERCHANTS)
    index = table.schema.get_field_index("score")
    replace_raw(settings, "merchant_events", table.set_column(index, "score", pc.multiply(table["score"], 2.0)))
    pipeline.build_and_promote(settings, "merchant_risk")
    pipeline.apply(settings, feature_sets=["merchant_risk"])


def test_an_emptied_store_is_named_by_verify_and_refilled_by_an_incremental_run(backend: Backend) -> None:
    settings = backend.settings
    _setup(settings)
    assert _materialize(settings) == "full"
    assert _materialize(settings) == "incremental"  # nothing changed: nothing written
    backend.empty()
    with pytest.raises(FeastError, match=rf"{VIEW}: .*missing online"):
        pipeline.verify(settings, feature_views=[VIEW])
    assert _materialize(settings) == "full"
    [result] = pipeline.verify(settings, feature_views=[VIEW])
    assert result["ok"] and result["online_entities"] == len(MERCHANTS)


def test_a_store_restored_from_before_a_correction_is_reloaded(backend: Backend) -> None:
    """Same event times, other values: only the store's own record of the build it holds can tell."""
    settings = backend.settings
    _setup(settings)
    _materialize(settings)
    before = feast_bridge.read_online(settings, "merchant_risk", MERCHANTS[:20])
    backup = backend.snapshot()
    _correct_scores(settings)
    assert _materialize(settings) == "full"
    corrected = feast_bridge.read_online(settings, "merchant_risk", MERCHANTS[:20])
    assert [r["event_timestamp"] for r in corrected] == [r["event_timestamp"] for r in before]
    assert any(a["score"] != b["score"] for a, b in zip(before, corrected, strict=True))

    backend.restore(backup)  # the old values and the old record come back together
    with pytest.raises(FeastError, match=rf"{VIEW}: .*online store's own record"):
        pipeline.verify(settings, feature_views=[VIEW])
    assert _materialize(settings) == "full"
    assert feast_bridge.read_online(settings, "merchant_risk", MERCHANTS[:20]) == corrected
    pipeline.verify(settings, feature_views=[VIEW])


def test_reads_of_an_unfinished_load_say_so(backend: Backend) -> None:
    """While the store records a load under way, `featurectl online` flags found rows and verify fails; the
    next incremental run finishes it."""
    from feature_platform.online.layout import plan_contract
    from feature_platform.online.stores import online_store

    settings = backend.settings
    _setup(settings)
    _materialize(settings)
    env = settings.environment()
    contract = settings.contracts().get("merchant_risk", 1)
    target = online_store(settings, env).target(plan_contract(env.feast_project, contract),
                                                feast_bridge.open_store(settings, env))
    build_id = target.recorded()["build_id"]
    assert target.recorded() == complete_record(build_id)
    target.record({"build_id": build_id, "state": LOADING})  # what a killed load leaves behind

    rows = feast_bridge.read_online(settings, "merchant_risk", [MERCHANTS[0], "absent"])
    assert [r["status"] for r in rows] == ["PRESENT_LOAD_UNFINISHED", "NOT_FOUND"]
    with pytest.raises(FeastError, match="online store's own record"):
        pipeline.verify(settings, feature_views=[VIEW])
    assert _materialize(settings) == "full"
    assert target.recorded() == complete_record(build_id)
    assert feast_bridge.read_online(settings, "merchant_risk", [MERCHANTS[0]])[0]["status"] == "PRESENT"

    # No record at all (a store filled by plain `feast materialize`): reads are not flagged, but nothing trusts
    # the store either: verify names it and the next incremental run loads in full.
    _forget_record(target)
    assert feast_bridge.read_online(settings, "merchant_risk", [MERCHANTS[0]])[0]["status"] == "PRESENT"
    with pytest.raises(FeastError, match="online store's own record is None"):
        pipeline.verify(settings, feature_views=[VIEW])
    assert _materialize(settings) == "full"
    pipeline.verify(settings, feature_views=[VIEW])


def _forget_record(target) -> None:
    import contextlib
    import sqlite3

    from feature_platform.online.stores import SQLITE_RECORD_TABLE, RedisTarget, redis_record_key

    if isinstance(target, RedisTarget):
        target.client.hdel(redis_record_key(target.plan.project), target.plan.view)
        return
    with contextlib.closing(sqlite3.connect(target.path)) as con, con:
        con.execute(f"DELETE FROM {SQLITE_RECORD_TABLE} WHERE view = ?", (target.plan.view,))


def test_a_deleted_sqlite_file_heals_through_the_cli(local_settings) -> None:
    """The `local` embedded default: delete the online store file, and `materialize --incremental` (then a full
    one) refills it; no OperationalError reaches the user."""
    from tests.test_faults import _featurectl as featurectl

    def _featurectl(settings, *args: str):
        return featurectl(settings, *args, "--feature-view", VIEW)

    _setup(local_settings)
    assert _featurectl(local_settings, "materialize", "--quiet").returncode == 0
    online = local_settings.env_home(local_settings.environment()) / "online"
    shutil.rmtree(online)
    verified = _featurectl(local_settings, "verify")
    assert verified.returncode == 1 and "missing online" in verified.stderr, verified.stderr
    assert "OperationalError" not in verified.stderr and "Traceback" not in verified.stderr
    healed = _featurectl(local_settings, "materialize", "--incremental", "--quiet")
    assert healed.returncode == 0, healed.stderr
    assert "Materializing" not in healed.stderr and healed.stderr.strip() == ""  # --quiet silences Feast too
    assert _featurectl(local_settings, "verify").returncode == 0
    Path(online / "online_store.db").unlink()
    assert _featurectl(local_settings, "materialize", "--quiet").returncode == 0
    assert _featurectl(local_settings, "verify").returncode == 0


def test_the_server_flags_reads_of_an_unfinished_load(dev_settings, redis_clean) -> None:
    """The platform server names a view whose load is unfinished in a response header and a metric; the
    body stays Feast's."""
    from feature_platform.online.layout import plan_contract
    from feature_platform.online.stores import redis_record_key
    from tests.test_server import Server

    _setup(dev_settings)
    _materialize(dev_settings)
    env = dev_settings.environment()
    plan = plan_contract(env.feast_project, dev_settings.contracts().get("merchant_risk", 1))
    client = redis_clean.client()
    key = redis_record_key(plan.project)
    settled = client.hget(key, plan.view)
    client.hset(key, plan.view, settled.replace(b'"complete"', b'"loading"'))
    server = Server(dev_settings)
    try:
        code, body, headers = server.post_with_headers({"features": [f"{VIEW}:score"],
                                                        "entities": {"merchant_code": [MERCHANTS[0]]}})
        assert code == 200 and body["results"][1]["statuses"] == ["PRESENT"]
        assert headers.get("x-feature-platform-load-unfinished") == VIEW
        metrics = server.get("/metrics")[1].decode()
        assert f'feature_platform_online_load_unfinished{{feature_view="{VIEW}"}} 1.0' in metrics
        assert f'feature_platform_unfinished_load_reads_total{{feature_view="{VIEW}"}} 1.0' in metrics
    finally:
        server.stop()
    client.hset(key, plan.view, settled)
    server = Server(dev_settings)
    try:
        _, _, headers = server.post_with_headers({"features": [f"{VIEW}:score"],
                                                  "entities": {"merchant_code": [MERCHANTS[0]]}})
        assert "x-feature-platform-load-unfinished" not in headers
    finally:
        server.stop()
