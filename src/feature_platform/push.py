"""Pushed rows: fresh values a stream processor writes between builds, validated as a build validates.

A feature set version with ``push: true`` has a Feast ``PushSource`` named ``<feature_set>_v<N>_push``. A push
(``POST /push`` on the server, ``featurectl push``) is all or nothing: every row is checked before anything is
written, and a refusal names the column and the first offending row.

- A pushed row is a whole row of the view, as a build row is: features it leaves out are null (online and
  offline alike, so training sets see what serving saw); non-nullable features must be pushed.
- ``online``: each entity's newest pushed row is written in Feast's exact layout, unless the store already holds
  a row at least as new for that entity (Feast's rule: a write must be strictly newer, in whole seconds). The next
  read returns it (read-after-write).
- ``offline``: the rows are recorded durably under ``<feature_set>/<version>/pushed/`` (one Parquet file per
  push, written whole or not at all) before the push is acknowledged. Training sets read them with the served
  build: where a pushed row and a build row share a key and event time, **the pushed row wins** (and of two
  pushes, the later). Builds, rollbacks and gc never touch ``pushed/``; ``compact`` folds the files into one.
  A training set names the newest recorded push it read (``pushed_through``); replayed with it, later pushes
  are left out, so the same rows come back.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_platform import build as builds
from feature_platform.contracts import FeatureSetContract, element_dtype, is_array
from feature_platform.errors import ConfigError
from feature_platform.store import ObjectStore

PUSHED_DIR = "pushed"
PUSHED_AT = "__pushed_at"  # when a row was recorded: the later of two pushes at one key and event time wins
TARGETS = ("online", "offline", "online_and_offline")


class PushRejected(ConfigError):
    """A push that breaks the contract; nothing of it was written."""


def push_source_name(contract: FeatureSetContract) -> str:
    return f"{contract.feature_view_name}_push"


def pushed_key(contract: FeatureSetContract) -> str:
    return f"{builds.version_key(contract)}/{PUSHED_DIR}"


@dataclass(frozen=True)
class PushResult:
    feature_set: str
    feature_view: str
    rows: int
    to: str
    written_online: int = 0
    skipped_older: int = 0  # entities whose stored row was as new or newer
    recorded: str | None = None  # the offline file


def _reject(contract: FeatureSetContract, column: str, row: int | None, problem: str) -> PushRejected:
    where = f"column {column}" + (f", row {row}" if row is not None else "")
    return PushRejected(f"push to {push_source_name(contract)}: {where}: {problem}; nothing was written")


def _first(mask: pa.Array) -> int | None:
    """The index of the first true value of a boolean array, or None."""
    hits = pc.indices_nonzero(mask.fill_null(False))
    return int(hits[0].as_py()) if len(hits) else None


def _iso_strings(values: list[Any]) -> pa.Array | None:
    """The common case, at Arrow's speed: every value an ISO 8601 string, all with a zone offset or all without
    (read as UTC). Anything else (datetimes, mixed, invalid) is None: the general path names the bad row."""
    if set(map(type, values)) != {str}:
        return None
    strings = pa.array(values, pa.string())
    try:
        return pc.cast(strings, builds.TIMESTAMP_TYPE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        return pc.cast(pc.cast(strings, pa.timestamp("us")), builds.TIMESTAMP_TYPE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _timestamps(contract: FeatureSetContract, values: list[Any]) -> pa.Array:
    """ISO 8601 strings or datetimes (naive ones read as UTC, as Feast does); numbers are refused: epoch units
    are ambiguous."""
    fast = _iso_strings(values)
    if fast is not None:
        return fast
    import pandas as pd

    for row, value in enumerate(values):
        if isinstance(value, bool | int | float) and not (isinstance(value, float) and math.isnan(value)):
            raise _reject(contract, contract.timestamp_field, row,
                          f"{value!r} is a number; give an ISO 8601 timestamp such as 2026-12-01T12:00:00Z")
    parsed = pd.to_datetime(pd.Series(values, dtype=object), utc=True, errors="coerce", format="mixed")
    bad = parsed.isna() & pd.Series([v is not None for v in values])
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise _reject(contract, contract.timestamp_field, row, f"{values[row]!r} is not a timestamp")
    return pa.array(parsed.dt.tz_convert("UTC").astype("datetime64[us, UTC]"), builds.TIMESTAMP_TYPE)


def _timestamp_feature(contract: FeatureSetContract, name: str, values: list[Any]) -> pa.Array:
    """A timestamp feature: ISO 8601 strings, datetimes, or whole epoch seconds (Feast's UnixTimestamp, what its
    ``remote`` client sends)."""
    import pandas as pd

    converted: list[Any] = []
    for row, value in enumerate(values):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise _reject(contract, name, row, f"{value!r} is not a timestamp (ISO 8601, or whole epoch seconds)")
        converted.append(datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else value)
    parsed = pd.to_datetime(pd.Series(converted, dtype=object), utc=True, errors="coerce", format="mixed")
    bad = parsed.isna() & pd.Series([v is not None for v in converted])
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise _reject(contract, name, row, f"{values[row]!r} is not a timestamp")
    return pa.array(parsed.dt.tz_convert("UTC").astype("datetime64[us, UTC]"), builds.TIMESTAMP_TYPE)


# Per dtype, the Python types whose values Arrow converts exactly as the checks below would accept them.
_PLAIN_TYPES: dict[str, set[type]] = {
    "bool": {bool, type(None)}, "string": {str, type(None)}, "int32": {int, type(None)},
    "int64": {int, type(None)}, "float32": {float, int, type(None)}, "float64": {float, int, type(None)}}


def _array_column(contract: FeatureSetContract, name: str, dtype: str, values: list[Any]) -> pa.Array:
    """An array feature: each value a list (or null) of the element type, typed as the build types them."""
    element = element_dtype(dtype)
    allowed = _PLAIN_TYPES[element]
    for row, value in enumerate(values):
        if value is None:
            continue
        if not isinstance(value, list | tuple) or not set(map(type, value)) <= allowed:
            bad = value if not isinstance(value, list | tuple) else next(v for v in value if type(v) not in allowed)
            raise _reject(contract, name, row, f"{bad!r} is not {dtype if bad is value else element} (an "
                                               f"{dtype} is a list of {element})")
    try:
        return pa.array(values, builds.ARROW_TYPES[dtype])
    except (pa.ArrowInvalid, OverflowError) as exc:
        for row, value in enumerate(values):
            try:
                pa.array([value], builds.ARROW_TYPES[dtype])
            except (pa.ArrowInvalid, OverflowError):
                raise _reject(contract, name, row, f"an element does not fit {element}") from exc
        raise _reject(contract, name, None, str(exc)) from exc


def _column(contract: FeatureSetContract, name: str, dtype: str, values: list[Any]) -> pa.Array:
    """``values`` as the build would type them: integers exactly, floats from numbers, strings, booleans."""
    if dtype == "timestamp":
        return _timestamp_feature(contract, name, values)
    if is_array(dtype):
        return _array_column(contract, name, dtype, values)
    target = builds.ARROW_TYPES[dtype]
    if set(map(type, values)) <= _PLAIN_TYPES[dtype]:  # the common push: no value needs a look (C speed)
        try:
            return pa.array(values, target)
        except (pa.ArrowInvalid, OverflowError):
            pass  # out of range: the loop below names the row
    for row, value in enumerate(values):
        if value is None:
            continue
        ok = (isinstance(value, bool) if dtype == "bool"
              else isinstance(value, str) if dtype == "string"
              # A whole-number float is an integer: pandas keeps integer columns with nulls as floats.
              else (isinstance(value, int) and not isinstance(value, bool))
              or (isinstance(value, float) and value.is_integer()) if dtype in ("int32", "int64")
              else isinstance(value, int | float) and not isinstance(value, bool))
        if not ok:
            raise _reject(contract, name, row, f"{value!r} is not {dtype}")
    if dtype in ("int32", "int64"):
        values = [int(v) if isinstance(v, float) else v for v in values]
    try:
        return pa.array(values, target)
    except (pa.ArrowInvalid, OverflowError) as exc:
        for row, value in enumerate(values):
            try:
                pa.array([value], target)
            except (pa.ArrowInvalid, OverflowError):
                raise _reject(contract, name, row, f"{value!r} does not fit {dtype}") from exc
        raise _reject(contract, name, None, str(exc)) from exc


def columns_of(frame: Any) -> dict[str, list[Any]]:
    """A pandas DataFrame (Feast's SDK) as columns of Python values, nulls as None."""
    return pa.Table.from_pandas(frame, preserve_index=False).to_pydict()


def to_table(contract: FeatureSetContract, df: dict[str, list[Any]]) -> pa.Table:
    """A push body's ``df`` (column -> values) as the build's Arrow schema; features not pushed are null."""
    if not isinstance(df, dict) or not df:
        raise PushRejected(f"push to {push_source_name(contract)}: df must map columns to lists of values")
    keys, stamp = contract.key_dtypes, contract.timestamp_field
    dtypes = {f.name: f.dtype for f in contract.features}
    for name in df:
        if name not in (*keys, stamp, *dtypes):
            raise _reject(contract, name, None, f"not a column of {contract.feature_view_name} (columns: "
                                                f"{', '.join(contract.columns)})")
    for name in (*keys, stamp):
        if name not in df:
            what = "its key" if len(keys) == 1 else f"every key ({', '.join(keys)})"
            raise _reject(contract, name, None, f"missing; every pushed row needs {what} and event time")
    lengths = {name: len(v) if isinstance(v, list) else -1 for name, v in df.items()}
    if min(lengths.values()) < 0 or len(set(lengths.values())) > 1:
        raise PushRejected(f"push to {push_source_name(contract)}: every column of df must be a list of the same "
                           f"length; got {lengths}; nothing was written")
    rows = lengths[stamp]
    if rows == 0:
        raise PushRejected(f"push to {push_source_name(contract)}: df has no rows; nothing was written")
    columns = {key: _column(contract, key, dtype, df[key]) for key, dtype in keys.items()}
    columns[stamp] = _timestamps(contract, df[stamp])
    for name, dtype in dtypes.items():
        columns[name] = (_column(contract, name, dtype, df[name]) if name in df
                         else pa.nulls(rows, builds.ARROW_TYPES[dtype]))
    return pa.table(columns, schema=builds.arrow_schema(contract))


def check(contract: FeatureSetContract, table: pa.Table, future_tolerance: timedelta | None,
          pushed: set[str] | None = None) -> None:
    """The build's quality rules on pushed rows: keys and event times present, non-nullable features present,
    constraints, and no event further in the future than the environment's tolerance."""
    stamp = contract.timestamp_field
    for name in (*contract.join_keys, stamp):
        if table.column(name).null_count:
            row = _first(pc.is_null(table.column(name)).combine_chunks())
            raise _reject(contract, name, row, "null; every pushed row needs its key and event time")
    for feature in contract.features:
        column = table.column(feature.name).combine_chunks()
        floating = pa.types.is_floating(column.type)
        # Cheap tests first (counts, one min/max); the row-finding kernels run only on a violation.
        if not feature.nullable and (column.null_count or (floating and bool(np.isnan(column.to_numpy()).any()))):
            missing = pushed is not None and feature.name not in pushed
            row = _first(pc.is_null(column, nan_is_null=True) if floating else pc.is_null(column))
            raise _reject(contract, feature.name, row, "not pushed, and the contract says it is not nullable"
                          if missing else "null, and the contract says it is not nullable")
        if is_array(feature.dtype) and column.null_count < len(column):
            for kind, flagged in builds.array_rows(feature, column).items():
                if flagged.any():
                    row = int(np.flatnonzero(flagged)[0])
                    raise _reject(contract, feature.name, row, f"has {len(column[row])} elements, not dims "
                                                               f"{feature.dims}" if kind == "dims" else
                                  "holds null (or non-finite) elements, and the contract does not allow them "
                                  "(nullable_elements)")
        constraints = feature.constraints
        if constraints is None or column.null_count == len(column):
            continue
        bounds = pc.min_max(column)
        if constraints.min is not None and bounds["min"].as_py() < constraints.min:
            row = _first(pc.less(column, constraints.min))
            raise _reject(contract, feature.name, row, f"{column[row].as_py()!r} is below the minimum "
                                                       f"{constraints.min}")
        if constraints.max is not None and bounds["max"].as_py() > constraints.max:
            row = _first(pc.greater(column, constraints.max))
            raise _reject(contract, feature.name, row, f"{column[row].as_py()!r} is above the maximum "
                                                       f"{constraints.max}")
        if constraints.allowed_values is not None:
            allowed = pa.array(constraints.allowed_values).cast(column.type)
            row = _first(pc.and_(pc.invert(pc.is_in(column, value_set=allowed)), pc.is_valid(column)))
            if row is not None:
                raise _reject(contract, feature.name, row, f"{column[row].as_py()!r} is not one of "
                                                           f"{constraints.allowed_values}")
    if future_tolerance is not None:
        limit = datetime.now(UTC) + future_tolerance
        stamps = table.column(stamp).combine_chunks()
        if pc.max(stamps).as_py() > limit:
            row = _first(pc.greater(stamps, pa.scalar(limit, builds.TIMESTAMP_TYPE)))
            raise _reject(contract, stamp, row, f"{stamps[row].as_py().isoformat()} is after now + "
                                               f"{future_tolerance}; fix the producer's clock or units")


def newest_per_entity(table: pa.Table, keys: list[str], stamp: str) -> pa.Table:
    """Each entity's newest row (of equal event times, the last pushed), as the online store keeps one row."""
    if table.num_rows == 0:
        return table
    if len(keys) == 1 and pc.count_distinct(table.column(keys[0])).as_py() == table.num_rows:
        return table  # one row per entity already (the common push)
    indexed = table.append_column("__i", pa.array(range(table.num_rows), pa.int64()))
    ordered = indexed.sort_by([*((k, "ascending") for k in keys), (stamp, "ascending"), ("__i", "ascending")])
    last = np.zeros(ordered.num_rows, dtype=bool)
    last[-1] = True
    for key in keys:  # a row is its entity's newest where the next row has another key
        column = ordered.column(key).combine_chunks()
        last[:-1] |= pc.not_equal(column.slice(1), column.slice(0, len(column) - 1)).to_numpy(zero_copy_only=False)
    return ordered.filter(pa.array(last)).drop_columns(["__i"])


def record_offline(store: ObjectStore, contract: FeatureSetContract, table: pa.Table) -> str:
    """Write the rows as one Parquet file under ``pushed/``, whole or not at all; returns its key."""
    now = datetime.now(UTC)
    stamped = table.append_column(PUSHED_AT, pa.array([now] * table.num_rows, builds.TIMESTAMP_TYPE))
    sink = pa.BufferOutputStream()
    pq.write_table(stamped, sink, compression="zstd")
    key = f"{pushed_key(contract)}/{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex[:12]}.parquet"
    store.write_bytes_atomic(key, sink.getvalue().to_pybytes())
    return key


def pushed_files(store: ObjectStore, contract: FeatureSetContract) -> list[str]:
    """The recorded pushes of a contract version, oldest first, as paths for the store's filesystem."""
    return sorted(info.path for info in store.list_files(pushed_key(contract), ".parquet"))


def recorded_through(store: ObjectStore, files: list[str] | tuple[str, ...]) -> datetime | None:
    """When the newest of these recorded rows was recorded (their ``__pushed_at``), or None for no files: the
    cutoff a training set names so that a replay reads the same pushed rows, however many come later."""
    if not files:
        return None
    import pyarrow.dataset as ds

    newest = pc.max(ds.dataset(list(files), format="parquet", filesystem=store.fs).to_table(
        columns=[PUSHED_AT]).column(PUSHED_AT)).as_py()
    return newest.astimezone(UTC) if newest is not None else None


def compact(store: ObjectStore, contract: FeatureSetContract) -> dict[str, Any]:
    """Fold the recorded pushes into one file, then remove the folded files: reads open one file instead of one
    per push. Every row is kept with its ``__pushed_at`` (reads resolve duplicates), so a training set recorded
    with a ``pushed_through`` cutoff replays exactly after compaction too. Safe to interrupt: the compacted file
    is written whole before anything is removed, and reads resolve the duplicates meanwhile."""
    files = pushed_files(store, contract)
    if len(files) < 2:
        return {"feature_view": contract.feature_view_name, "files": len(files), "compacted": 0}
    import pyarrow.dataset as ds

    table = ds.dataset(files, format="parquet", filesystem=store.fs, schema=pushed_schema(contract)).to_table()
    ordered = table.sort_by([*((k, "ascending") for k in contract.join_keys),
                             (contract.timestamp_field, "ascending"), (PUSHED_AT, "ascending")])
    sink = pa.BufferOutputStream()
    pq.write_table(ordered, sink, compression="zstd")
    newest = files[-1].rsplit("/", 1)[-1].removesuffix(".parquet")
    name = f"{pushed_key(contract)}/{newest}-compacted.parquet"  # sorts after what it folds, before later pushes
    store.write_bytes_atomic(name, sink.getvalue().to_pybytes())
    prefix = store.path(pushed_key(contract))
    for path in files:
        store.delete(f"{pushed_key(contract)}/{path.removeprefix(prefix).lstrip('/')}")
    return {"feature_view": contract.feature_view_name, "files": len(files), "compacted": len(files),
            "rows": ordered.num_rows}


def pushed_schema(contract: FeatureSetContract) -> pa.Schema:
    return builds.arrow_schema(contract).append(pa.field(PUSHED_AT, builds.TIMESTAMP_TYPE))


def check_writer(env: Any, contract: FeatureSetContract, caller: Any) -> None:
    """Who may push: a team in the contract's writers (access.writers, default the owner team). An anonymous
    caller only where the environment is open (as for reads); where it denies by default, a token is needed."""
    from feature_platform.errors import AccessDenied
    from feature_platform.governance import PLATFORM_TEAM

    if caller.team is None:
        if env.access.default == "deny":
            raise AccessDenied(f"pushing to {push_source_name(contract)} in {env.name} needs a team token: send "
                               "`Authorization: Bearer <token>`", 401)
        return
    if caller.team not in contract.writer_teams and caller.team != PLATFORM_TEAM:
        raise AccessDenied(f"{caller.describe()} may not push to {push_source_name(contract)}: its writers are "
                           f"{', '.join(contract.writer_teams)}; ask the owner to add the team to access.writers")


def find_push_source(contracts: Any, name: str) -> FeatureSetContract:
    """The live contract version whose push source is ``name``, or NotFound naming the push sources there are."""
    from feature_platform.errors import NotFound

    sources = {push_source_name(c): c for c in contracts.live() if c.push}
    if name not in sources:
        raise NotFound(f"no push source named {name!r}; push sources: {', '.join(sorted(sources)) or 'none'} "
                       "(a feature set version gets <feature_set>_v<N>_push with `push: true`)")
    return sources[name]


def find_pushable_view(contracts: Any, name: str) -> FeatureSetContract:
    """The live contract version of feature view ``name`` (Feast's ``write_to_online_store``), if it takes pushes."""
    from feature_platform.errors import NotFound

    views = {c.feature_view_name: c for c in contracts.live()}
    if name not in views:
        raise NotFound(f"no feature view named {name!r}")
    if not views[name].push:
        raise PushRejected(f"{name} takes no pushed rows (its values come from builds only): set `push: true` in "
                           "its contract to write to it; nothing was written")
    return views[name]


def feast_write_columns(contract: FeatureSetContract, df: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Feast's ``remote`` client names the event time ``event_timestamp`` and adds ``created``: map them."""
    df = {k: v for k, v in df.items() if k != "created"}
    if contract.timestamp_field not in df and "event_timestamp" in df:
        df[contract.timestamp_field] = df.pop("event_timestamp")
    return df


def push(settings: Any, env: Any, contract: FeatureSetContract, df: dict[str, list[Any]] | pa.Table, to: str,
         caller: Any, feast_store: Any = None, online: Any = None) -> PushResult:
    """Validate every row (all or nothing), record the rows offline first (``offline``,
    ``online_and_offline``: durable before the answer), then write them online (``online``,
    ``online_and_offline``). A failure after the offline record leaves it there: retrying the push records
    the same rows again, which reads resolve (the later of equal rows wins, and they are equal)."""
    from feature_platform.online.layout import plan_contract
    from feature_platform.online.stores import online_store

    if to not in TARGETS:
        raise PushRejected(f"push to {push_source_name(contract)}: to must be one of {', '.join(TARGETS)}, not "
                           f"{to!r}; nothing was written")
    check_writer(env, contract, caller)
    table = df if isinstance(df, pa.Table) else to_table(contract, df)
    given = set(df) if isinstance(df, dict) else set(table.column_names)
    pushed = [f.name for f in contract.features if f.name in given]
    check(contract, table, timedelta(minutes=env.quality.future_event_tolerance_minutes), set(pushed))
    recorded = None
    if to in ("offline", "online_and_offline"):
        recorded = record_offline(settings.object_store(env), contract, table)
    written = skipped = 0
    if to in ("online", "online_and_offline"):
        if not contract.online:
            raise PushRejected(f"push to {push_source_name(contract)}: {contract.feature_view_name} is not served "
                               "online (online: false); push to offline")
        backend = online or online_store(settings, env)
        newest = newest_per_entity(table, contract.join_keys, contract.timestamp_field)
        # A pushed row is a whole row of the view: features it leaves out are null, online as offline.
        written, skipped = backend.push_rows(plan_contract(env.feast_project, contract), newest,
                                             [f.name for f in contract.features], feast_store)
    return PushResult(contract.name, contract.feature_view_name, table.num_rows, to, written, skipped, recorded)


def record_pushes(settings: Any, env: Any, counts: dict[tuple[str, str, str, str], tuple[int, int]]) -> None:
    """Pushes in the audit trail: per feature set, who pushed how many rows in how many pushes, where to (counts,
    never values). ``counts``: {(team, feature set, view, to): (pushes, rows)}."""
    from feature_platform import audit

    by_set: dict[str, list[dict[str, Any]]] = {}
    for (team, feature_set, view, to), (pushes, rows) in sorted(counts.items()):
        by_set.setdefault(feature_set, []).append({
            "object": view, "kind": "pushed rows", "change": "pushed", "classification": to,
            "detail": [f"team {team}: {rows} row(s) in {pushes} push(es)"], "feature_set": feature_set,
            "team": team, "pushes": pushes, "rows": rows})
    for feature_set, changes in by_set.items():
        audit.record(settings, env, "push", [feature_set], changes)
