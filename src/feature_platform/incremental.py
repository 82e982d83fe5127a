"""Incremental builds: a contract's SQL run per data interval, its rows written as partitions by event time.

A contract with ``build: {mode: incremental, partition: 1d, lookback: 30d, time_column: ts}`` is built one data
interval ``[start, end)`` at a time (an Airflow run's data interval, ``featurectl build --interval``, or a
``featurectl backfill`` range):

- the SQL sees the raw rows of ``[start - lookback, end)`` (by ``time_column``) as ``source``, and the interval
  as the named parameters ``$interval_start`` and ``$interval_end``; rows outside ``[start, end)`` by event time
  are dropped, so a window over the lookback yields exactly the rows a full build would for those days;
- each partition of the interval (``partition`` long, aligned to the epoch: days at midnight UTC) is written
  once, named by its content, under ``<feature_set>/<version>/partitions/``;
- a build is a manifest: the previous build's partitions outside the interval plus the new ones. Its id derives
  from the partitions (the same inputs give the same id and bytes), and ``metadata.json`` lists them (``data``
  is the list of files). ``latest``, rollback, gc, verify, historical, export and materialization read it.

The quality gate runs on the new partitions. A (key, event time) pair lies in exactly one partition, so
uniqueness per partition is uniqueness over the whole build. Entity count and column statistics cover the whole
build; the distribution profile (monitoring's drift) covers the new partitions.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from feature_platform import build as builds
from feature_platform.contracts import FeatureSetContract
from feature_platform.errors import BuildError, ConfigError, QualityGateError
from feature_platform.store import ObjectStore

PARTITIONS_DIR = "partitions"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Interval:
    start: datetime
    end: datetime

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


def parse_instant(text: str | datetime | date) -> datetime:
    """An ISO 8601 date (midnight UTC) or timestamp (UTC when it names no zone) as an aware UTC datetime."""
    if isinstance(text, datetime):
        value = text
    elif isinstance(text, date):
        value = datetime(text.year, text.month, text.day)
    else:
        try:
            value = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{text!r} is not an ISO 8601 date (2026-11-30) or UTC timestamp "
                              "(2026-11-30T06:00:00Z)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def interval(contract: FeatureSetContract, start: str | datetime | date, end: str | datetime | date) -> Interval:
    """The interval ``[start, end)``, checked against the contract's partitioning (a partition is built whole)."""
    if not contract.build.incremental:
        raise ConfigError(f"{contract.name} v{contract.version} builds in full (build.mode: full): an interval "
                          "needs `build: {mode: incremental, ...}` in its contract")
    begin, finish = parse_instant(start), parse_instant(end)
    if finish <= begin:
        raise ConfigError(f"interval {begin.isoformat()} .. {finish.isoformat()}: the end (exclusive) must be after "
                          "the start")
    step = contract.build.partition_seconds
    for name, value in (("start", begin), ("end", finish)):
        if int(value.timestamp()) % step or value.microsecond:
            raise ConfigError(f"interval {name} {value.isoformat()} is not on a partition boundary of "
                              f"{contract.name} (partition {contract.build.partition}, aligned to midnight UTC); "
                              "give whole partitions")
    return Interval(begin, finish)


def covering(contract: FeatureSetContract, start: str | datetime | date, end: str | datetime | date) -> Interval:
    """The whole partitions covering ``[start, end)``: a scheduler's interval shorter than a partition (hourly
    runs of a daily-partitioned set) rebuilds the partition it falls in, so far as its data has arrived."""
    step = contract.build.partition_seconds
    low, high = parse_instant(start).timestamp(), parse_instant(end).timestamp()
    first = int(low // step * step)
    last = int(-(-high // step) * step)
    return interval(contract, datetime.fromtimestamp(first, UTC), datetime.fromtimestamp(max(last, first + step), UTC))


def partition_starts(contract: FeatureSetContract, span: Interval) -> list[datetime]:
    step = timedelta(seconds=contract.build.partition_seconds)
    out, current = [], span.start
    while current < span.end:
        out.append(current)
        current += step
    return out


def split(contract: FeatureSetContract, span: Interval, parts: int) -> list[Interval]:
    """``span`` as up to ``parts`` contiguous ranges of whole partitions (a backfill's workers)."""
    starts = partition_starts(contract, span)
    size = -(-len(starts) // max(parts, 1))
    return [Interval(starts[i], starts[i + size] if i + size < len(starts) else span.end)
            for i in range(0, len(starts), size)]


# --------------------------------------------------------------------------------------------- staging


def partitions_key(contract: FeatureSetContract) -> str:
    return f"{builds.version_key(contract)}/{PARTITIONS_DIR}"


def _stamp(start: datetime) -> str:
    return start.strftime("%Y%m%dT%H%M%SZ")


def stage_interval(contract: FeatureSetContract, store: ObjectStore, raw: ObjectStore, span: Interval,
                   progress: builds.Progress = lambda _msg: None) -> dict[str, Any]:
    """Run the SQL for ``span`` and write each partition that has rows (content-addressed; a file already there
    is the same bytes and is not written again). Returns {partitions: [entry], failures: [...], profile}."""
    import duckdb

    snapshot = builds.source_snapshot(raw, contract, digests=False)
    paths = [entry["path"].removeprefix("s3://") for entry in snapshot]
    try:
        source = ds.dataset(paths, format="parquet", filesystem=raw.fs)
    except Exception as exc:
        raise BuildError(f"{contract.name}: cannot open source {raw.url(contract.source.table)}: {exc}") from exc
    time_column = contract.build.time_column
    if time_column not in source.schema.names:
        raise BuildError(f"{contract.name}: build.time_column {time_column!r} is not a column of "
                         f"{contract.source.table} (columns: {', '.join(source.schema.names)})")
    schema = builds.arrow_schema(contract)
    ts = contract.timestamp_field
    lowest = span.start - timedelta(seconds=contract.build.lookback_seconds)
    con = builds._duckdb()
    entries: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        con.register("source_raw", source)
        naive = builds._naive_timestamp_columns(source, contract, raw)
        replaced = ", ".join(f"timezone('{contract.source.timezone}', \"{c}\") AS \"{c}\"" for c in naive)
        con.execute(f"CREATE TEMP VIEW source_zoned AS SELECT * {f'REPLACE ({replaced}) ' if replaced else ''}"
                    "FROM source_raw")
        # The raw rows of [start - lookback, end): Parquet statistics skip the files and row groups outside.
        con.execute(f"CREATE TEMP VIEW source AS SELECT * FROM source_zoned "
                    f"WHERE \"{time_column}\" >= '{lowest.isoformat()}'::TIMESTAMPTZ "
                    f"AND \"{time_column}\" < '{span.end.isoformat()}'::TIMESTAMPTZ")
        params = {"interval_start": span.start, "interval_end": span.end}
        sql = contract.source.sql
        used = {name: value for name, value in params.items() if f"${name}" in sql}
        step = contract.build.partition_seconds
        order = builds._quoted([*contract.join_keys, ts])
        stamp = f'"{ts}"::TIMESTAMPTZ'
        query = (f"SELECT *, CAST(floor(epoch({stamp}) / {step}) AS BIGINT) AS __partition FROM ({sql}) "
                 f"WHERE {stamp} >= $partition_lo AND {stamp} < $partition_hi ORDER BY __partition, {order}")
        try:
            columns = [d[0] for d in con.execute(f"SELECT * FROM ({sql}) LIMIT 0", used).description]
            builds._check_columns(columns, schema, contract.name)
            threads = builds.execution_threads(con, sql.replace("$interval_start", "now()").replace(
                "$interval_end", "now()"))
            con.execute(f"SET threads = {threads}")
            reader = con.sql(query, params={**used, "partition_lo": span.start, "partition_hi": span.end}
                             ).to_arrow_reader(builds.BATCH_ROWS)
        except duckdb.Error as exc:
            first_line = str(exc).strip().splitlines()[0]
            raise BuildError(f"{contract.name} v{contract.version}: source.sql failed on table "
                             f"{contract.source.table} for {span}: {first_line}; check the SQL and the raw column "
                             "types") from exc
        with tempfile.TemporaryDirectory(prefix="feature-partitions-") as tmp:
            for number, batches in _by_partition(reader):
                start = datetime.fromtimestamp(number * step, UTC)
                entry, problems = _write_partition(contract, store, schema, start, batches, Path(tmp), progress)
                entries.append(entry)
                failures += [f"partition {start.isoformat()}: {p}" for p in problems]
        profile: dict[str, Any] = {}
        if entries and not failures:
            con.execute(f"SET threads = {builds.execution_threads(con, 'SELECT 1')}")
            con.register("built", ds.dataset([store.path(e["key"]) for e in entries], format="parquet",
                                             filesystem=store.fs))
            profile = builds.profile_columns(con, contract)
    finally:
        con.close()
    return {"interval": [span.start.isoformat(), span.end.isoformat()], "partitions": entries,
            "failures": failures, "profile": profile, "source": snapshot}


def _by_partition(reader: Any) -> Iterator[tuple[int, Iterator[pa.RecordBatch]]]:
    """The ordered stream cut where ``__partition`` changes: (partition number, its batches), one at a time."""
    import pyarrow.compute as pc

    pending: list[pa.RecordBatch] = []
    current: int | None = None
    for batch in reader:
        if batch.num_rows == 0:
            continue
        numbers = batch.column("__partition")
        while batch.num_rows:
            first = numbers[0].as_py()
            if current is not None and first != current:
                yield current, iter(pending)
                pending = []
            current = first
            same = pc.equal(numbers, first).to_numpy(zero_copy_only=False)
            run = int(same.argmin()) if not same.all() else batch.num_rows
            pending.append(batch.slice(0, run).drop_columns(["__partition"]))
            batch, numbers = batch.slice(run), numbers.slice(run)
    if current is not None:
        yield current, iter(pending)


def _write_partition(contract: FeatureSetContract, store: ObjectStore, schema: pa.Schema, start: datetime,
                     batches: Iterator[pa.RecordBatch], tmp: Path, progress: builds.Progress
                     ) -> tuple[dict[str, Any], list[str]]:
    local = tmp / f"{_stamp(start)}.parquet"
    gate = builds.GateStatistics(contract)
    rows = 0
    with pq.ParquetWriter(local, schema, compression="zstd") as writer:
        for batch in builds._fixed_row_groups(batches, builds.BATCH_ROWS):
            conformed = builds._conform(batch, schema, contract.name)
            writer.write_batch(conformed)
            gate.update(conformed)
            rows += batch.num_rows
    failures, stats = gate.result()
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    key = f"{partitions_key(contract)}/{_stamp(start)}-{digest[:16]}.parquet"
    if not failures and not store.exists(key):  # content-addressed: an existing file holds these bytes
        store.upload(local, key)
    progress(f"{contract.name} v{contract.version}: partition {start.isoformat()}: {rows:,} rows")
    end = start + timedelta(seconds=contract.build.partition_seconds)
    return {"start": start.isoformat(), "end": end.isoformat(), "key": key, "file": store.url(key),
            "sha256": digest, "rows": rows, "columns": stats.get("columns", {}),
            "event_time_min": stats.get("event_time_min"), "event_time_max": stats.get("event_time_max")}, failures


def _stage_worker(args: tuple[Any, ...]) -> dict[str, Any]:
    """A backfill worker (its own process: its own DuckDB, memory bounded per worker)."""
    contract_data, store_args, raw_args, start, end = args
    contract = FeatureSetContract.model_validate(contract_data)
    store, raw = ObjectStore(*store_args), ObjectStore(*raw_args)
    return stage_interval(contract, store, raw, Interval(start, end))


# ----------------------------------------------------------------------------------------- the manifest


def _previous(store: ObjectStore, contract: FeatureSetContract) -> tuple[str | None, list[dict[str, Any]]]:
    """The version's promoted build (the one an interval build updates) and its partitions."""
    try:
        pointer = builds.read_pointer(store, contract.name, contract.version_label)
    except builds.PointerMissingError:
        return None, []
    metadata = builds.read_metadata(store, contract, pointer["build_id"])
    return pointer["build_id"], list(metadata.get("partitions", [])) if builds.is_manifest(metadata) else []


def manifest_build_id(contract: FeatureSetContract, partitions: list[dict[str, Any]]) -> str:
    payload = json.dumps({"schema": contract.schema_hash, "transform": contract.transform_hash,
                          "format": builds.BUILD_FORMAT, "manifest": MANIFEST_FORMAT,
                          "partitions": [[p["start"], p["sha256"]] for p in partitions]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_intervals(contract: FeatureSetContract, store: ObjectStore, raw: ObjectStore, spans: list[Interval], *,
                    environment: str, parallel: int = 1, contracts_commit: str | None = None,
                    run_id: str | None = None, progress: builds.Progress = lambda _msg: None,
                    future_tolerance: timedelta | None = None) -> builds.BuildResult:
    """Build ``spans`` (each a range of whole partitions; several run in parallel processes) into one new build:
    the promoted build's other partitions plus the new ones. Unpromoted; a gate failure writes no build."""
    if parallel > 1 and len(spans) > 1:
        work = [(contract.model_dump(), (store.root_uri, store.endpoint_url), (raw.root_uri, raw.endpoint_url),
                 s.start, s.end) for s in spans]
        # Forked (a spawned worker pays ~1.5 s of imports): fsspec resets its event-loop thread in the child and
        # each worker opens its own stores and DuckDB.
        with ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("fork")) as pool:
            staged = list(pool.map(_stage_worker, work))
    else:
        staged = [stage_interval(contract, store, raw, s, progress) for s in spans]
    failures = [f for s in staged for f in s["failures"]]
    if failures:
        raise QualityGateError(f"{contract.name} v{contract.version}", failures)
    replaced = [(datetime.fromisoformat(s["interval"][0]), datetime.fromisoformat(s["interval"][1])) for s in staged]
    base, previous = _previous(store, contract)
    kept = [p for p in previous if not any(lo <= datetime.fromisoformat(p["start"]) < hi for lo, hi in replaced)]
    partitions = sorted(kept + [p for s in staged for p in s["partitions"]], key=lambda p: p["start"])
    if not partitions:
        raise QualityGateError(f"{contract.name} v{contract.version}", [
            f"the transform returned no rows from source table {contract.source.table} for "
            f"{', '.join(str(s) for s in spans)} and no earlier partitions exist"])
    build_id = manifest_build_id(contract, partitions)
    prefix = builds.build_key(contract, build_id)
    if store.exists(f"{prefix}/{builds.METADATA_FILE}") and builds.metadata_damage(store, contract, build_id) is None:
        progress(f"{contract.name} v{contract.version}: build {build_id} is already complete; reusing it")
        return builds.BuildResult(builds.read_metadata(store, contract, build_id), reused=True)
    stats = _whole_build_stats(contract, store, partitions)
    profile: dict[str, Any] = next((s["profile"] for s in reversed(staged) if s["profile"]), {})
    builds.add_profile(stats, profile)
    problems = builds._future_events(contract, stats, future_tolerance)
    if problems:
        raise QualityGateError(f"{contract.name} v{contract.version}", problems)
    metadata = {
        "format": builds.METADATA_FORMAT, "feature_set": contract.name, "version": contract.version_label,
        "build_id": build_id, "environment": environment, "schema_hash": contract.schema_hash,
        "transform_hash": contract.transform_hash, "generated_at": datetime.now(UTC).isoformat(),
        "row_count": stats["row_count"], "entity_count": stats["entity_count"],
        "event_time_min": stats["event_time_min"], "event_time_max": stats["event_time_max"],
        "columns": stats["columns"],
        "data": [p["file"] for p in partitions],
        "partitions": partitions,
        "partition": contract.build.partition,
        "intervals": [s["interval"] for s in staged],  # what this build computed; the rest it reused
        "base_build_id": base,  # the promoted build it updates: promotion checks latest is still that one
        "profile_scope": "the intervals built",
        "sorted_by": None,  # sorted within each partition only
        "build_format": builds.BUILD_FORMAT,
        "source": {"table": contract.source.table, "uri": raw.url(contract.source.table),
                   "files": staged[-1]["source"]},
        "contracts_commit": contracts_commit or "unknown", "library_version": builds.__version__,
        "run_id": run_id,
    }
    builds.write_metadata(store, prefix, metadata)
    progress(f"{contract.name} v{contract.version}: build {build_id} complete ({stats['row_count']:,} rows, "
             f"{len(partitions)} partitions, {sum(len(s['partitions']) for s in staged)} built)")
    return builds.BuildResult(metadata, reused=False)


def _whole_build_stats(contract: FeatureSetContract, store: ObjectStore, partitions: list[dict[str, Any]]
                       ) -> dict[str, Any]:
    """Row count and column statistics merged from the partitions' own; the entity count by one scan of the
    key columns of every partition (columnar: a small part of the build)."""
    columns: dict[str, dict[str, Any]] = {}
    for part in partitions:
        for name, column in part["columns"].items():
            merged = columns.setdefault(name, {"null_count": 0, "min": None, "max": None})
            merged["null_count"] += column["null_count"]
            for bound, pick in (("min", min), ("max", max)):
                if column[bound] is not None:
                    merged[bound] = column[bound] if merged[bound] is None else pick(merged[bound], column[bound])
    con = builds._duckdb()
    try:
        con.register("keys", ds.dataset([store.path(p["key"]) for p in partitions], format="parquet",
                                        filesystem=store.fs).to_table(columns=contract.join_keys))
        entities = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {builds._quoted(contract.join_keys)} "
                               "FROM keys)").fetchone()[0]
    finally:
        con.close()
    ts = contract.timestamp_field
    return {"row_count": sum(p["rows"] for p in partitions), "entity_count": entities, "columns": columns,
            "event_time_min": columns[ts]["min"], "event_time_max": columns[ts]["max"]}


def raw_span(contract: FeatureSetContract, raw: ObjectStore) -> Interval:
    """A build without an interval: from the partition of the raw table's first event to the partition after
    now (or after its last event, if later): every partition its SQL can produce (outputs may lie after their
    raw rows, e.g. a day's aggregate at the next midnight)."""
    snapshot = builds.source_snapshot(raw, contract, digests=False)
    dataset = ds.dataset([e["path"].removeprefix("s3://") for e in snapshot], format="parquet", filesystem=raw.fs)
    con = builds._duckdb()
    try:
        con.register("source_raw", dataset)
        low, high = con.execute(f'SELECT min("{contract.build.time_column}")::TIMESTAMPTZ, '
                                f'max("{contract.build.time_column}")::TIMESTAMPTZ FROM source_raw').fetchone()
    finally:
        con.close()
    if low is None:
        raise BuildError(f"{contract.name}: source table {contract.source.table} has no rows with a "
                         f"{contract.build.time_column}")
    step = contract.build.partition_seconds
    first = int(parse_instant(low).timestamp()) // step * step
    last = (int(max(parse_instant(high), datetime.now(UTC)).timestamp()) // step + 1) * step
    return Interval(datetime.fromtimestamp(first, UTC), datetime.fromtimestamp(last, UTC))

