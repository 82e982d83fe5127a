"""Point-in-time training sets: a DuckDB ``ASOF JOIN`` of an entity frame with one pinned build's Parquet.

Semantics (tested against a pandas ``merge_asof`` oracle in ``tests/test_offline.py``):

- exactly one output row per input row, in input order, with every input column (labels) unchanged;
  duplicate input rows stay duplicates;
- for each row, the feature values are the entity's newest build row with
  ``event_timestamp - ttl <= feature time <= event_timestamp`` (both bounds inclusive); with none (unknown
  entity, before its first event, older than the TTL, null key or timestamp) the features are null;
- features keep their contract types: int32/int64/bool as pandas nullable ``Int32``/``Int64``/``boolean``,
  floats as floats (NaN for null), strings as objects, timestamps as UTC ``datetime64``;
- entity timestamps without a time zone are read as UTC (as Feast does).

Feast's file offline store drops rows with no valid value and widens integers to floats, so the platform does
not use it for training sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from feature_platform.build import ARROW_TYPES
from feature_platform.contracts import FeatureSetContract
from feature_platform.errors import ConfigError

ENTITY_TIMESTAMP = "event_timestamp"  # Feast's column name for the entity frame's point in time
_ROW = "__feature_platform_row"
_PANDAS_NULLABLE = {"int32": "Int32", "int64": "Int64", "bool": "boolean"}


ENTITY_FILE_TYPES = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}


def read_entity_file(path: Path) -> Any:
    """An entity file (CSV or Parquet) as a DataFrame, or a usage error naming the file and what is wrong.

    Columns are kept as written: timestamps are parsed (and numbers refused) by the join, labels untouched."""
    import pandas as pd

    kind = ENTITY_FILE_TYPES.get("".join(path.suffixes[-2:]).lower()) or ENTITY_FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"{path}: entity files are .csv, .csv.gz or .parquet; convert it or rename it")
    if not path.is_file():
        raise ConfigError(f"{path}: no such entity file" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        frame = pd.read_parquet(path) if kind == "parquet" else pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{path}: the file is empty; it needs a header with the join key and "
                          f"{ENTITY_TIMESTAMP}") from None
    except (ValueError, UnicodeDecodeError, pa.ArrowException, pd.errors.ParserError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"{path}: not a readable {kind.upper()} file ({first}); write it as {kind} with a "
                          f"header row") from None
    duplicated = sorted({str(c) for c in frame.columns if list(frame.columns).count(c) > 1})
    if duplicated:
        raise ConfigError(f"{path}: column(s) {', '.join(duplicated)} appear more than once; keep one of each")
    return frame


@dataclass(frozen=True)
class JoinPart:
    """One feature view in a point-in-time join: its build's Parquet, key, time column, TTL, the features taken
    (with their contract dtypes) and their output names. Made from a contract or from Feast's FeatureView."""

    view: str
    keys: dict[str, str]  # join key -> dtype (several: a composite key, joined on all of them)
    timestamp_field: str
    ttl_seconds: int
    data_path: str | list[str]  # the build's Parquet file, or an incremental build's partitions
    dtypes: dict[str, str]  # feature -> contract dtype, in the order taken
    names: list[str]  # output column per feature (plain, or <feature_set>_v<N>__<feature>)
    pushed: tuple[str, ...] = ()  # recorded pushes (push.py): they join with the build, winning ties
    pushed_through: datetime | None = None  # only pushes recorded at or before (a training set's replay)

    @property
    def features(self) -> list[str]:
        return list(self.dtypes)

    @classmethod
    def of(cls, contract: FeatureSetContract, data_path: str | list[str], features: list[str], names: list[str],
           pushed: tuple[str, ...] = (), pushed_through: datetime | None = None) -> JoinPart:
        dtypes = {f.name: f.dtype for f in contract.features}
        return cls(contract.feature_view_name, contract.key_dtypes, contract.timestamp_field,
                   contract.ttl_seconds, data_path, {f: dtypes[f] for f in features}, names, pushed, pushed_through)


def _entity_table(entity_df: Any, parts: list[JoinPart]) -> pa.Table:
    """The join columns of the entity frame (each join key once), typed like the builds, plus the row number."""
    import pandas as pd

    keys = {key: dtype for p in parts for key, dtype in p.keys.items()}
    missing = [c for c in (*keys, ENTITY_TIMESTAMP) if c not in entity_df.columns]
    if missing:
        raise ConfigError(f"the entity frame needs the columns {', '.join(keys)} and {ENTITY_TIMESTAMP}; missing "
                          f"{', '.join(missing)} (has {', '.join(map(str, entity_df.columns))})")
    clash = sorted({n for p in parts for n in p.names} & set(map(str, entity_df.columns)))
    if clash:
        views = ", ".join(p.view for p in parts)
        raise ConfigError(f"the entity frame already has column(s) {', '.join(clash)}, which are features of "
                          f"{views}; rename them")
    column = entity_df[ENTITY_TIMESTAMP]
    if (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)) and column.notna().any():
        # Numbers would be read as nanoseconds since 1970: a silent, all-null training set. Refuse them.
        raise ConfigError(f"{ENTITY_TIMESTAMP}: the column holds {column.dtype} values (e.g. "
                          f"{column.dropna().iloc[0]!r}), not timestamps; give ISO 8601 strings "
                          "(2026-11-30T12:00:00Z) or a timestamp column (epoch seconds: pd.to_datetime(x, unit='s'))")
    stamps = pd.to_datetime(column, utc=True, errors="coerce")
    bad = stamps.isna() & entity_df[ENTITY_TIMESTAMP].notna()
    if bad.any():
        raise ConfigError(f"{ENTITY_TIMESTAMP}: {int(bad.sum())} value(s) are not timestamps, e.g. "
                          f"{entity_df[ENTITY_TIMESTAMP][bad].iloc[0]!r}")
    columns = {_ROW: pa.array(range(len(entity_df)), pa.int64())}
    for index, (key, dtype) in enumerate(keys.items()):
        try:
            columns[f"k{index}"] = pa.Array.from_pandas(entity_df[key]).cast(ARROW_TYPES[dtype])
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ConfigError(f"{key}: the entity frame's keys are not {dtype}: {exc}") from exc
    columns["ts"] = pa.array(stamps.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]"),
                             pa.timestamp("us"))
    return pa.table(columns)


def point_in_time_join(entity_df: Any, contract: FeatureSetContract, data_path: str | list[str], fs: Any,
                       pushed: tuple[str, ...] = (), pushed_through: datetime | None = None) -> Any:
    """``entity_df`` with the contract's features as of each row's ``event_timestamp`` (see module doc)."""
    names = [f.name for f in contract.features]
    return point_in_time_join_many(entity_df, [JoinPart.of(contract, data_path, names, names, pushed,
                                                           pushed_through)], fs)


def point_in_time_join_many(entity_df: Any, parts: list[JoinPart], fs: Any) -> Any:
    """``entity_df`` with each part's features as of each row's ``event_timestamp``, every part joined on its own
    key with its own TTL, in one DuckDB query (one ASOF join per part); one output row per input row, in order."""
    import duckdb

    entities = _entity_table(entity_df, parts)
    key_column = {key: f"k{i}" for i, key in enumerate(dict.fromkeys(k for p in parts for k in p.keys))}
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET memory_limit = '4GB'")
        con.register("entities", entities)
        ctes, joins, selected = [], [], []
        for i, part in enumerate(parts):
            con.register(f"build{i}", ds.dataset(part.data_path, format="parquet", filesystem=fs))
            columns = ", ".join(f'"{f}"' for f in part.features)
            # Timestamps compared as naive UTC on both sides (the build stores UTC).
            keys = [f"__k{j}" for j in range(len(part.keys))]  # a composite key joins on every column
            renamed = ", ".join(f'"{key}" AS {alias}' for key, alias in zip(part.keys, keys, strict=True))
            rows = f'SELECT {renamed}, timezone(\'UTC\', "{part.timestamp_field}") AS __ts, {columns}'
            if part.pushed:
                # Pushed rows join with the build's; at one key and event time the pushed row wins, and of two
                # pushes the later.
                con.register(f"pushed{i}", ds.dataset(list(part.pushed), format="parquet", filesystem=fs))
                cutoff = part.pushed_through
                through = "" if cutoff is None else (
                    f" WHERE \"__pushed_at\" <= '{cutoff.astimezone(UTC).isoformat()}'::TIMESTAMPTZ")
                ctes.append(f"f{i} AS (SELECT {', '.join(keys)}, __ts, {columns} FROM ({rows}, 0 AS __src, "
                            f"NULL::TIMESTAMP AS __at FROM build{i} UNION ALL {rows}, 1 AS __src, "
                            f'timezone(\'UTC\', "__pushed_at") AS __at FROM pushed{i}{through}) '
                            f"QUALIFY row_number() OVER (PARTITION BY {', '.join(keys)}, __ts "
                            "ORDER BY __src DESC, __at DESC) = 1)")
            else:
                ctes.append(f"f{i} AS ({rows} FROM build{i})")
            on = " AND ".join(f"e.{key_column[k]} = f{i}.__k{j}" for j, k in enumerate(part.keys))
            joins.append(f"ASOF LEFT JOIN f{i} ON {on} AND e.ts >= f{i}.__ts")
            # A TTL of 0 is Feast's "no limit".
            valid = f"f{i}.__ts IS NOT NULL" + (f" AND f{i}.__ts >= e.ts - INTERVAL {part.ttl_seconds} SECOND"
                                                 if part.ttl_seconds else "")
            selected += [f'CASE WHEN {valid} THEN f{i}."{feature}" END AS "{name}"'
                         for feature, name in zip(part.features, part.names, strict=True)]
        query = (f"WITH {', '.join(ctes)} SELECT e.{_ROW}, {', '.join(selected)} FROM entities e "
                 f"{' '.join(joins)} ORDER BY e.{_ROW}")
        joined = con.sql(query).arrow()
        if isinstance(joined, pa.RecordBatchReader):
            joined = joined.read_all()
    finally:
        con.close()
    out = entity_df.reset_index(drop=True).copy()
    for part in parts:
        for feature, name in zip(part.features, part.names, strict=True):
            out[name] = pandas_values(joined.column(name).cast(ARROW_TYPES[part.dtypes[feature]]))
    return out


def pandas_values(column: pa.ChunkedArray | pa.Array) -> Any:
    """A column as pandas values in its contract type: nullable integers and bools, UTC timestamps, and arrays
    as Python lists (not numpy arrays, which compare element-wise and serialize oddly)."""
    import pandas as pd

    if pa.types.is_list(column.type):
        return pd.array(column.to_pylist(), dtype=object)
    return column.to_pandas(types_mapper=nullable_types).array  # .array keeps nullable and tz-aware dtypes


def nullable_types(arrow_type: pa.DataType) -> Any:
    """pandas dtypes that keep the contract types with nulls: integers and bools stay nullable Int32/Int64/
    boolean instead of widening to float/object (a pyarrow ``types_mapper``; None keeps pyarrow's default)."""
    import pandas as pd

    name = _PANDAS_NULLABLE.get(str(arrow_type))  # arrow's names are the contract's: int32, int64, bool
    return pd.api.types.pandas_dtype(name) if name else None
