"""Builds against moto's S3 server over HTTP: layout, metadata, pointer safety, concurrency, rollback, gate."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from feature_platform import build as builds
from feature_platform import pipeline
from feature_platform.errors import BuildError, QualityGateError, StoreError
from tests.helpers import data_store, read_raw, replace_raw, seed_raw

pytestmark = pytest.mark.usefixtures("s3_clean")

METADATA_FIELDS = {
    "feature_set", "version", "build_id", "schema_hash", "generated_at", "row_count", "event_time_min",
    "event_time_max", "columns", "source", "contracts_commit", "library_version", "data", "environment",
}


def test_build_writes_version_prefix_metadata_and_latest(dev_settings, s3_clean) -> None:
    """After a build, S3 holds the version prefix, metadata.json and latest.json, and they agree."""
    seed_raw(dev_settings)
    result = pipeline.build_and_promote(dev_settings, "customer_spend", version=2)
    contract = dev_settings.contracts().get("customer_spend", 2)
    keys = {o["Key"] for o in s3_clean.client().list_objects_v2(Bucket="feature-platform-dev")["Contents"]}
    prefix = f"features/customer_spend/v2/{result['build_id']}"
    assert {f"{prefix}/features.parquet", f"{prefix}/metadata.json", "features/customer_spend/latest.json",
            "features/customer_spend/v2/latest.json"} <= keys

    store = data_store(dev_settings)
    metadata = builds.read_metadata(store, contract, result["build_id"])
    assert metadata.keys() >= METADATA_FIELDS
    assert metadata["schema_hash"] == contract.schema_hash
    assert metadata["generated_at"].endswith("+00:00")
    assert metadata["row_count"] == builds.read_build_table(store, metadata).num_rows > 0
    assert all(f["etag"] for f in metadata["source"]["files"])
    pointer = builds.read_pointer(store, "customer_spend")
    assert (pointer["build_id"], pointer["version"]) == (result["build_id"], "v2")


def test_rebuilding_the_same_source_is_idempotent(dev_settings) -> None:
    """The build id derives from contract + source snapshot: a re-run reuses the build and writes nothing."""
    seed_raw(dev_settings)
    first = pipeline.build_and_promote(dev_settings, "customer_profile")
    second = pipeline.build_and_promote(dev_settings, "customer_profile")
    assert second["build_id"] == first["build_id"] and second["reused"] is True
    seed_raw(dev_settings)  # the same raw data written again (new objects, same content and ETags)
    assert pipeline.build_and_promote(dev_settings, "customer_profile")["build_id"] == first["build_id"]
    builds_listed, _ = pipeline.versions(dev_settings, "customer_profile")
    assert len(builds_listed) == 1


def _change_source(settings) -> None:
    """New raw data upstream: drop a few rows, so the next build has a new snapshot and build id."""
    table = read_raw(settings, "customers")
    replace_raw(settings, "customers", table.slice(0, table.num_rows - 10))


def _promoted_then_new_source(settings) -> dict:
    """A promoted build, then new raw data upstream; returns the promoted build."""
    seed_raw(settings)
    before = pipeline.build_and_promote(settings, "customer_profile")
    _change_source(settings)
    return before


def _crash(message: str):
    def crash(*_args, **_kwargs):
        raise RuntimeError(message)

    return crash


def test_crash_between_data_and_metadata_leaves_latest(dev_settings, monkeypatch) -> None:
    """Data written but metadata not: the build stays unfinished, latest and its data stay readable."""
    before = _promoted_then_new_source(dev_settings)
    monkeypatch.setattr(builds, "write_metadata", _crash("killed between data and metadata"))
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.build_and_promote(dev_settings, "customer_profile")
    store = data_store(dev_settings)
    pointer = builds.read_pointer(store, "customer_profile")
    assert pointer["build_id"] == before["build_id"]
    assert builds.read_build_table(store, pointer).num_rows == before["row_count"]
    listed, _ = pipeline.versions(dev_settings, "customer_profile")
    unfinished = [b for b in listed if not b["complete"]]
    assert len(unfinished) == 1
    with pytest.raises(StoreError, match="unfinished"):
        pipeline.rollback(dev_settings, "customer_profile", unfinished[0]["build_id"])

    monkeypatch.undo()  # the retry finishes the same build and promotes it
    after = pipeline.build_and_promote(dev_settings, "customer_profile")
    assert after["build_id"] == unfinished[0]["build_id"]
    assert builds.read_pointer(store, "customer_profile")["build_id"] == after["build_id"]


def test_crash_between_metadata_and_pointer_leaves_latest(dev_settings, monkeypatch) -> None:
    """A complete build whose promotion died is not served; latest stays on the previous build until a re-run."""
    before = _promoted_then_new_source(dev_settings)
    monkeypatch.setattr(builds, "promote", _crash("killed between metadata and pointer"))
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.build_and_promote(dev_settings, "customer_profile")
    store = data_store(dev_settings)
    assert builds.read_pointer(store, "customer_profile")["build_id"] == before["build_id"]
    assert builds.read_pointer(store, "customer_profile", "v1")["build_id"] == before["build_id"]
    monkeypatch.undo()
    after = pipeline.build_and_promote(dev_settings, "customer_profile")
    assert after["reused"] is True and after["build_id"] != before["build_id"]
    assert builds.read_pointer(store, "customer_profile")["build_id"] == after["build_id"]


def test_concurrent_builds_leave_latest_on_one_complete_build(dev_settings) -> None:
    """Two builds racing to promote (v1 and v2, and the same build twice) leave latest on a complete build."""
    seed_raw(dev_settings)
    barrier = threading.Barrier(3)

    def run(version: int) -> dict:
        barrier.wait(timeout=30)
        return pipeline.build_and_promote(dev_settings, "customer_spend", version=version)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(run, [1, 2, 2]))
    store = data_store(dev_settings)
    pointer = builds.read_pointer(store, "customer_spend")
    assert pointer["build_id"] in {r["build_id"] for r in results}
    contract = dev_settings.contracts().get("customer_spend", int(pointer["version"][1:]))
    metadata = builds.read_metadata(store, contract, pointer["build_id"])
    assert builds.read_build_table(store, metadata).num_rows == metadata["row_count"]
    assert results[1]["build_id"] == results[2]["build_id"]


def test_rollback_points_latest_at_an_earlier_build(dev_settings) -> None:
    """Rollback moves latest (feature set and version pointers) back to an earlier complete build."""
    seed_raw(dev_settings)
    first = pipeline.build_and_promote(dev_settings, "customer_profile")
    _change_source(dev_settings)
    second = pipeline.build_and_promote(dev_settings, "customer_profile")
    assert second["build_id"] != first["build_id"]
    pipeline.rollback(dev_settings, "customer_profile", first["build_id"])
    store = data_store(dev_settings)
    assert builds.read_pointer(store, "customer_profile")["build_id"] == first["build_id"]
    assert builds.read_pointer(store, "customer_profile", "v1")["build_id"] == first["build_id"]
    with pytest.raises(StoreError, match="no build nope"):
        pipeline.rollback(dev_settings, "customer_profile", "nope")


def _with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _nulls_in_tier(t: pa.Table) -> pa.Table:
    tier = t.column("tier").to_pylist()
    return _with_column(t, "tier", pa.array([None if i % 7 == 0 else v for i, v in enumerate(tier)]))


def _duplicate_snapshot(t: pa.Table) -> pa.Table:
    return pa.concat_tables([t, t.slice(0, 3)])


def _unknown_tier(t: pa.Table) -> pa.Table:
    return _with_column(t, "tier", pc.if_else(pc.equal(t.column("tier"), "gold"), "platinum", t.column("tier")))


def _country_as_number(t: pa.Table) -> pa.Table:
    return _with_column(t, "country", pa.array(range(t.num_rows), pa.int64()))


@pytest.mark.parametrize(
    ("corrupt", "error", "fragment"),
    [
        (_nulls_in_tier, QualityGateError, "column tier: 58 null value(s) in a non-nullable column"),
        (_duplicate_snapshot, QualityGateError, "columns (customer_id, event_timestamp): 3 duplicate key(s)"),
        (_unknown_tier, QualityGateError, "column tier:"),
        (_country_as_number, QualityGateError, "column country: expected string but the transform returned int64"),
    ],
    ids=["nulls", "duplicate-keys", "not-allowed-value", "wrong-type"],
)
def test_bad_source_data_fails_the_gate_and_moves_nothing(dev_settings, corrupt, error, fragment) -> None:
    """Bad raw rows fail the gate with column, rule and row count; latest stays on the good build."""
    seed_raw(dev_settings)
    good = pipeline.build_and_promote(dev_settings, "customer_profile")
    replace_raw(dev_settings, "customers", corrupt(read_raw(dev_settings, "customers")))
    with pytest.raises(error) as info:
        pipeline.build_and_promote(dev_settings, "customer_profile")
    assert fragment in str(info.value)
    assert "nothing promoted" in str(info.value)
    assert builds.read_pointer(data_store(dev_settings), "customer_profile")["build_id"] == good["build_id"]
    listed, _ = pipeline.versions(dev_settings, "customer_profile")
    assert [b["build_id"] for b in listed] == [good["build_id"]]  # nothing half-written left behind


def test_raw_type_the_sql_cannot_use_is_a_clear_error(dev_settings) -> None:
    """A raw column of the wrong type breaks the SQL: the error names the feature set, table and cause."""
    seed_raw(dev_settings)
    table = read_raw(dev_settings, "transactions")
    replace_raw(dev_settings, "transactions", _with_column(table, "amount", table.column("amount").cast(pa.string())))
    with pytest.raises(BuildError, match=r"customer_spend v2: source.sql failed on table transactions: .*sum"):
        pipeline.build_and_promote(dev_settings, "customer_spend")


def test_missing_source_is_a_clear_error(dev_settings) -> None:
    with pytest.raises(BuildError, match="source table 'transactions' has no Parquet files at s3://"):
        pipeline.build_and_promote(dev_settings, "customer_spend")


def test_gc_keeps_pointed_newest_and_running_builds(local_settings, monkeypatch) -> None:
    """Retention deletes only old builds: never the pointed-to, the newest `keep`, or a young unfinished one."""
    seed_raw(local_settings)
    ids = [pipeline.build_and_promote(local_settings, "customer_profile")["build_id"]]
    for _ in range(2):
        _change_source(local_settings)
        ids.append(pipeline.build_and_promote(local_settings, "customer_profile")["build_id"])
    pipeline.rollback(local_settings, "customer_profile", ids[0])  # latest -> the oldest build
    _change_source(local_settings)
    monkeypatch.setattr(builds, "write_metadata", _crash("killed"))
    with pytest.raises(RuntimeError):
        pipeline.build_and_promote(local_settings, "customer_profile")
    monkeypatch.undo()
    unfinished = [b["build_id"] for b in pipeline.versions(local_settings, "customer_profile")[0]
                  if not b["complete"]]

    planned = pipeline.collect_garbage(local_settings, ["customer_profile"], keep=1, min_age_seconds=3600,
                                       dry_run=True)
    assert [d["build_id"] for d in planned] == [ids[1]] and not planned[0]["deleted"]
    assert len(pipeline.versions(local_settings, "customer_profile")[0]) == 4  # a dry run deletes nothing

    pipeline.collect_garbage(local_settings, ["customer_profile"], keep=1, min_age_seconds=3600, dry_run=False)
    left = {b["build_id"] for b in pipeline.versions(local_settings, "customer_profile")[0]}
    assert left == {ids[0], ids[2], *unfinished}
    pipeline.collect_garbage(local_settings, ["customer_profile"], keep=1, min_age_seconds=0, dry_run=False)
    assert {b["build_id"] for b in pipeline.versions(local_settings, "customer_profile")[0]} == {ids[0], ids[2]}
    store = data_store(local_settings)
    assert builds.read_pointer(store, "customer_profile")["build_id"] == ids[0]
    assert builds.read_build_table(store, builds.read_pointer(store, "customer_profile")).num_rows > 0


def test_one_pass_gate_equals_the_scan_of_the_staged_file(tmp_path) -> None:
    """The statistics gathered while staging decide exactly as the DuckDB scan does: same failures (nulls,
    min/max, allowed values, duplicate (entity, time) groups across batch boundaries), same statistics."""
    import random

    import pyarrow.dataset as pads

    from feature_platform.build import GateStatistics, _duckdb, arrow_schema, quality_gate
    from feature_platform.contracts import parse_feature_set

    contract = parse_feature_set({
        "kind": "FeatureSet", "name": "gate_check", "version": 1, "description": "d", "owner": "o",
        "entity": {"name": "thing", "join_key": "thing_id", "dtype": "string"}, "timestamp_field": "ts",
        "ttl": "1d", "pii": False, "source": {"table": "t", "sql": "SELECT * FROM source"},
        "features": [
            {"name": "amount", "dtype": "float64", "description": "x", "nullable": False,
             "constraints": {"min": 0, "max": 100}},
            {"name": "count", "dtype": "int32", "description": "x", "constraints": {"min": 1}},
            {"name": "tier", "dtype": "string", "description": "x", "nullable": False,
             "constraints": {"allowed_values": ["a", "b"]}},
            {"name": "flag", "dtype": "bool", "description": "x"}]}, "gate_check/v1.yaml")
    rng = random.Random(4)
    rows = []
    for thing in range(300):
        for hour in range(rng.randrange(1, 6)):
            stamp = datetime(2026, 1, 1, hour, tzinfo=UTC)
            copies = 2 if rng.random() < 0.05 else 1  # duplicated (entity, time) groups
            for _ in range(copies):
                rows.append({"thing_id": f"t{thing:04d}", "ts": stamp,
                             "amount": None if rng.random() < 0.02 else rng.uniform(-5, 105),
                             "count": None if rng.random() < 0.2 else rng.randrange(-2, 50),
                             "tier": rng.choice(["a", "b", "c", None]), "flag": rng.choice([True, False, None])})
    rows.sort(key=lambda r: (r["thing_id"], r["ts"]))
    table = pa.Table.from_pylist(rows, schema=arrow_schema(contract))
    path = tmp_path / "staged.parquet"
    pq.write_table(table, path)
    con = _duckdb()
    con.register("built", pads.dataset(str(path), format="parquet"))
    scanned = quality_gate(con, contract)
    gate = GateStatistics(contract)
    for batch in table.to_batches(max_chunksize=7):  # small batches: runs cross batch boundaries
        gate.update(batch)
    gathered = gate.result()
    assert gathered[0] == scanned[0] and len(gathered[0]) == 7  # every rule fired
    assert gathered[1] == scanned[1]
