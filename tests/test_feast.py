"""Feast on real parts: redis-server, moto's S3 server (registry + data), the plain feast CLI and feast serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pytest

from feature_platform import feast_bridge, pipeline, registries
from feature_platform.cli import main
from feature_platform.environments import Settings
from feature_platform.errors import LockTimeout
from feature_platform.locks import s3_lock
from tests.conftest import REPO
from tests.helpers import seed_raw
from tests.services import free_port, start_redis, wait_until

pytestmark = pytest.mark.e2e

REGISTRY_KEY = "feast/registry.db"


def registry_head(s3) -> dict:
    return s3.client().head_object(Bucket="feature-platform-dev", Key=REGISTRY_KEY)


def test_full_loop_online_equals_offline(dev_settings, s3_clean, redis_clean) -> None:
    """build -> apply (S3 registry) -> materialize (Redis) -> online == offline latest, for every feature set."""
    seed_raw(dev_settings)
    result = pipeline.run_loop(dev_settings)
    assert {r["feature_view"] for r in result["verify"]} == {
        "customer_category_spend_v1", "customer_embedding_v1", "customer_profile_v1", "customer_spend_v1",
        "customer_spend_v2", "driver_hourly_stats_v1"}
    assert all(r["ok"] and r["sampled"] > 0 and r["mismatch_count"] == 0 for r in result["verify"])
    assert registry_head(s3_clean)["ContentLength"] > 0
    assert redis_clean.client(db=0).dbsize() > 0
    assert redis_clean.client(db=1).dbsize() == 0  # prod's Redis DB is untouched by dev

    before = registry_head(s3_clean)
    again = pipeline.apply(dev_settings)
    assert again["changed"] == []
    assert registry_head(s3_clean)["ETag"] == before["ETag"]  # a true no-op: the registry was not rewritten

    rows = feast_bridge.read_online(dev_settings, "customer_spend", ["1001", "1002"], version=2)
    assert all(r["max_txn_amount_1d"] is not None and r["txn_count_1d"] >= 1 for r in rows)


def test_v1_to_v2_upgrade_keeps_v1_readers(dev_settings, contracts_copy) -> None:
    """Shipping v2 adds a feature view; v1's view, build and online values are untouched."""
    v2 = contracts_copy / "feature_sets/customer_spend/v2.yaml"
    v2_text = v2.read_text()
    v2.unlink()
    model = contracts_copy / "feature_services/fraud_model/v1.yaml"  # the example model reads v2: not yet either
    model_text = model.read_text()
    model.unlink()
    seed_raw(dev_settings)
    pipeline.run_loop(dev_settings)
    v1_before = feast_bridge.read_online(dev_settings, "customer_spend", ["1001", "1003"], version=1)

    v2.write_text(v2_text)
    model.write_text(model_text)
    pipeline.build_and_promote(dev_settings, "customer_spend", version=2)
    applied = pipeline.apply(dev_settings)
    assert applied["changed"] == ["customer_spend_v2"]
    pipeline.materialize(dev_settings, feature_views=["customer_spend_v2"])
    assert feast_bridge.read_online(dev_settings, "customer_spend", ["1001", "1003"], version=1) == v1_before
    v2_rows = feast_bridge.read_online(dev_settings, "customer_spend", ["1001", "1003"], version=2)
    assert [r["txn_amount_1d"] for r in v2_rows] == [r["txn_amount_1d"] for r in v1_before]
    assert all(r["max_txn_amount_1d"] is not None for r in v2_rows)
    pipeline.verify(dev_settings)


def test_incremental_materialize_resumes(dev_settings) -> None:
    """materialize --incremental after a full one succeeds and keeps online == offline."""
    seed_raw(dev_settings)
    pipeline.run_loop(dev_settings)
    done = pipeline.materialize(dev_settings, incremental=True)
    assert [v["mode"] for v in done] == ["incremental"] * len(done)
    pipeline.verify(dev_settings)


def _apply_concurrently_from_two_contract_sets(settings: Settings, contracts: Path, tmp_path: Path) -> None:
    """Two applies at once, each from a contracts directory holding one feature set; both must survive."""
    only = {}
    for name in ("customer_profile", "driver_hourly_stats"):
        root = tmp_path / f"only_{name}"
        (root / "feature_sets").mkdir(parents=True)
        (root / "environments").symlink_to(contracts / "environments")
        (root / "contracts.lock").symlink_to(contracts / "contracts.lock")
        (root / "feature_sets" / name).symlink_to(contracts / "feature_sets" / name)
        only[name] = settings.replace(contracts_dir=root)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(settings: Settings) -> None:
        try:
            barrier.wait(timeout=30)
            feast_bridge.apply(settings)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in only.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    store = feast_bridge.open_store(settings, settings.environment())
    assert {"customer_profile_v1", "driver_hourly_stats_v1"} <= set(feast_bridge.registered_views(store))


def test_concurrent_applies_lose_no_update(dev_settings, contracts_copy, tmp_path) -> None:
    """Two applies from different contract sets at once: the S3 lease serializes them, both views survive."""
    seed_raw(dev_settings)
    pipeline.build_all(dev_settings)
    _apply_concurrently_from_two_contract_sets(dev_settings, contracts_copy, tmp_path)


def test_sql_registry_on_postgres(dev_settings, contracts_copy, postgres_server, redis_clean, tmp_path) -> None:
    """prod's PostgreSQL registry option on a real PostgreSQL: the loop, concurrent applies, the proof."""
    import psycopg
    import yaml

    from feature_platform.proof import run_proof

    path = contracts_copy / "environments/prod.yaml"
    prod = yaml.safe_load(path.read_text())
    prod["registry"] = {"type": "sql", "url_env": "FEATURE_PLATFORM_REGISTRY_URL", "cache_ttl_seconds": 60}
    path.write_text(yaml.safe_dump(prod))
    settings = dev_settings.replace(env_name="prod", values={
        **dev_settings.values, "FEATURE_PLATFORM_REGISTRY_URL": postgres_server.url(),
        # prod's governance Secret (docs/governance.md): without it prod's proof and exports fail closed
        "FEATURE_PLATFORM_AUTH_KEY": "prod-test-auth-key-0123456789abcdef-0123", "FEATURE_PLATFORM_PII_KEY":
            "prod-test-pii-key-0123456789abcdef-01234"})
    seed_raw(settings)
    pipeline.build_all(settings)
    _apply_concurrently_from_two_contract_sets(settings, contracts_copy, tmp_path)
    pipeline.run_loop(settings)
    with psycopg.connect(postgres_server.url().replace("postgresql+psycopg", "postgresql")) as conn:
        names = {row[0] for row in conn.execute("SELECT feature_view_name FROM feature_views")}
    assert names == {"customer_category_spend_v1", "customer_embedding_v1", "customer_profile_v1", "customer_spend_v1",
                     "customer_spend_v2", "driver_hourly_stats_v1"}
    assert redis_clean.client(db=1).dbsize() > 0 and redis_clean.client(db=0).dbsize() == 0  # prod's Redis DB
    report = run_proof(settings)
    assert report.ok, [c.evidence for c in report.checks if c.status != "PASS"]
    pii = next(c for c in report.checks if "PII" in c.name)
    assert pii.evidence == ["customer_profile_v1: as team payments-ml, masked email_domain, dropped -"]
    from feature_platform import audit

    assert {c["object"] for e in audit.read(settings, settings.environment()) for c in e["changes"]} >= {
        "customer_spend_v2", "customer_spend_v2_readers"}  # the audit table in the registry's database


def test_apply_waits_for_the_registry_lease(dev_settings, monkeypatch) -> None:
    """While another writer holds the lease, apply does not write; past the timeout it fails clearly."""
    seed_raw(dev_settings)
    pipeline.build_all(dev_settings)
    monkeypatch.setattr(registries, "LOCK_TIMEOUT", 1.0)
    lock_uri = "s3://feature-platform-dev/feast/registry.db.lock"
    with s3_lock(lock_uri, dev_settings.s3_endpoint_url, timeout=5), pytest.raises(LockTimeout, match="held by"):
        feast_bridge.apply(dev_settings)
    assert feast_bridge.apply(dev_settings).changed  # released: the next apply goes through


def cli(settings: Settings, *args: str, capsys) -> tuple[int, str, str]:
    """Run featurectl in-process with the settings' variables as the process environment."""
    env = {**settings.values, "FEATURE_PLATFORM_CONTRACTS": str(settings.contracts_dir),
           "FEATURE_PLATFORM_HOME": str(settings.home), "FEATURE_PLATFORM_ENV": settings.env_name}
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        code = main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out, err = capsys.readouterr()
    return code, out, err


def test_clear_errors_not_tracebacks(dev_settings, contracts_copy, capsys) -> None:
    """latest missing, registry missing, contract/registry mismatch, Redis down: one line, non-zero exit."""
    code, _, err = cli(dev_settings, "apply", capsys=capsys)
    assert code == 1 and "no latest pointer" in err and "featurectl build" in err and "Traceback" not in err

    seed_raw(dev_settings)
    pipeline.build_all(dev_settings)
    code, _, err = cli(dev_settings, "materialize", capsys=capsys)
    assert code == 1 and "is not in the registry" in err and "run `featurectl apply`" in err

    assert cli(dev_settings, "apply", capsys=capsys)[0] == 0
    profile = contracts_copy / "feature_sets/customer_profile/v1.yaml"
    profile.write_text(profile.read_text().replace("ttl: 30d", "ttl: 31d"))
    code, _, err = cli(dev_settings, "online", "customer_profile", "1001", capsys=capsys)
    assert code == 1 and "customer_profile_v1 was applied from schema" in err
    profile.write_text(profile.read_text().replace("ttl: 31d", "ttl: 30d"))

    down = dev_settings.replace(values={**dev_settings.values,
                                        "FEATURE_PLATFORM_REDIS_ADDRESS": f"127.0.0.1:{free_port()}"})
    code, _, err = cli(down, "materialize", capsys=capsys)
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and "unreachable while materializing" in line and "Traceback" not in err

    no_password = dev_settings.replace(values={k: v for k, v in dev_settings.values.items()
                                               if k != "FEATURE_PLATFORM_REDIS_PASSWORD"})
    code, _, err = cli(no_password, "verify", capsys=capsys)
    assert code == 2 and "FEATURE_PLATFORM_REDIS_PASSWORD is not set" in err, err


def test_redis_down_during_materialize_then_recovery(dev_settings, tmp_path) -> None:
    """Redis dies mid-run: materialize fails with a clear error; once Redis is back, a re-run succeeds."""
    from feature_platform.errors import OnlineStoreUnavailable

    redis = start_redis()
    settings = dev_settings.replace(values={**dev_settings.values, "FEATURE_PLATFORM_REDIS_ADDRESS": redis.address})
    seed_raw(settings)
    pipeline.build_all(settings)
    pipeline.apply(settings)
    redis.stop()
    with pytest.raises(OnlineStoreUnavailable, match="unreachable while materializing"):
        pipeline.materialize(settings)
    again = start_redis()
    try:
        settings = settings.replace(values={**settings.values, "FEATURE_PLATFORM_REDIS_ADDRESS": again.address})
        pipeline.materialize(settings)
        pipeline.verify(settings)
    finally:
        again.stop()


def _process_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.values, "FEATURE_PLATFORM_CONTRACTS": str(settings.contracts_dir),
            "FEATURE_PLATFORM_HOME": str(settings.home), "FEATURE_PLATFORM_ENV": settings.env_name,
            "PYTHONPATH": str(REPO / "src")}


def test_plain_feast_cli_works_on_the_generated_repo(dev_settings) -> None:
    """`feast apply`, `feast feature-views list` and `feast materialize-incremental` work on feature_repo/."""
    seed_raw(dev_settings)
    pipeline.build_all(dev_settings)
    config = feast_bridge.write_feature_store_yaml(dev_settings, dev_settings.environment())
    feast = str(Path(sys.executable).parent / "feast")
    env = _process_env(dev_settings)
    run = lambda *a: subprocess.run([feast, "-c", str(REPO / "feature_repo"), "-f", str(config), *a],  # noqa: E731
                                    env=env, capture_output=True, text=True, timeout=300)
    applied = run("apply")
    assert applied.returncode == 0, applied.stderr[-2000:]
    listed = run("feature-views", "list")
    assert listed.returncode == 0 and "customer_spend_v2" in listed.stdout and "driver_hourly_stats_v1" in listed.stdout
    assert run("materialize-incremental", "2100-01-01T00:00:00").returncode == 0
    rows = feast_bridge.read_online(dev_settings, "driver_hourly_stats", ["5001"])
    assert rows[0]["conv_rate"] is not None


@contextmanager
def _http_process(settings, command: list[str], ready_path: str, what: str) -> Iterator[str]:
    """Start an HTTP server process, wait until ``ready_path`` answers 200, yield its base URL, stop it."""
    process = subprocess.Popen(command, env=_process_env(settings), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    try:
        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(process.stderr.read()[-2000:])
            with urllib.request.urlopen(url + ready_path, timeout=2) as response:
                return response.status == 200

        wait_until(ready, what, timeout=120)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_feast_ui_starts_on_the_generated_config(dev_settings) -> None:
    """`feast ui` (needs Feast's grpcio extra, in the lock) serves its page and the registry it shows."""
    seed_raw(dev_settings)
    pipeline.build_all(dev_settings)
    pipeline.apply(dev_settings)
    config = feast_bridge.write_feature_store_yaml(dev_settings, dev_settings.environment())
    command = [str(Path(sys.executable).parent / "feast"), "-c", str(REPO / "feature_repo"), "-f", str(config),
               "ui", "--host", "127.0.0.1", "--port", str(free_port())]
    with _http_process(dev_settings, command, "/", "feast ui") as url, \
            urllib.request.urlopen(f"{url}/api/v1/feature_views/all", timeout=10) as response:
        assert response.status == 200 and b"customer_spend_v2" in response.read()


def test_feast_serve_answers_online_requests(dev_settings) -> None:
    """The HTTP feature server (featurectl serve) returns the same values as the SDK."""
    seed_raw(dev_settings)
    pipeline.run_loop(dev_settings)
    command = [str(Path(sys.executable).parent / "featurectl"), "serve", "--port", str(free_port())]
    with _http_process(dev_settings, command, "/health", "feature server") as url:
        body = json.dumps({"features": ["customer_profile_v1:tier", "customer_profile_v1:country"],
                           "entities": {"customer_id": [1001, 1002]}}).encode()
        request = urllib.request.Request(f"{url}/get-online-features", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    names = answer["metadata"]["feature_names"]
    tiers = answer["results"][names.index("tier")]["values"]
    sdk = feast_bridge.read_online(dev_settings, "customer_profile", ["1001", "1002"])
    assert tiers == [row["tier"] for row in sdk]


def test_historical_reproduces_a_pinned_build(local_settings, tmp_path, capsys) -> None:
    """A training set built from build A is reproduced exactly after build B is promoted, by pinning A."""
    import pandas as pd

    from tests.helpers import read_raw, replace_raw

    seed_raw(local_settings)
    pipeline.run_loop(local_settings)
    entities = pd.DataFrame({"customer_id": [1001, 1002, 1003],
                             "event_timestamp": pd.Timestamp.now(tz="UTC").floor("h")})
    first, provenance = feast_bridge.historical(local_settings, entities, "customer_profile")
    build_a = provenance["build_id"]

    table = read_raw(local_settings, "customers")
    tiers = ["gold"] * table.num_rows  # upstream reclassifies every customer
    replace_raw(local_settings, "customers", table.set_column(table.schema.get_field_index("tier"), "tier",
                                                              pa.array(tiers)))
    pipeline.run_loop(local_settings)
    latest, provenance_b = feast_bridge.historical(local_settings, entities, "customer_profile")
    assert provenance_b["build_id"] != build_a and set(latest["tier"]) == {"gold"}

    pinned, provenance_a = feast_bridge.historical(local_settings, entities, "customer_profile", build_id=build_a)
    assert provenance_a["build_id"] == build_a
    pd.testing.assert_frame_equal(pinned.sort_values("customer_id").reset_index(drop=True),
                                  first.sort_values("customer_id").reset_index(drop=True))

    csv = tmp_path / "entities.csv"
    entities.to_csv(csv, index=False)
    code, _, err = cli(local_settings, "historical", "customer_profile", "--entities", str(csv), "--build", build_a,
                       "--out", str(tmp_path / "train.parquet"), capsys=capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "train.parquet.provenance.json").read_text())["build_id"] == build_a


def _reclassify_all_customers(settings: Settings, tier: str) -> None:
    """An upstream correction: same rows and event timestamps, new values."""
    from tests.helpers import read_raw, replace_raw

    table = read_raw(settings, "customers")
    index = table.schema.get_field_index("tier")
    replace_raw(settings, "customers", table.set_column(index, "tier", pa.array([tier] * table.num_rows)))


def test_corrections_and_rollback_reach_redis(dev_settings) -> None:
    """Redis keeps a row unless the new one is newer; a corrected or rolled-back build has the same timestamps.
    A view whose build changed is therefore rewritten in full, even when asked for an incremental run."""
    seed_raw(dev_settings)
    pipeline.run_loop(dev_settings)
    first = pipeline.versions(dev_settings, "customer_profile")[1]["build_id"]
    original = feast_bridge.read_online(dev_settings, "customer_profile", ["1001", "1002"])

    _reclassify_all_customers(dev_settings, "gold")
    pipeline.build_and_promote(dev_settings, "customer_profile")
    pipeline.apply(dev_settings)
    done = pipeline.materialize(dev_settings, incremental=True, feature_views=["customer_profile_v1"])
    assert [d["mode"] for d in done] == ["full"]  # the build changed: incremental would keep stale rows
    assert {r["tier"] for r in feast_bridge.read_online(dev_settings, "customer_profile", ["1001", "1002"])} == {
        "gold"}
    pipeline.verify(dev_settings)

    again = pipeline.materialize(dev_settings, incremental=True, feature_views=["customer_profile_v1"])
    assert [d["mode"] for d in again] == ["incremental"]  # same build: incremental is safe

    pipeline.rollback(dev_settings, "customer_profile", first)
    pipeline.apply(dev_settings)
    pipeline.materialize(dev_settings, incremental=True)
    assert feast_bridge.read_online(dev_settings, "customer_profile", ["1001", "1002"]) == original
    pipeline.verify(dev_settings)


def test_materialize_waits_for_the_view_lease(local_settings, monkeypatch) -> None:
    """Two materializations of one view never interleave: while one holds the view's lease, the other waits."""
    from feature_platform.locks import lease

    seed_raw(local_settings)
    pipeline.run_loop(local_settings)
    monkeypatch.setattr(registries, "LOCK_TIMEOUT", 1.0)
    store = pipeline.object_store(local_settings, local_settings.environment())
    with lease(store.url("customer_profile/v1/materialize.lock"), None, timeout=5), \
            pytest.raises(LockTimeout, match="held by"):
        pipeline.materialize(local_settings, feature_views=["customer_profile_v1"])
    assert pipeline.materialize(local_settings, feature_views=["customer_profile_v1"])[0]["mode"] == "full"


def test_feast_gets_its_configuration_as_an_object_not_through_the_process_environment(dev_settings,
                                                                                        monkeypatch) -> None:
    """The whole loop on S3 and Redis, with the endpoint, the Redis address and the password only in Settings:
    apply, materialize, verify, Feast's SDK on the opened store (through the plugins): nothing is written into
    the process environment, and nothing needs to be there."""
    names = [k for k in dev_settings.values if k.startswith(("FEATURE_PLATFORM_", "FEAST_"))]
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    written: list[str] = []
    original = os._Environ.__setitem__

    def guarded(self, key, value):
        if key.startswith(("FEATURE_PLATFORM_", "FEAST_", "AWS_")):
            written.append(key)
        return original(self, key, value)

    monkeypatch.setattr(os._Environ, "__setitem__", guarded)
    seed_raw(dev_settings)
    pipeline.run_loop(dev_settings)
    env = dev_settings.environment()
    store = feast_bridge.open_store(dev_settings, env)
    answer = store.get_online_features(features=["customer_profile_v1:tier"],
                                       entity_rows=[{"customer_id": 1001}, {"customer_id": 999_999}]).to_dict()
    assert answer["tier"][0] is not None and answer["tier"][1] is None
    assert written == []
    assert not any(name in os.environ for name in names)


def test_references_in_the_generated_file_resolve_from_settings_after_parsing() -> None:
    """A secret with YAML's special characters stays one string; an unset reference stays as written."""
    from feature_platform.feast_bridge.config import _expand

    parsed = {"online_store": {"connection_string": "${ADDR},db=1,password=${PW}"}, "x": ["${UNSET}", 3]}
    got = _expand(parsed, {"ADDR": "h:1", "PW": "a: #b ${c}"})
    assert got == {"online_store": {"connection_string": "h:1,db=1,password=a: #b ${c}"}, "x": ["${UNSET}", 3]}
