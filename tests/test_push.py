"""Pushed rows: validation (all or nothing), Feast's write rule online, the offline record in training sets,
and the server's POST /push and /write-to-online-store, on SQLite, redis-server and a Redis Cluster."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from feature_platform import feast_bridge, pipeline, push
from feature_platform.errors import AccessDenied, NotFound
from feature_platform.governance import ANONYMOUS, Caller
from tests.conftest import REPO, Backend
from tests.helpers import AS_OF, every_dtype_contract, merchant_events, replace_raw, write_contract

MERCHANTS = [f"m{i:03d}" for i in range(20)]
VIEW = "merchant_risk_v1"
SOURCE = "merchant_risk_v1_push"


def _contract(**changes) -> dict:
    contract = every_dtype_contract()
    contract["push"] = True
    contract.update(changes)
    return contract


def _loaded(settings, **changes) -> None:
    write_contract(settings.contracts_dir, _contract(**changes))
    replace_raw(settings, "merchant_events", merchant_events(MERCHANTS))
    pipeline.build_and_promote(settings, "merchant_risk")
    pipeline.apply(settings, feature_sets=["merchant_risk"])
    pipeline.materialize(settings, feature_views=[VIEW])


def _push(settings, df: dict, to: str = "online_and_offline", caller=ANONYMOUS, store=None) -> push.PushResult:
    env = settings.environment()
    contract = settings.contracts().get("merchant_risk", 1)
    store = store or feast_bridge.open_store(settings, env)
    return push.push(settings, env, contract, df, to, caller, store)


def _row(merchant: str, when: datetime, score: float, label: str | None = "pushed") -> dict:
    return {"merchant_code": [merchant], "ts": [when.isoformat()], "score": [score], "cnt": [7], "label": [label]}


def _pushed_files(settings) -> list[str]:
    contract = settings.contracts().get("merchant_risk", 1)
    return push.pushed_files(settings.object_store(settings.environment()), contract)


def test_a_push_is_read_back_and_an_older_one_never_overwrites(backend: Backend) -> None:
    """Read-after-write on every backend; Feast's rule: a row as old as the stored one (in whole seconds) or
    older is left out; features a push leaves out are null (a pushed row is a whole row)."""
    settings = backend.settings
    _loaded(settings)
    now = datetime.now(UTC).replace(microsecond=0)
    before = feast_bridge.read_online(settings, "merchant_risk", [MERCHANTS[0], MERCHANTS[1]])
    result = _push(settings, {**_row(MERCHANTS[0], now, 1.5), "flag": [True]}, to="online")
    assert (result.rows, result.written_online, result.skipped_older, result.recorded) == (1, 1, 0, None)
    got, untouched = feast_bridge.read_online(settings, "merchant_risk", [MERCHANTS[0], MERCHANTS[1]])
    assert (got["score"], got["cnt"], got["label"], got["flag"], got["status"]) == (1.5, 7, "pushed", True, "PRESENT")
    assert got["small"] is None and got["seen_at"] is None and got["ratio"] is None  # not pushed: null
    assert got["event_timestamp"] == now
    assert untouched == before[1]
    for when in (now - timedelta(hours=1), now + timedelta(microseconds=500_000)):  # older; the same second
        result = _push(settings, _row(MERCHANTS[0], when, -9.0), to="online")
        assert (result.written_online, result.skipped_older) == (0, 1)
    assert feast_bridge.read_online(settings, "merchant_risk", [MERCHANTS[0]])[0]["score"] == 1.5
    # Two rows of one entity in one push: the newest is what the store keeps.
    later = now + timedelta(seconds=5)
    _push(settings, {"merchant_code": [MERCHANTS[0]] * 2, "ts": [later.isoformat(), (later - timedelta(seconds=2))
                                                                 .isoformat()], "score": [2.5, 3.5]}, to="online")
    assert feast_bridge.read_online(settings, "merchant_risk", [MERCHANTS[0]])[0]["score"] == 2.5
    assert _pushed_files(settings) == []  # online only: nothing recorded offline


BAD_PUSHES = [
    ({"merchant_code": ["m000"], "ts": ["2026-11-30T00:00:00Z"], "nope": [1]}, "column nope: not a column"),
    ({"ts": ["2026-11-30T00:00:00Z"], "score": [1.0]}, "column merchant_code: missing"),
    ({"merchant_code": ["m000", "m001"], "ts": ["2026-11-30T00:00:00Z"]}, "same length"),
    ({"merchant_code": ["m000", 5], "ts": ["2026-11-30T00:00:00Z"] * 2}, "column merchant_code, row 1: 5 is not"),
    ({"merchant_code": ["m000", None], "ts": ["2026-11-30T00:00:00Z"] * 2}, "column merchant_code, row 1: null"),
    ({"merchant_code": ["m000"], "ts": [1764547200]}, "column ts, row 0: 1764547200 is a number"),
    ({"merchant_code": ["m000", "m1"], "ts": ["2026-11-30T00:00:00Z", "yesterday"]}, "column ts, row 1: 'yesterday'"),
    ({"merchant_code": ["m000"], "ts": ["2026-11-30T00:00:00Z"], "cnt": [1.5]}, "column cnt, row 0: 1.5 is not"),
    ({"merchant_code": ["m000"], "ts": ["2026-11-30T00:00:00Z"], "small": [2**40]}, "column small, row 0"),
    ({"merchant_code": ["m000"], "ts": ["2026-11-30T00:00:00Z"], "flag": ["yes"]}, "column flag, row 0: 'yes'"),
    ({"merchant_code": ["m000"], "ts": ["2099-01-01T00:00:00Z"]}, "column ts, row 0: 2099-01-01T00:00:00+00:00 is"),
    ({"merchant_code": [], "ts": []}, "no rows"),
]


def test_a_bad_push_names_the_column_and_row_and_writes_nothing(dev_settings) -> None:
    _loaded(dev_settings)
    before = feast_bridge.read_online(dev_settings, "merchant_risk", ["m000", "m001", "m1"])
    store = feast_bridge.open_store(dev_settings, dev_settings.environment())
    for df, fragment in BAD_PUSHES:
        with pytest.raises(push.PushRejected, match="nothing was written") as info:
            _push(dev_settings, {k: v for k, v in df.items()}, store=store)
        assert fragment in str(info.value), str(info.value)
    assert feast_bridge.read_online(dev_settings, "merchant_risk", ["m000", "m001", "m1"]) == before
    assert _pushed_files(dev_settings) == []


def test_contract_rules_apply_to_pushed_rows(local_settings) -> None:
    """Nullability and constraints as the build's gate applies them; a feature not pushed is null."""
    contract = _contract()
    contract["features"][0].update(nullable=False, constraints={"min": 0, "max": 10})
    contract["features"][4]["constraints"] = {"allowed_values": ["a", "b"]}
    write_contract(local_settings.contracts_dir, contract)
    settings = local_settings
    when = (AS_OF - timedelta(hours=1)).isoformat()
    cases = [({"merchant_code": ["x", "y"], "ts": [when] * 2, "score": [1.0, None]}, "column score, row 1: null"),
             ({"merchant_code": ["x"], "ts": [when], "score": [float("nan")]}, "column score, row 0: null"),
             ({"merchant_code": ["x"], "ts": [when]}, "column score, row 0: not pushed"),
             ({"merchant_code": ["x", "y"], "ts": [when] * 2, "score": [1.0, 11.0]}, "11.0 is above the maximum"),
             ({"merchant_code": ["x"], "ts": [when], "score": [-1.0]}, "-1.0 is below the minimum 0"),
             ({"merchant_code": ["x"], "ts": [when], "score": [1.0], "label": ["c"]}, "column label, row 0: 'c'")]
    env = settings.environment()
    parsed = settings.contracts().get("merchant_risk", 1)
    for df, fragment in cases:
        with pytest.raises(push.PushRejected) as info:
            push.push(settings, env, parsed, df, "offline", ANONYMOUS)
        assert fragment in str(info.value), (fragment, str(info.value))
    assert push.pushed_files(settings.object_store(env), parsed) == []
    ok = push.push(settings, env, parsed, {"merchant_code": ["x"], "ts": [when], "score": [10.0], "label": ["a"]},
                   "offline", ANONYMOUS)
    assert ok.recorded and ok.rows == 1


def test_writers_and_push_sources(local_settings) -> None:
    contract = _contract()
    contract["access"] = {"writers": ["stream-team"]}
    write_contract(local_settings.contracts_dir, contract)
    contracts = local_settings.contracts()
    parsed = contracts.get("merchant_risk", 1)
    assert parsed.writer_teams == ["stream-team"] and push.find_push_source(contracts, SOURCE) is parsed
    with pytest.raises(NotFound, match=r"no push source named 'ghost'.*merchant_risk_v1_push"):
        push.find_push_source(contracts, "ghost")
    env = local_settings.environment()
    push.check_writer(env, parsed, Caller("stream-team", "s", True))
    push.check_writer(env, parsed, ANONYMOUS)  # an open environment, as for reads
    with pytest.raises(AccessDenied, match=r"team fraud-ml may not push to merchant_risk_v1_push.*stream-team"):
        push.check_writer(env, parsed, Caller("fraud-ml", "f", True))
    closed = env.model_copy(update={"access": env.access.model_copy(update={"default": "deny"})})
    with pytest.raises(AccessDenied) as info:
        push.check_writer(closed, parsed, ANONYMOUS)
    assert info.value.status == 401
    assert _contract()["push"] and contracts.get("customer_profile", 1).writer_teams == ["crm-data"]


def test_pushed_rows_reach_training_sets_and_survive_rebuilds_gc_and_compaction(dev_settings) -> None:
    """offline: recorded before the answer; `historical` returns them for request times at or after their event
    time, within the TTL; at a key and event time the build also has, the pushed row wins (the later push of
    two); a rebuild, gc and compaction lose nothing and change no answer."""
    settings = dev_settings
    _loaded(settings)
    build_rows = merchant_events(MERCHANTS).to_pandas()
    clash = build_rows[build_rows.merchant_code == MERCHANTS[2]].iloc[0]
    fresh = AS_OF + timedelta(minutes=10)
    _push(settings, _row(MERCHANTS[1], fresh, 111.0), to="offline")
    _push(settings, _row(MERCHANTS[2], clash.ts.to_pydatetime(), 222.0), to="offline")
    _push(settings, _row(MERCHANTS[2], clash.ts.to_pydatetime(), 333.0, label="later"), to="offline")
    _push(settings, _row("new-merchant", fresh, 444.0), to="offline")
    assert len(_pushed_files(settings)) == 4
    entities = pd.DataFrame({
        "merchant_code": [MERCHANTS[1], MERCHANTS[1], MERCHANTS[2], "new-merchant", "new-merchant", MERCHANTS[1]],
        "event_timestamp": [fresh - timedelta(seconds=1), fresh, clash.ts, fresh, fresh - timedelta(seconds=1),
                            fresh + timedelta(days=3)]})

    def answer() -> pd.DataFrame:
        frame, provenance = feast_bridge.historical(settings, entities, "merchant_risk")
        assert provenance["pushed_files"] == len(_pushed_files(settings))
        return frame[["score", "label", "cnt"]]

    first = answer()
    scores, labels, counts = (first[c].tolist() for c in ("score", "label", "cnt"))
    assert scores[0] != 111.0 and scores[1] == 111.0  # before its event time: the build's row
    assert (scores[2], labels[2]) == (333.0, "later")  # the build's row at that time, replaced by the later push
    assert scores[3] == 444.0 and pd.isna(scores[4])  # an entity only pushed
    assert pd.isna(scores[5])  # past the TTL (2d)
    assert counts[1] == 7
    pipeline.build_and_promote(settings, "merchant_risk")  # a rebuild (the same raw data: reused)
    replace_raw(settings, "merchant_events", merchant_events(MERCHANTS, seed=4))
    pipeline.build_and_promote(settings, "merchant_risk")  # a new build
    pipeline.apply(settings, feature_sets=["merchant_risk"])
    store, contract = settings.object_store(settings.environment()), settings.contracts().get("merchant_risk", 1)
    store.write_json_atomic("merchant_risk/v1/online-shards/2/0.json", {"shard": "1/2"})  # a shard's marker
    decisions = pipeline.collect_garbage(settings, None, 1, 0, dry_run=False)
    assert all(len(d["build_id"]) == 16 for d in decisions)  # builds only (pushed/ was taken for one before)
    assert store.exists("merchant_risk/v1/online-shards/2/0.json") and len(_pushed_files(settings)) == 4
    assert {b["build_id"] for b in pipeline.versions(settings, "merchant_risk")[0]}.isdisjoint(
        {"pushed", "online-shards"})
    rebuilt = answer()
    assert rebuilt["score"].tolist()[1:4] == [111.0, 333.0, 444.0]
    assert push.compact(store, contract)["compacted"] == 4 and len(_pushed_files(settings)) == 1
    pd.testing.assert_frame_equal(answer(), rebuilt)


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        answer = json.loads(raw or b"{}")
        return exc.code, (json.loads(answer) if isinstance(answer, str) else answer)


def test_the_server_takes_feasts_push_and_write_bodies(dev_settings, monkeypatch, tmp_path) -> None:
    """POST /push (Feast's body) with read-after-write on /get-online-features; 422 names the column and row
    and writes nothing; 404 for an unknown source; Feast's `remote` client's write_to_online_store works."""
    from tests.test_server import Server

    _loaded(dev_settings)
    write_contract(dev_settings.contracts_dir, {  # docs/push.md's example feature set
        "kind": "FeatureSet", "name": "card_activity", "version": 1, "description": "Streamed card activity.",
        "owner": "fraud@example.com", "push": True,
        "entity": {"name": "card", "join_key": "card_id", "dtype": "int64"}, "timestamp_field": "event_timestamp",
        "ttl": "1d", "pii": False, "source": {"table": "card_events", "sql": "SELECT * FROM source"},
        "features": [{"name": "last_amount", "dtype": "float64", "description": "the last amount"}]})
    server = Server(dev_settings)
    try:
        base = f"http://127.0.0.1:{server.port}"
        # docs/push.md's stream-processor example, run as written against this server.
        example = (REPO / "docs" / "push.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
        scope: dict = {}
        exec(example.replace("http://feature-server:6566", base), scope)
        assert scope["push"]({"card_id": [7], "event_timestamp": ["2026-12-01T12:00:04Z"],
                              "last_amount": [1.0]})["rows"] == 1
        now = datetime.now(UTC).replace(microsecond=0)
        code, body = _post(f"{base}/push", {"push_source_name": SOURCE, "to": "online_and_offline",
                                            "df": {"merchant_code": ["m000", "m001"],
                                                   "ts": [now.isoformat()] * 2, "score": [1.25, 2.5]}})
        assert code == 200 and body["rows"] == 2 and body["written_online"] == 2 and body["recorded_offline"]
        code, read = _post(f"{base}/get-online-features", {"features": [f"{VIEW}:score"],
                                                            "entities": {"merchant_code": ["m000", "m001"]}})
        assert code == 200 and read["results"][1]["values"] == [1.25, 2.5]
        code, body = _post(f"{base}/push", {"push_source_name": SOURCE, "df": {
            "merchant_code": ["m002", "m003"], "ts": [now.isoformat()] * 2, "cnt": [1, "many"]}})
        assert code == 422 and "column cnt, row 1: 'many' is not int64" in body["detail"]
        code, _ = _post(f"{base}/get-online-features", {"features": [f"{VIEW}:cnt"],
                                                         "entities": {"merchant_code": ["m002"]}})
        assert code == 200
        assert len(_pushed_files(dev_settings)) == 1  # the rejected push recorded nothing
        code, body = _post(f"{base}/push", {"push_source_name": "ghost", "df": {"merchant_code": ["m0"]}})
        assert code == 404 and "no push source named 'ghost'" in body["detail"]
        text = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
        assert f'feast_push_request_total{{mode="online_and_offline",push_source="{SOURCE}"}} 1.0' in text

        # Feast's own remote client: write_to_online_store posts /write-to-online-store.
        import yaml
        from feast import FeatureStore

        config = feast_bridge.feature_store_config(dev_settings, dev_settings.environment())
        config["online_store"] = {"type": "remote", "path": base}
        repo = tmp_path / "remote"
        repo.mkdir()
        (repo / "feature_store.yaml").write_text(yaml.safe_dump(config))
        monkeypatch.setenv("FEAST_S3_ENDPOINT_URL", dev_settings.s3_endpoint_url)
        remote = FeatureStore(repo_path=str(repo))
        later = now + timedelta(seconds=30)
        frame = pd.DataFrame({"merchant_code": ["m004"], "ts": [later], "score": [4.5], "cnt": [4],
                              "small": [1], "flag": [False], "label": ["remote"], "seen_at": [later],
                              "ratio": [0.5]})
        remote.write_to_online_store(VIEW, frame)
        [row] = feast_bridge.read_online(dev_settings, "merchant_risk", ["m004"])
        assert (row["score"], row["label"], row["event_timestamp"]) == (4.5, "remote", later)
    finally:
        server.stop()
    # The audit trail has the pushes as counts per team and set (flushed at shutdown), never values.
    from feature_platform import audit

    pushes = [c for e in audit.read(dev_settings, dev_settings.environment(), "merchant_risk")
              if e["action"] == "push" for c in e["changes"]]
    assert sorted((c["classification"], c["pushes"], c["rows"]) for c in pushes) == [
        ("online", 1, 1), ("online_and_offline", 1, 2)]
    assert all(c["team"] == "anonymous" and "1.25" not in json.dumps(c) for c in pushes)


def test_featurectl_push_from_a_file(local_settings, tmp_path, capsys) -> None:
    from feature_platform.cli import main

    _loaded(local_settings)
    now = datetime.now(UTC).replace(microsecond=0)
    path = tmp_path / "rows.csv"
    pd.DataFrame({"merchant_code": ["m005", "m006"], "ts": [now.isoformat()] * 2, "score": [5.0, 6.0],
                  "cnt": pd.array([5, None], dtype="Int64")}).to_csv(path, index=False)
    where = ["--contracts", str(local_settings.contracts_dir), "--home", str(local_settings.home), "--env", "local"]
    assert main(["push", "merchant_risk", "--file", str(path), "--to", "online_and_offline", "--json", *where]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 2 and result["written_online"] == 2 and result["recorded"]
    rows = feast_bridge.read_online(local_settings, "merchant_risk", ["m005", "m006"])
    assert [r["score"] for r in rows] == [5.0, 6.0] and [r["cnt"] for r in rows] == [5, None]
    from feature_platform import audit

    [entry] = [e for e in audit.read(local_settings, local_settings.environment(), "merchant_risk")
               if e["action"] == "push"]
    assert [(c["rows"], c["pushes"], c["classification"]) for c in entry["changes"]] == [(2, 1, "online_and_offline")]
    assert main(["push", "customer_profile", "--file", str(path), *where]) == 2
    assert "takes no pushed rows" in capsys.readouterr().err


def test_feasts_sdk_push_goes_through_the_platform(backend: Backend) -> None:
    """FeatureStore.push (online, offline, both) and write_to_online_store on a platform view: the platform's
    validation, Feast's write rule online, the offline record read by training sets; a bad frame writes nothing."""
    from feast.data_source import PushMode

    settings = backend.settings
    _loaded(settings)
    store = feast_bridge.open_store(settings, settings.environment())
    now = datetime.now(UTC).replace(microsecond=0)
    frame = pd.DataFrame({"merchant_code": ["m007", "m008"], "ts": [now, now], "score": [7.5, 8.5],
                          "cnt": [7, None], "small": [1, 2], "flag": [True, None], "label": ["sdk", None],
                          "seen_at": [now, now], "ratio": [0.25, 0.5]})
    store.push(SOURCE, frame, to=PushMode.ONLINE_AND_OFFLINE)
    rows = feast_bridge.read_online(settings, "merchant_risk", ["m007", "m008"])
    assert [r["score"] for r in rows] == [7.5, 8.5] and [r["cnt"] for r in rows] == [7, None]
    assert [r["event_timestamp"] for r in rows] == [now, now]
    assert len(_pushed_files(settings)) == 1
    store.write_to_online_store(VIEW, frame.assign(ts=now - timedelta(hours=1), score=[-1.0, -1.0]))
    assert [r["score"] for r in feast_bridge.read_online(settings, "merchant_risk", ["m007"])] == [7.5]  # older
    with pytest.raises(push.PushRejected, match="column cnt, row 1"):
        store.push(SOURCE, frame.assign(cnt=[1.0, 2.5]), to=PushMode.ONLINE_AND_OFFLINE)
    assert len(_pushed_files(settings)) == 1
    entities = pd.DataFrame({"merchant_code": ["m007", "m009"], "event_timestamp": [now, now]})
    training, _ = feast_bridge.historical(settings, entities, "merchant_risk")
    assert training["score"].tolist()[0] == 7.5 and training["label"].tolist()[0] == "sdk"
    # Feast's own get_historical_features reads the pushed rows too, the same as the platform's join.
    through_feast = store.get_historical_features(entity_df=entities, features=[f"{VIEW}:score", f"{VIEW}:label"]
                                                  ).to_df()
    assert through_feast["score"].tolist()[0] == 7.5 and through_feast["label"].tolist()[0] == "sdk"
    pd.testing.assert_series_equal(through_feast["score"], training["score"], check_names=False)


def test_materialize_never_replaces_a_pushed_row_with_an_older_build_row(backend: Backend) -> None:
    """A rebuild's load keeps rows pushed after its data (and entities only pushed), still deletes departed
    entities that were not pushed since, and verify accepts the pushed rows."""
    settings = backend.settings
    _loaded(settings)
    now = datetime.now(UTC).replace(microsecond=0)
    _push(settings, _row(MERCHANTS[0], now, 42.0), to="online")
    _push(settings, _row("pushed-only", now, 43.0), to="online")
    replace_raw(settings, "merchant_events", merchant_events(MERCHANTS[1:-1], seed=5))  # m000 and m019 depart
    pipeline.build_and_promote(settings, "merchant_risk")
    pipeline.apply(settings, feature_sets=["merchant_risk"])
    pipeline.materialize(settings, feature_views=[VIEW])
    pushed, only, built, departed = feast_bridge.read_online(
        settings, "merchant_risk", [MERCHANTS[0], "pushed-only", MERCHANTS[1], MERCHANTS[-1]], enforce_ttl=False)
    assert (pushed["score"], pushed["event_timestamp"]) == (42.0, now)
    assert only["score"] == 43.0
    assert built["event_timestamp"] < now and built["status"] == "PRESENT"
    assert departed["status"] == "NOT_FOUND"
    [report] = pipeline.verify(settings, feature_views=[VIEW])
    assert report["ok"], report
    assert report["online_entities"] == report["build_entities"] + 2


def test_a_pushed_row_is_byte_equal_to_feasts_own_write(dev_settings) -> None:
    """The same row pushed by the platform and written by Feast's own Redis writer: the same hash, byte for byte
    (fields mmh3(view:feature), Feast's ValueProto per dtype, nulls included, and _ts:view)."""
    import redis

    from feature_platform.feast_modes import feast_writer
    from feature_platform.online.layout import plan_contract

    _loaded(dev_settings)
    env = dev_settings.environment()
    store = feast_bridge.open_store(dev_settings, env)
    now = datetime.now(UTC).replace(microsecond=0)
    values = {"ts": [now], "score": [-0.5], "cnt": [-(2**40)], "small": [None], "flag": [False], "label": ["ünï"],
              "seen_at": [now - timedelta(days=3)], "ratio": [0.25]}
    _push(dev_settings, {"merchant_code": ["ours"], **{k: [v.isoformat() if isinstance(v, datetime) else v
                                                           for v in column] for k, column in values.items()}},
          to="online", store=store)
    with feast_writer():
        store.write_to_online_store(VIEW, pd.DataFrame({"merchant_code": ["feasts"], **values}).astype(
            {"small": "Int32", "cnt": "Int64"}))
    client = redis.Redis.from_url(f"redis://{dev_settings.values['FEATURE_PLATFORM_REDIS_ADDRESS']}/"
                                  f"{env.online_store.db}", password=dev_settings.values.get(
                                      "FEATURE_PLATFORM_REDIS_PASSWORD"))
    plan = plan_contract(env.feast_project, dev_settings.contracts().get("merchant_risk", 1))
    ours, feasts = (client.hgetall(plan.keys([[name]])[0]) for name in ("ours", "feasts"))
    assert ours and ours == feasts


def test_the_dag_of_a_set_that_takes_pushes_compacts_them(local_settings) -> None:
    """`compact_pushes` runs after verify_online, only in DAGs of sets with push: true; the step folds files."""
    from feature_platform.dag_factory import DagConfig, build_dags

    write_contract(local_settings.contracts_dir, _contract())
    dags = build_dags(DagConfig.from_env({"FEATURE_PLATFORM_CONTRACTS": str(local_settings.contracts_dir),
                                          "FEATURE_PLATFORM_HOME": str(local_settings.home),
                                          "FEATURE_PLATFORM_ENV": "local"}))
    pushed = dags["feature_set__merchant_risk"]
    assert pushed.get_task("compact_pushes").upstream_task_ids == {"verify_online"}
    assert "compact_pushes" not in dags["feature_set__customer_profile"].task_ids
    env = local_settings.environment()
    parsed = local_settings.contracts().get("merchant_risk", 1)
    when = (AS_OF - timedelta(hours=1)).isoformat()
    for score in (1.0, 2.0):
        push.push(local_settings, env, parsed, {"merchant_code": ["x"], "ts": [when], "score": [score]}, "offline",
                  ANONYMOUS)
    [done] = pipeline.run_named_step(local_settings, "compact_pushes", "merchant_risk", None, {})
    assert done["compacted"] == 2 and len(_pushed_files(local_settings)) == 1


def test_the_compare_and_set_script_keeps_feasts_rule_at_the_edges(redis_clean) -> None:
    """The script inside Redis, on Timestamps as Feast writes them: strictly newer whole seconds win (nanos do
    not count), equal seconds win only as a build's correction (eq), a missing row is written, and event times
    before 1970 (ten-byte varints) compare as the negatives they are."""
    from feature_platform.online.layout import encode_event_timestamps
    from feature_platform.online.stores import _compare_and_set

    client = redis_clean.client()

    def stamp(micros: int) -> bytes:
        import pyarrow as pa

        return encode_event_timestamps(pa.array([micros], pa.timestamp("us", tz="UTC")))[0]

    def cas(key: bytes, micros: int, value: bytes, eq: bool = False) -> int:
        return _compare_and_set(client, b"_ts:v", [b"f", b"_ts:v"], [key], [[value], [stamp(micros)]], eq)[0]

    second = 1_000_000
    cases = [  # stored event time (µs) or None, pushed event time, eq, written?
        (None, 100 * second, False, True),
        (100 * second + 5, 100 * second + 999_999, False, False),  # the same whole second: kept
        (100 * second + 5, 100 * second, True, True),             # the same second, as a correction
        (100 * second, 101 * second, False, True),
        (101 * second, 100 * second, True, False),                # older: never, not even as a correction
        (-5 * second, -3 * second, False, True),                  # before 1970
        (-3 * second, -5 * second, False, False),
        (-3 * second, 5 * second, False, True),
    ]
    for index, (stored, pushed, eq, written) in enumerate(cases):
        key = b"k%d" % index
        if stored is not None:
            client.hset(key, mapping={b"f": b"old", b"_ts:v": stamp(stored)})
        assert cas(key, pushed, b"new", eq) == int(written), (stored, pushed, eq)
        assert client.hget(key, b"f") == (b"new" if written else b"old")
        assert client.hget(key, b"_ts:v") == stamp(pushed if written else stored)


def test_a_training_set_with_pushed_rows_replays_exactly_from_its_provenance(local_settings, tmp_path,
                                                                             capsys) -> None:
    """A training set names the newest push it read (pushed_through); `historical --replay` on its provenance
    leaves out every later push (a correction at the same key and time, a new entity), before and after
    compaction, for a single set and a feature service alike, while a fresh run sees them."""
    from feature_platform.cli import main
    from tests.test_feature_services import write_service

    settings = local_settings
    _loaded(settings)
    write_service(settings.contracts_dir, {
        "kind": "FeatureService", "name": "push_model", "version": 1, "description": "Reads pushed rows.",
        "owner": "fraud-ml@example.com", "features": [{"feature_set": "merchant_risk", "version": 1}]})
    fresh = AS_OF + timedelta(minutes=10)
    _push(settings, _row(MERCHANTS[1], fresh, 111.0), to="offline")
    entities = tmp_path / "entities.csv"
    pd.DataFrame({"merchant_code": [MERCHANTS[1], MERCHANTS[3], MERCHANTS[4]],
                  "event_timestamp": [fresh + timedelta(seconds=1)] * 3}).to_csv(entities, index=False)
    where = ["--contracts", str(settings.contracts_dir), "--home", str(settings.home), "--env", "local"]

    def run(out: str, *what: str) -> tuple[pd.DataFrame, dict]:
        assert main(["historical", *what, "--entities", str(entities), "--out", str(tmp_path / out), *where]) == 0
        capsys.readouterr()
        return (pd.read_parquet(tmp_path / out),
                json.loads((tmp_path / f"{out}.provenance.json").read_text()))

    single, single_made = run("single.parquet", "merchant_risk")
    service, service_made = run("service.parquet", "--feature-service", "push_model")
    [pinned] = service_made["builds"]
    assert single_made["pushed_through"] and pinned["pushed_through"] == single_made["pushed_through"]
    assert single["score"].tolist()[0] == 111.0 and service["score"].tolist()[0] == 111.0
    _push(settings, _row(MERCHANTS[1], fresh, 999.0, label="corrected"), to="offline")  # same key and time
    _push(settings, _row(MERCHANTS[3], fresh, 333.0), to="offline")
    for compacted in (False, True):
        if compacted:
            contract = settings.contracts().get("merchant_risk", 1)
            assert push.compact(settings.object_store(settings.environment()), contract)["compacted"] == 3
        for name, frame in (("single", single), ("service", service)):
            recorded = tmp_path / f"{name}.parquet.provenance.json"
            again, replayed = run(f"{name}-again.parquet", "--replay", str(recorded))
            pd.testing.assert_frame_equal(again, frame)
            assert replayed.get("builds", [replayed])[0]["pushed_through"] == single_made["pushed_through"]
        now, _ = run("now.parquet", "merchant_risk")
        assert now["score"].tolist()[:2] == [999.0, 333.0]  # a fresh run reads every push
    assert main(["historical", "merchant_risk", "--replay", str(tmp_path / "single.parquet.provenance.json"),
                 "--entities", str(entities), *where]) == 2
    assert "drop FEATURE_SET" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{}")
    assert main(["historical", "--replay", str(tmp_path / "broken.json"), "--entities", str(entities), *where]) == 2
    assert "not a training set's provenance" in capsys.readouterr().err
