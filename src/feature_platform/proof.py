"""The operational checklist as code: each check returns PASS/FAIL/WARN with evidence and its timing.

Run by `featurectl proof --env ENV`, by the README's main command, in CI and against a live cluster (from the
feature-server pod). Checks read state; they never repair it, so a FAIL always shows what is really there.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feature_platform import build as builds
from feature_platform.contracts import check_lock, iter_contract_files, read_lock
from feature_platform.environments import EnvironmentContract, Settings
from feature_platform.errors import PlatformError
from feature_platform.registries import registry

PASS, FAIL, WARN = "PASS", "FAIL", "WARN"


@dataclass
class Check:
    name: str
    status: str
    evidence: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Report:
    environment: str
    started_at: str
    checks: list[Check]
    monitoring: list[Any] = field(default_factory=list)  # monitoring.ViewReport per view, for the HTML report

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"environment": self.environment, "started_at": self.started_at, "ok": self.ok,
                "checks": [asdict(c) for c in self.checks]}

    def to_markdown(self) -> str:
        lines = [f"# Proof: environment `{self.environment}`", "",
                 f"Started {self.started_at}; result **{'PASS' if self.ok else 'FAIL'}**.", "",
                 "| check | status | seconds | evidence |", "| --- | --- | ---: | --- |"]
        for c in self.checks:
            evidence = "<br>".join(e.replace("|", "\\|") for e in c.evidence)
            lines.append(f"| {c.name} | {c.status} | {c.seconds:.2f} | {evidence} |")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- checks


def check_contracts(settings: Settings, _env: EnvironmentContract) -> tuple[str, list[str]]:
    """Contracts readable where the platform expects them, identical to Git (contracts.lock), not stale."""
    root = settings.contracts_dir
    contracts = settings.contracts()
    evidence = [f"{len(contracts.all())} contract versions read from {root}"]
    problems = check_lock(root, contracts) if read_lock(root) else ["no contracts.lock next to the contracts"]
    if (root / "..data").exists():  # a Kubernetes ConfigMap volume
        for path, relative in iter_contract_files(root):
            if not path.is_symlink():
                problems.append(f"{relative} is a plain file in a ConfigMap mount: it was mounted with subPath "
                                "and will never update; mount the ConfigMap as a directory")
    if problems:
        return FAIL, evidence + problems

    commit = settings.git_commit() or "commit unknown"
    return PASS, [*evidence, f"every schema_hash matches contracts.lock ({commit})"]


def check_dag_runs(settings: Settings, env: EnvironmentContract) -> tuple[str, list[str]]:
    """The latest run of each feature set's DAG (Airflow REST API if configured, else the local run records)."""
    from feature_platform.airflow_api import AirflowApiError, AirflowClient
    from feature_platform.dag_factory import DAG_PREFIX
    from feature_platform.pipeline import read_run_record

    client = (AirflowClient.from_settings(settings.values) if settings.values.get("FEATURE_PLATFORM_AIRFLOW_URL")
              else None)
    evidence, failed = [], False
    for name in settings.contracts().names():
        if client:
            try:
                run = client.last_dag_run(f"{DAG_PREFIX}{name}")
            except AirflowApiError as exc:
                return FAIL, [str(exc)]
            except (urllib.error.URLError, TimeoutError, ValueError) as exc:
                return FAIL, [f"Airflow API at {client.url} unreachable: {exc}"]
            state, when = run.get("state", "no runs"), run.get("end_date") or run.get("run_after")
        else:
            record = read_run_record(settings, env, name)
            state, when = (record["status"], record["at"]) if record else ("no runs", None)
        failed |= state != "success"
        evidence.append(f"{name}: last run {state}" + (f" at {when}" if when else ""))
    return (FAIL if failed else PASS), evidence


def check_store(settings: Settings, env: EnvironmentContract) -> tuple[str, list[str]]:
    """Each feature set has a version prefix and latest pointers that agree; metadata matches the contract."""
    from feature_platform.pipeline import object_store

    store = object_store(settings, env)
    contracts = settings.contracts()
    evidence: list[str] = []
    status = PASS
    for name in contracts.names():
        try:
            top = builds.read_pointer(store, name)
        except builds.PointerMissingError as exc:
            return FAIL, [*evidence, str(exc)]
        listed = builds.list_builds(store, name)
        unfinished = [b["build_id"] for b in listed if not b["complete"]]
        for contract in contracts.live_versions(name):
            pointer = builds.read_pointer(store, name, contract.version_label)
            metadata = builds.read_metadata(store, contract, pointer["build_id"])
            if not metadata.get("schema_hash") or not metadata.get("generated_at"):
                return FAIL, [*evidence, f"{contract.feature_view_name}: metadata.json lacks schema_hash or "
                                         "generated_at"]
            if metadata["schema_hash"] != contract.schema_hash:
                return FAIL, [*evidence, f"{contract.feature_view_name}: build {pointer['build_id']} was made from "
                                         f"schema {metadata['schema_hash']} but the contract is now "
                                         f"{contract.schema_hash}; the data drifted from the contract: rebuild it"]
            if top["version"] == contract.version_label and top["build_id"] != pointer["build_id"]:
                return FAIL, [*evidence, f"{name}: latest.json -> {top['build_id']} but {contract.version_label}/"
                                         f"latest.json -> {pointer['build_id']}; re-run the build to promote again"]
            evidence.append(f"{contract.feature_view_name}: latest build {pointer['build_id']} "
                            f"({metadata['row_count']} rows, generated {metadata['generated_at']}, schema matches)")
        if unfinished:
            status = WARN if status == PASS else status
            evidence.append(f"{name}: {len(unfinished)} unfinished build(s) never promoted: {', '.join(unfinished)}")
    return status, evidence


def check_registry(settings: Settings, env: EnvironmentContract) -> tuple[str, list[str]]:
    """The registry exists where the environment says and holds every contract's feature view, same schema."""
    from feature_platform import feast_bridge

    evidence = []
    exists, location = registry(settings, env).exists()
    if not exists:
        return FAIL, [f"no registry at {location}; run `featurectl apply --env {env.name}`"]
    evidence.append(f"registry present at {location}")
    store = feast_bridge.open_store(settings, env)
    views = feast_bridge.check_registry_matches(store, settings.contracts().live())
    evidence.append(f"{len(views)} feature views registered, schema_hash equal to the contracts")
    return PASS, evidence


def check_online(settings: Settings, env: EnvironmentContract, sample: int) -> tuple[str, list[str]]:
    """Materialized and fresh (newest online timestamp within TTL); sampled online rows equal the offline latest."""
    from feature_platform import feast_bridge

    results = feast_bridge.verify(settings, env, sample=sample)
    evidence, status = [], PASS
    for r in results:
        line = (f"{r['feature_view']}: {r['sampled']} sampled, {r['missing']} missing, {r['mismatch_count']} "
                f"mismatched, newest online {r['newest_online']} (ttl {r['ttl_seconds']}s)")
        if not r["ok"]:
            status = FAIL
            not_materialized = ([] if r["materialized_build_id"] == r["build_id"] else
                                [f"build {r['build_id']} not materialized (last: {r['materialized_build_id']}); "
                                 "run `featurectl materialize`"])
            line += " -> " + "; ".join([*r["mismatches"][:2], *([] if r["fresh"] else ["STALE"]), *not_materialized])
        evidence.append(line)
    return status, evidence


def check_pii(settings: Settings, env: EnvironmentContract) -> tuple[str, list[str]]:
    """No PII feature reaches an export unmasked: the export path (access check, then masking with this
    environment's key) run on each PII view's first row group as a reader outside pii_readers (or an outsider),
    and none of the build's raw PII values may come out."""
    import pyarrow.parquet as pq

    from feature_platform import governance
    from feature_platform.errors import AccessDenied
    from feature_platform.pipeline import object_store

    store = object_store(settings, env)
    evidence, status = [], PASS
    for contract in settings.contracts().live():
        if not contract.pii_features:
            continue
        outsiders = [t for t in contract.access.readers if t not in contract.access.pii_readers]
        caller = governance.Caller(outsiders[0] if outsiders else "proof-outsider", "proof", True)
        try:
            governance.check_offline_read(settings, env, contract, caller)
        except AccessDenied:
            evidence.append(f"{contract.feature_view_name}: {caller.describe()} is refused (not a reader)")
            continue
        pointer = builds.read_pointer(store, contract.name, contract.version_label)
        metadata = builds.read_metadata(store, contract, pointer["build_id"])
        with store.fs.open(builds.data_paths(metadata)[-1], "rb") as handle:  # the newest partition, if several
            parquet = pq.ParquetFile(handle)
            sample = parquet.read_row_group(0).to_pandas() if parquet.num_row_groups else None
        if sample is None:
            continue
        key = governance.masking_key(settings, env, contract, caller)
        exported, masking = governance.mask_frame(sample, contract, caller, key)
        leaked = [name for name in contract.pii_features if name in exported.columns and
                  set(map(str, exported[name].dropna())) & set(map(str, sample[name].dropna()))]
        if leaked:
            status = FAIL
        hidden = f"masked {', '.join(masking['masked']) or '-'}, dropped {', '.join(masking['dropped']) or '-'}"
        evidence.append(f"{contract.feature_view_name}: as {caller.describe()}, "
                        + (f"UNMASKED {', '.join(leaked)}" if leaked else hidden))
    return status, evidence or ["no live contract marks PII"]


def check_services(settings: Settings, env: EnvironmentContract) -> tuple[str, list[str]]:
    """Each model's feature service answers online, and a training set built from it (one row per entity, now)
    holds the same values: the loop closes across feature sets too."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from feature_platform import feast_bridge, governance
    from feature_platform.feast_bridge.verify import values_close
    from feature_platform.pipeline import object_store

    contracts = settings.contracts()
    store = object_store(settings, env)
    caller = governance.Caller(governance.PLATFORM_TEAM, "proof", True)
    evidence, status = [], PASS
    for model in contracts.live_services():
        resolved = contracts.resolve(model)
        keys: dict[str, list[Any]] = {}
        # One entity row served by every set: composite keys first (a pair fixes both of its keys), then each
        # set's newest entity among those agreeing with the keys already chosen.
        for contract, _ in sorted(resolved, key=lambda item: -len(item[0].join_keys)):
            if all(k in keys for k in contract.join_keys):
                continue
            pointer = builds.read_pointer(store, contract.name, contract.version_label)
            rows = builds.read_build_table(store, builds.read_metadata(store, contract, pointer["build_id"]),
                                           columns=contract.join_keys)
            agrees = np.ones(rows.num_rows, dtype=bool)
            for key in (k for k in contract.join_keys if k in keys):
                agrees &= rows.column(key).to_numpy(zero_copy_only=False) == keys[key][0]
            agreeing = rows.filter(pa.array(agrees))
            candidates = agreeing if agreeing.num_rows else rows
            chosen = candidates.slice(candidates.num_rows - 1).to_pylist()[0]
            keys.update({k: [chosen[k]] for k in contract.join_keys if k not in keys})
        online = feast_bridge.read_online_service(settings, model.name, keys, version=model.version, env=env,
                                                  full_feature_names=True)[0]
        entities = pd.DataFrame({**keys, "event_timestamp": [pd.Timestamp.now(tz="UTC")]})
        frame, _ = feast_bridge.historical_service(settings, entities, model.name, version=model.version, env=env,
                                                   caller=caller, full_feature_names=True)
        dtypes = {f"{c.feature_view_name}__{f.name}": f.dtype for c, _ in resolved for f in c.features}
        columns = [c for c in frame.columns if "__" in c]

        def same(offline: Any, served: Any, dtype: str) -> bool:  # a null on one side only is a difference too
            if dtype.startswith("array<"):  # lists compare element by element (pd.isna would too)
                return (offline is None) == (served is None) and values_close(offline, served, dtype)
            if pd.isna(offline) or pd.isna(served):
                return bool(pd.isna(offline) and pd.isna(served))
            return values_close(offline, served, dtype)

        differing = [c for c in columns if not same(frame[c].iloc[0], online[c], dtypes[c])]
        # The entity comes from each set's served build: NOT_FOUND online means the store lost it.
        missing = [view for view, s in online["statuses"].items() if s == "NOT_FOUND"]
        found = sum(1 for s in online["statuses"].values() if s.startswith("PRESENT"))
        if differing or missing:
            status = FAIL
            differing += [f"{view} NOT_FOUND online" for view in missing]
        evidence.append(f"{model.service_name}: {len(columns)} features from {len(resolved)} feature set(s), "
                        f"{found} found online for {keys}; training set row "
                        + (f"DIFFERS on {', '.join(differing)}" if differing else "equal to the online values"))
    return status, evidence or ["no feature service contracts"]


def check_monitoring(settings: Settings, env: EnvironmentContract, report: Report) -> tuple[str, list[str]]:
    """Freshness, volume, null rate and drift vs the previous build (`featurectl monitor`): a breach is a WARN
    here (the loop works; the data moved), and the DAG's monitor task fails on it."""
    from feature_platform import monitoring

    report.monitoring = monitoring.monitor(settings)
    evidence = [f"{r.feature_view}: " + ("ok" if r.ok else "; ".join(r.breaches)) for r in report.monitoring]
    return (PASS if all(r.ok for r in report.monitoring) else WARN), evidence


def run_proof(settings: Settings, sample: int = 20) -> Report:
    env = settings.environment()
    started = datetime.now(UTC).isoformat()
    report = Report(env.name, started, [])
    steps: list[tuple[str, Callable[[], tuple[str, list[str]]]]] = [
        ("contracts readable and identical to Git", lambda: check_contracts(settings, env)),
        ("latest DAG run per feature set succeeded", lambda: check_dag_runs(settings, env)),
        ("version prefix, latest pointer and metadata.json agree", lambda: check_store(settings, env)),
        ("feast registry holds every contract", lambda: check_registry(settings, env)),
        ("materialized, fresh, online == offline", lambda: check_online(settings, env, sample)),
        ("no PII feature reaches an export unmasked", lambda: check_pii(settings, env)),
        ("models' feature services: online and training set agree", lambda: check_services(settings, env)),
        ("freshness, volume, null rate and drift within thresholds", lambda: check_monitoring(settings, env, report)),
    ]
    checks = report.checks
    for name, run in steps:
        start = time.perf_counter()
        try:
            status, evidence = run()
        except PlatformError as exc:
            status, evidence = FAIL, [str(exc)]
        checks.append(Check(name, status, evidence, round(time.perf_counter() - start, 3)))
    return report


def write_report(report: Report, path: Path) -> tuple[Path, Path]:
    """FILE.json for machines, FILE.md for people, and FILE.html: the checks plus the monitoring charts."""
    import html

    from feature_platform import monitoring
    from feature_platform.store import write_files_atomic

    base = path.with_suffix("")
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    rows = "".join(f"<tr><td>{html.escape(c.name)}</td><td class='{c.status.lower()}'>{c.status}</td>"
                   f"<td>{c.seconds:.2f}</td><td>{'<br>'.join(html.escape(e) for e in c.evidence)}</td></tr>"
                   for c in report.checks)
    page = monitoring.render_html(report.monitoring, report.environment, datetime.now(UTC))
    summary = (f"<h1>Proof: {html.escape(report.environment)}: {'PASS' if report.ok else 'FAIL'}</h1>"
               f"<table><tr><th>check</th><th>status</th><th>s</th><th>evidence</th></tr>{rows}</table>")
    write_files_atomic({json_path: json.dumps(report.to_json(), indent=2), md_path: report.to_markdown(),
                        base.with_suffix(".html"): page.replace("<body>", "<body>" + summary, 1)})
    return json_path, md_path


__all__ = ["Check", "Report", "run_proof", "write_report"]
