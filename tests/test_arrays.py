"""Array features (embeddings, lists of ids or tags): the contract, the build's gate, Feast's exact Redis encoding
(byte-equal to Feast's own writer), online reads over HTTP as JSON arrays, historical lists, pushes and
monitoring by length and L2 norm."""

from __future__ import annotations

import math
from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pytest

from feature_platform import feast_bridge, pipeline, push
from feature_platform.contracts import schema_hash
from feature_platform.errors import ContractErrors, QualityGateError
from feature_platform.governance import ANONYMOUS
from feature_platform.online.layout import decode_value, encode_values
from tests.helpers import AS_OF, replace_raw, write_contract

VIEW = "item_vectors_v1"
DIMS = 4


def _contract(**feature_changes) -> dict:
    features = [
        {"name": "emb", "dtype": "array<float32>", "dims": DIMS, "nullable": False, "description": "an embedding"},
        {"name": "tags", "dtype": "array<string>", "nullable_elements": True, "description": "tags"},
        {"name": "ids", "dtype": "array<int64>", "description": "related ids"},
        {"name": "score", "dtype": "float64", "description": "a scalar beside the arrays"},
    ]
    for feature in features:
        feature.update(feature_changes.get(feature["name"], {}))
    return {"kind": "FeatureSet", "name": "item_vectors", "version": 1, "description": "Generated for tests.",
            "owner": "tests@example.com", "entity": {"name": "item", "join_key": "item_id", "dtype": "int64"},
            "timestamp_field": "ts", "ttl": "30d", "online": True, "pii": False, "push": True,
            "source": {"table": "item_events", "sql": "SELECT item_id, ts, emb, tags, ids, score FROM source"},
            "features": features}


def _raw(items: int = 12, bad: dict | None = None) -> pa.Table:
    """Two rows per item, the second an hour later; ``bad`` {item: emb} replaces one item's newest embedding."""
    rows: dict[str, list] = {k: [] for k in ("item_id", "ts", "emb", "tags", "ids", "score")}
    for item in range(1, items + 1):
        for hour in (2, 1):
            rows["item_id"].append(item)
            rows["ts"].append(AS_OF - timedelta(hours=hour))
            rows["emb"].append([item + hour / 10, -item, 0.5 * hour, 1.0 / item])
            rows["tags"].append(None if item % 5 == 0 else [f"t{item}", None, "ünï"][: 1 + item % 3])
            rows["ids"].append([] if item % 4 == 0 else [item * 10, -item, 2**40])
            rows["score"].append(item * 1.5)
    for item, emb in (bad or {}).items():
        rows["emb"][2 * (item - 1) + 1] = emb
    return pa.table({"item_id": pa.array(rows["item_id"], pa.int64()),
                     "ts": pa.array(rows["ts"], pa.timestamp("us", tz="UTC")),
                     "emb": pa.array(rows["emb"], pa.list_(pa.float64())),  # narrowed to float32 by the build
                     "tags": pa.array(rows["tags"], pa.list_(pa.string())),
                     "ids": pa.array(rows["ids"], pa.list_(pa.int64())),
                     "score": pa.array(rows["score"], pa.float64())})


def _loaded(settings, **feature_changes) -> None:
    write_contract(settings.contracts_dir, _contract(**feature_changes))
    replace_raw(settings, "item_events", _raw())
    pipeline.build_and_promote(settings, "item_vectors")
    pipeline.apply(settings, feature_sets=["item_vectors"])
    pipeline.materialize(settings, feature_views=[VIEW])


def test_array_contracts_say_what_is_wrong_and_hash_their_shape(local_settings) -> None:
    from feature_platform.contracts import FeatureSetContract, diff_contracts

    base = FeatureSetContract.model_validate(_contract())
    for changes, message in (({"score": {"dims": 3}}, "dims and nullable_elements are for array dtypes"),
                             ({"emb": {"constraints": {"min": 0}}}, "min/max constraints need a numeric dtype"),
                             ({"emb": {"dims": 0}}, "greater than or equal to 1"),
                             ({"emb": {"dtype": "array<decimal>"}}, "array<float32>")):
        with pytest.raises(ValueError, match=message):
            FeatureSetContract.model_validate(_contract(**changes))
    wider = FeatureSetContract.model_validate(_contract(emb={"dims": 8}))
    assert schema_hash(wider) != base.schema_hash
    assert any(c.breaking and "dims 4 -> 8" in c.what for c in diff_contracts(base, wider))
    loose = FeatureSetContract.model_validate(_contract(ids={"nullable_elements": True}))
    assert schema_hash(loose) != base.schema_hash
    # As for nullable: allowing nulls breaks readers that relied on none; forbidding them breaks none.
    assert any(c.breaking for c in diff_contracts(base, loose))
    assert not any(c.breaking for c in diff_contracts(loose, base))


@pytest.mark.parametrize(("element", "rows"), [
    ("float32", [[0.5, -1.25, 3e38], [], None, [float("nan")], [1.0, None], [0.1] * 768]),
    ("float64", [[0.5, -1.25], [], None, [1e300, None]]),
    ("int32", [[1, -1, 2**31 - 1, -(2**31)], [], None, [0] * 300]),
    ("int64", [[1, -1, 2**62, -(2**63)], [], None]),
    ("string", [["a", "ünï", ""], [], None, ["x" * 300], ["a", None]]),
    ("bool", [[True, False], [], None, [True, None]]),
])
def test_arrays_encode_byte_equal_to_feasts_writer_and_decode_back(element: str, rows: list) -> None:
    """The platform's encoding of each array against Feast's materialization path (an Arrow column through
    to_numpy into python_values_to_proto_values), sliced too; and decode_value reads it back."""
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    from feature_platform.build import ARROW_TYPES

    dtype = f"array<{element}>"
    value_type = getattr(ValueType, {"float32": "FLOAT", "float64": "DOUBLE"}.get(element, element.upper())
                         + "_LIST")
    array = pa.array(rows, ARROW_TYPES[dtype])
    ours = encode_values(dtype, array)
    feasts = python_values_to_proto_values(array.to_numpy(zero_copy_only=False), value_type)
    assert ours == [value.SerializeToString() for value in feasts]
    assert encode_values(dtype, array.slice(1)) == ours[1:]  # offsets of a slice
    stand_in = {"float32": math.nan, "float64": math.nan, "string": "", "bool": False}
    for row, data in zip(rows, ours, strict=True):
        got = decode_value(data)
        if row is None:
            assert got is None
            continue
        want = [stand_in[element] if v is None else v for v in row]
        if element == "float32":
            want = [pa.scalar(v, pa.float32()).as_py() for v in want]
        assert len(got) == len(want) and all(
            (isinstance(a, float) and math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, want,
                                                                                                strict=True))


def test_the_gate_refuses_wrong_dims_and_null_elements_naming_the_entity(local_settings) -> None:
    settings = local_settings
    write_contract(settings.contracts_dir, _contract())
    for bad, message in (({7: [1.0, 2.0]}, "emb: 1 row(s) whose length is not dims 4 (e.g. item_id=7)"),
                         ({9: [1.0, None, 2.0, 3.0]}, "emb: 1 row(s) with null or non-finite elements (e.g. "
                                                      "item_id=9)"),
                         ({3: [1.0, math.inf, 2.0, 3.0]}, "non-finite elements (e.g. item_id=3)")):
        replace_raw(settings, "item_events", _raw(bad=bad))
        with pytest.raises(QualityGateError, match=message.replace("(", r"\(").replace(")", r"\)")):
            pipeline.build_and_promote(settings, "item_vectors")
    write_contract(settings.contracts_dir, _contract(emb={"nullable_elements": True}))
    replace_raw(settings, "item_events", _raw(bad={9: [1.0, None, 2.0, 3.0]}))
    pipeline.build_and_promote(settings, "item_vectors")  # allowed now


def test_arrays_online_offline_pushed_and_byte_equal_to_feast(dev_settings) -> None:
    """Materialized into Redis, read back as lists (featurectl's reads and the server's JSON), equal to Feast's
    own write of the same row byte for byte; historical returns lists; a push with a wrong length is refused
    naming the row, a good one is read back; verify passes."""
    import redis

    from feature_platform.feast_modes import feast_writer
    from feature_platform.online.layout import plan_contract

    settings = dev_settings
    _loaded(settings)
    env = settings.environment()
    rows = feast_bridge.read_online(settings, "item_vectors", [1, 4, 5, 99])
    assert rows[0]["emb"] == [pa.scalar(v, pa.float32()).as_py() for v in (1.1, -1.0, 0.5, 1.0)]
    assert rows[0]["tags"] == ["t1", ""] and rows[0]["ids"] == [10, -1, 2**40]  # a null element: Feast's ""
    assert rows[1]["ids"] == [] and rows[2]["tags"] is None and rows[3]["emb"] is None
    assert all(r["ok"] for r in feast_bridge.verify(settings, sample=50, feature_views=[VIEW]))
    sdk = feast_bridge.open_store(settings, env).get_online_features(  # Feast's own SDK, on the same hashes
        features=[f"{VIEW}:emb", f"{VIEW}:ids"], entity_rows=[{"item_id": 1}, {"item_id": 4}]).to_dict()
    assert sdk["emb"][0] == rows[0]["emb"] and sdk["ids"] == [[10, -1, 2**40], []]

    store = feast_bridge.open_store(settings, env)
    with feast_writer():
        store.write_to_online_store(VIEW, pd.DataFrame({
            "item_id": [1001], "ts": [AS_OF - timedelta(hours=1)], "emb": [[1.1, -1.0, 0.5, 1.0]],
            "tags": [["t1", None]], "ids": [[10, -1, 2**40]], "score": [1.5]}))
    client = redis.Redis.from_url(f"redis://{settings.values['FEATURE_PLATFORM_REDIS_ADDRESS']}/"
                                  f"{env.online_store.db}", password=settings.values.get(
                                      "FEATURE_PLATFORM_REDIS_PASSWORD"))
    plan = plan_contract(env.feast_project, settings.contracts().get("item_vectors", 1))
    ours, feasts = (client.hgetall(plan.keys([[item]])[0]) for item in (1, 1001))
    assert ours and ours == feasts

    entities = pd.DataFrame({"item_id": [1, 4, 77], "event_timestamp": [AS_OF, AS_OF, AS_OF]})
    frame, _ = feast_bridge.historical(settings, entities, "item_vectors")
    assert frame["emb"].tolist()[0] == rows[0]["emb"] and frame["ids"].tolist()[1] == []
    assert frame["tags"].tolist()[0] == ["t1", None]  # offline keeps the null element
    assert frame["emb"].tolist()[2] is None  # an unknown item

    contract = settings.contracts().get("item_vectors", 1)
    stamp = (AS_OF + timedelta(minutes=5)).isoformat()
    with pytest.raises(push.PushRejected, match="column emb, row 1: has 3 elements, not dims 4"):
        push.push(settings, env, contract, {"item_id": [2, 3], "ts": [stamp] * 2,
                                            "emb": [[0.0] * 4, [0.0] * 3]}, "online", ANONYMOUS, store)
    with pytest.raises(push.PushRejected, match="column emb, row 0: 'x' is not float32"):
        push.push(settings, env, contract, {"item_id": [2], "ts": [stamp], "emb": [["x", 1, 2, 3]]}, "online",
                  ANONYMOUS, store)
    assert feast_bridge.read_online(settings, "item_vectors", [2])[0]["emb"] != [0.0] * 4  # nothing written
    result = push.push(settings, env, contract, {"item_id": [2], "ts": [stamp], "emb": [[0.25, 0, 1, -1]],
                                                 "ids": [[5]]}, "online_and_offline", ANONYMOUS, store)
    assert result.written_online == 1
    assert feast_bridge.read_online(settings, "item_vectors", [2])[0]["emb"] == [0.25, 0.0, 1.0, -1.0]

    from tests.test_server import Server  # the platform server over HTTP: JSON arrays

    server = Server(settings)
    body = {"features": [f"{VIEW}:emb", f"{VIEW}:ids", f"{VIEW}:tags", f"{VIEW}:score"],
            "entities": {"item_id": [2, 5, 99, 2, 4]}}
    try:
        status, answer = server.post(body)
        arrow = _arrow_post(server.port, body)
    finally:
        server.stop()
    assert status == 200, answer
    names = answer["metadata"]["feature_names"]
    emb = answer["results"][names.index("emb")]["values"]
    assert emb[0] == [0.25, 0.0, 1.0, -1.0] and len(emb[1]) == DIMS
    assert answer["results"][names.index("ids")]["values"][0] == [5]
    # The same answer as an Arrow stream: typed columns (list<float> for the embedding), Feast's statuses.
    assert arrow.schema.field("emb").type == pa.list_(pa.float32()) and arrow.num_rows == 5
    assert arrow.column("item_id").to_pylist() == [2, 5, 99, 2, 4]
    for name in ("emb", "ids", "tags", "score"):
        result = answer["results"][names.index(name)]
        got = arrow.column(name).to_pylist()
        assert len(got) == 5 and all(  # float32 in Arrow, widened to a double in JSON
            (a is None and b is None) or (a == b if not isinstance(a, list) else
                                           [pa.scalar(x, pa.float32()).as_py() if isinstance(x, float) else x
                                            for x in b] == a) for a, b in zip(got, result["values"], strict=True))
        assert arrow.column(f"{name}__status").to_pylist() == result["statuses"]
    stamps = [None if s is None else s.isoformat().replace("+00:00", "Z")
              for s in arrow.column("emb__event_timestamp").to_pylist()]
    assert stamps[0] == answer["results"][names.index("emb")]["event_timestamps"][0] and stamps[2] is None


def _arrow_post(port: int, body: dict) -> pa.Table:
    import json
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/get-online-features", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/vnd.apache.arrow.stream"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"] == "application/vnd.apache.arrow.stream"
        return pa.ipc.open_stream(response.read()).read_all()


def test_arrays_are_profiled_by_length_and_norm_and_drift_on_the_norm(local_settings) -> None:
    from feature_platform import monitoring

    settings = local_settings
    write_contract(settings.contracts_dir, _contract())
    replace_raw(settings, "item_events", _raw(items=40))
    _, first = pipeline.build(settings, "item_vectors")
    pipeline.promote(settings, "item_vectors", 1, first.build_id)
    profile = first.metadata["columns"]["emb"]["profile"]
    assert profile["kind"] == "array" and profile["measure"] == "l2_norm"
    assert profile["length"] == {"min": DIMS, "max": DIMS, "mean": DIMS}
    assert len(profile["quantiles"]) == 101 and profile["quantiles"][0] < profile["quantiles"][-1]
    scaled = _raw(items=40)
    scaled = scaled.set_column(2, "emb", pa.array([[10 * x for x in e] for e in scaled.column("emb").to_pylist()],
                                                  pa.list_(pa.float64())))
    replace_raw(settings, "item_events", scaled)
    pipeline.build_and_promote(settings, "item_vectors")
    [report] = monitoring.monitor(settings, ["item_vectors"])
    emb = next(f for f in report.features if f.feature == "emb")
    assert emb.drift_measure == "psi_l2_norm" and emb.drifted
    tags = next(f for f in report.features if f.feature == "tags")
    assert tags.drift_measure == "psi_length" and not tags.drifted  # lengths unchanged


def test_a_bad_array_value_in_a_contract_file_is_named(local_settings) -> None:
    path = write_contract(local_settings.contracts_dir, _contract(emb={"dims": "four"}))
    with pytest.raises(ContractErrors, match=r"item_vectors/v1.yaml: features\[0\].dims: Input should be a valid "
                                             "integer"):
        local_settings.contracts()
    path.unlink()


def test_arrays_on_sqlite_through_feasts_writer(local_settings) -> None:
    """The SQLite store (Feast's writer and reader): arrays materialized, pushed and read back as lists."""
    settings = local_settings
    _loaded(settings)
    env = settings.environment()
    rows = feast_bridge.read_online(settings, "item_vectors", [1, 4])
    assert rows[0]["emb"] == [pa.scalar(v, pa.float32()).as_py() for v in (1.1, -1.0, 0.5, 1.0)]
    assert rows[1]["ids"] == [] and rows[0]["ids"] == [10, -1, 2**40]
    contract = settings.contracts().get("item_vectors", 1)
    stamp = (AS_OF + timedelta(minutes=5)).isoformat()
    push.push(settings, env, contract, {"item_id": [4], "ts": [stamp], "emb": [[1, 2, 3, 4]], "tags": [["x"]]},
              "online", ANONYMOUS, feast_bridge.open_store(settings, env))
    [row] = feast_bridge.read_online(settings, "item_vectors", [4])
    assert row["emb"] == [1.0, 2.0, 3.0, 4.0] and row["tags"] == ["x"] and row["ids"] is None
    assert all(r["ok"] for r in feast_bridge.verify(settings, sample=50, feature_views=[VIEW]))


def test_arrays_export_as_valid_odcs() -> None:
    """ODCS: an array is `logicalType: array` with typed items and its dims as min/maxItems; the document
    validates against the standard's own schema."""
    from feature_platform import odcs
    from feature_platform.contracts import FeatureSetContract

    document = odcs.to_odcs(FeatureSetContract.model_validate(_contract()), [])
    assert odcs.validate(document) == []
    properties = {p["name"]: p for p in document["schema"][0]["properties"]}
    assert properties["emb"]["logicalType"] == "array" and properties["emb"]["physicalType"] == "LIST<FLOAT>"
    assert properties["emb"]["logicalTypeOptions"] == {"minItems": DIMS, "maxItems": DIMS}
    assert properties["emb"]["items"]["logicalType"] == "number" and properties["emb"]["items"]["required"]
    assert properties["tags"]["items"] == {"name": "element", "logicalType": "string", "physicalType": "STRING",
                                           "required": False}
