"""Airflow for real: the DAG folder through Airflow's own DagBag, and whole DAG runs with `airflow dags test`
on a SQLite metadata DB against redis-server and moto's S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from feature_platform import build as builds
from feature_platform import feast_bridge, pipeline
from tests.conftest import REPO
from tests.helpers import data_store, raw_store, seed_raw

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def migration_job_command() -> str:
    """The shell command of the Airflow chart's migration job, as argocd/values/airflow-common.yaml sets it."""
    values = yaml.safe_load((REPO / "argocd" / "values" / "airflow-common.yaml").read_text())
    args = values["migrateDatabaseJob"]["args"]
    assert args[:2] == ["bash", "-c"]
    return args[2]


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    """A SQLite metadata DB set up once per session by the very command the chart's migration job runs
    (migrate, then create the DAGs' pools)."""
    home = tmp_path_factory.mktemp("airflow")
    command = migration_job_command().replace("airflow ", f"{BIN / 'airflow'} ")
    result = subprocess.run(["bash", "-c", command], env=_airflow_env(home, {}),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return home


def test_migration_job_creates_every_pool_the_dags_use(airflow_home) -> None:
    """The DAGs' pools exist after the migration job's command, with the slots dag_factory declares."""
    from feature_platform.dag_factory import POOLS

    result = subprocess.run([str(BIN / "airflow"), "pools", "list", "-o", "json"], env=_airflow_env(airflow_home, {}),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    pools = {p["pool"]: int(p["slots"]) for p in json.loads(result.stdout)}
    assert {name: pools.get(name) for name in POOLS} == {name: slots for name, (slots, _) in POOLS.items()}


def _airflow_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"), "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "PYTHONPATH": str(REPO), **extra}


# As Airflow's dag-processor parses: the `airflow.*` modules a DAG file names are imported once before the parse
# (parsing_pre_import_modules), then the file is imported under dagbag_import_timeout.
PRE_IMPORT = """
import importlib, pathlib
from airflow.utils.file import iter_airflow_imports
for _file in pathlib.Path(sys.argv[1]).glob("*.py"):
    for _module in iter_airflow_imports(str(_file)):
        importlib.import_module(_module)
"""

PARSE_SCRIPT = """
import json, sys, time
start = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
""" + PRE_IMPORT + """
imported = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
parsed = time.perf_counter()
print(json.dumps({
    "import_errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": {dag_id: {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks} for dag_id, dag in bag.dags.items()},
    "heavy_modules": sorted(m for m in ("feast", "duckdb", "pyarrow", "redis", "boto3") if m in sys.modules),
    "parse_seconds": parsed - imported,
}))
"""


def _dagbag(home: Path, extra: dict[str, str]) -> dict:
    result = subprocess.run([sys.executable, "-c", PARSE_SCRIPT, str(REPO / "dags")],
                            env=_airflow_env(home, extra), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_dagbag_has_one_dag_per_feature_set(airflow_home, contracts_copy) -> None:
    """Airflow's DagBag loads the folder with no import errors: one DAG per feature set, tasks in order,
    and parsing stays light (no Feast, DuckDB, pyarrow or network clients imported)."""
    bag = _dagbag(airflow_home, {"FEATURE_PLATFORM_CONTRACTS": str(contracts_copy)})
    assert bag["import_errors"] == {}
    assert sorted(bag["dags"]) == ["feature_set__customer_category_spend", "feature_set__customer_embedding",
                                   "feature_set__customer_profile", "feature_set__customer_spend",
                                   "feature_set__driver_hourly_stats"]
    spend = bag["dags"]["feature_set__customer_spend"]
    assert spend["validate_contract"] == ["v1.build", "v2.build"]
    for v in ("v1", "v2"):
        assert spend[f"{v}.build"] == [f"{v}.quality_gate"]
        assert spend[f"{v}.quality_gate"] == [f"{v}.write_version"]
        assert spend[f"{v}.write_version"] == [f"{v}.promote_latest"]
        assert spend[f"{v}.promote_latest"] == ["feast_apply"]
        assert spend[f"materialize.{v}"] == ["verify_online"]  # one task per view
    assert spend["feast_apply"] == ["materialize.v1", "materialize.v2"]
    assert bag["heavy_modules"] == []
    assert bag["parse_seconds"] < 5  # generous; measured ~0.1 s (see docs/benchmarks.md)


def test_kubernetes_mode_builds_pod_operators(airflow_home, contracts_copy) -> None:
    """The same graph in kubernetes mode: every task is a pod running `featurectl step` in the platform image."""
    script = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
""" + PRE_IMPORT + """
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.dags["feature_set__customer_spend"]
out = {}
for t in dag.tasks:
    mounts = [(m.mount_path, m.sub_path) for m in t.volume_mounts]
    out[t.task_id] = {"type": type(t).__name__, "image": t.image, "cmds": t.cmds, "arguments": t.arguments,
                      "mounts": mounts, "namespace": t.namespace, "pool": t.pool, "retries": t.retries,
                      "timeout": t.execution_timeout.total_seconds(), "doc": t.doc_md,
                      "outlets": sorted(a.name for a in t.outlets),
                      "resources": t.container_resources.to_dict(),
                      "pod_security": t.security_context.to_dict() if t.security_context else None,
                      "container_security": t.container_security_context.to_dict()}
print(json.dumps(out))
"""
    env = _airflow_env(airflow_home, {"FEATURE_PLATFORM_CONTRACTS": str(contracts_copy),
                                      "FEATURE_PLATFORM_DAG_MODE": "kubernetes",
                                      "FEATURE_PLATFORM_IMAGE": "registry.example.com/feature-platform@sha256:abc",
                                      "FEATURE_PLATFORM_NAMESPACE": "feature-platform-dev",
                                      "FEATURE_PLATFORM_ENV": "dev"})
    result = subprocess.run([sys.executable, "-c", script, str(REPO / "dags")], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = json.loads(result.stdout.strip().splitlines()[-1])
    assert {t["type"] for t in tasks.values()} == {"KubernetesPodOperator"}
    gate = tasks["v2.quality_gate"]
    assert gate["cmds"] == ["featurectl"] and gate["arguments"][:3] == ["step", "quality_gate", "customer_spend"]
    assert "{{ ti.xcom_pull(task_ids='v2.build') | tojson }}" in gate["arguments"]
    assert gate["image"].endswith("@sha256:abc") and gate["namespace"] == "feature-platform-dev"
    assert all(sub is None for t in tasks.values() for _, sub in t["mounts"])  # never subPath
    # From the dev environment contract: per-step timeouts, retries and resources; the registry pool.
    dev = yaml.safe_load((contracts_copy / "environments/dev.yaml").read_text())["schedule"]
    assert tasks["v2.build"]["timeout"] == dev["steps"]["build"]["timeout_minutes"] * 60
    assert gate["timeout"] == dev["timeout_minutes"] * 60 and gate["retries"] == dev["retries"]
    assert {t: tasks[t]["pool"] for t in ("feast_apply", "materialize.v1", "materialize.v2")} == {
        "feast_apply": "feature_platform_registry", "materialize.v1": "feature_platform_materialize",
        "materialize.v2": "feature_platform_materialize"}
    assert gate["pool"] == "default_pool"
    assert gate["resources"]["limits"] and gate["resources"]["requests"]
    for task in tasks.values():
        assert task["pod_security"]["run_as_non_root"] is True
        assert task["pod_security"]["seccomp_profile"]["type"] == "RuntimeDefault"
        assert task["container_security"]["allow_privilege_escalation"] is False
        assert task["container_security"]["capabilities"]["drop"] == ["ALL"]
        assert task["container_security"]["read_only_root_filesystem"] is True
        assert "customer_spend" in task["doc"]
    assert tasks["v2.promote_latest"]["outlets"] == ["dev.customer_spend_v2.offline"]
    assert tasks["materialize.v1"]["outlets"] == ["dev.customer_spend_v1.online"]
    assert tasks["materialize.v2"]["outlets"] == ["dev.customer_spend_v2.online"]
    assert tasks["materialize.v2"]["arguments"][:5] == ["step", "materialize", "customer_spend", "--xcom",
                                                         "--version"]
    assert tasks["v2.build"]["outlets"] == []


SHARDED_SCRIPT = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
""" + PRE_IMPORT + """
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.dags["feature_set__customer_spend"]
task = dag.get_task("materialize.v2")
print(json.dumps({"type": type(task).__name__, "expand": task.expand_input.value,
                  "pool": task.partial_kwargs.get("pool"), "v1": type(dag.get_task("materialize.v1")).__name__}))
"""


@pytest.mark.parametrize("mode", ["local", "kubernetes"])
def test_a_large_view_fans_out_into_mapped_shard_tasks(airflow_home, contracts_copy, mode) -> None:
    """`materialization.shards_per_view` in the environment contract: that view's task is mapped over its shards
    (Airflow dynamic task mapping; a pod each in kubernetes mode); the other view stays one task."""
    path = contracts_copy / "environments/dev.yaml"
    data = yaml.safe_load(path.read_text())
    data["materialization"] = {"shards_per_view": {"customer_spend_v2": 3}}
    path.write_text(yaml.safe_dump(data))
    env = _airflow_env(airflow_home, {"FEATURE_PLATFORM_CONTRACTS": str(contracts_copy), "FEATURE_PLATFORM_ENV": "dev",
                                      "FEATURE_PLATFORM_DAG_MODE": mode,
                                      "FEATURE_PLATFORM_IMAGE": "registry.example.com/fp@sha256:" + "0" * 64})
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(REPO / "dags")], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    task = json.loads(result.stdout.strip().splitlines()[-1])
    assert task["type"] == "MappedOperator" and task["v1"] != "MappedOperator"
    if mode == "local":
        assert [k["shard"] for k in task["expand"]["op_kwargs"]] == ["0/3", "1/3", "2/3"]
    else:
        assert [a[a.index("--shard") + 1] for a in task["expand"]["arguments"]] == ["0/3", "1/3", "2/3"]


def _dev_contracts(contracts_copy: Path) -> None:
    """Retry after one second in tests (the shipped dev contract waits a minute)."""
    path = contracts_copy / "environments/dev.yaml"
    data = yaml.safe_load(path.read_text())
    data["schedule"].update({"retries": 1, "retry_delay_seconds": 1})
    path.write_text(yaml.safe_dump(data))


def _run_dag(airflow_home: Path, settings, dag_id: str, extra: dict[str, str] | None = None):
    env = _airflow_env(airflow_home, {
        **settings.values, "FEATURE_PLATFORM_CONTRACTS": str(settings.contracts_dir),
        "FEATURE_PLATFORM_HOME": str(settings.home), "FEATURE_PLATFORM_ENV": settings.env_name, **(extra or {})})
    return subprocess.run([str(BIN / "airflow"), "dags", "test", dag_id], env=env, capture_output=True, text=True,
                          timeout=600)


def test_dag_runs_build_promote_serve_and_pass_the_proof(airflow_home, dev_settings, contracts_copy,
                                                         s3_clean) -> None:
    """`airflow dags test` runs each feature set's whole chain: S3 has version + latest + metadata.json, Redis
    serves values, and `featurectl proof` on the S3 profile passes afterwards."""
    from feature_platform.proof import run_proof

    _dev_contracts(contracts_copy)
    seed_raw(dev_settings)
    for name in dev_settings.contracts().names():
        result = _run_dag(airflow_home, dev_settings, f"feature_set__{name}")
        assert result.returncode == 0 and "state=success" in result.stdout + result.stderr, result.stderr[-4000:]

    store = data_store(dev_settings)
    for version in ("v1", "v2"):
        pointer = builds.read_pointer(store, "customer_spend", version)
        contract = dev_settings.contracts().get("customer_spend", int(version[1:]))
        metadata = builds.read_metadata(store, contract, pointer["build_id"])
        assert metadata["schema_hash"] == contract.schema_hash
        assert metadata["run_id"].startswith("manual__")
    keys = {o["Key"] for o in s3_clean.client().list_objects_v2(Bucket="feature-platform-dev")["Contents"]}
    assert "feast/registry.db" in keys and "features/customer_spend/latest.json" in keys
    assert "features/_monitor/customer_spend/monitor.html" in keys  # the monitor task ran and published
    from feature_platform import audit

    actors = {e["actor"] for e in audit.read(dev_settings, dev_settings.environment())}
    assert {a.split("/")[0] for a in actors} == {f"airflow:feature_set__{name}"  # one run per DAG
                                                 for name in dev_settings.contracts().names()}
    assert all(a.split("/")[1].startswith("manual__") for a in actors), actors
    rows = feast_bridge.read_online(dev_settings, "customer_spend", ["1001", "1002", "1003"])
    assert all(r["txn_count_1d"] is not None for r in rows)
    report = run_proof(dev_settings)
    assert report.ok, [c.evidence for c in report.checks if c.status != "PASS"]

    # Each promote published its view's offline Asset, each materialize every view's online Asset.
    events = _asset_events(airflow_home)
    for contract in dev_settings.contracts().all():
        view = contract.feature_view_name
        assert events.get(f"dev.{view}.offline") == [f"{contract.version_label}.promote_latest"], view
        assert events.get(f"dev.{view}.online") == [f"materialize.{contract.version_label}"], view


def _asset_events(airflow_home: Path) -> dict[str, list[str]]:
    """Asset name -> the task ids that emitted an event for it, read from Airflow's metadata DB."""
    import sqlite3

    with sqlite3.connect(airflow_home / "airflow.db") as db:
        rows = db.execute("SELECT a.name, e.source_task_id FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                          "ORDER BY e.id").fetchall()
    events: dict[str, list[str]] = {}
    for name, task_id in rows:
        events.setdefault(name, []).append(task_id)
    return events


def test_failed_build_keeps_latest_and_retry_succeeds(airflow_home, dev_settings, contracts_copy, tmp_path) -> None:
    """The raw table vanishes: the build task fails, latest stays on the previous build; the retry succeeds."""
    _dev_contracts(contracts_copy)
    seed_raw(dev_settings)
    first = pipeline.build_and_promote(dev_settings, "customer_profile")

    raw = raw_store(dev_settings)
    backup = tmp_path / "raw_backup"
    backup.mkdir()
    table = pq.read_table(raw.path("customers"), filesystem=raw.fs)
    pq.write_table(table.slice(0, table.num_rows - 5), backup / "part-00000.parquet")  # new data comes back
    raw.delete("customers")

    record = tmp_path / "hook.json"
    notifiers = [{"class": "tests.airflow_hooks.RepairSourceOnRetry", "on": ["retry"],
                  "kwargs": {"record": str(record), "backup": str(backup)}}]
    result = _run_dag(airflow_home, dev_settings, "feature_set__customer_profile",
                      {"FEATURE_PLATFORM_NOTIFIERS": json.dumps(notifiers)})
    assert result.returncode == 0 and "state=success" in result.stdout + result.stderr, result.stderr[-4000:]
    calls = json.loads(record.read_text())
    assert [c["task"] for c in calls] == ["v1.build"]
    assert calls[0]["latest"]["build_id"] == first["build_id"]  # the failure moved nothing
    latest = builds.read_pointer(data_store(dev_settings), "customer_profile")
    assert latest["build_id"] != first["build_id"]  # the retry built and promoted the new data


def test_failed_task_notifies_through_configured_notifiers(airflow_home, dev_settings, contracts_copy,
                                                         tmp_path) -> None:
    """No raw data and no retries: the build fails, the configured failure Notifier hears of that task alone
    (the retry-only one hears nothing), the run is recorded as failed, and nothing was promoted."""
    path = contracts_copy / "environments/dev.yaml"
    data = yaml.safe_load(path.read_text())
    data["schedule"].update({"retries": 0, "retry_delay_seconds": 1})
    path.write_text(yaml.safe_dump(data))
    failures, retries = tmp_path / "failures.txt", tmp_path / "retries.txt"
    notifiers = [{"class": "tests.airflow_hooks.RecordFailure", "kwargs": {"record": str(failures)}},
                 {"class": "tests.airflow_hooks.RecordFailure", "on": ["retry"], "kwargs": {"record": str(retries)}}]
    result = _run_dag(airflow_home, dev_settings, "feature_set__customer_profile",
                      {"FEATURE_PLATFORM_NOTIFIERS": json.dumps(notifiers)})
    assert "state=failed" in result.stdout + result.stderr, result.stderr[-4000:]
    assert failures.read_text().split() == ["v1.build"]
    assert not retries.exists()
    record = pipeline.read_run_record(dev_settings, dev_settings.environment(), "customer_profile")
    assert record["status"] == "failed" and "v1.build" in record["detail"]
    with pytest.raises(builds.PointerMissingError):
        builds.read_pointer(data_store(dev_settings), "customer_profile")


@pytest.fixture
def airflow_api(airflow_home, contracts_copy, tmp_path_factory):
    """A real `airflow api-server` on a free port over the session's metadata DB, with Airflow's simple auth
    manager: an admin (to trigger runs) and the proof's read-only user."""
    from tests.services import free_port, wait_until

    work = tmp_path_factory.mktemp("airflow-api")
    passwords = work / "passwords.json"
    passwords.write_text(json.dumps({"admin": "admin-pass", "proof": "proof-pass"}))
    port = free_port()
    env = _airflow_env(airflow_home, {
        "FEATURE_PLATFORM_CONTRACTS": str(contracts_copy), "FEATURE_PLATFORM_ENV": "dev",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,proof:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": "test-only-jwt-secret", "AIRFLOW__API__SECRET_KEY": "test-only-key"})
    serialized = subprocess.run([str(BIN / "airflow"), "dags", "reserialize"], env=env, capture_output=True,
                                text=True, timeout=300)
    assert serialized.returncode == 0, serialized.stderr[-3000:]
    log = (work / "api.log").open("w")
    process = subprocess.Popen([str(BIN / "airflow"), "api-server", "--port", str(port)], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    try:
        wait_until(lambda: urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2).status == 200,
                   "airflow api-server", timeout=120)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_proof_reads_dag_runs_from_a_real_airflow_api_and_refreshes_its_token(airflow_api, dev_settings) -> None:
    """The proof signs in to a real Airflow API server, reads each DAG's newest run, signs in again when its
    token is refused (as when it expires), and says what to do when it has no user."""
    from feature_platform.airflow_api import AirflowApiError, AirflowClient
    from feature_platform.proof import FAIL, check_dag_runs

    admin = AirflowClient(airflow_api, "admin", "admin-pass")
    admin.sign_in()
    request = urllib_request(f"{airflow_api}/api/v2/dags/feature_set__customer_spend/dagRuns", admin.token,
                             {"logical_date": None, "dag_run_id": "proof-test-run"})
    assert request == 200, request

    settings = dev_settings.replace(values={"FEATURE_PLATFORM_AIRFLOW_URL": airflow_api,
                                            "FEATURE_PLATFORM_AIRFLOW_USERNAME": "proof",
                                            "FEATURE_PLATFORM_AIRFLOW_PASSWORD": "proof-pass"})
    status, lines = check_dag_runs(settings, settings.environment())
    assert status == FAIL  # the triggered run is only queued
    spend = next(line for line in lines if line.startswith("customer_spend:"))
    assert "last run queued" in spend

    client = AirflowClient.from_settings(settings.values)
    client.sign_in()
    first = client.token
    client.token = "an-expired-token"
    assert client.last_dag_run("feature_set__customer_spend")["dag_run_id"] == "proof-test-run"
    assert client.token not in ("an-expired-token", None) and first
    assert client.last_dag_run("feature_set__no_such_dag") == {}

    with pytest.raises(AirflowApiError, match="refused the sign-in of 'proof'"):
        AirflowClient(airflow_api, "proof", "wrong").sign_in()
    anonymous = dev_settings.replace(values={"FEATURE_PLATFORM_AIRFLOW_URL": airflow_api})
    status, lines = check_dag_runs(anonymous, anonymous.environment())
    assert status == FAIL and "FEATURE_PLATFORM_AIRFLOW_USERNAME" in lines[0]


def urllib_request(url: str, token: str | None, body: dict) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def airflow_imported_in_process():
    """Importing Airflow configures logging globally (root handlers on the stderr of that moment); put it back,
    or later tests log into a closed capture stream."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


INTERVAL = (datetime(2026, 11, 30, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))  # a daily run's data interval


def test_kubernetes_mode_steps_chain_through_xcom(local_settings, tmp_path, airflow_imported_in_process) -> None:
    """What each pod of the kubernetes mode runs, for real: the operators' own (templated) arguments rendered
    with the upstream pods' XCom results, executed as `featurectl step ...` in topological order. Only the pod
    scheduling is left out (no cluster here)."""
    import jinja2

    from feature_platform.cli import main
    from feature_platform.dag_factory import DagConfig, build_dag
    from tests.helpers import seed_raw

    seed_raw(local_settings)
    config = DagConfig(settings=local_settings, mode="kubernetes", image="registry.example.com/fp@sha256:" + "0" * 64)
    dag = build_dag(config, local_settings.environment(), "customer_spend",
                    local_settings.contracts().versions("customer_spend"))
    xcoms: dict[str, object] = {}

    class TaskInstance:
        def xcom_pull(self, task_ids: str) -> object:
            return xcoms[task_ids]

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    environment.policies["json.dumps_kwargs"] = {"sort_keys": True}
    ran = []
    for task in dag.topological_sort():
        arguments = [environment.from_string(a).render(ti=TaskInstance(), run_id="manual__kpo",
                                                       data_interval_start=INTERVAL[0], data_interval_end=INTERVAL[1])
                     for a in task.arguments]
        xcom_file = tmp_path / f"{task.task_id}.json"
        code = main([*arguments, "--xcom-path", str(xcom_file), "--contracts", str(local_settings.contracts_dir),
                     "--home", str(local_settings.home), "--env", "local"])
        assert code == 0, task.task_id
        xcoms[task.task_id] = json.loads(xcom_file.read_text())
        ran.append(task.task_id)
    assert ran[0] == "validate_contract" and ran[-2:] == ["verify_online", "monitor"]
    assert xcoms["v2.write_version"]["build_id"] == xcoms["v2.promote_latest"]["build_id"]
    assert all(r["ok"] for r in xcoms["verify_online"])
    assert [v["feature_view"] for v in xcoms["monitor"]["views"]] == ["customer_spend_v1", "customer_spend_v2"]
    env_vars = dag.get_task("feast_apply").env_vars
    actor = env_vars["FEATURE_PLATFORM_ACTOR"] if isinstance(env_vars, dict) else next(
        e.value for e in env_vars if e.name == "FEATURE_PLATFORM_ACTOR")
    assert environment.from_string(actor).render(dag=dag, run_id="manual__kpo") == \
        "airflow:feature_set__customer_spend/manual__kpo"  # the audit trail names the DAG run
    metadata = builds.read_metadata(data_store(local_settings), local_settings.contracts().get("customer_spend", 2),
                                    xcoms["v2.write_version"]["build_id"])
    assert metadata["run_id"] == "manual__kpo"
