"""Composite entity keys (pair features: customer x merchant): the contract, Feast's serialization of several
join keys (byte-equal to Feast's own writer), the gate's uniqueness over every key, point-in-time joins on all
keys, materialize with departed pairs deleted, reads through featurectl, the server's HTTP API and Feast's SDK,
pushes, feature services across a pair set and a single-key set, and ODCS's primary key of several columns."""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pytest

from feature_platform import feast_bridge, pipeline, push
from feature_platform.contracts import FeatureSetContract, diff_contracts, schema_hash
from feature_platform.errors import ConfigError, ContractErrors, QualityGateError
from feature_platform.governance import ANONYMOUS
from tests.helpers import AS_OF, replace_raw, seed_raw, write_contract

VIEW = "customer_merchant_v1"
CUSTOMERS = [1, 2, 3, -4]
MERCHANTS = ["m-7", "m-ü", "m 9"]  # a non-ASCII and a spaced key: bytes, not text, make the Redis key


def _contract(**changes) -> dict:
    contract = {
        "kind": "FeatureSet", "name": "customer_merchant", "version": 1, "description": "Generated for tests.",
        "owner": "tests@example.com",
        # Declared merchant first: Feast sorts join keys by name, the platform must too.
        "entities": [{"name": "merchant", "join_key": "merchant_id", "dtype": "string"},
                     {"name": "customer", "join_key": "customer_id", "dtype": "int64"}],
        "timestamp_field": "ts", "ttl": "30d", "online": True, "pii": False, "push": True,
        "source": {"table": "pair_events", "sql": "SELECT merchant_id, customer_id, ts, txn_count, amount_sum "
                                                  "FROM source"},
        "features": [{"name": "txn_count", "dtype": "int64", "description": "transactions of the pair"},
                     {"name": "amount_sum", "dtype": "float64", "description": "amount of the pair"}]}
    contract.update(changes)
    return contract


def _value(customer: int, merchant: str, hours_ago: int) -> int:
    """Distinct per pair and row: a join on one key only would pick another pair's value."""
    return abs(customer) * 100 + MERCHANTS.index(merchant) * 10 + hours_ago


def _raw(pairs: list[tuple[int, str]] | None = None, duplicate: tuple[int, str] | None = None) -> pa.Table:
    """Two rows per pair (3h and 1h before AS_OF); ``duplicate`` repeats one pair's newest row."""
    pairs = pairs if pairs is not None else [(c, m) for c in CUSTOMERS for m in MERCHANTS]
    rows: dict[str, list] = {k: [] for k in ("merchant_id", "customer_id", "ts", "txn_count", "amount_sum")}
    for customer, merchant in pairs:
        for hours in (3, 1) + ((1,) if (customer, merchant) == duplicate else ()):
            rows["merchant_id"].append(merchant)
            rows["customer_id"].append(customer)
            rows["ts"].append(AS_OF - timedelta(hours=hours))
            rows["txn_count"].append(_value(customer, merchant, hours))
            rows["amount_sum"].append(_value(customer, merchant, hours) / 4)
    return pa.table({"merchant_id": pa.array(rows["merchant_id"], pa.string()),
                     "customer_id": pa.array(rows["customer_id"], pa.int64()),
                     "ts": pa.array(rows["ts"], pa.timestamp("us", tz="UTC")),
                     "txn_count": pa.array(rows["txn_count"], pa.int64()),
                     "amount_sum": pa.array(rows["amount_sum"], pa.float64())})


def _loaded(settings, raw: pa.Table | None = None) -> None:
    write_contract(settings.contracts_dir, _contract())
    replace_raw(settings, "pair_events", raw if raw is not None else _raw())
    pipeline.build_and_promote(settings, "customer_merchant")
    pipeline.apply(settings, feature_sets=["customer_merchant"])
    pipeline.materialize(settings, feature_views=[VIEW])


def test_composite_contracts_validate_hash_and_diff_every_key() -> None:
    base = FeatureSetContract.model_validate(_contract())
    assert base.join_keys == ["merchant_id", "customer_id"] and base.composite
    for changes, message in (
            ({"entity": {"name": "customer", "join_key": "customer_id", "dtype": "int64"}}, "not both"),
            ({"entities": [{"name": "a", "join_key": "k", "dtype": "int64"},
                           {"name": "b", "join_key": "k", "dtype": "string"}]}, "join_key k is listed twice"),
            ({"entities": []}, "at least 1 item"),
            ({"timestamp_field": "customer_id"}, "is an entity's join_key"),
            ({"features": [{"name": "merchant_id", "dtype": "int64", "description": "x"}]}, "clashes")):
        with pytest.raises(ValueError, match=message):
            FeatureSetContract.model_validate(_contract(**changes))
    single = {k: v for k, v in _contract().items() if k != "entities"}
    as_entity = FeatureSetContract.model_validate({**single, "entity": _contract()["entities"][1]})
    as_list = FeatureSetContract.model_validate({**single, "entities": [_contract()["entities"][1]]})
    # One entity hashes as it always did, however it is written; a second key changes the hash.
    assert as_entity.schema_hash == as_list.schema_hash != base.schema_hash
    assert "entity" in as_entity.schema_dict() and "entities" in base.schema_dict()
    for other in (as_entity,  # a key removed
                  FeatureSetContract.model_validate(_contract(entities=[*_contract()["entities"], {
                      "name": "device", "join_key": "device_id", "dtype": "string"}])),  # a key added
                  FeatureSetContract.model_validate(_contract(entities=[  # a key retyped
                      {"name": "merchant", "join_key": "merchant_id", "dtype": "int64"},
                      _contract()["entities"][1]]))):
        assert schema_hash(other) != base.schema_hash
        assert any(c.breaking and "entity changed" in c.what for c in diff_contracts(base, other))
    described = _contract()
    described["entities"][0]["description"] = "the shop"
    assert not diff_contracts(base, FeatureSetContract.model_validate(described))


def test_contract_files_name_the_key_field_and_entities_agree_across_sets(local_settings) -> None:
    settings = local_settings
    path = write_contract(settings.contracts_dir, _contract(entities=[
        {"name": "merchant", "join_key": "merchant_id", "dtype": "uuid"}]))
    with pytest.raises(ContractErrors, match=r"customer_merchant/v1.yaml: entities\[0\].dtype: 'uuid' is not one "
                                             "of int64, int32, string"):
        settings.contracts()
    # `customer` is customer_id/int64 in the repo's sets: a pair set declaring it otherwise is named.
    write_contract(settings.contracts_dir, _contract(entities=[
        {"name": "merchant", "join_key": "merchant_id", "dtype": "string"},
        {"name": "customer", "join_key": "cust", "dtype": "int64"}]))
    with pytest.raises(ContractErrors, match="entity 'customer' is declared with join_key cust/int64 here"):
        settings.contracts()
    path.unlink()
    single = {k: v for k, v in _contract().items() if k != "entities"}
    write_contract(settings.contracts_dir, {**single, "entity": {"name": "merchant", "join_key": "merchant_id",
                                                                 "dtype": "text"}})
    with pytest.raises(ContractErrors, match=r"v1.yaml: entity.dtype: 'text' is not one of"):
        settings.contracts()  # a single `entity:` is named as written
    write_contract(settings.contracts_dir, single)
    with pytest.raises(ContractErrors, match=r"v1.yaml: entity: required field is missing; add `entity:` \(or "
                                             "`entities:`"):
        settings.contracts()


@pytest.mark.parametrize(("declared", "dtypes"), [
    (["merchant_id", "customer_id"], ["string", "int64"]), (["customer_id", "merchant_id"], ["int64", "string"]),
    (["a_key", "z_key", "m_key"], ["string", "int64", "int32"]), (["store_id"], ["int32"]),
    (["z_key", "a_key"], ["int32", "int32"])])
def test_composite_redis_keys_are_byte_equal_to_feasts(declared: list[str], dtypes: list[str]) -> None:
    """Feast's _redis_key of an EntityKey with one or several join keys (in any order), against the platform's
    bulk encoding: int64, int32 and string keys, negative, extreme and non-ASCII values."""
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from feature_platform.online import layout

    extremes = {"int64": (-(2**63), 2**63 - 1), "int32": (-(2**31), 2**31 - 1), "string": ("", "x" * 300)}
    rows = [tuple(extremes[dtype][0] if r == 0 and dtype != "string" else r * 7 - 3 if dtype != "string"
                  else ["m-7", "ünï", "", "a b"][r % 4] for dtype in dtypes) for r in range(6)]
    rows.append(tuple(extremes[dtype][1] for dtype in dtypes))
    columns = [list(column) for column in zip(*rows, strict=True)]
    plan = layout.plan_view("proj", "v", dict(zip(declared, dtypes, strict=True)), "ts", 0, [("f", "int64")])
    ours = plan.keys(columns)
    arrow = {"int64": pa.int64(), "int32": pa.int32(), "string": pa.string()}
    assert plan.keys([pa.array(c, arrow[d]) for c, d in zip(columns, dtypes, strict=True)]) == ours  # Arrow too
    for row, key in zip(rows, ours, strict=True):
        values = [Value(**{f"{dtype}_val": v}) for v, dtype in zip(row, dtypes, strict=True)]
        assert key == _redis_key("proj", EntityKey(join_keys=declared, entity_values=values), 3)
    assert all(key.startswith(layout.key_prefix(declared)) for key in ours)
    assert plan.keys(plan.id_columns(rows if plan.composite else [r[0] for r in rows])) == ours


def test_the_gate_checks_uniqueness_over_every_key(local_settings) -> None:
    """Two merchants of one customer at one time are two entities; the same pair twice at one time is refused,
    naming both keys, by the streaming gate and by the scan alike."""
    import duckdb

    from feature_platform.build import quality_gate

    settings = local_settings
    write_contract(settings.contracts_dir, _contract())
    replace_raw(settings, "pair_events", _raw(duplicate=(2, "m-ü")))
    message = (r"columns \(merchant_id, customer_id, ts\): 1 duplicate key\(s\) \(e.g. merchant_id=m-ü, "
               r"customer_id=2\)")
    with pytest.raises(QualityGateError, match=message):
        pipeline.build_and_promote(settings, "customer_merchant")
    con = duckdb.connect()
    con.register("built", _raw(duplicate=(2, "m-ü")))
    failures, _ = quality_gate(con, settings.contracts().get("customer_merchant"))
    assert failures == ["columns (merchant_id, customer_id, ts): 1 duplicate key(s) (e.g. merchant_id=m-ü, "
                        "customer_id=2); each entity may have one row per event timestamp"]
    replace_raw(settings, "pair_events", _raw())
    _, result = pipeline.build(settings, "customer_merchant")
    assert result.metadata["entity_count"] == len(CUSTOMERS) * len(MERCHANTS)
    assert result.metadata["sorted_by"] == ["merchant_id", "customer_id", "ts"]
    con = duckdb.connect()
    con.register("built", _raw())
    failures, stats = quality_gate(con, settings.contracts().get("customer_merchant"))
    assert failures == [] and stats["entity_count"] == len(CUSTOMERS) * len(MERCHANTS)


def test_composite_keys_on_redis_every_path(dev_settings) -> None:
    """Materialized hashes equal Feast's own write of the same row byte for byte; featurectl, the server and
    Feast's SDK read each pair's own values; a missing key is a 422 naming it; a departed pair is deleted while
    the customer's other pairs stay; point-in-time joins on both keys; pushes; verify."""
    import redis

    from feature_platform.feast_modes import feast_writer
    from feature_platform.online.layout import plan_contract
    from tests.test_server import Server

    settings = dev_settings
    _loaded(settings)
    env = settings.environment()
    asked = {"customer_id": [1, 1, -4, 99], "merchant_id": ["m-7", "m-ü", "m 9", "m-7"]}
    rows = feast_bridge.read_online(settings, "customer_merchant", asked)
    assert [r["txn_count"] for r in rows[:3]] == [_value(1, "m-7", 1), _value(1, "m-ü", 1), _value(-4, "m 9", 1)]
    assert rows[3]["status"] == "NOT_FOUND" and rows[3]["txn_count"] is None
    assert rows[0]["customer_id"] == 1 and rows[0]["merchant_id"] == "m-7"
    assert all(r["ok"] for r in feast_bridge.verify(settings, sample=50, feature_views=[VIEW]))

    store = feast_bridge.open_store(settings, env)
    sdk = store.get_online_features(features=[f"{VIEW}:txn_count", f"{VIEW}:amount_sum"], entity_rows=[
        {"customer_id": 2, "merchant_id": "m-ü"}, {"merchant_id": "m-7", "customer_id": 3}]).to_dict()
    assert sdk["txn_count"] == [_value(2, "m-ü", 1), _value(3, "m-7", 1)]
    with feast_writer():  # Feast's own writer, a new pair with the values of an existing one
        store.write_to_online_store(VIEW, pd.DataFrame({
            "merchant_id": ["m-new"], "customer_id": [3], "ts": [AS_OF - timedelta(hours=1)],
            "txn_count": [_value(3, "m-7", 1)], "amount_sum": [_value(3, "m-7", 1) / 4]}))
    client = redis.Redis.from_url(f"redis://{settings.values['FEATURE_PLATFORM_REDIS_ADDRESS']}/"
                                  f"{env.online_store.db}", password=settings.values.get(
                                      "FEATURE_PLATFORM_REDIS_PASSWORD"))
    plan = plan_contract(env.feast_project, settings.contracts().get("customer_merchant", 1))
    ours, feasts = (client.hgetall(key) for key in plan.keys([["m-7", "m-new"], [3, 3]]))
    assert ours and ours == feasts

    server = Server(settings)
    try:
        status, answer = server.post({"features": [f"{VIEW}:txn_count"], "entities": asked})
        assert status == 200, answer
        names = answer["metadata"]["feature_names"]
        assert names == ["customer_id", "merchant_id", "txn_count"]
        assert answer["results"][2]["values"] == [r["txn_count"] for r in rows]
        assert answer["results"][2]["statuses"][3] == "NOT_FOUND"
        status, answer = server.post({"features": [f"{VIEW}:txn_count"], "entities": {"customer_id": [1]}})
        assert status == 422 and "'merchant_id' is missing" in answer["detail"], answer
        status, answer = server.post({"features": [f"{VIEW}:txn_count"],
                                      "entities": {"customer_id": ["x"], "merchant_id": ["m-7"]}})
        assert status == 422 and "entities.customer_id" in answer["detail"], answer
    finally:
        server.stop()

    # Point in time, on both keys: between the two rows a pair reads its older value, and only its own.
    entities = pd.DataFrame({"customer_id": [1, 1, 2, 5], "merchant_id": ["m-7", "m-ü", "m-7", "m-7"],
                             "event_timestamp": [AS_OF - timedelta(hours=2), AS_OF, AS_OF, AS_OF]})
    frame, _ = feast_bridge.historical(settings, entities, "customer_merchant")
    assert frame["txn_count"].tolist()[:3] == [_value(1, "m-7", 3), _value(1, "m-ü", 1), _value(2, "m-7", 1)]
    assert pd.isna(frame["txn_count"].iloc[3])
    with pytest.raises(ConfigError, match="missing merchant_id"):
        feast_bridge.historical(settings, entities.drop(columns=["merchant_id"]), "customer_merchant")

    contract = settings.contracts().get("customer_merchant", 1)
    stamp = (AS_OF + timedelta(minutes=5)).isoformat()
    with pytest.raises(push.PushRejected, match="column merchant_id: missing; every pushed row needs every key"):
        push.push(settings, env, contract, {"customer_id": [1], "ts": [stamp], "txn_count": [5]}, "online",
                  ANONYMOUS, store)
    result = push.push(settings, env, contract, {"customer_id": [1, 1], "merchant_id": ["m-7", "m-7"],
                                                 "ts": [stamp, stamp], "txn_count": [5, 6]}, "online", ANONYMOUS,
                       store)
    assert result.written_online == 1  # one pair: its last row
    after = feast_bridge.read_online(settings, "customer_merchant", {"customer_id": [1, 1],
                                                                      "merchant_id": ["m-7", "m-ü"]})
    assert [r["txn_count"] for r in after] == [6, _value(1, "m-ü", 1)]  # the other pair is untouched

    # A rebuild without the pair (2, m-7): deleted online, the customer's other pairs and m-7's others stay.
    kept = [(c, m) for c in CUSTOMERS for m in MERCHANTS if (c, m) != (2, "m-7")]
    replace_raw(settings, "pair_events", _raw(kept))
    pipeline.build_and_promote(settings, "customer_merchant")
    pipeline.apply(settings, feature_sets=["customer_merchant"])
    [done] = pipeline.materialize(settings, feature_views=[VIEW])
    assert done["deleted"] == 1
    rows = feast_bridge.read_online(settings, "customer_merchant", {"customer_id": [2, 2, 3],
                                                                     "merchant_id": ["m-7", "m-ü", "m-7"]})
    assert [r["status"] for r in rows] == ["NOT_FOUND", "PRESENT", "PRESENT"]


def test_a_feature_service_across_a_pair_set_and_a_customer_set(dev_settings) -> None:
    """A model reading customer features and customer x merchant features: online (featurectl and the server)
    and point in time, each set joined on its own keys."""
    from tests.test_server import Server

    settings = dev_settings
    seed_raw(settings)
    pipeline.build_and_promote(settings, "customer_profile")
    pipeline.apply(settings, feature_sets=["customer_profile"])
    customer = int(pipeline.export(settings, "customer_profile")[0]["customer_id"].iloc[0])
    pairs = [(c, m) for c in [*CUSTOMERS, customer] for m in MERCHANTS]
    _loaded(settings, _raw(pairs))
    pipeline.materialize(settings, feature_views=["customer_profile_v1"])
    service = settings.contracts_dir / "feature_services" / "pair_model" / "v1.yaml"
    service.parent.mkdir(parents=True)
    service.write_text(json.dumps({
        "kind": "FeatureService", "name": "pair_model", "version": 1, "description": "Tests.",
        "owner": "tests@example.com",
        "features": [{"feature_set": "customer_profile", "version": 1, "features": ["tier"]},
                     {"feature_set": "customer_merchant", "version": 1, "features": ["txn_count"]}]}))
    pipeline.apply(settings, feature_sets=["customer_profile", "customer_merchant"])
    profile = feast_bridge.read_online(settings, "customer_profile", [customer])[0]
    entities = {"customer_id": [customer, customer], "merchant_id": ["m-7", "m 9"]}
    rows = feast_bridge.read_online_service(settings, "pair_model", entities)
    assert [r["txn_count"] for r in rows] == [_value(customer, "m-7", 1), _value(customer, "m 9", 1)]
    assert [r["tier"] for r in rows] == [profile["tier"]] * 2
    with pytest.raises(ConfigError, match="keyed by merchant_id \\+ customer_id: the join key merchant_id is "
                                          "missing"):
        feast_bridge.read_online_service(settings, "pair_model", {"customer_id": [customer]})
    frame, _ = feast_bridge.historical_service(settings, pd.DataFrame({
        **entities, "event_timestamp": [AS_OF, AS_OF - timedelta(hours=2)]}), "pair_model")
    assert frame["txn_count"].tolist() == [_value(customer, "m-7", 1), _value(customer, "m 9", 3)]
    server = Server(settings)
    try:
        status, answer = server.post({"feature_service": "pair_model_v1", "entities": entities})
    finally:
        server.stop()
    assert status == 200, answer
    names = answer["metadata"]["feature_names"]
    assert answer["results"][names.index("txn_count")]["values"] == [r["txn_count"] for r in rows]


def test_composite_keys_on_sqlite_and_the_command_line(local_settings, capsys) -> None:
    """Feast's SQLite writer and reader with two join keys, `featurectl online` with KEY=VALUE pairs, a
    departed pair deleted, pushes, verify."""
    from feature_platform.cli import main

    settings = local_settings
    _loaded(settings)
    env = settings.environment()

    def cli(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--contracts", str(settings.contracts_dir), "--home", str(settings.home),
                     "--env", settings.env_name])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = cli("online", "customer_merchant", "customer_id=-4", "merchant_id=m 9", "customer_id=3",
                       "merchant_id=m-7", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["txn_count"] for r in rows] == [_value(-4, "m 9", 1), _value(3, "m-7", 1)]
    code, _, err = cli("online", "customer_merchant", "3")
    assert code == 2 and "keyed by merchant_id + customer_id: give merchant_id=VALUE customer_id=VALUE" in err
    assert all(r["ok"] for r in feast_bridge.verify(settings, sample=50, feature_views=[VIEW]))
    contract = settings.contracts().get("customer_merchant", 1)
    stamp = (AS_OF + timedelta(minutes=5)).isoformat()
    push.push(settings, env, contract, {"customer_id": [3], "merchant_id": ["m-7"], "ts": [stamp],
                                        "txn_count": [42]}, "online", ANONYMOUS, feast_bridge.open_store(settings, env))
    replace_raw(settings, "pair_events", _raw([(c, m) for c in CUSTOMERS for m in MERCHANTS if c != 1]))
    pipeline.build_and_promote(settings, "customer_merchant")
    pipeline.apply(settings, feature_sets=["customer_merchant"])
    pipeline.materialize(settings, feature_views=[VIEW])
    rows = feast_bridge.read_online(settings, "customer_merchant", {"customer_id": [1, 3, 2],
                                                                     "merchant_id": ["m-7", "m-7", "m-7"]})
    assert [r["status"] for r in rows] == ["NOT_FOUND", "PRESENT", "PRESENT"]
    assert rows[1]["txn_count"] == 42  # the pushed row is newer than the build: kept

    from tests.test_server import Server  # Feast's read path behind the server: a missing key is still a 422

    server = Server(settings)
    try:
        status, answer = server.post({"features": [f"{VIEW}:txn_count"], "entities": {"merchant_id": ["m-7"]}})
        assert status == 422 and "'customer_id' is missing" in answer["detail"], answer
        status, answer = server.post({"features": [f"{VIEW}:txn_count"],
                                      "entities": {"merchant_id": ["m-7", "m-7"], "customer_id": [3, 1]}})
        import urllib.error
        import urllib.request

        arrow = urllib.request.Request(f"http://127.0.0.1:{server.port}/get-online-features", data=json.dumps(
            {"features": [f"{VIEW}:txn_count"], "entities": {"merchant_id": ["m-7"], "customer_id": [3]}}).encode(),
            headers={"Accept": "application/vnd.apache.arrow.stream"})
        with pytest.raises(urllib.error.HTTPError) as refused:  # Feast's read path answers JSON only
            urllib.request.urlopen(arrow, timeout=30)
        assert refused.value.code == 406 and b"ask for JSON" in refused.value.read()
    finally:
        server.stop()
    assert status == 200 and answer["results"][2]["values"] == [42, None], answer


def test_composite_keys_export_as_odcs_with_a_primary_key_of_several_columns() -> None:
    from feature_platform import odcs

    document = odcs.to_odcs(FeatureSetContract.model_validate(_contract()), [])
    assert odcs.validate(document) == []
    keys = [(p["name"], p["primaryKeyPosition"]) for p in document["schema"][0]["properties"] if p.get("primaryKey")]
    assert keys == [("merchant_id", 1), ("customer_id", 2), ("ts", 3)]
    assert document["schema"][0]["quality"][0]["arguments"]["properties"] == ["merchant_id", "customer_id", "ts"]


def _store_contract() -> dict:
    return {"kind": "FeatureSet", "name": "store_product", "version": 1, "description": "Generated for tests.",
            "owner": "tests@example.com",
            "entities": [{"name": "store", "join_key": "store_id", "dtype": "int32"},
                         {"name": "product", "join_key": "sku", "dtype": "string"}],
            "timestamp_field": "ts", "ttl": "30d", "online": True, "pii": False, "push": True,
            "source": {"table": "store_events", "sql": "SELECT store_id, sku, ts, stock FROM source"},
            "features": [{"name": "stock", "dtype": "int64", "description": "units in stock"}]}


def _store_raw() -> pa.Table:
    stores = [1, -7, 2**31 - 1]
    skus = ["a-1", "b-ü"]
    rows = [(s, k, h) for s in stores for k in skus for h in (2, 1)]
    return pa.table({"store_id": pa.array([r[0] for r in rows], pa.int32()),
                     "sku": pa.array([r[1] for r in rows]),
                     "ts": pa.array([AS_OF - timedelta(hours=r[2]) for r in rows], pa.timestamp("us", tz="UTC")),
                     "stock": pa.array([(abs(r[0]) % 1000) * 10 + r[2] + len(r[1]) for r in rows], pa.int64())})


@pytest.mark.parametrize("settings_fixture", ["dev_settings", "local_settings"])
def test_int32_join_keys_on_every_path(settings_fixture: str, request) -> None:
    """An int32 key (Feast's INT32 entity: 4 bytes in the Redis key) beside a string key: built from an int32
    column, materialized byte-equal to Feast's own writer, read by featurectl, the server and Feast's SDK,
    joined point in time, pushed; a value outside int32 is refused, naming the key."""
    from feature_platform.feast_modes import feast_writer
    from feature_platform.online.layout import plan_contract
    from tests.test_server import Server

    settings = request.getfixturevalue(settings_fixture)
    write_contract(settings.contracts_dir, _store_contract())
    replace_raw(settings, "store_events", _store_raw())
    pipeline.build_and_promote(settings, "store_product")
    pipeline.apply(settings, feature_sets=["store_product"])
    pipeline.materialize(settings, feature_views=["store_product_v1"])
    env = settings.environment()
    keys = {"store_id": [2**31 - 1, -7, 5], "sku": ["b-ü", "a-1", "a-1"]}
    rows = feast_bridge.read_online(settings, "store_product", keys)
    assert [r["stock"] for r in rows] == [647 * 10 + 1 + 3, 7 * 10 + 1 + 3, None]
    assert all(r["ok"] for r in feast_bridge.verify(settings, feature_views=["store_product_v1"]))
    with pytest.raises(ConfigError, match="store_id is int32: 2147483648 is outside the int32 range"):
        feast_bridge.read_online(settings, "store_product", {"store_id": [2**31], "sku": ["a-1"]})
    store = feast_bridge.open_store(settings, env)
    sdk = store.get_online_features(features=["store_product_v1:stock"],
                                    entity_rows=[{"store_id": -7, "sku": "a-1"}]).to_dict()
    assert sdk["stock"] == [rows[1]["stock"]]
    frame, _ = feast_bridge.historical(settings, pd.DataFrame({"store_id": [1], "sku": ["a-1"],
                                                               "event_timestamp": [AS_OF - timedelta(minutes=90)]}),
                                       "store_product")
    assert frame["stock"].tolist() == [10 + 2 + 3]
    contract = settings.contracts().get("store_product")
    push.push(settings, env, contract, {"store_id": [1], "sku": ["a-1"], "ts": [AS_OF.isoformat()],
                                        "stock": [99]}, "online", ANONYMOUS, store)
    assert feast_bridge.read_online(settings, "store_product", {"store_id": [1], "sku": ["a-1"]})[0]["stock"] == 99
    server = Server(settings)
    try:
        status, answer = server.post({"features": ["store_product_v1:stock"], "entities": keys})
        assert status == 200 and answer["results"][2]["values"] == [r["stock"] for r in rows], answer
        status, answer = server.post({"features": ["store_product_v1:stock"],
                                      "entities": {"store_id": [2**31], "sku": ["a-1"]}})
        assert status == 422 and "entities.store_id" in answer["detail"] and "int32" in answer["detail"], answer
    finally:
        server.stop()
    if settings_fixture == "dev_settings":  # the Redis layout against Feast's own writer
        import redis

        with feast_writer():
            store.write_to_online_store("store_product_v1", pd.DataFrame({
                "store_id": pd.array([12], dtype="int32"), "sku": ["b-ü"], "ts": [AS_OF - timedelta(hours=1)],
                "stock": [rows[0]["stock"]]}))
        client = redis.Redis.from_url(f"redis://{settings.values['FEATURE_PLATFORM_REDIS_ADDRESS']}/"
                                      f"{env.online_store.db}",
                                      password=settings.values.get("FEATURE_PLATFORM_REDIS_PASSWORD"))
        plan = plan_contract(env.feast_project, contract)
        ours, feasts = (client.hgetall(key) for key in plan.keys([[2**31 - 1, 12], ["b-ü", "b-ü"]]))
        assert ours and ours == feasts
