"""The named steps of the loop, each idempotent, shared by featurectl, the Airflow DAGs and the proof.

Contract -> build -> versioned store -> latest pointer -> apply -> materialize -> online read.
Steps pass references (feature set, version, build id), never data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from feature_platform import build as builds
from feature_platform.contracts import FeatureSetContract
from feature_platform.environments import EnvironmentContract, Settings
from feature_platform.errors import ConfigError, ContractError, ContractErrors
from feature_platform.sample_data import SampleSpec, write_sample_data
from feature_platform.steps import STEP_NAMES
from feature_platform.store import ObjectStore, sweep_temporary_files, write_file_atomic

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def object_store(settings: Settings, env: EnvironmentContract) -> ObjectStore:
    return settings.object_store(env)


def raw_store(settings: Settings, env: EnvironmentContract) -> ObjectStore:
    return settings.raw_store(env)


def generate_sample_data(settings: Settings, spec: SampleSpec) -> dict[str, int]:
    env = settings.environment()
    return write_sample_data(raw_store(settings, env), spec)


def build(settings: Settings, feature_set: str, version: int | None = None, run_id: str | None = None,
          progress: Progress = _quiet, interval: tuple[Any, Any] | None = None, parallel: int = 1
          ) -> tuple[FeatureSetContract, builds.BuildResult]:
    """Build (or find the finished build of) one contract version; does not promote. An incremental contract
    builds ``interval`` (START, END), split over ``parallel`` workers, or without one every partition of the
    raw table; a full contract refuses an interval."""
    from feature_platform import incremental

    env = settings.environment()
    contract = settings.contracts().get(feature_set, version)
    settings.writable_contracts(env, [contract])
    store, raw = object_store(settings, env), raw_store(settings, env)
    if interval is not None or contract.build.incremental:
        span = (incremental.interval(contract, *interval) if interval is not None
                else incremental.raw_span(contract, raw))
        result = incremental.build_intervals(
            contract, store, raw, incremental.split(contract, span, parallel), environment=env.name,
            parallel=parallel, contracts_commit=settings.git_commit(), run_id=run_id, progress=progress,
            future_tolerance=future_tolerance(env))
        return contract, result
    result = builds.build_version(
        contract, store, raw, environment=env.name, contracts_commit=settings.git_commit(), run_id=run_id,
        progress=progress, future_tolerance=future_tolerance(env))
    return contract, result


def future_tolerance(env: EnvironmentContract) -> timedelta:
    return timedelta(minutes=env.quality.future_event_tolerance_minutes)


def promote(settings: Settings, feature_set: str, version: int | None, build_id: str) -> dict[str, Any]:
    """Move ``latest`` to a new build. An incremental build is refused if ``latest`` moved since it was assembled
    on it (another interval's build promoted meanwhile: promoting would drop its partitions); rebuild it."""
    env = settings.environment()
    contract = settings.contracts().get(feature_set, version)
    store = object_store(settings, env)
    return builds.promote(store, contract, builds.read_metadata(store, contract, build_id), expect_base=True)


def build_and_promote(settings: Settings, feature_set: str, version: int | None = None, run_id: str | None = None,
                      progress: Progress = _quiet, interval: tuple[Any, Any] | None = None, parallel: int = 1
                      ) -> dict[str, Any]:
    contract, result = build(settings, feature_set, version, run_id, progress, interval, parallel)
    promote(settings, feature_set, contract.version, result.build_id)
    out = {"feature_set": feature_set, "version": contract.version_label, "build_id": result.build_id,
           "row_count": result.metadata["row_count"], "reused": result.reused}
    if "intervals" in result.metadata:
        out["intervals"] = result.metadata["intervals"]
        out["partitions"] = len(result.metadata["partitions"])
    return out


def build_all(settings: Settings, run_id: str | None = None, progress: Progress = _quiet) -> list[dict[str, Any]]:
    """Build and promote every version of every feature set (the feature-set pointer names the newest version's
    build whatever the order)."""
    return [build_and_promote(settings, c.name, c.version, run_id, progress) for c in settings.contracts().live()]


def versions(settings: Settings, feature_set: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    env = settings.environment()
    settings.contracts().get(feature_set)  # a clear error for an unknown name
    store = object_store(settings, env)
    try:
        pointer = builds.read_pointer(store, feature_set)
    except builds.PointerMissingError:
        pointer = None
    return builds.list_builds(store, feature_set), pointer


def rollback(settings: Settings, feature_set: str, build_id: str) -> dict[str, Any]:
    env = settings.environment()
    store = object_store(settings, env)
    from feature_platform import audit

    metadata = builds.find_build(store, feature_set, build_id)
    contract = settings.contracts().get(feature_set, int(str(metadata["version"]).lstrip("v")))
    def current(version: str | None) -> dict[str, Any] | None:
        try:
            return builds.read_pointer(store, feature_set, version)
        except builds.PointerMissingError:
            return None

    before = current(contract.version_label)
    set_before = current(None)
    pointer = builds.promote(store, contract, metadata)
    set_after = current(None)
    audit.record(settings, env, "rollback", [feature_set], [{
        "object": contract.feature_view_name, "kind": "latest pointer", "change": "rolled back",
        "classification": "data (earlier build)",
        "detail": [f"build {before['build_id'] if before else None} -> {build_id}"],
        "feature_set": feature_set, "build_id": build_id}])

    def named(p: dict[str, Any] | None) -> dict[str, Any] | None:
        return {"version": p["version"], "build_id": p["build_id"]} if p else None

    # Say what actually moved: the version's pointer always does; the feature set's `latest` follows the newest
    # version that has a build, so rolling back an older version leaves it where it was.
    return {**pointer, "previous_build_id": before["build_id"] if before else None,
            "feature_set_latest": named(set_after),
            "feature_set_latest_moved": named(set_before) != named(set_after)}


def export(settings: Settings, feature_set: str, version: int | None = None, build_id: str | None = None,
           caller: Any = None) -> tuple[Any, dict[str, Any]]:
    """A build's rows (default: the version's latest) as a DataFrame for ``caller``: refused unless its team may
    read the view, PII features masked unless it may see them. Returns (frame, provenance)."""
    import pandas as pd

    from feature_platform import governance
    from feature_platform.offline import pandas_values

    env = settings.environment()
    contract = settings.contracts().get(feature_set, version)
    caller = caller or governance.caller_from_cli(settings, env)
    governance.check_offline_read(settings, env, contract, caller, action="export")
    store = object_store(settings, env)
    build_id = build_id or builds.read_pointer(store, feature_set, contract.version_label)["build_id"]
    metadata = builds.read_metadata(store, contract, build_id)
    table = builds.read_build_table(store, metadata)
    frame = pd.DataFrame({name: pandas_values(table.column(name)) for name in table.column_names})
    provenance = {"feature_set": feature_set, "version": contract.version_label, "build_id": build_id,
                  "schema_hash": metadata["schema_hash"], "data": metadata["data"]}
    return governance.release(settings, env, frame, caller, "export", provenance, [governance.ReadPart(
        contract, build_id, [f.name for f in contract.features])])


def apply(settings: Settings, feature_sets: list[str] | None = None) -> dict[str, Any]:
    from feature_platform import feast_bridge

    result = feast_bridge.apply(settings, feature_sets=feature_sets)
    return {"changed": result.changed, "unchanged": result.unchanged, "unmanaged": result.unmanaged}


def materialize(settings: Settings, incremental: bool = False, feature_views: list[str] | None = None,
                progress: bool = False, shard: str | None = None) -> list[dict[str, Any]]:
    """``shard`` "I/N": only the entities of shard I of N (N processes load one view in parallel)."""
    from feature_platform import feast_bridge
    from feature_platform.online.materialize import Shard

    parsed = Shard.parse(shard) if shard else None
    return feast_bridge.materialize(settings, incremental=incremental, feature_views=feature_views,
                                    progress=progress, shard=parsed if parsed and parsed.count > 1 else None)


def verify(settings: Settings, sample: int = 20, feature_views: list[str] | None = None) -> list[dict[str, Any]]:
    """Offline/online consistency and freshness; raises FeastError naming each feature view that is off."""
    from feature_platform import feast_bridge
    from feature_platform.errors import FeastError

    results = feast_bridge.verify(settings, sample=sample, feature_views=feature_views)
    bad = [r for r in results if not r["ok"]]
    if bad:
        reasons = []
        for r in bad:
            why = [f"{r['mismatch_count']} mismatch(es) e.g. {r['mismatches'][0]}" if r["mismatches"] else "",
                   f"{r['missing']} of {r['sampled']} sampled entities missing online" if r["missing"] else "",
                   "" if r["fresh"] else f"stale: newest online {r['newest_online']} older than ttl "
                                         f"{r['ttl_seconds']}s",
                   "" if r["materialized_build_id"] == r["build_id"] else
                   f"partial or mixed: a load of build(s) {', '.join(r['pending_build_ids'])} did not finish; "
                   "run `featurectl materialize` to complete it" if r.get("pending_build_ids") else
                   f"registry serves build {r['build_id']} but build {r['materialized_build_id']} was "
                   "completely materialized last; run `featurectl materialize`",
                   "" if r["online_entities"] == r["build_entities"] else
                   f"{r['online_entities']} entities online but the build has {r['build_entities']}; run "
                   "`featurectl materialize` (it deletes entities that left the build)",
                   "a key that is in no build is served" if r["absent_key_served"] else "",
                   "" if (r.get("online_record") or {}).get("build_id") == r["build_id"]
                   and (r.get("online_record") or {}).get("state") == "complete" else
                   f"the online store's own record is {r.get('online_record')} (emptied, replaced, restored from "
                   "an older snapshot or a load unfinished); run `featurectl materialize`"]
            reasons.append(f"{r['feature_view']}: " + ", ".join(w for w in why if w))
        raise FeastError("offline/online verification failed: " + "; ".join(reasons))
    return results


def monitor(settings: Settings, feature_sets: list[str] | None = None, report_dir: Path | None = None,
            publish: bool = False, fail_on_breach: bool = True) -> dict[str, Any]:
    """Monitor the views, write monitor.{json,md,html} (and Prometheus gauges), then raise MonitorBreach if a
    threshold was crossed: the report is written either way."""
    from feature_platform import monitoring

    env = settings.environment()
    reports = monitoring.monitor(settings, feature_sets)
    scope = feature_sets[0] if feature_sets and len(feature_sets) == 1 else None
    directory = report_dir or settings.env_home(env) / "monitor" / (scope or "all")
    paths = monitoring.write_report(reports, env.name, directory)
    metrics = monitoring.prometheus_text(reports, env.name)
    write_file_atomic(directory / "monitor.prom", metrics)  # the node exporter's textfile collector format
    published = monitoring.publish_report(object_store(settings, env), paths, scope) if publish else []
    gateway = settings.values.get("FEATURE_PLATFORM_PUSHGATEWAY")
    if gateway:
        monitoring.push_metrics(metrics, gateway, env.name)
    result = {"views": [r.as_dict() for r in reports], "report": {k: str(v) for k, v in paths.items()},
              "published": published}
    error = monitoring.breach_error(reports)
    if error is not None and fail_on_breach:
        raise error
    return result


def _run_record_path(settings: Settings, env: EnvironmentContract, feature_set: str) -> Path:
    return settings.env_home(env) / "runs" / "feature_sets" / f"{feature_set}.json"


def record_run(settings: Settings, feature_set: str, status: str, run_id: str | None = None,
               detail: str = "") -> None:
    """The last run of a feature set's loop, for `featurectl proof` where no Airflow API is configured."""
    env = settings.environment()
    path = _run_record_path(settings, env, feature_set)
    write_file_atomic(path, json.dumps({"feature_set": feature_set, "status": status, "run_id": run_id,
                                        "at": datetime.now(UTC).isoformat(), "detail": detail}))


def read_run_record(settings: Settings, env: EnvironmentContract, feature_set: str) -> dict[str, Any] | None:
    path = _run_record_path(settings, env, feature_set)
    return json.loads(path.read_text()) if path.exists() else None


def run_loop(settings: Settings, run_id: str | None = None, progress: Progress = _quiet) -> dict[str, Any]:
    """The whole loop for every feature set: build -> promote -> apply -> materialize -> verify."""
    try:
        result = _run_loop(settings, run_id, progress)
    except Exception as exc:
        for name in settings.contracts().names():
            record_run(settings, name, "failed", run_id, str(exc).splitlines()[0] if str(exc) else repr(exc))
        raise
    for name in settings.contracts().names():
        record_run(settings, name, "success", run_id)
    return result


def _run_loop(settings: Settings, run_id: str | None, progress: Progress) -> dict[str, Any]:
    built = build_all(settings, run_id, progress)
    progress(f"built and promoted {len(built)} contract version(s)")
    applied = apply(settings)
    progress(f"feast apply: {len(applied['changed'])} changed, {len(applied['unchanged'])} unchanged")
    materialized = materialize(settings)
    progress(f"materialized {len(materialized)} feature view(s)")
    verified = verify(settings)
    progress(f"verified {len(verified)} feature view(s) online == offline")
    return {"builds": built, "apply": applied, "materialize": materialized, "verify": verified}


# ------------------------------------------------------------------------------------------ orchestrated steps
# The build split into the steps an orchestrator retries separately. Each takes names and small references
# (build ids, statistics) and returns a JSON-able dict, so it runs the same in-process or in a pod.


def step_validate(settings: Settings, feature_set: str) -> dict[str, Any]:
    contracts = settings.contracts()
    contracts.get(feature_set)  # a clear error for an unknown feature set
    versions = contracts.versions(feature_set)
    settings.writable_contracts(settings.environment(), versions)  # a released version edited in place stops here
    problems = [ContractError(contracts.files[(c.name, c.version)], "source.sql", problem)
                for c in versions for problem in builds.check_transform(c)]
    if problems:
        raise ContractErrors(problems)
    return {"feature_set": feature_set, "versions": {c.version_label: c.schema_hash for c in versions}}


def step_build(settings: Settings, feature_set: str, version: int, progress: Progress = _quiet,
               interval: list[str] | None = None, run_id: str | None = None) -> dict[str, Any]:
    """The DAG's build step. An incremental contract builds the run's data interval whole (staged, gated and
    recorded: the next steps find it complete); a full one stages the snapshot."""
    env = settings.environment()
    contract = settings.contracts().get(feature_set, version)
    settings.writable_contracts(env, [contract])
    if contract.build.incremental:
        if not interval:
            raise ConfigError(f"{contract.name} v{contract.version} builds incrementally: the build step needs the "
                              "run's data interval (--interval START END)")
        from feature_platform import incremental

        span = incremental.covering(contract, interval[0], interval[1])  # whole partitions
        _, result = build(settings, feature_set, version, run_id, progress, (span.start, span.end))
        return {"feature_set": contract.name, "version": contract.version_label, "build_id": result.build_id,
                "complete": True, "intervals": result.metadata["intervals"]}
    return builds.stage_build(contract, object_store(settings, env), raw_store(settings, env), progress)


def step_quality_gate(settings: Settings, feature_set: str, version: int, staged: dict[str, Any]) -> dict[str, Any]:
    env = settings.environment()
    contract = settings.contracts().get(feature_set, version)
    store = object_store(settings, env)
    if staged["complete"]:
        return builds.read_metadata(store, contract, staged["build_id"])  # already gated and recorded
    return builds.check_quality(contract, store, staged["build_id"], staged.get("gate"), future_tolerance(env))


def step_write_version(settings: Settings, feature_set: str, version: int, staged: dict[str, Any],
                       stats: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    env = settings.environment()
    contract = settings.contracts().get(feature_set, version)
    metadata = builds.finalize_build(contract, object_store(settings, env), raw_store(settings, env), staged,
                                     stats, environment=env.name, contracts_commit=settings.git_commit(),
                                     run_id=run_id)
    return {"build_id": metadata["build_id"], "row_count": metadata["row_count"],
            "schema_hash": metadata["schema_hash"]}


def feature_views_of(settings: Settings, feature_set: str) -> list[str]:
    return [c.feature_view_name for c in settings.contracts().live_versions(feature_set)]


STEPS = STEP_NAMES


def run_named_step(settings: Settings, step: str, feature_set: str, version: int | None,
                   inputs: dict[str, Any], run_id: str | None = None) -> Any:
    """Dispatch one orchestrated step by name; the DAG (in-process) and `featurectl step` (in a pod) share it."""
    if step == "validate_contract":
        return step_validate(settings, feature_set)
    if step in ("build", "quality_gate", "write_version", "promote_latest"):
        if version is None:
            raise ValueError(f"step {step} needs a contract version")
        return _versioned_step(settings, step, feature_set, version, inputs, run_id)
    if step == "feast_apply":
        return apply(settings, feature_sets=[feature_set])
    if step == "materialize":  # one view (version) per task, optionally one shard of it
        views = ([settings.contracts().get(feature_set, version).feature_view_name] if version
                 else feature_views_of(settings, feature_set))
        return materialize(settings, incremental=True, feature_views=views, shard=inputs.get("shard"))
    if step == "verify_online":
        result = verify(settings, feature_views=feature_views_of(settings, feature_set))
        record_run(settings, feature_set, "success", run_id)
        return result
    if step == "monitor":
        return monitor(settings, [feature_set], publish=True)
    if step == "compact_pushes":  # a set whose versions take pushes: fold each one's pushed files into one
        from feature_platform.push import compact

        store = object_store(settings, settings.environment())
        return [compact(store, c) for c in settings.contracts().live() if c.name == feature_set and c.push]
    raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")


def _versioned_step(settings: Settings, step: str, feature_set: str, version: int, inputs: dict[str, Any],
                    run_id: str | None) -> Any:
    """The steps of one contract version's build: build, quality gate, write, promote."""
    if step == "build":
        return step_build(settings, feature_set, version, progress=print, interval=inputs.get("interval"),
                          run_id=run_id)
    if step == "quality_gate":
        return step_quality_gate(settings, feature_set, version, inputs["staged"])
    if step == "write_version":
        return step_write_version(settings, feature_set, version, inputs["staged"], inputs["stats"], run_id)
    pointer = promote(settings, feature_set, version, inputs["written"]["build_id"])
    return {"build_id": pointer["build_id"], "version": pointer["version"]}


def collect_garbage(settings: Settings, feature_sets: list[str] | None, keep: int, min_age_seconds: int,
                    dry_run: bool) -> list[dict[str, Any]]:
    """Retention: delete old builds (see build.collect_garbage for what is always kept)."""
    env = settings.environment()
    contracts = settings.contracts()
    versions = [c for c in contracts.all() if not feature_sets or c.name in feature_sets]
    store = object_store(settings, env)
    decisions = builds.collect_garbage(store, versions, keep, min_age_seconds, dry_run)
    # Files of writes killed midway (local stores and the local registry directory).
    temporary = store.sweep_temporary(min_age_seconds, dry_run)
    registry = settings.resolve_uri(env, env.registry.uri) if hasattr(env.registry, "uri") else ""
    if registry and not registry.startswith("s3://"):
        temporary += sweep_temporary_files(Path(registry).parent, min_age_seconds, dry_run)
    return decisions + [{"feature_set": None, "version": None, "build_id": None, "path": path,
                         "deleted": not dry_run, "reason": "temporary file of an interrupted write"}
                        for path in temporary]
