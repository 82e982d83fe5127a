"""Contract-driven builds: raw source -> DuckDB SQL -> conform -> quality gate -> versioned Parquet -> latest.

Layout in the environment's object store (``<prefix>`` = ``object_store.uri``)::

    <prefix>/<feature_set>/latest.json                      newest promoted build of the feature set
    <prefix>/<feature_set>/<version>/latest.json            newest promoted build of that contract version
    <prefix>/<feature_set>/<version>/<build_id>/features.parquet
    <prefix>/<feature_set>/<version>/<build_id>/metadata.json   written last: no metadata = unfinished build

The build id is a hash of the contract's schema and transform and of the source snapshot by content (keys
relative to the raw table, sizes, ETags), so re-running the same logical build finds the finished build and
changes nothing, in any work directory. Builds are byte-reproducible (sorted rows, fixed row groups,
order-sensitive SQL single-threaded), never rewritten; promotion is one small atomic PUT of each pointer.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from feature_platform import __version__
from feature_platform.contracts import Constraints, Feature, FeatureSetContract, element_dtype, is_array
from feature_platform.errors import BuildError, PointerMissingError, QualityGateError, StoreError
from feature_platform.store import ObjectStore

DATA_FILE = "features.parquet"
METADATA_FILE = "metadata.json"
POINTER_FILE = "latest.json"
BATCH_ROWS = 100_000  # rows per Parquet row group (fixed, so identical rows give identical bytes)
METADATA_FORMAT = 1
POINTER_LOCK_TIMEOUT = 120.0  # seconds; promotions hold the pointer lease for two small writes
BUILD_FORMAT = 2  # bumped when the same inputs would produce different bytes (2: sorted rows, fixed row groups)
# DuckDB plan operators whose results depend on the order rows arrive in (floating-point sums, windows).
ORDER_SENSITIVE_OPERATORS = ("HASH_GROUP_BY", "PERFECT_HASH_GROUP_BY", "UNGROUPED_AGGREGATE", "WINDOW")

ARROW_TYPES: dict[str, pa.DataType] = {
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
ARROW_TYPES.update({f"array<{e}>": pa.list_(ARROW_TYPES[e])  # Parquet list columns
                    for e in ("int32", "int64", "float32", "float64", "string", "bool")})
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
FLOAT_DTYPES = ("float32", "float64")

Progress = Callable[[str], None]


def arrow_schema(contract: FeatureSetContract) -> pa.Schema:
    """The exact Arrow schema a build of ``contract`` writes.

    Every field is nullable here: nullability is enforced by the quality gate, which can say which column and
    how many rows, instead of the Parquet writer's bare refusal.
    """
    fields = [pa.field(key, ARROW_TYPES[dtype]) for key, dtype in contract.key_dtypes.items()]
    fields.append(pa.field(contract.timestamp_field, TIMESTAMP_TYPE))
    fields += [pa.field(f.name, ARROW_TYPES[f.dtype]) for f in contract.features]
    return pa.schema(fields)


def version_key(contract: FeatureSetContract) -> str:
    return f"{contract.name}/{contract.version_label}"


def build_key(contract: FeatureSetContract, build_id: str) -> str:
    return f"{version_key(contract)}/{build_id}"


@dataclass(frozen=True)
class BuildResult:
    metadata: dict[str, Any]
    reused: bool  # True when this logical build was already complete and nothing was written

    @property
    def build_id(self) -> str:
        return str(self.metadata["build_id"])


# ----------------------------------------------------------------------------------------------- the source


def source_snapshot(raw: ObjectStore, contract: FeatureSetContract, digests: bool = True) -> list[dict[str, Any]]:
    """The raw table's files. ``digests``: with their content hash locally too (a full build's id derives from
    it; an incremental build's derives from its partitions, so it skips reading the history)."""
    files = raw.list_files(contract.source.table, suffix=".parquet", digests=digests)
    if not files:
        raise BuildError(f"{contract.name}: source table {contract.source.table!r} has no Parquet files at "
                         f"{raw.url(contract.source.table)}; load the raw data (demo: `featurectl sample-data`)")
    root = raw.path() + "/"
    return [{"path": ("s3://" if raw.is_s3 else "") + f.path, "key": f.path.removeprefix(root), "size": f.size,
             "etag": f.etag} for f in files]


def compute_build_id(contract: FeatureSetContract, snapshot: list[dict[str, Any]]) -> str:
    """Identity of a logical build: schema, transform, and the source by content (relative key, size, ETag/MD5),
    never by absolute path or bucket, so identical data in another work directory or bucket gets the same id."""
    source = sorted((entry["key"], entry["size"], entry["etag"]) for entry in snapshot)
    payload = json.dumps({"schema": contract.schema_hash, "transform": contract.transform_hash,
                          "source": source, "format": BUILD_FORMAT}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- transform + gate


DUCKDB_TYPES = {"int32": "INTEGER", "int64": "BIGINT", "float32": "FLOAT", "float64": "DOUBLE", "string": "VARCHAR",
                "bool": "BOOLEAN", "timestamp": "TIMESTAMP", "timestamptz": "TIMESTAMPTZ", "date": "DATE"}


def check_transform(contract: FeatureSetContract) -> list[str]:
    """The contract's SQL, checked without data: parsed always; with ``source.columns`` declared, also bound
    against an empty table of those columns (DuckDB DESCRIBE) and its output compared with the contract's
    columns. So SQL errors fail `featurectl contracts validate` in CI, not the DAG."""
    import duckdb

    con = duckdb.connect()
    try:
        columns = contract.source.columns
        if not columns:
            row = con.execute("SELECT json_serialize_sql(?)", [contract.source.sql]).fetchone()
            assert row is not None  # a scalar SELECT returns one row
            parsed = json.loads(row[0])
            return [f"does not parse: {parsed.get('error_message', 'syntax error')}"] \
                if parsed.get("error") else []
        declared = ", ".join(f'"{name}" {DUCKDB_TYPES[dtype]}' for name, dtype in columns.items())
        con.execute(f"CREATE TABLE source ({declared})")
        # An incremental build's interval parameters, bound to a typed value (DESCRIBE takes no parameters).
        sql = re.sub(r"\$interval_(start|end)\b", "TIMESTAMPTZ '2000-01-01 00:00:00+00'", contract.source.sql)
        try:
            names = [row[0] for row in con.execute(f"DESCRIBE {sql}").fetchall()]
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0]
            return [f"fails on the declared source.columns: {first}"]
        want = arrow_schema(contract).names
        problems = []
        if set(want) - set(names):
            problems.append(f"does not return {', '.join(sorted(set(want) - set(names)))}")
        if set(names) - set(want):
            problems.append(f"returns column(s) not in the contract: "
                            f"{', '.join(sorted(set(names) - set(want)))}")
        return problems
    finally:
        con.close()


def _check_columns(names: list[str], schema: pa.Schema, feature_set: str) -> None:
    """The transform must return exactly the contract's columns."""
    got, want = set(names), set(schema.names)
    if got != want:
        problems = []
        if want - got:
            problems.append(f"missing column(s) {', '.join(sorted(want - got))}")
        if got - want:
            problems.append(f"column(s) not in the contract {', '.join(sorted(got - want))}")
        drift = "; ".join(problems)
        raise QualityGateError(feature_set, [f"the transform's output drifted from the contract: {drift}"])


def _conform(batch: pa.RecordBatch, schema: pa.Schema, feature_set: str) -> pa.RecordBatch:
    """Cast the transform's output to the contract schema; a missing, extra or incompatible column is an error."""
    _check_columns(batch.schema.names, schema, feature_set)
    columns = []
    for target in schema:
        column = batch.column(target.name)
        if column.type != target.type:
            if not _castable(column.type, target.type):
                raise QualityGateError(feature_set, [
                    f"column {target.name}: expected {target.type} but the transform returned {column.type}"])
            try:
                # Floats may narrow (float64 -> float32, in arrays too); integers must fit exactly.
                element = target.type.value_type if pa.types.is_list(target.type) else target.type
                safe = not pa.types.is_floating(element)
                column = column.cast(target.type, safe=safe)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise QualityGateError(feature_set, [f"column {target.name}: cannot convert to {target.type}: {exc}"]
                                       ) from exc
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _castable(given: pa.DataType, target: pa.DataType) -> bool:
    """Whether the transform's column type converts to the contract's without changing what values mean."""
    if pa.types.is_list(target):
        return ((pa.types.is_list(given) or pa.types.is_large_list(given))
                and (given.value_type == target.value_type or _castable(given.value_type, target.value_type)))
    return ((pa.types.is_integer(given) and pa.types.is_integer(target))
            or (pa.types.is_floating(target) and (pa.types.is_floating(given) or pa.types.is_integer(given)))
            or (pa.types.is_timestamp(given) and pa.types.is_timestamp(target))
            or (pa.types.is_string(target) and pa.types.is_large_string(given)))


def _sql_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def quality_gate(con: Any, contract: FeatureSetContract) -> tuple[list[str], dict[str, Any]]:
    """Check the staged rows (DuckDB view ``built``) against the contract; returns (failures, statistics)."""
    keys, ts = contract.join_keys, contract.timestamp_field
    failures: list[str] = []
    row_count = con.execute("SELECT count(*) FROM built").fetchone()[0]
    if row_count == 0:
        return [f"the transform returned no rows from source table {contract.source.table}"], {"row_count": 0}
    stats: dict[str, Any] = {"row_count": row_count, "columns": {}}
    required: list[tuple[str, bool, Constraints | None]] = [(key, False, None) for key in keys]
    required.append((ts, False, None))
    required += [(f.name, f.nullable, f.constraints) for f in contract.features]
    floats = {f.name for f in contract.features if f.dtype in FLOAT_DTYPES}
    arrays = {f.name: f for f in contract.features if is_array(f.dtype)}
    for name, nullable, constraints in required:
        # NaN and ±inf are no values: they count as nulls (Feast serves NaN as null) and never set min/max.
        finite = f'WHERE isfinite("{name}")' if name in floats else ""
        nulls, low, high = con.execute(
            f'SELECT (SELECT count(*) FROM built) - count("{name}"), min("{name}"), max("{name}") '
            f"FROM built {finite}").fetchone()
        if name in arrays:  # an array has no min or max; its length and elements are checked below
            low = high = None
            failures += _array_scan(con, keys, arrays[name])
        stats["columns"][name] = {"null_count": nulls, "min": _jsonable(low), "max": _jsonable(high)}
        if nulls and not nullable:
            failures.append(f"column {name}: {nulls} null value(s) in a non-nullable column")
        if constraints is None:
            continue
        if constraints.min is not None:
            bad = con.execute(f'SELECT count(*) FROM built WHERE "{name}" < {constraints.min!r}').fetchone()[0]
            if bad:
                failures.append(f"column {name}: {bad} row(s) below min {constraints.min} (smallest {low})")
        if constraints.max is not None:
            bad = con.execute(f'SELECT count(*) FROM built WHERE "{name}" > {constraints.max!r}').fetchone()[0]
            if bad:
                failures.append(f"column {name}: {bad} row(s) above max {constraints.max} (largest {high})")
        if constraints.allowed_values is not None:
            allowed = ", ".join(_sql_literal(v) for v in constraints.allowed_values)
            bad, example = con.execute(
                f'SELECT count(*), min("{name}") FROM built WHERE "{name}" NOT IN ({allowed})').fetchone()
            if bad:
                failures.append(f"column {name}: {bad} row(s) outside allowed_values (e.g. {example!r})")
    listed = _quoted(keys)
    grouped = f'SELECT {listed} FROM built GROUP BY {listed}, "{ts}" HAVING count(*) > 1'
    duplicates = con.execute(f"SELECT count(*) FROM ({grouped})").fetchone()[0]
    if duplicates:
        example = con.execute(f"{grouped} ORDER BY {listed} LIMIT 1").fetchone()
        failures.append(_duplicates_problem(keys, ts, duplicates, example))
    stats["event_time_min"] = stats["columns"][ts]["min"]
    stats["event_time_max"] = stats["columns"][ts]["max"]
    stats["entity_count"] = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {listed} FROM built)").fetchone()[0]
    return failures, stats


def _quoted(columns: list[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def key_example(keys: list[str], values: tuple[Any, ...] | None) -> str:
    """An entity in a message: ``customer_id=1`` (``customer_id=1, merchant_id=m-7`` for a composite key)."""
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values or (None,) * len(keys), strict=True))


def _duplicates_problem(keys: list[str], ts: str, count: int, example: tuple[Any, ...] | None) -> str:
    return (f"columns ({', '.join(keys)}, {ts}): {count} duplicate key(s) (e.g. {key_example(keys, example)}); "
            "each entity may have one row per event timestamp")


def _smallest_key(rows: pa.RecordBatch | pa.Table, keys: list[str]) -> tuple[Any, ...] | None:
    """The smallest entity key among ``rows`` (by the key columns in order, nulls last), as the scan's
    ``ORDER BY keys LIMIT 1`` picks it: the same example whatever the batch order."""
    if rows.num_rows == 0:
        return None
    first = rows.select(keys).sort_by([(k, "ascending") for k in keys]).slice(0, 1).to_pylist()[0]
    return tuple(first[k] for k in keys)


def _nulls_last(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((value is None, value) for value in key)


def _smaller_key(seen: tuple[Any, ...] | None, new: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    if seen is None or new is None:
        return seen or new
    return min(seen, new, key=_nulls_last)


def _array_problems(feature: Feature, bad_rows: int, example: tuple[Any, ...] | None, keys: list[str],
                    kind: str) -> str:
    entity = key_example(keys, example)
    if kind == "dims":
        return (f"column {feature.name}: {bad_rows} row(s) whose length is not dims {feature.dims} (e.g. "
                f"{entity}); every {feature.dtype} must have {feature.dims} elements")
    what = "null or non-finite" if element_dtype(feature.dtype) in FLOAT_DTYPES else "null"
    return (f"column {feature.name}: {bad_rows} row(s) with {what} elements (e.g. {entity}); fix the "
            "source or set nullable_elements: true in the contract")


def _array_scan(con: Any, keys: list[str], feature: Feature) -> list[str]:
    """The scan's array rules: every non-null array has ``dims`` elements; no null (for floats, no NaN or ±inf)
    elements unless ``nullable_elements``."""
    name, failures, listed = f'"{feature.name}"', [], _quoted(keys)
    rules = []
    if feature.dims is not None:
        rules.append(("dims", f"len({name}) != {feature.dims}"))
    if not feature.nullable_elements:
        kept = (f"list_count(list_filter({name}, lambda x: isfinite(x)))"
                if element_dtype(feature.dtype) in FLOAT_DTYPES else f"list_count({name})")
        rules.append(("elements", f"len({name}) != {kept}"))
    for kind, broken in rules:
        where = f"WHERE {name} IS NOT NULL AND {broken}"
        bad = con.execute(f"SELECT count(*) FROM built {where}").fetchone()[0]
        if bad:
            example = con.execute(f"SELECT {listed} FROM built {where} ORDER BY {listed} LIMIT 1").fetchone()
            failures.append(_array_problems(feature, bad, example, keys, kind))
    return failures


def array_rows(feature: Feature, column: pa.Array) -> dict[str, np.ndarray]:
    """Per row of ``column`` (an array feature), whether it breaks ``dims`` and whether it holds null elements
    (for floats also NaN and ±inf), as the scan decides."""
    import pyarrow.compute as pc

    rows: dict[str, np.ndarray] = {}
    if feature.dims is not None:
        lengths = pc.list_value_length(column)
        rows["dims"] = pc.not_equal(lengths, feature.dims).fill_null(False).to_numpy(zero_copy_only=False)
    if not feature.nullable_elements:
        values = pc.list_flatten(column)
        bad = (pc.invert(pc.is_finite(values)) if pa.types.is_floating(values.type) else pc.is_null(values))
        bad_elements = bad.fill_null(True).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
        flagged = np.zeros(len(column), dtype=bool)
        flagged[parents[bad_elements]] = True
        rows["elements"] = flagged
    return rows


class GateStatistics:
    """The quality gate computed while the staged batches are written (one pass: the file is not read again).

    Rows arrive sorted by (entity, event time), so duplicate (entity, event time) pairs are adjacent and entities
    are counted at key changes. Decisions and messages are those of :func:`quality_gate` (the scan over a
    staged file, kept for builds staged without statistics).
    """

    def __init__(self, contract: FeatureSetContract) -> None:
        self.contract = contract
        self.floats = {f.name for f in contract.features if f.dtype in FLOAT_DTYPES}
        self.arrays = {f.name: f for f in contract.features if is_array(f.dtype)}
        self.array_counts: dict[tuple[str, str], int] = {}  # (feature, "dims" | "elements") -> rows
        self.array_example: dict[tuple[str, str], Any] = {}  # the smallest offending key, as the scan says
        self.keys, self.ts = contract.join_keys, contract.timestamp_field
        self.checks: list[tuple[str, bool, Constraints | None]] = [(k, False, None) for k in self.keys]
        self.checks.append((self.ts, False, None))
        self.checks += [(f.name, f.nullable, f.constraints) for f in contract.features]
        self.rows = 0
        self.entities = 0
        self.nulls = {name: 0 for name, _, _ in self.checks}
        self.low: dict[str, Any] = {}
        self.high: dict[str, Any] = {}
        self.below: dict[str, int] = {}
        self.above: dict[str, int] = {}
        self.outside: dict[str, int] = {}
        self.outside_example: dict[str, Any] = {}
        self.duplicates = 0
        self.duplicate_example: tuple[Any, ...] | None = None
        self._last: pa.RecordBatch | None = None  # the previous batch's last row (keys, ts)
        self._last_was_duplicate = False

    def update(self, batch: pa.RecordBatch) -> None:
        import pyarrow.compute as pc

        if batch.num_rows == 0:
            return
        self.rows += batch.num_rows
        for name, _nullable, constraints in self.checks:
            column = batch.column(name)
            if name in self.floats:  # NaN and ±inf are no values: nulls, as in the scan
                column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type))
            self.nulls[name] += column.null_count
            if column.null_count == len(column):
                continue
            if name in self.arrays:
                self._check_array(self.arrays[name], column, batch)
                continue
            bounds = pc.min_max(column)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            self.low[name] = low if name not in self.low or self.low[name] is None else min(self.low[name], low)
            self.high[name] = high if name not in self.high or self.high[name] is None else max(self.high[name], high)
            if constraints is None:
                continue
            if constraints.min is not None:
                self.below[name] = self.below.get(name, 0) + int(pc.sum(pc.less(column, constraints.min)).as_py()
                                                                  or 0)
            if constraints.max is not None:
                self.above[name] = self.above.get(name, 0) + int(pc.sum(pc.greater(column, constraints.max)).as_py()
                                                                  or 0)
            if constraints.allowed_values is not None:
                bad = _outside(column, constraints.allowed_values)
                count = int(pc.sum(bad).as_py() or 0)
                if count:  # the smallest offending value: the same example whatever the batch order
                    smallest = pc.min(column.filter(bad)).as_py()
                    seen = self.outside_example.get(name)
                    self.outside_example[name] = smallest if seen is None else min(seen, smallest)
                self.outside[name] = self.outside.get(name, 0) + count
        self._count_keys(batch)

    def _check_array(self, feature: Feature, column: pa.Array, batch: pa.RecordBatch) -> None:
        for kind, flagged in array_rows(feature, column).items():
            count = int(flagged.sum())
            if count:
                smallest = _smallest_key(batch.filter(pa.array(flagged)), self.keys)
                seen = self.array_example.get((feature.name, kind))
                self.array_example[(feature.name, kind)] = _smaller_key(seen, smallest)
                self.array_counts[(feature.name, kind)] = self.array_counts.get((feature.name, kind), 0) + count

    def _count_keys(self, batch: pa.RecordBatch) -> None:
        """Entities (key changes) and duplicated (key, time) groups, vectorized over adjacent pairs; the previous
        batch's last row is prepended so runs that cross a batch boundary count once."""
        import pyarrow.compute as pc

        rows = batch.select([*self.keys, self.ts])
        carried = self._last is not None
        if carried:
            last = self._last
            assert last is not None
            rows = pa.RecordBatch.from_arrays([pa.concat_arrays([last.column(i), rows.column(i)])
                                               for i in range(rows.num_columns)], schema=rows.schema)
        else:
            self.entities += 1  # the very first row starts an entity
        count = rows.num_rows
        if count > 1:
            def same(name: str) -> np.ndarray:  # row i+1 equals row i
                column = rows.column(name)
                return pc.equal(column.slice(1), column.slice(0, count - 1)).fill_null(False).to_numpy(
                    zero_copy_only=False)

            same_key = np.logical_and.reduce([same(k) for k in self.keys])
            duplicate = same_key & same(self.ts)
            before = np.concatenate([[self._last_was_duplicate if carried else False], duplicate[:-1]])
            starts = duplicate & ~before  # each duplicated (entity, time) group once, as GROUP BY would
            self.entities += int((~same_key).sum())
            found = int(starts.sum())
            if found:  # the smallest duplicated key, as the scan reports it
                smallest = _smallest_key(rows.slice(1).filter(pa.array(starts)), self.keys)
                self.duplicate_example = _smaller_key(self.duplicate_example, smallest)
            self.duplicates += found
            self._last_was_duplicate = bool(duplicate[-1])
        self._last = rows.slice(count - 1, 1)

    def result(self) -> tuple[list[str], dict[str, Any]]:
        contract = self.contract
        if self.rows == 0:
            return [f"the transform returned no rows from source table {contract.source.table}"], {"row_count": 0}
        failures: list[str] = []
        stats: dict[str, Any] = {"row_count": self.rows, "columns": {}}
        for name, nullable, constraints in self.checks:
            low, high = self.low.get(name), self.high.get(name)
            stats["columns"][name] = {"null_count": self.nulls[name], "min": _jsonable(low),
                                      "max": _jsonable(high)}
            if self.nulls[name] and not nullable:
                failures.append(f"column {name}: {self.nulls[name]} null value(s) in a non-nullable column")
            for kind in ("dims", "elements"):
                if self.array_counts.get((name, kind)):
                    failures.append(_array_problems(self.arrays[name], self.array_counts[(name, kind)],
                                                    self.array_example[(name, kind)], self.keys, kind))
            if constraints is None:
                continue
            if self.below.get(name):
                failures.append(f"column {name}: {self.below[name]} row(s) below min {constraints.min} "
                                f"(smallest {low})")
            if self.above.get(name):
                failures.append(f"column {name}: {self.above[name]} row(s) above max {constraints.max} "
                                f"(largest {high})")
            if self.outside.get(name):
                failures.append(f"column {name}: {self.outside[name]} row(s) outside allowed_values "
                                f"(e.g. {self.outside_example[name]!r})")
        if self.duplicates:
            failures.append(_duplicates_problem(self.keys, self.ts, self.duplicates, self.duplicate_example))
        stats["event_time_min"] = stats["columns"][self.ts]["min"]
        stats["event_time_max"] = stats["columns"][self.ts]["max"]
        stats["entity_count"] = self.entities
        return failures, stats


def _outside(column: pa.Array, allowed: list[Any]) -> pa.Array:
    """Non-null values not in ``allowed`` (as SQL's NOT IN: nulls are not counted)."""
    import pyarrow.compute as pc

    try:
        value_set = pa.array(allowed).cast(column.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        value_set = pa.array([str(v) for v in allowed]).cast(column.type, safe=False)
    return pc.and_(pc.is_valid(column), pc.invert(pc.is_in(column, value_set=value_set)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _duckdb() -> Any:
    import duckdb

    con = duckdb.connect()
    con.execute("SET memory_limit = '2GB'")  # DuckDB spills to disk past this: memory stays bounded
    con.execute("SET TimeZone = 'UTC'")
    return con


def _fixed_row_groups(batches: Any, size: int) -> Any:
    """Re-slice a stream of batches into batches of exactly ``size`` rows (the last may be shorter), so the
    Parquet row groups do not depend on how the engine happened to chunk its output."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size).combine_chunks().to_batches()[0]
            rest = table.slice(size).combine_chunks()
            pending = rest.to_batches() if rest.num_rows else []
            rows = rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def execution_threads(con: Any, sql: str) -> int:
    """1 when the SQL aggregates or windows: parallel DuckDB adds floating-point partial results in whatever
    order threads finish, so the same input could round differently. Row-level SQL stays parallel."""
    plan = "\n".join(str(row[1]) for row in con.execute("EXPLAIN " + sql).fetchall())
    plan = plan.upper().replace(" ", "_")  # "Hash Group By" (DuckDB 2) and "HASH_GROUP_BY" (1.x)
    if any(operator in plan for operator in ORDER_SENSITIVE_OPERATORS):
        return 1
    return int(con.execute("SELECT current_setting('threads')").fetchone()[0])


def _transform_to_file(raw: ObjectStore, snapshot: list[dict[str, Any]], contract: FeatureSetContract,
                       target: Path, progress: Progress) -> dict[str, Any]:
    """Run the contract's SQL over the source, streaming conformed batches into ``target``.

    Deterministic: rows are sorted by (entity, event time), row groups have a fixed size, and SQL whose result
    depends on row arrival order runs single-threaded. The quality gate's statistics are gathered in the same
    pass. Returns {rows, threads, gate: {failures, stats}}.
    """
    import duckdb

    paths = [entry["path"].removeprefix("s3://") for entry in snapshot]
    try:
        source = ds.dataset(paths, format="parquet", filesystem=raw.fs)
    except Exception as exc:
        raise BuildError(f"{contract.name}: cannot open source {raw.url(contract.source.table)}: {exc}") from exc
    schema = arrow_schema(contract)
    naive = _naive_timestamp_columns(source, contract, raw)
    con = _duckdb()
    try:
        if naive:  # read as the zone the contract names (it must name one: checked above)
            con.register("source_raw", source)
            replaced = ", ".join(f"timezone('{contract.source.timezone}', \"{c}\") AS \"{c}\"" for c in naive)
            con.execute(f"CREATE TEMP VIEW source AS SELECT * REPLACE ({replaced}) FROM source_raw")
        else:
            con.register("source", source)
        try:
            columns = con.sql(contract.source.sql).columns
            _check_columns(columns, schema, contract.name)
            threads = execution_threads(con, contract.source.sql)
            con.execute(f"SET threads = {threads}")
            order = _quoted([*contract.join_keys, contract.timestamp_field])
            ordered = f"SELECT * FROM ({contract.source.sql}) ORDER BY {order}"
            reader = con.sql(ordered).to_arrow_reader(BATCH_ROWS)
        except duckdb.Error as exc:
            first_line = str(exc).strip().splitlines()[0]
            raise BuildError(f"{contract.name} v{contract.version}: source.sql failed on table "
                             f"{contract.source.table}: {first_line}; check the SQL and the raw column types"
                             ) from exc
        rows = 0
        gate = GateStatistics(contract)
        with pq.ParquetWriter(target, schema, compression="zstd") as writer:
            for batch in _fixed_row_groups(reader, BATCH_ROWS):
                conformed = _conform(batch, schema, contract.name)
                writer.write_batch(conformed)
                gate.update(conformed)
                rows += batch.num_rows
                progress(f"{contract.name} v{contract.version}: {rows:,} rows written")
        failures, stats = gate.result()
        if rows:
            con.execute(f"SET threads = {execution_threads(con, 'SELECT 1')}")
            con.register("built", ds.dataset(str(target), format="parquet"))
            add_profile(stats, profile_columns(con, contract))
        return {"rows": rows, "threads": threads, "gate": {"failures": failures, "stats": stats}}
    finally:
        con.close()


QUANTILES = [i / 100 for i in range(101)]  # percentiles: drift (PSI) is computed between two builds' percentiles
TOP_VALUES = 20  # categories kept per string/bool feature (the rest count as "other")


def profile_columns(con: Any, contract: FeatureSetContract) -> dict[str, dict[str, Any]]:
    """The distribution summary `featurectl monitor` compares between builds, per feature, over the relation
    ``built``: numbers (and timestamps, as epoch seconds) get mean, stddev and percentiles; strings and bools
    their most frequent values with counts. Exact and deterministic (same build, same summary)."""
    profile: dict[str, dict[str, Any]] = {}
    for feature in contract.features:
        name = f'"{feature.name}"'
        if is_array(feature.dtype):
            profile[feature.name] = _array_profile(con, feature)
            continue
        if feature.dtype in ("string", "bool"):
            top = con.execute(f"SELECT CAST({name} AS VARCHAR) AS v, count(*) AS c FROM built WHERE {name} IS NOT NULL "
                              f"GROUP BY v ORDER BY c DESC, v LIMIT {TOP_VALUES}").fetchall()
            total, distinct = con.execute(f"SELECT count({name}), count(DISTINCT {name}) FROM built").fetchone()
            profile[feature.name] = {"kind": "categorical", "values": total, "distinct_count": distinct,
                                     "top_values": [[value, count] for value, count in top]}
            continue
        value = f"epoch({name})" if feature.dtype == "timestamp" else f"CAST({name} AS DOUBLE)"
        finite = f"WHERE {name} IS NOT NULL" + (f" AND isfinite({name})" if feature.dtype in FLOAT_DTYPES else "")
        count, mean, stddev, quantiles = con.execute(
            f"SELECT count(*), avg(v), stddev_samp(v), quantile_disc(v, {QUANTILES}) "
            f"FROM (SELECT {value} AS v FROM built {finite})").fetchone()
        profile[feature.name] = {"kind": "numeric", "values": count, "mean": _finite(mean),
                                 "stddev": _finite(stddev), "quantiles": [float(q) for q in quantiles or []]}
    return profile


def _array_profile(con: Any, feature: Feature) -> dict[str, Any]:
    """An array is profiled by its length and, for numbers, by the distribution of its L2 norm (an embedding's
    drift shows in its norm, not in quantiles of single elements): ``quantiles`` are the norm's (or, for strings
    and bools, the length's) percentiles, what drift compares."""
    name = f'"{feature.name}"'
    numeric = element_dtype(feature.dtype) not in ("string", "bool")
    # The norm over finite elements (an empty array's is 0); DOUBLE so float32 squares do not overflow.
    norm = (f"coalesce(sqrt(list_sum(list_transform(list_filter({name}, lambda x: isfinite(x)), "
            "lambda x: CAST(x AS DOUBLE) * CAST(x AS DOUBLE)))), 0)" if numeric else f"len({name})")
    count, mean, stddev, quantiles, low, high, length = con.execute(
        f"SELECT count(*), avg(v), stddev_samp(v), quantile_disc(v, {QUANTILES}), min(n), max(n), avg(n) "
        f"FROM (SELECT {norm} AS v, len({name}) AS n FROM built WHERE {name} IS NOT NULL)").fetchone()
    return {"kind": "array", "measure": "l2_norm" if numeric else "length", "values": count,
            "mean": _finite(mean), "stddev": _finite(stddev), "quantiles": [float(q) for q in quantiles or []],
            "length": {"min": low, "max": high, "mean": _finite(length)}}


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def add_profile(stats: dict[str, Any], profile: dict[str, dict[str, Any]]) -> None:
    """Merge the profile into the gate's per-column statistics, with each column's null rate spelled out."""
    rows = stats.get("row_count") or 0
    for column in stats["columns"].values():
        if rows and "null_count" in column:
            column["null_rate"] = column["null_count"] / rows
    for name, summary in profile.items():
        stats["columns"].setdefault(name, {})["profile"] = summary


def _naive_timestamp_columns(source: Any, contract: FeatureSetContract, raw: ObjectStore) -> list[str]:
    """Timestamp columns without a time zone in the raw files. Refused unless the contract names the zone they
    are in (silently reading them as UTC shifts every event), and refused when files disagree."""
    where = raw.url(contract.source.table)
    kinds: dict[str, dict[str, str]] = {}
    for fragment in source.get_fragments():
        for field in fragment.physical_schema:
            if pa.types.is_timestamp(field.type):
                kind = "aware" if field.type.tz else "naive"
                kinds.setdefault(field.name, {}).setdefault(kind, Path(fragment.path).name)
    naive = sorted(name for name, seen in kinds.items() if "naive" in seen)
    for name in naive:
        if "aware" in kinds[name]:
            raise BuildError(f"{contract.name}: source {where} column {name} has a time zone in "
                             f"{kinds[name]['aware']} but none in {kinds[name]['naive']}; rewrite the files with one "
                             "convention (UTC with zone is safest)")
    if naive and not contract.source.timezone:
        raise BuildError(f"{contract.name} v{contract.version}: source {where} column(s) {', '.join(naive)} are "
                         "timestamps without a time zone; set source.timezone in the contract (e.g. UTC or "
                         "Europe/Berlin) so they are read in the right zone, or write them with one")
    return naive


# --------------------------------------------------------------------------------------------- the build
#
# Three steps, each idempotent, so an orchestrator can run and retry them separately:
#   stage_build    source -> SQL -> conformed Parquet at <build>/features.parquet (no metadata: unfinished)
#   check_quality  the quality gate over the staged file; a failure deletes the unfinished build
#   finalize_build metadata.json, written last: from then on the build is complete and can be promoted
# build_version runs all three.


def stage_build(contract: FeatureSetContract, store: ObjectStore, raw: ObjectStore,
                progress: Progress = lambda _msg: None) -> dict[str, Any]:
    """Write the build's data; returns a small reference {build_id, source snapshot, complete}."""
    snapshot = source_snapshot(raw, contract)
    build_id = compute_build_id(contract, snapshot)
    prefix = build_key(contract, build_id)
    staged = {"feature_set": contract.name, "version": contract.version_label, "build_id": build_id,
              "source": snapshot}
    if store.exists(f"{prefix}/{METADATA_FILE}"):
        damage = metadata_damage(store, contract, build_id)
        if damage is None:
            progress(f"{contract.name} v{contract.version}: build {build_id} is already complete; reusing it")
            return {**staged, "complete": True}
        # A damaged record is rebuilt from the same source snapshot: same id, same bytes, a sound metadata.json.
        progress(f"{contract.name} v{contract.version}: build {build_id} has a damaged {METADATA_FILE} ({damage}); "
                 "rebuilding it")
        store.delete(f"{prefix}/{METADATA_FILE}")
    with tempfile.TemporaryDirectory(prefix="feature-build-") as tmp:
        local = Path(tmp) / DATA_FILE
        execution = _transform_to_file(raw, snapshot, contract, local, progress)
        store.upload(local, f"{prefix}/{DATA_FILE}")
    return {**staged, "complete": False, "threads": execution["threads"], "gate": execution["gate"]}


def check_quality(contract: FeatureSetContract, store: ObjectStore, build_id: str,
                  gathered: dict[str, Any] | None = None, future_tolerance: timedelta | None = None
                  ) -> dict[str, Any]:
    """The quality gate's decision over a staged build: the statistics gathered while staging (``gathered``,
    from :func:`stage_build`), or a scan of the staged file for builds staged without them. Returns the
    statistics or raises QualityGateError (and deletes the unfinished build)."""
    prefix = build_key(contract, build_id)
    if gathered is not None:
        failures, stats = list(gathered["failures"]), dict(gathered["stats"])
    else:
        con = _duckdb()
        try:
            con.register("built", ds.dataset(store.path(f"{prefix}/{DATA_FILE}"), format="parquet",
                                             filesystem=store.fs))
            failures, stats = quality_gate(con, contract)
            if stats.get("row_count"):
                add_profile(stats, profile_columns(con, contract))
        finally:
            con.close()
    failures += _future_events(contract, stats, future_tolerance)
    if failures:
        if not store.exists(f"{prefix}/{METADATA_FILE}"):
            store.delete(prefix)  # unfinished and never pointed to: nothing may build on it
        raise QualityGateError(f"{contract.name} v{contract.version}", failures)
    return stats


def _future_events(contract: FeatureSetContract, stats: dict[str, Any], tolerance: timedelta | None) -> list[str]:
    """Events from the future are a broken clock or unit (ms read as s), and would make a view look fresh."""
    newest = stats.get("event_time_max")
    if tolerance is None or not newest:
        return []
    limit = datetime.now(UTC) + tolerance
    if datetime.fromisoformat(newest) <= limit:
        return []
    return [f"column {contract.timestamp_field}: newest event {newest} is after now + {tolerance} "
            f"({limit.isoformat()}); fix the source clock or units (the environment's "
            "quality.future_event_tolerance_minutes sets the slack)"]


def finalize_build(contract: FeatureSetContract, store: ObjectStore, raw: ObjectStore, staged: dict[str, Any],
                   stats: dict[str, Any], *, environment: str, contracts_commit: str | None = None,
                   run_id: str | None = None) -> dict[str, Any]:
    """Write metadata.json (last), which makes the build complete. Keeps an existing one untouched."""
    build_id = staged["build_id"]
    prefix = build_key(contract, build_id)
    if store.exists(f"{prefix}/{METADATA_FILE}") and metadata_damage(store, contract, build_id) is None:
        return read_metadata(store, contract, build_id)
    metadata = {
        "format": METADATA_FORMAT,
        "feature_set": contract.name,
        "version": contract.version_label,
        "build_id": build_id,
        "environment": environment,
        "schema_hash": contract.schema_hash,
        "transform_hash": contract.transform_hash,
        "generated_at": datetime.now(UTC).isoformat(),
        "row_count": stats["row_count"],
        "entity_count": stats["entity_count"],
        "event_time_min": stats["event_time_min"],
        "event_time_max": stats["event_time_max"],
        "columns": stats["columns"],
        "data": store.url(f"{prefix}/{DATA_FILE}"),
        # Rows sorted by entity then event time: materialization streams the newest row per entity from it.
        "sorted_by": [*contract.join_keys, contract.timestamp_field],
        "build_format": BUILD_FORMAT,
        "threads": staged.get("threads"),
        "source": {"table": contract.source.table, "uri": raw.url(contract.source.table),
                   "files": staged["source"]},
        "contracts_commit": contracts_commit or "unknown",
        "library_version": __version__,
        "run_id": run_id,
    }
    write_metadata(store, prefix, metadata)
    return metadata


def build_version(
    contract: FeatureSetContract,
    store: ObjectStore,
    raw: ObjectStore,
    *,
    environment: str,
    contracts_commit: str | None = None,
    run_id: str | None = None,
    progress: Progress = lambda _msg: None,
    future_tolerance: timedelta | None = None,
) -> BuildResult:
    """Build one contract version into the store, unpromoted. Idempotent per source snapshot."""
    staged = stage_build(contract, store, raw, progress)
    if staged["complete"]:
        return BuildResult(read_metadata(store, contract, staged["build_id"]), reused=True)
    stats = check_quality(contract, store, staged["build_id"], staged.get("gate"), future_tolerance)
    metadata = finalize_build(contract, store, raw, staged, stats, environment=environment,
                              contracts_commit=contracts_commit, run_id=run_id)
    progress(f"{contract.name} v{contract.version}: build {staged['build_id']} complete "
             f"({stats['row_count']:,} rows)")
    return BuildResult(metadata, reused=False)


def write_metadata(store: ObjectStore, prefix: str, metadata: dict[str, Any]) -> None:
    """Written last: its presence is what makes a build complete."""
    store.write_json_atomic(f"{prefix}/{METADATA_FILE}", metadata)


# What every reader of a build relies on; a metadata.json without them is damaged, not a build.
REQUIRED_METADATA = ("feature_set", "version", "build_id", "schema_hash", "data", "row_count", "entity_count",
                     "event_time_min", "event_time_max", "columns")


def metadata_damage(store: ObjectStore, contract: FeatureSetContract, build_id: str) -> str | None:
    """Why the build's metadata.json cannot be trusted (unreadable, not an object, fields missing, another
    build's), or None when it is sound."""
    key = f"{build_key(contract, build_id)}/{METADATA_FILE}"
    try:
        metadata = json.loads(store.read_bytes(key))
    except FileNotFoundError:
        return "missing"
    except (ValueError, UnicodeDecodeError) as exc:
        return f"not JSON: {exc}"
    if not isinstance(metadata, dict):
        return "not a JSON object"
    missing = [name for name in REQUIRED_METADATA if name not in metadata]
    if missing:
        return "no " + ", ".join(missing)
    if metadata["build_id"] != build_id or metadata["schema_hash"] != contract.schema_hash:
        return f"it describes build {metadata['build_id']} of schema {metadata['schema_hash']}"
    return None


def read_metadata(store: ObjectStore, contract: FeatureSetContract, build_id: str) -> dict[str, Any]:
    key = f"{build_key(contract, build_id)}/{METADATA_FILE}"
    try:
        metadata = store.read_json(key)
    except FileNotFoundError as exc:
        raise StoreError(f"{contract.name} {contract.version_label}: build {build_id} has no {METADATA_FILE} at "
                         f"{store.url(key)}; it is unfinished or does not exist (see `featurectl versions`)") from exc
    except StoreError:
        metadata = None
    damage = None if isinstance(metadata, dict) and all(k in metadata for k in REQUIRED_METADATA) else \
        metadata_damage(store, contract, build_id)
    if damage is not None:
        raise StoreError(f"{contract.name} {contract.version_label}: {store.url(key)} is damaged ({damage}); "
                         f"re-run `featurectl build {contract.name} --version {contract.version}` to rebuild it")
    assert isinstance(metadata, dict)
    return metadata


# --------------------------------------------------------------------------------------- pointers + history


def promote(store: ObjectStore, contract: FeatureSetContract, metadata: dict[str, Any], expect_base: bool = False
            ) -> dict[str, Any]:
    """Point the version's ``latest`` at a complete build, then refresh the feature set's ``latest``.

    ``expect_base``: an incremental build updates the build that was ``latest`` when it was assembled
    (``base_build_id``); if ``latest`` has moved since, promoting it would drop the other build's partitions, so
    it is refused (a rollback passes False).

    The feature-set pointer always names the promoted build of the highest version that has one, whatever order
    versions are built or promoted in (v2 then v1 leaves it on v2); a lease makes read-decide-write atomic, so
    concurrent promotions of different versions cannot regress it.
    """
    from feature_platform.locks import lease

    build_id = metadata["build_id"]
    if not store.exists(f"{build_key(contract, build_id)}/{METADATA_FILE}"):
        raise StoreError(f"{contract.name}: refusing to promote build {build_id}: it has no {METADATA_FILE}")
    if metadata["schema_hash"] != contract.schema_hash:
        raise StoreError(f"{contract.name}: build {build_id} has schema_hash {metadata['schema_hash']} but the "
                         f"contract {contract.version_label} has {contract.schema_hash}; rebuild it")
    pointer = {
        "feature_set": contract.name,
        "version": contract.version_label,
        "build_id": build_id,
        "schema_hash": metadata["schema_hash"],
        "data": metadata["data"],
        "metadata": store.url(f"{build_key(contract, build_id)}/{METADATA_FILE}"),
        "promoted_at": datetime.now(UTC).isoformat(),
    }
    with lease(store.url(f"{contract.name}/{POINTER_FILE}.lock"), store.endpoint_url, POINTER_LOCK_TIMEOUT) as held:
        held.check()
        if expect_base and "base_build_id" in metadata:
            try:
                current = store.read_json(f"{version_key(contract)}/{POINTER_FILE}").get("build_id")
            except FileNotFoundError:
                current = None
            if current not in (metadata["base_build_id"], build_id):
                raise StoreError(f"{contract.name} {contract.version_label}: build {build_id} updates build "
                                 f"{metadata['base_build_id']}, but latest is now {current} (another interval was "
                                 "promoted meanwhile); rebuild the interval so that no partition is lost")
        store.write_json_atomic(f"{version_key(contract)}/{POINTER_FILE}", pointer)
        newest = newest_version_pointer(store, contract.name)
        try:
            current = store.read_json(f"{contract.name}/{POINTER_FILE}")
        except (FileNotFoundError, StoreError):
            current = None  # missing or damaged: rewritten from the version pointers
        if newest is not None and newest != current:
            held.check()
            store.write_json_atomic(f"{contract.name}/{POINTER_FILE}", newest)
    return pointer


def _version_number(label: str) -> int:
    return int(label[1:]) if label.startswith("v") and label[1:].isdigit() else -1


def newest_version_pointer(store: ObjectStore, feature_set: str) -> dict[str, Any] | None:
    """The version pointer of the highest version that has one."""
    for label in sorted(store.list_dirs(feature_set), key=_version_number, reverse=True):
        if _version_number(label) < 0:
            continue
        try:
            pointer = store.read_json(f"{feature_set}/{label}/{POINTER_FILE}")
        except FileNotFoundError:
            continue
        if not isinstance(pointer, dict) or "build_id" not in pointer:
            raise StoreError(f"{store.url(f'{feature_set}/{label}/{POINTER_FILE}')} is damaged; re-run "
                             f"`featurectl build {feature_set} --version {label.lstrip('v')}` to rewrite it")
        return pointer
    return None


def read_pointer(store: ObjectStore, feature_set: str, version_label: str | None = None) -> dict[str, Any]:
    """The ``latest`` pointer of a feature set, or of one of its versions."""
    key = f"{feature_set}/{version_label}/{POINTER_FILE}" if version_label else f"{feature_set}/{POINTER_FILE}"
    try:
        pointer = store.read_json(key)
    except FileNotFoundError as exc:
        raise PointerMissingError([feature_set + (f" {version_label}" if version_label else "")], store.url(key)
                                  ) from exc
    except StoreError:
        pointer = None
    if not isinstance(pointer, dict) or not all(k in pointer for k in ("version", "build_id", "data")):
        again = f" --version {version_label.lstrip('v')}" if version_label else ""
        raise StoreError(f"{store.url(key)} is damaged (not a pointer); re-run `featurectl build {feature_set}{again}`"
                         " to rewrite it, or `featurectl rollback` to a build from `featurectl versions`")
    return pointer


BUILD_ID = re.compile(r"^[0-9a-f]{16}$")  # compute_build_id's form; other directories are not builds
VERSION_LABEL = re.compile(r"^v[0-9]+$")


def list_builds(store: ObjectStore, feature_set: str) -> list[dict[str, Any]]:
    """Every build of a feature set, complete or not, oldest first. A version's other directories (pushed rows,
    shard markers) are not builds: never listed, so never collected as unfinished ones."""
    builds = []
    for label in filter(VERSION_LABEL.match, store.list_dirs(feature_set)):
        for build_id in filter(BUILD_ID.match, store.list_dirs(f"{feature_set}/{label}")):
            prefix = f"{feature_set}/{label}/{build_id}"
            try:
                metadata = store.read_json(f"{prefix}/{METADATA_FILE}")
                builds.append({**metadata, "complete": True})
            except FileNotFoundError:
                builds.append({"feature_set": feature_set, "version": label, "build_id": build_id,
                               "complete": False, "generated_at": ""})
    return sorted(builds, key=lambda b: (b.get("generated_at") or "", b["build_id"]))


def find_build(store: ObjectStore, feature_set: str, build_id: str) -> dict[str, Any]:
    for build in list_builds(store, feature_set):
        if build["build_id"] == build_id:
            if not build["complete"]:
                raise StoreError(f"{feature_set}: build {build_id} is unfinished (no {METADATA_FILE}); "
                                 "it can never be promoted; pick a complete build from `featurectl versions`")
            return build
    raise StoreError(f"{feature_set}: no build {build_id}; see `featurectl versions {feature_set}`")


def is_manifest(metadata: dict[str, Any]) -> bool:
    """An incremental build: a manifest of partitions (``incremental.py``)."""
    return "partitions" in metadata


def data_files(metadata: dict[str, Any]) -> list[str]:
    """A build's Parquet files as URLs: one for a full build, the manifest's partitions for an incremental one
    (``incremental.py``), in event-time order."""
    data = metadata["data"]
    return [str(d) for d in data] if isinstance(data, list) else [str(data)]


def data_paths(metadata: dict[str, Any]) -> list[str]:
    """:func:`data_files` as paths for the store's filesystem (pyarrow, fsspec)."""
    return [d.removeprefix("s3://") for d in data_files(metadata)]


def read_build_table(store: ObjectStore, metadata: dict[str, Any], columns: list[str] | None = None) -> pa.Table:
    """The exact rows of one build, as recorded in its metadata."""
    return ds.dataset(data_paths(metadata), format="parquet", filesystem=store.fs).to_table(columns=columns)


def collect_garbage(store: ObjectStore, versions: list[FeatureSetContract], keep: int, min_age_seconds: int,
                    dry_run: bool = True, now: datetime | None = None) -> list[dict[str, Any]]:
    """Old builds of each contract version, deleted unless ``dry_run``.

    Never touched: the ``keep`` newest complete builds, any build a ``latest`` pointer or the online marker
    names, and unfinished builds younger than ``min_age_seconds`` (they may still be running).
    """
    now = now or datetime.now(UTC)
    decisions = []
    for contract in versions:
        label = contract.version_label
        protected = set()
        for key in (f"{contract.name}/{POINTER_FILE}", f"{version_key(contract)}/{POINTER_FILE}",
                    f"{version_key(contract)}/online.json"):
            if store.exists(key):
                protected.add(store.read_json(key).get("build_id"))
        history = [b for b in list_builds(store, contract.name) if b["version"] == label]
        complete = [b for b in history if b["complete"]]
        protected |= {b["build_id"] for b in complete[-keep:]} if keep > 0 else set()
        for build in history:
            build_id = build["build_id"]
            if build_id in protected:
                continue
            if not build["complete"]:
                written = store.modified_at(build_key(contract, build_id))
                if written is not None and (now - written).total_seconds() < min_age_seconds:
                    continue
            reason = "complete, older than the newest kept" if build["complete"] else "unfinished and stale"
            if not dry_run:
                store.delete(build_key(contract, build_id))
            decisions.append({"feature_set": contract.name, "version": label, "build_id": build_id,
                              "reason": reason, "deleted": not dry_run})
        kept = [b for b in history if b["build_id"] not in {d["build_id"] for d in decisions}]
        decisions += _collect_partitions(store, contract, kept, min_age_seconds, dry_run, now)
    return decisions


def _collect_partitions(store: ObjectStore, contract: FeatureSetContract, kept: list[dict[str, Any]],
                        min_age_seconds: int, dry_run: bool, now: datetime) -> list[dict[str, Any]]:
    """Partition files (incremental builds) no kept build names. Young ones are kept: a build being assembled
    may be about to name them."""
    prefix = f"{version_key(contract)}/partitions"
    named = {p["key"] for b in kept for p in b.get("partitions", [])}
    root = store.path() + "/"
    out = []
    for info in store.list_files(prefix, suffix=".parquet"):
        key = info.path.removeprefix(root)
        if key in named:
            continue
        written = store.modified_at(key)
        if written is not None and (now - written).total_seconds() < min_age_seconds:
            continue
        if not dry_run:
            store.delete(key)
        out.append({"feature_set": contract.name, "version": contract.version_label, "build_id": None,
                    "path": store.url(key), "reason": "partition no kept build names", "deleted": not dry_run})
    return out
