"""Data a model can trust, on contracts and data the tests generate (string keys, every dtype, nulls,
duplicates, rebuilds, rollbacks, other build orders): what must be present, and what must be absent."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from feature_platform import build as builds
from feature_platform import feast_bridge, pipeline
from feature_platform.errors import CompatibilityError, FeastError
from feature_platform.online.layout import plan_contract
from tests.helpers import (
    AS_OF,
    data_store,
    every_dtype_contract,
    merchant_events,
    replace_raw,
    write_contract,
)
from tests.test_feast import cli

MERCHANTS = [f"m{i:02d}" for i in range(26)]


def _oracle(entities: pd.DataFrame, build: pd.DataFrame, key: str, ttl: pd.Timedelta, features: list[str]
            ) -> pd.DataFrame:
    """pandas merge_asof with the TTL rule: newest row with event_timestamp - ttl <= ts <= event_timestamp."""
    left = entities.reset_index(drop=True).assign(_row=lambda d: range(len(d)))
    valid = left[left[key].notna() & left["event_timestamp"].notna()].sort_values("event_timestamp")
    valid["event_timestamp"] = valid["event_timestamp"].astype("datetime64[us, UTC]")
    right = build.sort_values("ts").assign(ts=lambda d: d["ts"].astype("datetime64[us, UTC]"))
    merged = pd.merge_asof(valid, right, left_on="event_timestamp", right_on="ts", by=key, direction="backward")
    merged.loc[merged["ts"] < merged["event_timestamp"] - ttl, features] = None
    merged = merged.set_index("_row").reindex(range(len(left)))
    return merged[features]


def test_historical_is_exact_against_an_oracle(local_settings, contracts_copy) -> None:
    """One row per input row, in input order, labels kept, nulls where nothing is valid, contract types kept;
    equal to a merge_asof oracle on thousands of random rows with duplicates, unknown keys and boundaries."""
    contract = every_dtype_contract(ttl="2d")
    write_contract(contracts_copy, contract)
    raw = merchant_events(MERCHANTS, rows_per_merchant=12)
    replace_raw(local_settings, "merchant_events", raw)
    result = pipeline.build_and_promote(local_settings, "merchant_risk")
    build = raw.to_pandas()
    rng = np.random.default_rng(11)
    n = 3000
    keys = rng.choice([*MERCHANTS, "unknown", "m99"], n)
    stamps = pd.Timestamp(AS_OF) - pd.to_timedelta(rng.integers(-3600, 5 * 86400, n), unit="s")
    entities = pd.DataFrame({"merchant_code": keys, "event_timestamp": stamps, "target": rng.integers(0, 2, n)})
    exact = build.sample(40, random_state=1)  # exactly at a feature row, and exactly at the TTL boundary
    boundary = pd.DataFrame({"merchant_code": np.concatenate([exact["merchant_code"], exact["merchant_code"]]),
                             "event_timestamp": np.concatenate([exact["ts"], exact["ts"] + pd.Timedelta("2d")]),
                             "target": 7})
    first = build.groupby("merchant_code")["ts"].min().reset_index()  # just before each first event
    before = pd.DataFrame({"merchant_code": first["merchant_code"],
                           "event_timestamp": first["ts"] - pd.Timedelta("1us"), "target": 8})
    duplicated = entities.iloc[:50].assign(target=lambda d: d["target"] + 100)  # same key+time, another label
    entities = pd.concat([entities, boundary, before, duplicated], ignore_index=True)
    entities = entities.sample(frac=1, random_state=2).reset_index(drop=True)  # input order is arbitrary

    frame, provenance = feast_bridge.historical(local_settings, entities, "merchant_risk",
                                                build_id=result["build_id"])
    features = [f["name"] for f in contract["features"]]
    assert len(frame) == len(entities) and provenance["rows"] == len(entities)
    pd.testing.assert_frame_equal(frame[["merchant_code", "event_timestamp", "target"]],
                                  entities[["merchant_code", "event_timestamp", "target"]])
    expected = _oracle(entities, build, "merchant_code", pd.Timedelta("2d"), features)
    for name in features:
        got = [None if pd.isna(v) else v for v in frame[name].tolist()]
        want = [None if pd.isna(v) else v for v in expected[name].tolist()]
        if name in ("score", "ratio"):
            assert np.allclose(np.array(got, dtype=float), np.array(want, dtype=float), equal_nan=True), name
        else:
            assert got == want, name
    assert str(frame["cnt"].dtype) == "Int64" and str(frame["small"].dtype) == "Int32"
    assert str(frame["flag"].dtype) == "boolean" and str(frame["ratio"].dtype) == "float32"
    assert str(frame["seen_at"].dtype) == "datetime64[us, UTC]"
    # what must be absent: values before the first event and for unknown keys
    assert frame.loc[frame["target"] == 8, features].isna().all().all()
    assert frame.loc[frame["merchant_code"].isin(["unknown", "m99"]), features].isna().all().all()
    assert frame["score"].notna().sum() > 200  # and the join did find values


def test_historical_cli_keeps_rows_and_types(local_settings, contracts_copy, tmp_path, capsys) -> None:
    """`featurectl historical` writes every input row (integer keys here) with its label and int features."""
    contract = every_dtype_contract(key="merchant_id", key_dtype="int64")
    write_contract(contracts_copy, contract)
    replace_raw(local_settings, "merchant_events", merchant_events(list(range(1, 21)), key="merchant_id"))
    pipeline.build_and_promote(local_settings, "merchant_risk")
    pipeline.apply(local_settings, feature_sets=["merchant_risk"])
    entities = pd.DataFrame({"merchant_id": [1, 1, 999, 5],
                             "event_timestamp": [AS_OF.isoformat()] * 2 + ["2000-01-01T00:00:00Z", AS_OF.isoformat()],
                             "target": [1, 0, 1, 1]})
    csv = tmp_path / "entities.csv"
    entities.to_csv(csv, index=False)
    out = tmp_path / "train.parquet"
    code, _, err = cli(local_settings, "historical", "merchant_risk", "--entities", str(csv), "--out", str(out),
                       capsys=capsys)
    assert code == 0, err
    frame = pd.read_parquet(out)
    assert frame["target"].tolist() == [1, 0, 1, 1] and frame["merchant_id"].tolist() == [1, 1, 999, 5]
    assert str(frame["cnt"].dtype) == "Int64" and frame.loc[2, "cnt"] is pd.NA


def _dev_two_versions(settings, contracts: Path, merchants: list[str]) -> None:
    """merchant_risk v1 and v2: two views of one entity, sharing each entity's Redis hash."""
    write_contract(contracts, every_dtype_contract(version=1))
    write_contract(contracts, every_dtype_contract(version=2))
    replace_raw(settings, "merchant_events", merchant_events(merchants))
    pipeline.build_and_promote(settings, "merchant_risk", version=1)
    pipeline.build_and_promote(settings, "merchant_risk", version=2)
    pipeline.apply(settings, feature_sets=["merchant_risk"])
    pipeline.materialize(settings, feature_views=["merchant_risk_v1", "merchant_risk_v2"])


def test_online_store_holds_exactly_the_served_build(dev_settings, contracts_copy, redis_clean) -> None:
    """Rebuild without some entities, roll back, roll forward: after each materialization the view serves
    exactly its build's entities; departed ones read NOT_FOUND, other views' fields in the shared hash stay."""
    _dev_two_versions(dev_settings, contracts_copy, MERCHANTS)
    first = pipeline.versions(dev_settings, "merchant_risk")[0]
    first_v1 = next(b["build_id"] for b in first if b["version"] == "v1")
    present = feast_bridge.read_online(dev_settings, "merchant_risk", ["m00", "m01", "m02"], version=1)
    assert [r["status"] for r in present] == ["PRESENT"] * 3

    replace_raw(dev_settings, "merchant_events", merchant_events(MERCHANTS[2:], seed=4))  # m00, m01 gone
    pipeline.build_and_promote(dev_settings, "merchant_risk", version=1)
    pipeline.apply(dev_settings, feature_sets=["merchant_risk"])
    done = pipeline.materialize(dev_settings, incremental=True, feature_views=["merchant_risk_v1"])
    assert done[0]["mode"] == "full" and done[0]["deleted"] == 2 and done[0]["written"] == 24
    gone = feast_bridge.read_online(dev_settings, "merchant_risk", ["m00", "m01", "m02"], version=1)
    assert [r["status"] for r in gone] == ["NOT_FOUND", "NOT_FOUND", "PRESENT"]
    assert gone[0]["event_timestamp"] is None and gone[0]["score"] is None and gone[0]["label"] is None
    kept = feast_bridge.read_online(dev_settings, "merchant_risk", ["m00", "m01"], version=2)
    assert [r["status"] for r in kept] == ["PRESENT", "PRESENT"]  # v2's fields in the same hash are untouched
    plan_v1 = plan_contract("feature_platform_dev", dev_settings.contracts().get("merchant_risk", 1))
    client = redis_clean.client(db=0)
    assert not client.hexists(plan_v1.keys(["m00"])[0], plan_v1.ts_field)
    assert client.hexists(plan_v1.keys(["m00"])[0], b"_ts:merchant_risk_v2")
    results = pipeline.verify(dev_settings, feature_views=["merchant_risk_v1", "merchant_risk_v2"])
    assert {r["feature_view"]: r["online_entities"] for r in results} == {"merchant_risk_v1": 24,
                                                                          "merchant_risk_v2": 26}

    pipeline.rollback(dev_settings, "merchant_risk", first_v1)  # back to the build with m00 and m01
    pipeline.apply(dev_settings, feature_sets=["merchant_risk"])
    pipeline.materialize(dev_settings, incremental=True, feature_views=["merchant_risk_v1"])
    back = feast_bridge.read_online(dev_settings, "merchant_risk", ["m00", "m01"], version=1)
    assert [r["status"] for r in back] == ["PRESENT", "PRESENT"]
    pipeline.verify(dev_settings, feature_views=["merchant_risk_v1"])

    # A stale entity the build does not have (e.g. written by hand): verify names the view and the counts.
    key = plan_v1.keys(["zz-stale"])[0]
    client.hset(key, mapping={plan_v1.ts_field: client.hget(plan_v1.keys(["m03"])[0], plan_v1.ts_field)})
    with pytest.raises(FeastError, match=r"merchant_risk_v1: .*27 entities online but the build has 26"):
        pipeline.verify(dev_settings, feature_views=["merchant_risk_v1"])


def test_sqlite_online_store_drops_departed_entities(local_settings, contracts_copy) -> None:
    """The same exactness on Feast's SQLite store (the `local` environment)."""
    write_contract(contracts_copy, every_dtype_contract())
    replace_raw(local_settings, "merchant_events", merchant_events(MERCHANTS))
    pipeline.build_and_promote(local_settings, "merchant_risk")
    pipeline.apply(local_settings, feature_sets=["merchant_risk"])
    pipeline.materialize(local_settings, feature_views=["merchant_risk_v1"])
    replace_raw(local_settings, "merchant_events", merchant_events(MERCHANTS[1:]))
    pipeline.build_and_promote(local_settings, "merchant_risk")
    pipeline.apply(local_settings, feature_sets=["merchant_risk"])
    done = pipeline.materialize(local_settings, incremental=True, feature_views=["merchant_risk_v1"])
    assert done[0]["deleted"] == 1
    rows = feast_bridge.read_online(local_settings, "merchant_risk", ["m00", "m01"])
    assert [r["status"] for r in rows] == ["NOT_FOUND", "PRESENT"] and rows[0]["event_timestamp"] is None
    [result] = pipeline.verify(local_settings, feature_views=["merchant_risk_v1"])
    assert result["online_entities"] == result["build_entities"] == 25


def test_unknown_entities_read_not_found(local_settings, capsys) -> None:
    """`featurectl online FS 999999`: null timestamp and values, status NOT_FOUND (not 1970-01-01)."""
    from tests.helpers import seed_raw

    seed_raw(local_settings)
    pipeline.run_loop(local_settings)
    code, out, err = cli(local_settings, "online", "customer_spend", "999999", "1001", "--json", capsys=capsys)
    assert code == 0, err
    unknown, known = json.loads(out)
    assert unknown["status"] == "NOT_FOUND" and unknown["event_timestamp"] is None
    assert all(unknown[f] is None for f in ("txn_count_1d", "txn_amount_1d", "max_txn_amount_1d"))
    assert known["status"] == "PRESENT" and known["event_timestamp"] is not None


def test_released_version_edited_in_place_is_refused(local_settings, contracts_copy, capsys) -> None:
    """A locked v1 retyped in place: build, apply, materialize and the DAG's first task refuse it with the
    message `contracts check` gives; an unlocked new version works in `local` but not in prod."""
    from tests.helpers import seed_raw

    seed_raw(local_settings)
    profile = contracts_copy / "feature_sets/customer_profile/v1.yaml"
    original = profile.read_text()
    profile.write_text(original.replace("dtype: int64\n    description: Days", "dtype: int32\n    description: Days"))
    for args in (["build", "customer_profile"], ["apply"], ["materialize"],
                 ["step", "validate_contract", "customer_profile"]):
        code, _, err = cli(local_settings, *args, capsys=capsys)
        assert code == 3, (args, err)
        assert "released version customer_profile v1 changed its schema in place" in err and "add v2.yaml" in err
    profile.write_text(original)

    new = yaml.safe_load(original)
    new["version"] = 2
    (profile.parent / "v2.yaml").write_text(yaml.safe_dump(new))
    assert cli(local_settings, "build", "customer_profile", "--quiet", capsys=capsys)[0] == 0
    prod = local_settings.replace(env_name="prod")
    with pytest.raises(CompatibilityError, match=r"customer_profile v2 is not in contracts\.lock"):
        pipeline.build(prod, "customer_profile", 2)


def test_feature_set_pointer_ignores_build_order(local_settings) -> None:
    """Build v2 then v1 (and promote both concurrently, repeatedly): the feature-set pointer names v2."""
    from tests.helpers import seed_raw

    seed_raw(local_settings)
    pipeline.build_and_promote(local_settings, "customer_spend", version=2)
    pipeline.build_and_promote(local_settings, "customer_spend", version=1)
    store = data_store(local_settings)
    assert builds.read_pointer(store, "customer_spend")["version"] == "v2"
    v1 = builds.read_pointer(store, "customer_spend", "v1")["build_id"]
    v2 = builds.read_pointer(store, "customer_spend", "v2")["build_id"]
    errors: list[BaseException] = []

    def promote(version: int, build_id: str) -> None:
        try:
            for _ in range(10):
                pipeline.promote(local_settings, "customer_spend", version, build_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(1, v1)), threading.Thread(target=promote, args=(2, v2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    pointer = builds.read_pointer(store, "customer_spend")
    assert (pointer["version"], pointer["build_id"]) == ("v2", v2)


AGGREGATING_SQL = """
SELECT merchant_code, CAST(date_trunc('hour', ts) + INTERVAL 1 HOUR AS TIMESTAMP) AS ts,
       sum(score) AS score, count(*) AS cnt, CAST(count(DISTINCT flag) AS INTEGER) AS small, bool_or(flag) AS flag,
       max(label) AS label, max(seen_at) AS seen_at, CAST(avg(ratio) AS FLOAT) AS ratio
FROM source GROUP BY merchant_code, date_trunc('hour', ts)
"""


def _big_raw(rows: int = 320_000) -> pa.Table:
    rng = np.random.default_rng(5)
    start = np.datetime64("2026-01-01T00:00:00", "us")
    stamps = start + rng.integers(0, 30 * 24 * 3600 * 10**6, rows).astype("timedelta64[us]")
    return pa.table({
        "merchant_code": pa.array([f"m{i}" for i in rng.integers(0, 2000, rows)]),
        "ts": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        "score": pa.array(rng.normal(0, 1e6, rows) * rng.random(rows)),
        "cnt": pa.array(rng.integers(0, 100, rows)), "small": pa.array(rng.integers(0, 100, rows), pa.int32()),
        "flag": pa.array(rng.random(rows) < 0.5), "label": pa.array([f"l{i}" for i in rng.integers(0, 50, rows)]),
        "seen_at": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        "ratio": pa.array(rng.random(rows) * 1e3, pa.float32()),
    })


def test_builds_are_byte_identical_across_homes(tmp_path, contracts_copy) -> None:
    """Same contract + same source bytes => same build id and byte-identical features.parquet, in two work
    directories, with a parallel-capable DuckDB, on an aggregating contract over 320k rows."""
    from feature_platform.environments import Settings

    write_contract(contracts_copy, every_dtype_contract(ttl="30d", sql=AGGREGATING_SQL))
    raw = _big_raw()
    outputs = []
    for home in ("home-a", "elsewhere/home-b"):
        settings = Settings.from_env(environ={}, contracts_dir=contracts_copy, home=tmp_path / home,
                                     env_name="local")
        replace_raw(settings, "merchant_events", raw)
        result = pipeline.build_and_promote(settings, "merchant_risk")
        store = data_store(settings)
        metadata = builds.read_metadata(store, settings.contracts().get("merchant_risk"), result["build_id"])
        outputs.append((result["build_id"], Path(metadata["data"]).read_bytes(), metadata))
    (id_a, bytes_a, meta_a), (id_b, bytes_b, _) = outputs
    assert id_a == id_b
    assert bytes_a == bytes_b
    assert meta_a["sorted_by"] == ["merchant_code", "ts"] and meta_a["row_count"] > 100_000
    assert meta_a["source"]["files"][0]["key"] == "merchant_events/part-00000.parquet"


def test_one_feature_service_per_version(local_settings, contracts_copy) -> None:
    """Services customer_spend_v1 and customer_spend_v2 pin a version; no moving alias unless a contract opts in."""
    from tests.helpers import seed_raw

    seed_raw(local_settings)
    pipeline.build_all(local_settings)
    pipeline.apply(local_settings)
    env = local_settings.environment()
    store = feast_bridge.open_store(local_settings, env)

    def services() -> dict[str, list[str]]:
        return {s.name: [p.name for p in s.feature_view_projections]
                for s in store.registry.list_feature_services(store.project, allow_cache=False)}

    found = services()
    assert found["customer_spend_v1"] == ["customer_spend_v1"] and found["customer_spend_v2"] == ["customer_spend_v2"]
    assert "customer_spend" not in found and "customer_profile" not in found

    v2 = contracts_copy / "feature_sets/customer_spend/v2.yaml"
    v2.write_text(v2.read_text().replace("online: true", "online: true\nlatest_alias: true"))
    pipeline.apply(local_settings)
    assert services()["customer_spend"] == ["customer_spend_v2"]


@pytest.mark.e2e
def test_plan_reports_no_changes_right_after_apply(dev_settings, capsys) -> None:
    """`featurectl plan` (Feast's plan of the contracts) and plain `feast plan` converge after an apply, and
    still after a materialize (which records intervals in the registry); applies keep those intervals."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.helpers import seed_raw

    seed_raw(dev_settings)
    pipeline.build_all(dev_settings)
    before = feast_bridge.plan(dev_settings)
    assert before["registry_changes"]  # everything is new
    pipeline.apply(dev_settings)
    after = feast_bridge.plan(dev_settings)
    assert after["registry_changes"] == [] and after["infra_changes"] == [], after
    pipeline.materialize(dev_settings)
    after = feast_bridge.plan(dev_settings)
    assert after["registry_changes"] == [] and after["infra_changes"] == [], after
    code, out, _ = cli(dev_settings, "plan", capsys=capsys)
    assert code == 0 and "dev: no changes" in out

    def intervals() -> dict[str, int]:
        store = feast_bridge.open_store(dev_settings, dev_settings.environment())
        return {v.name: len(v.materialization_intervals) for v in store.list_feature_views(allow_cache=False)}

    recorded = intervals()
    assert recorded and all(recorded.values())
    profile = dev_settings.contracts_dir / "feature_sets/customer_profile/v1.yaml"
    profile.write_text(profile.read_text().replace("  domain: crm", "  domain: crm\n  reviewed: 'yes'", 1))
    assert pipeline.apply(dev_settings)["changed"] == ["customer_profile_v1"]  # a metadata change re-applies all
    assert intervals() == recorded  # ...without dropping what materialize recorded

    config = feast_bridge.write_feature_store_yaml(dev_settings, dev_settings.environment())
    env = {**os.environ, **dev_settings.values, "FEATURE_PLATFORM_CONTRACTS": str(dev_settings.contracts_dir),
           "FEATURE_PLATFORM_HOME": str(dev_settings.home), "FEATURE_PLATFORM_ENV": "dev"}
    feast = [str(Path(sys.executable).parent / "feast"), "-c", str(REPO / "feature_repo"), "-f", str(config)]
    applied = subprocess.run([*feast, "apply"], env=env, capture_output=True, text=True, timeout=300)
    assert applied.returncode == 0, applied.stderr[-2000:]
    assert intervals() == recorded  # plain `feast apply` keeps them too
    planned = subprocess.run([*feast, "plan"], env=env, capture_output=True, text=True, timeout=300)
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "No changes to registry" in planned.stdout, planned.stdout[-3000:]
    assert "No changes to infrastructure" in planned.stdout, planned.stdout[-3000:]


def test_ttl_and_time_order_of_historical_helpers() -> None:
    """A guard for the oracle itself: an entity row exactly ttl after a feature row still sees it."""
    build = pd.DataFrame({"k": ["a"], "ts": [pd.Timestamp("2026-01-01", tz="UTC")], "v": [1.0]})
    entities = pd.DataFrame({"k": ["a", "a"], "event_timestamp": [pd.Timestamp("2026-01-03", tz="UTC"),
                                                                 pd.Timestamp("2026-01-03", tz="UTC")
                                                                 + timedelta(microseconds=1)]})
    assert _oracle(entities, build, "k", pd.Timedelta("2d"), ["v"])["v"].tolist()[0] == 1.0
    assert pd.isna(_oracle(entities, build, "k", pd.Timedelta("2d"), ["v"])["v"].tolist()[1])
