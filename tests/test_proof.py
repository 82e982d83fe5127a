"""`featurectl proof` on the whole loop, and each known failure reproduced, caught with a precise message,
then recovered. Every scenario here once broke (or would break) a real deployment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from feature_platform import build as builds
from feature_platform import pipeline
from feature_platform.dag_factory import lint_dag_folder
from feature_platform.errors import QualityGateError
from feature_platform.proof import FAIL, PASS, WARN, check_contracts, run_proof, write_report
from tests.conftest import REPO
from tests.helpers import configmap_mount, seed_raw
from tests.services import start_redis

pytestmark = pytest.mark.e2e


def statuses(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def evidence(report, status: str = FAIL) -> str:
    return "\n".join(line for c in report.checks if c.status == status for line in c.evidence)


@pytest.fixture
def local_loop(local_settings):
    seed_raw(local_settings)
    pipeline.run_loop(local_settings)
    return local_settings


def test_proof_passes_on_s3_and_redis_and_writes_reports(dev_settings, tmp_path) -> None:
    """The S3 profile: after the loop every check passes; the report is JSON and Markdown with timings."""
    seed_raw(dev_settings)
    pipeline.run_loop(dev_settings)
    report = run_proof(dev_settings)
    assert report.ok, evidence(report)
    assert set(statuses(report).values()) == {PASS}
    json_path, md_path = write_report(report, tmp_path / "proof")
    data = json.loads(json_path.read_text())
    assert data["ok"] is True and len(data["checks"]) == 8
    assert all(c["seconds"] >= 0 for c in data["checks"])
    assert "| feast registry holds every contract | PASS |" in md_path.read_text()
    page = (tmp_path / "proof.html").read_text()  # the checks plus one freshness and null-rate chart per view
    views = [c for c in dev_settings.contracts().live() if c.online]
    assert "<h1>Proof: dev: PASS</h1>" in page and page.count("data-chart='freshness'") == len(views) == 6


def test_readme_main_command_ends_with_a_passing_proof(tmp_path) -> None:
    """`featurectl demo` (what `scripts/dev demo` runs) on embedded defaults prints the proof and exits 0."""
    env = {**os.environ, "FEATURE_PLATFORM_HOME": str(tmp_path / "home")}
    env.pop("FEATURE_PLATFORM_ENV", None)
    result = subprocess.run([str(Path(sys.executable).parent / "featurectl"), "demo", "--scale", "0.1"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "proof PASSED for environment local" in result.stdout
    assert (tmp_path / "home" / "local" / "proof.md").exists()


def test_demo_parses_the_contracts_and_environments_once(local_settings, capsys) -> None:
    """One `featurectl demo` (sample data, build, apply, materialize, verify, proof) parses the contracts once and
    the environments once: every layer gets them from the process's one parse."""
    from feature_platform import contracts
    from feature_platform.cli import main

    contracts._parsed.clear()
    contracts.parse_counts.clear()
    code = main(["demo", "--scale", "0.05", "--json", "--contracts", str(local_settings.contracts_dir),
                 "--home", str(local_settings.home), "--env", "local"])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert dict(contracts.parse_counts) == {"contracts": 1, "environments": 1}
    # A changed file is parsed again (an edit, a Git pull, a ConfigMap swap), once.
    path = local_settings.contracts_dir / "feature_sets" / "customer_profile" / "v1.yaml"
    path.write_text(path.read_text() + "\n# touched\n")
    local_settings.contracts()
    local_settings.contracts()
    assert contracts.parse_counts["contracts"] == 2


def test_missing_s3fs_is_named_then_recovers(dev_settings, monkeypatch) -> None:
    """A runtime without s3fs (in no Feast extra) fails with the install hint, not a deep ImportError."""
    seed_raw(dev_settings)
    pipeline.run_loop(dev_settings)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` now raises ImportError
    report = run_proof(dev_settings)
    assert not report.ok
    assert "s3fs is not installed" in evidence(report) and "pip install s3fs" in evidence(report)
    monkeypatch.undo()
    assert run_proof(dev_settings).ok


def test_subpath_mount_is_stale_and_detected(local_settings, tmp_path) -> None:
    """A contract mounted with subPath keeps its old content after the ConfigMap changes: proof names it."""
    mount = configmap_mount(local_settings.contracts_dir, tmp_path / "mount")
    settings = local_settings.replace(contracts_dir=mount)
    assert check_contracts(settings, settings.environment())[0] == PASS

    key = "feature_sets.customer_profile.v1.yaml"
    stale = (mount / key).read_text()
    (mount / key).unlink()
    (mount / key).write_text(stale.replace("ttl: 30d", "ttl: 29d"))  # a subPath copy from an older revision
    status, lines = check_contracts(settings, settings.environment())
    assert status == FAIL
    assert any("mounted with subPath and will never update" in line for line in lines)
    assert any("changed its schema in place" in line for line in lines)

    (mount / key).unlink()
    os.symlink(f"..data/{key}", mount / key)  # mounted as a directory again
    assert check_contracts(settings, settings.environment())[0] == PASS


def test_airflow_variable_at_parse_time_is_flagged(tmp_path) -> None:
    """A DAG reading an Airflow Variable at module level is caught by the guard with file and line;
    the repo's own DAG folder is clean."""
    assert lint_dag_folder(REPO / "dags") == []
    dags = tmp_path / "dags"
    shutil.copytree(REPO / "dags", dags)
    bad = dags / "threshold_dag.py"
    bad.write_text("from airflow.sdk import Variable\n\nTHRESHOLD = Variable.get('drift_threshold')\n")
    [problem] = lint_dag_folder(dags)
    assert problem.startswith(f"{bad}:3: Airflow Variable read at parse time")
    bad.unlink()
    assert lint_dag_folder(dags) == []


def test_redis_down_fails_proof_then_recovers(dev_settings) -> None:
    redis = start_redis()
    settings = dev_settings.replace(values={**dev_settings.values, "FEATURE_PLATFORM_REDIS_ADDRESS": redis.address})
    seed_raw(settings)
    pipeline.run_loop(settings)
    redis.stop()
    report = run_proof(settings)
    assert statuses(report)["materialized, fresh, online == offline"] == FAIL
    assert "online store unreachable" in evidence(report)
    again = start_redis()  # a new, empty Redis: recovery is re-materializing, which is idempotent
    try:
        settings = settings.replace(values={**settings.values, "FEATURE_PLATFORM_REDIS_ADDRESS": again.address})
        assert statuses(run_proof(settings))["materialized, fresh, online == offline"] == FAIL  # empty: missing
        pipeline.materialize(settings)
        assert run_proof(settings).ok
    finally:
        again.stop()


def test_build_died_before_metadata_is_reported_not_served(local_loop, monkeypatch) -> None:
    """An unfinished build shows up as a WARN with its id; latest still serves the previous build."""
    from tests.helpers import read_raw, replace_raw

    table = read_raw(local_loop, "customers")
    replace_raw(local_loop, "customers", table.slice(0, table.num_rows - 3))
    monkeypatch.setattr(builds, "write_metadata", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        pipeline.build_and_promote(local_loop, "customer_profile")
    report = run_proof(local_loop)
    assert report.ok and statuses(report)["version prefix, latest pointer and metadata.json agree"] == WARN
    assert "1 unfinished build(s) never promoted" in evidence(report, WARN)
    monkeypatch.undo()
    pipeline.build_and_promote(local_loop, "customer_profile")  # recovery: the same build finishes
    assert statuses(run_proof(local_loop))["version prefix, latest pointer and metadata.json agree"] == PASS


def test_contract_changed_under_built_data_is_drift(local_loop) -> None:
    """A contract edited in place after its build: proof fails on the lock, the data and the registry."""
    path = local_loop.contracts_dir / "feature_sets/customer_profile/v1.yaml"
    original = path.read_text()
    path.write_text(original.replace("ttl: 30d", "ttl: 45d"))
    report = run_proof(local_loop)
    text = evidence(report)
    assert "changed its schema in place" in text
    assert "the data drifted from the contract: rebuild it" in text
    assert "customer_profile_v1 was applied from schema" in text
    path.write_text(original)
    assert run_proof(local_loop).ok


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("split_part(email, '@', 2)                                  AS email_domain",
         "split_part(email, '@', 2) AS email_domain, email", "column(s) not in the contract email"),
        (",\n           split_part(email, '@', 2)                                  AS email_domain", "",
         "missing column(s) email_domain"),
        ("           tier,\n", "           CAST(length(tier) AS BIGINT) AS tier,\n",
         "column tier: expected string but the transform returned int64"),
    ],
    ids=["new-column", "missing-column", "retyped-column"],
)
def test_transform_output_drift_fails_the_build(local_loop, old: str, new: str, fragment: str) -> None:
    """New, missing or retyped columns are refused at build time; latest stays on the good build."""
    before = builds.read_pointer(pipeline.object_store(local_loop, local_loop.environment()), "customer_profile")
    path = local_loop.contracts_dir / "feature_sets/customer_profile/v1.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(QualityGateError, match=r"drifted|expected") as info:
        pipeline.build_and_promote(local_loop, "customer_profile")
    assert fragment in str(info.value)
    after = builds.read_pointer(pipeline.object_store(local_loop, local_loop.environment()), "customer_profile")
    assert after["build_id"] == before["build_id"]


def test_registry_from_other_contracts_is_a_mismatch(local_loop, tmp_path) -> None:
    """The registry was applied from a different contract version: proof says which view and which schema."""
    other = tmp_path / "other_contracts"
    shutil.copytree(local_loop.contracts_dir, other)
    path = other / "feature_sets/driver_hourly_stats/v1.yaml"
    path.write_text(path.read_text().replace("ttl: 2d", "ttl: 3d"))
    (other / "contracts.lock").unlink()  # another repository's contracts (its own lock is not ours)
    other_settings = local_loop.replace(contracts_dir=other)
    pipeline.build_and_promote(other_settings, "driver_hourly_stats")
    pipeline.apply(other_settings)
    report = run_proof(local_loop)
    assert "driver_hourly_stats_v1 was applied from schema" in evidence(report)
    pipeline.build_and_promote(local_loop, "driver_hourly_stats")
    pipeline.apply(local_loop)  # recovery: apply from the contracts in use
    pipeline.materialize(local_loop)
    assert run_proof(local_loop).ok


def test_dag_run_check_reads_the_airflow_api(local_settings) -> None:
    """With FEATURE_PLATFORM_AIRFLOW_URL set, the proof asks Airflow's REST API (v2) for each DAG's last run,
    sending the bearer token; a failed run fails the check. (A stub API on loopback: a live Airflow needs a
    cluster.)"""
    import http.server
    import threading

    from feature_platform.proof import check_dag_runs
    from tests.services import free_port

    seen: list[tuple[str, str | None]] = []
    states = {"feature_set__customer_spend": "failed"}

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            dag_id = self.path.split("/")[4]
            body = json.dumps({"dag_runs": [{"state": states.get(dag_id, "success"),
                                             "end_date": "2026-11-23T07:00:00Z"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", free_port()), Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = local_settings.replace(values={
            "FEATURE_PLATFORM_AIRFLOW_URL": f"http://127.0.0.1:{server.server_port}",
            "FEATURE_PLATFORM_AIRFLOW_TOKEN": "t0ken"})
        status, lines = check_dag_runs(settings, settings.environment())
        assert status == FAIL and "customer_spend: last run failed at 2026-11-23T07:00:00Z" in lines
        assert ("/api/v2/dags/feature_set__customer_profile/dagRuns?order_by=-run_after&limit=1",
                "Bearer t0ken") in seen
        states.clear()
        assert check_dag_runs(settings, settings.environment())[0] == PASS
    finally:
        server.shutdown()
