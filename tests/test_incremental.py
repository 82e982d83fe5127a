"""Incremental builds: the SQL per data interval over the raw rows of [start - lookback, end), partitions by
event time written once and content-addressed, a build as a manifest of partitions; outputs equal to a full
build row for row (late-arriving rows and window aggregates included); every reader follows the manifest."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_platform import build as builds
from feature_platform import feast_bridge, incremental, pipeline
from feature_platform.errors import ConfigError, QualityGateError, StoreError
from tests.helpers import data_store, raw_store, write_contract

DAY = timedelta(days=1)
END = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)  # today, midnight UTC
START = END - 12 * DAY
# Day d's features become known at the next midnight (event time d + 1); a 3-day window of daily sums.
SQL = """
WITH daily AS (
  SELECT customer_id, CAST(date_trunc('day', ts) + INTERVAL 1 DAY AS TIMESTAMP) AS event_timestamp,
         count(*) AS txn_count_1d, round(sum(amount), 2) AS amount_1d
  FROM source GROUP BY customer_id, date_trunc('day', ts))
SELECT customer_id, event_timestamp, txn_count_1d, amount_1d,
       round(sum(amount_1d) OVER (PARTITION BY customer_id ORDER BY event_timestamp
                                  RANGE BETWEEN INTERVAL 2 DAYS PRECEDING AND CURRENT ROW), 2) AS amount_3d
FROM daily
"""


def _contract(name: str, mode: str = "incremental", **build) -> dict:
    return {
        "kind": "FeatureSet", "name": name, "version": 1, "description": "Generated for tests.",
        "owner": "tests@example.com", "entity": {"name": "customer", "join_key": "customer_id", "dtype": "int64"},
        "timestamp_field": "event_timestamp", "ttl": "30d", "online": True, "pii": False,
        "source": {"table": "events", "sql": SQL},
        **({"build": {"mode": "incremental", "partition": "1d", "lookback": "3d", "time_column": "ts", **build}}
           if mode == "incremental" else {}),
        "features": [{"name": "txn_count_1d", "dtype": "int64", "description": "count"},
                     {"name": "amount_1d", "dtype": "float64", "description": "amount"},
                     {"name": "amount_3d", "dtype": "float64", "description": "3-day amount"}]}


def _events(first: datetime, days: int, seed: int, customers: int = 30, per_day: int = 80) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = days * per_day
    offsets = rng.integers(0, days * 86400, size=n)
    stamps = [first + timedelta(seconds=int(s)) for s in offsets]
    return pa.table({"customer_id": pa.array(rng.integers(1, customers + 1, size=n), pa.int64()),
                     "amount": pa.array(np.round(rng.gamma(2.0, 20.0, size=n), 2)),
                     "ts": pa.array(stamps, pa.timestamp("us", tz="UTC"))})


def _add_raw(settings, table: pa.Table, name: str) -> None:
    """One more raw file (rows arriving later), as an upstream appends."""
    raw = raw_store(settings)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / name
        pq.write_table(table, local)
        raw.upload(local, f"events/{name}")


def _rows(settings, name: str) -> pd.DataFrame:
    store = data_store(settings)
    contract = settings.contracts().get(name)
    metadata = builds.read_metadata(store, contract, builds.read_pointer(store, name)["build_id"])
    frame = builds.read_build_table(store, metadata).to_pandas()
    return frame.sort_values(["customer_id", "event_timestamp"]).reset_index(drop=True)


@pytest.fixture
def two_sets(local_settings):
    """The same SQL as a full and as an incremental feature set over one raw table."""
    settings = local_settings
    write_contract(settings.contracts_dir, _contract("spend_full", mode="full"))
    write_contract(settings.contracts_dir, _contract("spend_daily"))
    _add_raw(settings, _events(START - 5 * DAY, 17, seed=1), "part-00000.parquet")
    return settings


def test_incremental_contracts_validate_and_keep_full_hashes() -> None:
    from feature_platform.contracts import FeatureSetContract

    full = FeatureSetContract.model_validate(_contract("a", mode="full"))
    assert not full.build.incremental
    for build, message in (({"time_column": None}, "time_column is missing"), ({"partition": "5h"}, "whole hours"),
                           ({"lookback": "soon"}, "not a duration"), ({"partition": "30m"}, "whole hours")):
        with pytest.raises(ValueError, match=message):
            FeatureSetContract.model_validate(_contract("a", **build))
    with pytest.raises(ValueError, match="'full' or 'incremental'"):
        FeatureSetContract.model_validate({**_contract("a"), "build": {"mode": "hourly", "time_column": "ts"}})
    daily = FeatureSetContract.model_validate(_contract("a"))
    weekly = FeatureSetContract.model_validate(_contract("a", lookback="7d"))
    assert daily.schema_hash == full.schema_hash  # the shape is the same
    assert len({daily.transform_hash, weekly.transform_hash, full.transform_hash}) == 3  # the rows may differ


def test_daily_intervals_equal_a_full_build_row_for_row_with_late_rows_and_windows(two_sets) -> None:
    settings = two_sets
    pipeline.build_and_promote(settings, "spend_full")
    for day in range(12):  # one run per day, as a daily DAG
        pipeline.build_and_promote(settings, "spend_daily", interval=(START + day * DAY, START + (day + 1) * DAY))
    full, daily = _rows(settings, "spend_full"), _rows(settings, "spend_daily")
    in_range = full[(full["event_timestamp"] >= START) & (full["event_timestamp"] < END)].reset_index(drop=True)
    pd.testing.assert_frame_equal(daily, in_range)
    assert len(daily) > 100 and daily["amount_3d"].gt(daily["amount_1d"]).any()  # the window reached back

    # Late rows for a day already built: the runs of the days they change, re-run, equal the full build again.
    late_day = START + 4 * DAY
    _add_raw(settings, _events(late_day, 1, seed=9, per_day=40), "part-00001.parquet")
    before = builds.read_pointer(data_store(settings), "spend_daily")["build_id"]
    result = pipeline.build_and_promote(settings, "spend_daily", interval=(late_day + DAY, late_day + 4 * DAY))
    assert result["build_id"] != before and result["intervals"] == [[(late_day + DAY).isoformat(),
                                                                     (late_day + 4 * DAY).isoformat()]]
    pipeline.build_and_promote(settings, "spend_full")
    full, daily = _rows(settings, "spend_full"), _rows(settings, "spend_daily")
    in_range = full[(full["event_timestamp"] >= START) & (full["event_timestamp"] < END)].reset_index(drop=True)
    pd.testing.assert_frame_equal(daily, in_range)


def test_partitions_are_written_once_and_reruns_are_idempotent(two_sets) -> None:
    settings = two_sets
    store = data_store(settings)
    first = pipeline.build_and_promote(settings, "spend_daily", interval=(START.date().isoformat(),
                                                                          (START + 3 * DAY).isoformat()))
    contract = settings.contracts().get("spend_daily")
    metadata = builds.read_metadata(store, contract, first["build_id"])
    files = {p["key"] for p in metadata["partitions"]}
    assert len(files) == 3 and all(f.startswith("spend_daily/v1/partitions/") for f in files)
    stamps = {key: store.modified_at(key) for key in files}
    again = pipeline.build_and_promote(settings, "spend_daily", interval=(START, START + 3 * DAY))
    assert again["build_id"] == first["build_id"] and again["reused"]
    assert {key: store.modified_at(key) for key in files} == stamps  # not rewritten
    one_day = pipeline.build_and_promote(settings, "spend_daily", interval=(START + DAY, START + 2 * DAY))
    assert one_day["build_id"] == first["build_id"]  # the same partition again: the same manifest
    more = pipeline.build_and_promote(settings, "spend_daily", interval=(START + 3 * DAY, START + 4 * DAY))
    latest = builds.read_metadata(store, contract, more["build_id"])
    assert {p["key"] for p in latest["partitions"]} > files and latest["base_build_id"] == first["build_id"]
    assert latest["row_count"] == sum(p["rows"] for p in latest["partitions"])
    assert latest["entity_count"] == len(builds.read_build_table(store, latest).to_pandas()["customer_id"].unique())


def test_bad_intervals_and_a_failed_gate_leave_latest_where_it_was(two_sets) -> None:
    settings = two_sets
    pipeline.build_and_promote(settings, "spend_daily", interval=(START, START + 2 * DAY))
    store = data_store(settings)
    before = builds.read_pointer(store, "spend_daily")["build_id"]
    with pytest.raises(ConfigError, match="not on a partition boundary"):
        pipeline.build_and_promote(settings, "spend_daily", interval=(START + timedelta(hours=3), START + DAY))
    with pytest.raises(ConfigError, match="must be after the start"):
        pipeline.build_and_promote(settings, "spend_daily", interval=(START + DAY, START))
    with pytest.raises(ConfigError, match="not an ISO 8601 date"):
        pipeline.build_and_promote(settings, "spend_daily", interval=("yesterday", START))
    with pytest.raises(ConfigError, match="builds in full"):
        pipeline.build_and_promote(settings, "spend_full", interval=(START, START + DAY))
    write_contract(settings.contracts_dir, {**_contract("spend_daily"), "features": [
        {"name": "txn_count_1d", "dtype": "int64", "description": "count", "constraints": {"max": 1}},
        {"name": "amount_1d", "dtype": "float64", "description": "amount"},
        {"name": "amount_3d", "dtype": "float64", "description": "3-day amount"}]})
    with pytest.raises(QualityGateError, match=r"partition .*: column txn_count_1d: \d+ row\(s\) above max 1"):
        pipeline.build_and_promote(settings, "spend_daily", interval=(START + 2 * DAY, START + 3 * DAY))
    assert builds.read_pointer(store, "spend_daily")["build_id"] == before


def test_a_stale_manifest_is_not_promoted_over_a_newer_latest(two_sets) -> None:
    """Two interval builds assembled on the same latest: the second promotion would drop the first's partition,
    so it is refused (no lost writes); rebuilt, it keeps both."""
    settings = two_sets
    pipeline.build_and_promote(settings, "spend_daily", interval=(START, START + DAY))
    _, one = pipeline.build(settings, "spend_daily", interval=(START + DAY, START + 2 * DAY))
    _, two = pipeline.build(settings, "spend_daily", interval=(START + 2 * DAY, START + 3 * DAY))
    pipeline.promote(settings, "spend_daily", 1, one.build_id)
    with pytest.raises(StoreError, match="another interval was promoted meanwhile"):
        pipeline.promote(settings, "spend_daily", 1, two.build_id)
    result = pipeline.build_and_promote(settings, "spend_daily", interval=(START + 2 * DAY, START + 3 * DAY))
    assert result["partitions"] == 3


def test_backfill_in_parallel_equals_one_worker_and_readers_follow_the_manifest(two_sets, capsys) -> None:
    """A backfill over two workers gives the build one worker gives; materialize, verify, historical, export,
    rollback and gc read the manifest."""
    from feature_platform.cli import main

    settings = two_sets

    def cli(*args: str) -> int:
        return main([*args, "--contracts", str(settings.contracts_dir), "--home", str(settings.home),
                     "--env", settings.env_name])

    assert cli("backfill", "spend_daily", "--from", START.date().isoformat(), "--to", END.date().isoformat(),
               "--parallel", "2", "--quiet") == 0
    parallel = builds.read_pointer(data_store(settings), "spend_daily")["build_id"]
    one = pipeline.build(settings, "spend_daily", interval=(START, END))[1]
    assert one.build_id == parallel
    capsys.readouterr()

    pipeline.build_and_promote(settings, "spend_full")
    pipeline.apply(settings, feature_sets=["spend_daily"])
    pipeline.materialize(settings, feature_views=["spend_daily_v1"])
    assert all(r["ok"] for r in feast_bridge.verify(settings, feature_views=["spend_daily_v1"]))
    daily = _rows(settings, "spend_daily")
    newest = daily.groupby("customer_id").tail(1).set_index("customer_id")
    customers = [int(c) for c in newest.index[:5]]
    online = feast_bridge.read_online(settings, "spend_daily", customers)
    assert [r["amount_3d"] for r in online] == [newest.loc[c, "amount_3d"] for c in customers]
    entities = pd.DataFrame({"customer_id": customers, "event_timestamp": [END - 5 * DAY + timedelta(hours=1)] * 5})
    frame, provenance = feast_bridge.historical(settings, entities, "spend_daily")
    want = daily[daily["event_timestamp"] == END - 5 * DAY].set_index("customer_id")
    assert [frame["amount_1d"][i] if c in want.index else None for i, c in enumerate(customers)] == [
        want.loc[c, "amount_1d"] if c in want.index else None for c in customers]
    assert isinstance(provenance["data"], list) and len(provenance["data"]) == 12
    sdk = feast_bridge.open_store(settings, settings.environment()).get_historical_features(
        entity_df=entities, features=["spend_daily_v1:amount_1d"]).to_df()  # Feast's SDK reads the manifest
    assert sdk["amount_1d"].tolist() == frame["amount_1d"].tolist()
    exported, _ = pipeline.export(settings, "spend_daily")
    assert len(exported) == len(daily)

    # A late row changes one partition: a new build; rolled back, gc deletes that build and its partition only.
    _add_raw(settings, _events(START - DAY, 1, seed=5, per_day=10), "part-00002.parquet")
    changed = pipeline.build_and_promote(settings, "spend_daily", interval=(START, START + DAY))
    assert changed["build_id"] != one.build_id and changed["partitions"] == 12
    pipeline.rollback(settings, "spend_daily", one.build_id)
    decisions = pipeline.collect_garbage(settings, ["spend_daily"], keep=0, min_age_seconds=0, dry_run=False)
    assert {d["build_id"] for d in decisions if d["build_id"]} == {changed["build_id"]}
    assert [d["reason"] for d in decisions if d.get("path")] == ["partition no kept build names"]
    pd.testing.assert_frame_equal(_rows(settings, "spend_daily"), daily)  # latest's partitions all stay


def test_materialize_incremental_follows_the_partitions(dev_settings) -> None:
    """From a completely loaded incremental build to the next, only the entities of the changed partitions
    are written, and one whose only rows went away is deleted; the store then holds exactly the new build."""
    settings = dev_settings
    write_contract(settings.contracts_dir, _contract("spend_daily"))
    raw = _events(START - 5 * DAY, 17, seed=1, customers=30)
    loner = pa.table({"customer_id": pa.array([999], pa.int64()), "amount": pa.array([12.5]),
                      "ts": pa.array([START + 2 * DAY + timedelta(hours=5)], pa.timestamp("us", tz="UTC"))})
    _add_raw(settings, pa.concat_tables([raw, loner]), "part-00000.parquet")
    pipeline.build_and_promote(settings, "spend_daily", interval=(START, END - DAY))
    pipeline.apply(settings, feature_sets=["spend_daily"])
    [first] = pipeline.materialize(settings, incremental=True, feature_views=["spend_daily_v1"])
    assert first["mode"] == "full" and feast_bridge.read_online(settings, "spend_daily", [999])[0]["status"] == (
        "PRESENT")

    pipeline.build_and_promote(settings, "spend_daily", interval=(END - DAY, END))  # the next day
    pipeline.apply(settings, feature_sets=["spend_daily"])
    [daily] = pipeline.materialize(settings, incremental=True, feature_views=["spend_daily_v1"])
    newest_day = _rows(settings, "spend_daily")
    assert daily["mode"] == "partitions" and daily["deleted"] == 0
    assert daily["written"] == newest_day[newest_day["event_timestamp"] == END - DAY]["customer_id"].nunique()
    assert daily["written"] < daily["entities"]  # not the whole build

    _add_raw(settings, raw, "part-00000.parquet")  # the loner's row is withdrawn upstream; its day is re-run
    pipeline.build_and_promote(settings, "spend_daily", interval=(START + 3 * DAY, START + 4 * DAY))
    pipeline.apply(settings, feature_sets=["spend_daily"])
    [fix] = pipeline.materialize(settings, incremental=True, feature_views=["spend_daily_v1"])
    assert fix["mode"] == "partitions" and fix["deleted"] == 1
    assert feast_bridge.read_online(settings, "spend_daily", [999])[0]["status"] == "NOT_FOUND"
    [check] = feast_bridge.verify(settings, sample=50, feature_views=["spend_daily_v1"])
    assert check["ok"] and check["online_entities"] == check["build_entities"] == 30


def test_the_dag_steps_build_the_runs_data_interval_widened_to_whole_partitions(local_settings) -> None:
    """An hourly run's interval over daily partitions builds the day it falls in; the steps after build find
    the build complete and promote it; a full contract's build step ignores the interval."""
    from tests.helpers import seed_raw

    settings = local_settings
    seed_raw(settings)
    hour = END - DAY + timedelta(hours=5)
    inputs = {"interval": [hour.isoformat(), (hour + timedelta(hours=1)).isoformat()]}
    staged = pipeline.run_named_step(settings, "build", "customer_category_spend", 1, inputs)
    assert staged["complete"] and staged["intervals"] == [[(END - DAY).isoformat(), END.isoformat()]]
    stats = pipeline.run_named_step(settings, "quality_gate", "customer_category_spend", 1, {"staged": staged})
    written = pipeline.run_named_step(settings, "write_version", "customer_category_spend", 1,
                                      {"staged": staged, "stats": stats})
    promoted = pipeline.run_named_step(settings, "promote_latest", "customer_category_spend", 1,
                                       {"written": written})
    assert promoted["build_id"] == staged["build_id"] == written["build_id"]
    rows = _rows(settings, "customer_category_spend")
    assert set(rows["event_timestamp"]) == {END - DAY}  # one day, as the run asked
    full = pipeline.run_named_step(settings, "build", "customer_spend", 2, inputs)
    assert not full["complete"] and "source" in full  # a full contract stages its snapshot as before
    assert incremental.covering(settings.contracts().get("customer_category_spend"), hour, hour).start == END - DAY


def test_the_sql_sees_the_interval_as_parameters(two_sets) -> None:
    """$interval_start/$interval_end are bound per run (here they narrow a window to the interval's own days);
    `contracts validate` binds them too; a full contract using them is refused, naming the fix."""
    from feature_platform.build import check_transform
    from feature_platform.contracts import FeatureSetContract

    settings = two_sets
    own_days = SQL.replace("FROM source GROUP BY", "FROM source WHERE ts >= $interval_start - INTERVAL 1 DAY "
                                                   "AND ts < $interval_end GROUP BY")
    contract = {**_contract("spend_own"), "source": {"table": "events", "sql": own_days, "columns": {
        "customer_id": "int64", "amount": "float64", "ts": "timestamptz"}}}
    write_contract(settings.contracts_dir, contract)
    assert check_transform(settings.contracts().get("spend_own")) == []
    pipeline.build_and_promote(settings, "spend_own", interval=(START + 5 * DAY, START + 6 * DAY))
    rows = _rows(settings, "spend_own")
    assert set(rows["event_timestamp"]) == {START + 5 * DAY}
    assert (rows["amount_3d"] == rows["amount_1d"]).all()  # the window saw only the interval's own day
    with pytest.raises(ValueError, match=r"uses \$interval_end and \$interval_start, which only incremental builds"):
        FeatureSetContract.model_validate({**_contract("x", mode="full"), "source": contract["source"]})
