"""Feast's own SDK and CLI on the generated repo go through the platform's online engines, on every backend
(SQLite, a redis-server, a Redis Cluster): `get_online_features` equals the platform's reads (every dtype, nulls,
duplicates, string and int keys, a feature service over two sets), an unknown entity has `None` values and a
`None` event timestamp, the view's TTL is enforced; `feast materialize` writes what `featurectl materialize`
writes, departed entities deleted and the load recorded."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from feature_platform import feast_bridge, pipeline
from tests.conftest import REPO, Backend
from tests.helpers import AS_OF, every_dtype_contract, merchant_events, replace_raw, seed_raw, write_contract
from tests.test_feature_services import service, write_service

pytestmark = pytest.mark.e2e

MERCHANTS = [f"m{i:03d}" for i in range(30)]
PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE = 1, 3, 4


def _loaded(settings) -> None:
    """merchant_risk (string keys, every dtype, nulls), the example customer sets (int keys) and a service over
    customer_spend and merchant_risk, all materialized; then merchant_stale (TTL 1h) from rows 3 days old."""
    write_contract(settings.contracts_dir, every_dtype_contract())
    write_service(settings.contracts_dir, service())
    seed_raw(settings)
    replace_raw(settings, "merchant_events", merchant_events(MERCHANTS, rows_per_merchant=3))
    pipeline.run_loop(settings)
    write_contract(settings.contracts_dir, every_dtype_contract(name="merchant_stale", ttl="1h"))
    replace_raw(settings, "merchant_events", merchant_events(MERCHANTS, end=AS_OF - timedelta(days=3)))
    pipeline.build_and_promote(settings, "merchant_stale")
    pipeline.apply(settings, feature_sets=["merchant_stale"])
    pipeline.materialize(settings, feature_views=["merchant_stale_v1"])


def test_feasts_sdk_reads_online_by_the_platforms_rules(backend: Backend) -> None:
    settings = backend.settings
    _loaded(settings)
    features = ["score", "cnt", "small", "flag", "label", "seen_at", "ratio"]
    merchants = [MERCHANTS[0], "nobody", MERCHANTS[1], MERCHANTS[0], *MERCHANTS[2:12]]
    platform = feast_bridge.read_online(settings, "merchant_risk", merchants)
    store = feast_bridge.open_store(settings, settings.environment())
    response = store.get_online_features(features=[f"merchant_risk_v1:{f}" for f in features],
                                         entity_rows=[{"merchant_code": m} for m in merchants])
    got = response.to_dict(include_event_timestamps=True)
    statuses = dict(zip(response.proto.metadata.feature_names.val,
                        [list(r.statuses) for r in response.proto.results], strict=True))
    for feature in features:
        expected = [row[feature] for row in platform]
        if feature == "ratio":  # float32 on both sides
            assert got[feature] == pytest.approx(expected, nan_ok=True)
        elif feature == "seen_at":
            assert [v if v is None else v.replace(tzinfo=None) for v in got[feature]] == \
                [v if v is None else v.replace(tzinfo=None) for v in expected]
        else:
            assert got[feature] == expected, feature
    # An unknown entity: every value None and no event timestamp (Feast's Redis store said PRESENT at 1970).
    assert all(got[f][1] is None for f in features) and got["score__ts"][1] is None
    assert statuses["score"][1] == NOT_FOUND
    assert got["score__ts"][0] == got["score__ts"][3] == int(platform[0]["event_timestamp"].timestamp())
    # A found row is PRESENT, a stored null included (as Feast and the platform's server answer it).
    for feature in features:
        assert statuses[feature] == [PRESENT if row["status"] == "PRESENT" else NOT_FOUND for row in platform]
    assert any(got[f][i] is None for f in features for i in (0, 2, *range(4, len(merchants))))  # nulls exercised

    # TTL: rows older than the view's TTL are OUTSIDE_MAX_AGE with null values; found, so their time is kept.
    stale = store.get_online_features(features=["merchant_stale_v1:score", "merchant_stale_v1:cnt"],
                                      entity_rows=[{"merchant_code": m} for m in [*MERCHANTS[:3], "nobody"]])
    stale_dict = stale.to_dict(include_event_timestamps=True)
    assert stale_dict["score"] == [None] * 4 and stale_dict["cnt"] == [None] * 4
    assert [s for s in stale.proto.results[1].statuses] == [OUTSIDE_MAX_AGE] * 3 + [NOT_FOUND]
    assert all(stale_dict["score__ts"][:3]) and stale_dict["score__ts"][3] is None

    # A feature service over an int-keyed and a string-keyed set: the platform's service read.
    customers = [1001, 424242, 1002]
    answer = store.get_online_features(
        features=store.get_feature_service("risk_model_v1"),
        entity_rows=[{"customer_id": c, "merchant_code": m} for c, m in zip(customers, merchants, strict=False)]
    ).to_dict(include_event_timestamps=True)
    expected = feast_bridge.read_online_service(settings, "risk_model",
                                                {"customer_id": customers, "merchant_code": merchants[:3]})
    assert answer["txn_count_1d"] == [r["txn_count_1d"] for r in expected]
    assert answer["cnt"] == [r["cnt"] for r in expected]
    assert answer["txn_count_1d"][1] is None and answer["txn_count_1d__ts"][1] is None


def _feast_cli(settings, *args: str) -> subprocess.CompletedProcess:
    """Plain `feast` on the generated repo as README runs it: the environment's name and its secrets set, the
    contracts and work directory found through the generated file (they are not in the process environment)."""
    config = feast_bridge.write_feature_store_yaml(settings, settings.environment())
    env = {**os.environ, **settings.values, "PYTHONPATH": str(REPO / "src"), "FEATURE_PLATFORM_ENV": settings.env_name}
    for name in ("FEATURE_PLATFORM_CONTRACTS", "FEATURE_PLATFORM_HOME"):
        env.pop(name, None)
    if settings.s3_endpoint_url:
        env["FEAST_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return subprocess.run([str(Path(sys.executable).parent / "feast"), "-c", str(REPO / "feature_repo"), "-f",
                           str(config), *args], env=env, capture_output=True, text=True, timeout=600)


def test_feast_materialize_writes_what_featurectl_writes(backend: Backend) -> None:
    """A rebuild without some merchants, loaded by plain `feast materialize-incremental`: the departed are
    deleted (Feast's own writer would keep them), the rest hold the new build, and verify passes."""
    settings = backend.settings
    write_contract(settings.contracts_dir, every_dtype_contract())
    replace_raw(settings, "merchant_events", merchant_events(MERCHANTS))
    pipeline.build_and_promote(settings, "merchant_risk")
    pipeline.apply(settings, feature_sets=["merchant_risk"])
    first = _feast_cli(settings, "materialize-incremental", "2100-01-01T00:00:00")
    assert first.returncode == 0, first.stderr[-3000:]
    assert all(r["status"] == "PRESENT" for r in feast_bridge.read_online(settings, "merchant_risk", MERCHANTS))

    staying = MERCHANTS[:20]
    replace_raw(settings, "merchant_events", merchant_events(staying, seed=11))
    pipeline.build_and_promote(settings, "merchant_risk")
    pipeline.apply(settings, feature_sets=["merchant_risk"])
    second = _feast_cli(settings, "materialize", "2000-01-01T00:00:00", "2100-01-01T00:00:00",
                        "--views", "merchant_risk_v1")
    assert second.returncode == 0, second.stderr[-3000:]
    rows = feast_bridge.read_online(settings, "merchant_risk", MERCHANTS)
    assert [r["status"] for r in rows] == ["PRESENT"] * 20 + ["NOT_FOUND"] * 10
    [result] = pipeline.verify(settings, feature_views=["merchant_risk_v1"])
    assert result["ok"] and result["online_entities"] == 20
    # What featurectl writes for the same build: nothing changes.
    before = feast_bridge.read_online(settings, "merchant_risk", staying)
    pipeline.materialize(settings, feature_views=["merchant_risk_v1"])
    assert feast_bridge.read_online(settings, "merchant_risk", staying) == before
