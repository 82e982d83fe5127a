"""The platform's online engine against Feast's own: same Redis bytes, Feast reads what the platform wrote."""

from __future__ import annotations

import contextlib
import json
import sys

import pyarrow as pa
import pytest

from feature_platform import build as builds
from feature_platform import feast_bridge, pipeline
from feature_platform.materialization import event_range
from feature_platform.online import layout
from feature_platform.online import materialize as engine
from tests.helpers import every_dtype_contract, merchant_events, replace_raw, write_contract

MERCHANTS = [f"m{i:03d}" for i in range(300)]


def _dump(client) -> dict[bytes, dict[bytes, bytes]]:
    return {key: client.hgetall(key) for key in client.scan_iter(count=1000)}


def _feast_materialize(settings, view_names: list[str]) -> None:
    """Feast's own writer (the generated config's provider would run the platform's engine instead)."""
    from feature_platform.feast_modes import feast_writer

    env = settings.environment()
    store = feast_bridge.open_store(settings, env)
    with contextlib.redirect_stdout(sys.stderr), feast_writer():
        for name in view_names:
            view = store.get_feature_view(name)
            metadata = builds.read_metadata(
                pipeline.object_store(settings, env), settings.contracts().get(*_split(name)),
                view.tags["feature_platform.build_id"])
            start, end = event_range(metadata)
            store.materialize(start_date=start, end_date=end, feature_views=[name])


def _split(view: str) -> tuple[str, int]:
    name, _, version = view.rpartition("_v")
    return name, int(version)


@pytest.mark.e2e
@pytest.mark.parametrize("key_dtype", ["string", "int64"])
def test_every_hash_equals_feasts_own_materialization(dev_settings, contracts_copy, redis_clean, key_dtype) -> None:
    """Every field of every hash the platform writes equals what Feast's materialize writes for the same build:
    string and int keys, every dtype, nulls, two views sharing hashes."""
    key = "merchant_code" if key_dtype == "string" else "merchant_id"
    merchants = MERCHANTS if key_dtype == "string" else list(range(-150, 150))
    for version in (1, 2):
        write_contract(contracts_copy, every_dtype_contract(version=version, key=key, key_dtype=key_dtype))
    replace_raw(dev_settings, "merchant_events", merchant_events(merchants, key=key))
    for version in (1, 2):
        pipeline.build_and_promote(dev_settings, "merchant_risk", version=version)
    pipeline.apply(dev_settings, feature_sets=["merchant_risk"])
    views = ["merchant_risk_v1", "merchant_risk_v2"]
    client = redis_clean.client(db=0)

    done = pipeline.materialize(dev_settings, feature_views=views)
    assert [d["written"] for d in done] == [300, 300]
    ours = _dump(client)
    # Beside Feast's layout, one hash of the platform's own: which build each view holds (matches no Feast key).
    from feature_platform.online.stores import complete_record, redis_record_key

    records = ours.pop(redis_record_key(dev_settings.environment().feast_project).encode())
    assert {k.decode(): json.loads(v) for k, v in records.items()} == {
        d["feature_view"]: complete_record(d["build_id"]) for d in done}
    client.flushdb()
    _feast_materialize(dev_settings, views)
    theirs = _dump(client)
    assert len(ours) == len(theirs) == 300
    differences = [(key, field, value, theirs.get(key, {}).get(field)) for key, fields in ours.items()
                   for field, value in fields.items() if theirs.get(key, {}).get(field) != value]
    assert differences == [], differences[:5]
    assert ours == theirs

    # Feast's SDK reads what the platform wrote, value for value with the platform's reader.
    client.flushdb()
    pipeline.materialize(dev_settings, feature_views=views)
    sample = merchants[::37]
    store = feast_bridge.open_store(dev_settings, dev_settings.environment())
    contract = dev_settings.contracts().get("merchant_risk", 1)
    sdk = store.get_online_features(features=[f"merchant_risk_v1:{f.name}" for f in contract.features],
                                    entity_rows=[{key: k} for k in sample]).to_dict()
    rows = feast_bridge.read_online(dev_settings, "merchant_risk", sample, version=1, enforce_ttl=False)
    for feature in contract.features:
        got = [r[feature.name] for r in rows]
        want = sdk[feature.name]
        if feature.dtype == "timestamp":
            got = [None if v is None else int(v.timestamp()) for v in got]
            want = [None if v is None else int(v.timestamp()) if hasattr(v, "timestamp") else v for v in want]
        assert got == want, feature.name


@pytest.mark.e2e
def test_materialize_records_the_interval_in_the_registry(dev_settings, contracts_copy) -> None:
    """Feast (UI, materialize-incremental) sees the platform's materializations in the registry."""
    write_contract(contracts_copy, every_dtype_contract())
    replace_raw(dev_settings, "merchant_events", merchant_events(MERCHANTS[:20]))
    pipeline.build_and_promote(dev_settings, "merchant_risk")
    pipeline.apply(dev_settings, feature_sets=["merchant_risk"])
    [done] = pipeline.materialize(dev_settings, feature_views=["merchant_risk_v1"])
    store = feast_bridge.open_store(dev_settings, dev_settings.environment())
    view = store.registry.get_feature_view("merchant_risk_v1", store.project, allow_cache=False)
    [(start, end)] = view.materialization_intervals
    assert start.isoformat() == done["start"] and end.isoformat() == done["end"]


def test_newest_row_per_entity_streams_across_batch_boundaries() -> None:
    """Sorted batches cut anywhere inside an entity's run still yield exactly its newest row, once."""
    keys = ["a"] * 5 + ["b"] + ["c"] * 7 + ["d"] * 2
    stamps = list(range(len(keys)))
    table = pa.table({"k": keys, "ts": stamps, "v": [f"{k}{t}" for k, t in zip(keys, stamps, strict=True)]})
    for size in (1, 2, 3, 5, 100):
        batches = table.to_batches(max_chunksize=size)
        out = pa.Table.from_batches(list(engine.newest_per_entity(iter(batches), ["k"])))
        assert out.column("k").to_pylist() == ["a", "b", "c", "d"], size
        assert out.column("v").to_pylist() == ["a4", "b5", "c12", "d14"], size


def test_planner_keys_and_fields_equal_feasts_functions() -> None:
    """Keys from Feast's _redis_key, fields from Feast's _mmh3, for string and int keys incl. edge values."""
    from feast.infra.online_stores.helpers import _mmh3, _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    for value in [0, 1, -1, 2**63 - 1, -(2**63), 1001]:
        proto = EntityKey(join_keys=["customer_id"], entity_values=[Value(int64_val=value)])
        assert layout.entity_keys("customer_id", "int64", [value], "p")[0] == _redis_key("p", proto)
    for value in ["", "a", "ünï", "x" * 300]:
        proto = EntityKey(join_keys=["merchant_code"], entity_values=[Value(string_val=value)])
        assert layout.entity_keys("merchant_code", "string", [value], "p")[0] == _redis_key("p", proto)
    assert layout.mmh3_field("view_v1", "feature") == _mmh3("view_v1:feature")
