"""Governance on generated contracts and environments: team tokens, Feast Permission objects from the contracts,
who may read offline (historical, export), PII masked or dropped, the audit trail of applies, rollbacks and
retirements, and the ODCS export validated against the standard's own schema."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from feature_platform import audit, governance, odcs, pipeline
from feature_platform.environments import Settings
from feature_platform.errors import AccessDenied, ConfigError
from tests.conftest import CONTRACTS
from tests.helpers import AS_OF, replace_raw, seed_raw, write_contract
from tests.test_monitoring import sensor_contract, sensor_events

AUTH_KEY, PII_KEY = "test-auth-key-0123456789abcdef-0123456789", "test-pii-key-fedcba9876543210-0123456789"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def patient_contract(**extra: object) -> dict:
    """A health-style feature set: int keys, one PII string, one PII number, one plain feature."""
    return {"kind": "FeatureSet", "name": "patient_vitals", "version": 1, "description": "Generated vitals.",
            "owner": "clinical-ml@example.com",
            "entity": {"name": "patient", "join_key": "patient_id", "dtype": "int64"},
            "timestamp_field": "ts", "ttl": "7d", "online": False, "pii": False,
            "access": {"readers": ["research"], "pii_readers": ["research"]} | extra.pop("access", {}),
            "source": {"table": "vitals", "sql": "SELECT patient_id, ts, postcode, birth_year, heart_rate FROM source"},
            "features": [{"name": "postcode", "dtype": "string", "description": "home postcode", "pii": True},
                         {"name": "birth_year", "dtype": "int64", "description": "year of birth", "pii": True},
                         {"name": "heart_rate", "dtype": "float64", "description": "bpm"}],
            **extra}


def vitals(patients: int = 30) -> pd.DataFrame:
    rows = [{"patient_id": p, "ts": AS_OF - pd.Timedelta(hours=h), "postcode": None if p % 7 == 0 else f"PC{p % 5}",
             "birth_year": 1950 + p, "heart_rate": 60.0 + p + h} for p in range(1, patients + 1) for h in range(2)]
    frame = pd.DataFrame(rows)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


SECURE_ENV = """kind: Environment
name: secure
description: A locked-down environment on one machine (prod's access rules).
feast_project: feature_platform_secure
object_store: {uri: secure-store}
raw_data: {uri: secure-raw}
registry: {type: file, uri: secure-registry/registry.db, cache_ttl_seconds: 60}
online_store: {type: sqlite, path: secure-online/online_store.db}
access: {default: deny, token_key_env: TEST_AUTH_KEY, pii_key_env: TEST_PII_KEY}
"""


@pytest.fixture
def governed(tmp_path: Path) -> dict[str, Settings]:
    """The patient contract in an open `local` environment (no keys) and a `secure` one (deny, keys)."""
    import pyarrow as pa

    contracts = tmp_path / "contracts"
    shutil.copytree(CONTRACTS / "environments", contracts / "environments")
    (contracts / "environments" / "secure.yaml").write_text(SECURE_ENV)
    write_contract(contracts, patient_contract())
    out = {}
    for name, environ in (("local", {}), ("secure", {"TEST_AUTH_KEY": AUTH_KEY, "TEST_PII_KEY": PII_KEY})):
        settings = Settings.from_env(environ=environ, contracts_dir=contracts, home=tmp_path / "home", env_name=name)
        replace_raw(settings, "vitals", pa.Table.from_pandas(vitals(), preserve_index=False))
        pipeline.build_and_promote(settings, "patient_vitals")
        pipeline.apply(settings)
        out[name] = settings
    return out


def token(team: str, key: str = AUTH_KEY, ttl: int = 600, environment: str = "secure") -> str:
    return governance.issue_token(key.encode(), team, environment, ttl_seconds=ttl)


def entities() -> pd.DataFrame:
    return pd.DataFrame({"patient_id": [1, 2, 7, 99], "event_timestamp": [AS_OF] * 4, "label": [1, 0, 1, 0]})


# ------------------------------------------------------------------------------------------------- identity


def test_tokens_name_one_team_and_bad_ones_are_refused() -> None:
    caller = governance.verify_token(AUTH_KEY.encode(), token("research"), "secure")
    assert caller.team == "research" and caller.authenticated
    with pytest.raises(AccessDenied, match="expired") as expired:
        governance.verify_token(AUTH_KEY.encode(), token("research", ttl=-10), "secure")
    assert expired.value.status == 401
    other = "another-environments-key-0000000000000000"
    with pytest.raises(AccessDenied, match="not valid here"):
        governance.verify_token(AUTH_KEY.encode(), token("research", key=other), "secure")
    with pytest.raises(AccessDenied, match="not valid here"):
        governance.verify_token(AUTH_KEY.encode(), "not.a.token", "secure")
    with pytest.raises(AccessDenied, match="not valid here"):  # same key, another environment's token
        governance.verify_token(AUTH_KEY.encode(), token("research", environment="dev"), "secure")


def test_deny_environment_needs_a_token_key(tmp_path: Path) -> None:
    from feature_platform.environments import load_environment

    contracts = tmp_path / "contracts"
    shutil.copytree(CONTRACTS / "environments", contracts / "environments")
    (contracts / "environments" / "secure.yaml").write_text(SECURE_ENV.replace(
        "access: {default: deny, token_key_env: TEST_AUTH_KEY, pii_key_env: TEST_PII_KEY}", "access: {default: deny}"))
    with pytest.raises(Exception, match="default: deny needs token_key_env"):
        load_environment(contracts, "secure")


# -------------------------------------------------------------------------------------- Feast permissions


def test_permissions_are_registered_from_the_contracts(governed: dict[str, Settings]) -> None:
    from feast import FeatureView

    from feature_platform import feast_bridge

    for name, settings in governed.items():
        store = feast_bridge.open_store(settings, settings.environment())
        registered = {p.name: p for p in store.list_permissions()}
        view = store.get_feature_view("patient_vitals_v1")
        readers = registered["patient_vitals_v1_readers"]
        assert sorted(readers.policy.get_roles()) == ["clinical-ml", "feature-platform", "research"]
        assert readers.tags[governance.PII_TAG] == "postcode,birth_year"
        is_open = "feature_platform_local_open_read" in registered
        assert is_open == (name == "local")  # dev-like environments are open, the secure one is not
        permissions = list(registered.values())
        outsider = governance.Caller("marketing", "m", True)
        assert governance.may_read(permissions, outsider, view, online=True)[0] == (name == "local")
        assert governance.may_read(permissions, governance.Caller("research", "r", True), view, online=False)[0]
        assert isinstance(view, FeatureView)


def test_closing_an_environment_removes_its_open_permission(governed: dict[str, Settings]) -> None:
    settings = governed["local"]
    path = settings.contracts_dir / "environments" / "local.yaml"
    path.write_text(path.read_text() + "access: {default: deny, token_key_env: TEST_AUTH_KEY}\n")
    closed = settings.replace(values={"TEST_AUTH_KEY": AUTH_KEY})
    pipeline.apply(closed)
    from feature_platform import feast_bridge

    store = feast_bridge.open_store(closed, closed.environment())
    names = {p.name for p in store.list_permissions()}
    assert "feature_platform_local_open_read" not in names and "patient_vitals_v1_readers" in names
    removed = [c for e in audit.read(closed, closed.environment()) for c in e["changes"] if c["change"] == "removed"]
    assert [c["object"] for c in removed] == ["feature_platform_local_open_read"]


# ---------------------------------------------------------------------------------------- offline reads, PII


def test_secure_environment_refuses_without_token_and_outsiders(governed: dict[str, Settings]) -> None:
    settings = governed["secure"]
    with pytest.raises(AccessDenied, match="needs a signed team token") as missing:
        pipeline.export(settings, "patient_vitals")
    assert missing.value.status == 401
    outsider = settings.replace(values={**settings.values, "FEATURE_PLATFORM_TOKEN": token("marketing")})
    with pytest.raises(AccessDenied, match="team marketing may not read patient_vitals_v1"):
        pipeline.export(outsider, "patient_vitals")
    from feature_platform import feast_bridge

    with pytest.raises(AccessDenied):
        feast_bridge.historical(outsider, entities(), "patient_vitals")
    unsigned = settings.replace(values={**settings.values, "FEATURE_PLATFORM_TEAM": "research"})
    with pytest.raises(AccessDenied, match="signed team token"):  # a team name alone proves nothing here
        pipeline.export(unsigned, "patient_vitals")
    refused = [e for e in audit.read(settings, settings.environment()) if e["action"] in ("export", "historical")]
    assert [(e["action"], e["caller"], e["changes"][0]["change"]) for e in refused] == [
        ("export", "team marketing", "refused"), ("historical", "team marketing", "refused")]


def test_pii_is_masked_for_readers_outside_pii_readers(governed: dict[str, Settings]) -> None:
    from feature_platform import feast_bridge

    settings = governed["secure"]
    raw = vitals()
    owner = governance.verify_token(AUTH_KEY.encode(), token("clinical-ml"), "secure")
    research = governance.verify_token(AUTH_KEY.encode(), token("research"), "secure")
    write_contract(settings.contracts_dir, patient_contract(access={"readers": ["research", "billing"]}))
    billing = governance.verify_token(AUTH_KEY.encode(), token("billing"), "secure")

    clear, provenance = pipeline.export(settings, "patient_vitals", caller=research)
    assert provenance["pii_masked"] == [] and set(clear["postcode"].dropna()) == {f"PC{i}" for i in range(5)}
    masked, provenance = pipeline.export(settings, "patient_vitals", caller=billing)
    assert provenance["pii_masked"] == ["postcode", "birth_year"] and provenance["pii_dropped"] == []
    for column in ("postcode", "birth_year"):
        values = masked[column].dropna()
        assert len(values) and all(HEX64.match(v) for v in values)
        assert not set(map(str, values)) & set(map(str, raw[column].dropna()))  # no raw value leaks
    assert masked["postcode"].isna().sum() == clear["postcode"].isna().sum()  # nulls stay null
    pairs = set(zip(clear["postcode"].fillna("-"), masked["postcode"].fillna("-"), strict=True))
    assert len(pairs) == clear["postcode"].fillna("-").nunique()  # one token per value: joins and counts work
    pd.testing.assert_series_equal(masked["heart_rate"], clear["heart_rate"])  # other features untouched

    rotated = "rotated-or-other-environment-key-000000000"
    other_key = settings.replace(values={**settings.values, "TEST_PII_KEY": rotated})
    again, _ = pipeline.export(other_key, "patient_vitals", caller=billing)
    assert not set(again["postcode"].dropna()) & set(masked["postcode"].dropna())  # keyed, not a plain hash

    frame, provenance = feast_bridge.historical(settings, entities(), "patient_vitals", caller=billing)
    assert provenance["pii_masked"] == ["postcode", "birth_year"]
    assert all(HEX64.match(v) for v in frame["postcode"].dropna()) and list(frame["label"]) == [1, 0, 1, 0]
    frame, _ = feast_bridge.historical(settings, entities(), "patient_vitals", caller=owner)
    assert list(frame["postcode"][:2]) == ["PC1", "PC2"]

    reads = [(e["action"], e["caller"], e["changes"][0]["classification"])
             for e in audit.read(settings, settings.environment(), "patient_vitals") if e["action"] != "apply"]
    assert reads == [("export", "team research", "PII unmasked"), ("export", "team billing", "PII masked"),
                     ("export", "team billing", "PII masked"), ("historical", "team billing", "PII masked"),
                     ("historical", "team clinical-ml", "PII unmasked")]  # who saw personal data, and how
    no_key = settings.replace(values={k: v for k, v in settings.values.items() if k != "TEST_PII_KEY"})
    with pytest.raises(ConfigError, match="TEST_PII_KEY is not set"):  # fails closed, never exports raw PII
        pipeline.export(no_key, "patient_vitals", caller=billing)


def test_open_environment_without_a_key_drops_pii(governed: dict[str, Settings], tmp_path: Path) -> None:
    settings = governed["local"]
    out = tmp_path / "export.csv"
    result = subprocess.run([sys.executable, "-m", "feature_platform.cli", "export", "patient_vitals", "--out",
                             str(out), "--contracts", str(settings.contracts_dir), "--home", str(settings.home),
                             "--env", "local", "--team", "marketing"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    exported = pd.read_csv(out)
    assert list(exported.columns) == ["patient_id", "ts", "heart_rate"]  # PII dropped, no key to mask with
    provenance = json.loads(Path(str(out) + ".provenance.json").read_text())
    assert provenance["pii_dropped"] == ["postcode", "birth_year"] and provenance["caller"] == "team marketing"
    as_owner, _ = pipeline.export(settings.replace(values={"FEATURE_PLATFORM_TEAM": "clinical-ml"}), "patient_vitals")
    assert "postcode" in as_owner.columns


def test_a_pii_feature_set_without_marks_masks_every_feature(governed: dict[str, Settings]) -> None:
    contract = patient_contract(pii=True)
    for feature in contract["features"]:
        feature.pop("pii", None)
    write_contract(governed["local"].contracts_dir, contract)
    frame, provenance = pipeline.export(governed["local"], "patient_vitals")
    assert provenance["pii_dropped"] == ["postcode", "birth_year", "heart_rate"]
    assert list(frame.columns) == ["patient_id", "ts"]


# -------------------------------------------------------------------------------------------------- audit


def test_audit_records_applies_rollbacks_and_retirements(tmp_path: Path) -> None:
    contracts = tmp_path / "contracts"
    shutil.copytree(CONTRACTS / "environments", contracts / "environments")
    write_contract(contracts, sensor_contract())
    settings = Settings.from_env(environ={"FEATURE_PLATFORM_ACTOR": "alice@example.com",
                                          "FEATURE_PLATFORM_CONTRACTS_COMMIT": "c0ffee"},
                                 contracts_dir=contracts, home=tmp_path / "home", env_name="local")
    replace_raw(settings, "sensor_events", sensor_events(seed=1))
    first = pipeline.build_and_promote(settings, "sensor_health")["build_id"]
    pipeline.apply(settings)
    pipeline.apply(settings)  # nothing changed: no entry
    replace_raw(settings, "sensor_events", sensor_events(seed=2))
    second = pipeline.build_and_promote(settings, "sensor_health")["build_id"]
    pipeline.apply(settings)
    pipeline.rollback(settings, "sensor_health", first)
    v2 = sensor_contract(version=2)
    v2["features"] = [f for f in v2["features"] if f["name"] != "errors"]  # breaking: a feature removed
    v2["source"] = {**v2["source"], "sql": "SELECT device_id, ts, temperature, status FROM source"}
    write_contract(contracts, v2)
    pipeline.build_and_promote(settings, "sensor_health", 2)
    pipeline.apply(settings)
    write_contract(contracts, sensor_contract(status="retired"))
    pipeline.apply(settings)

    entries = audit.read(settings, settings.environment(), "sensor_health")
    assert [e["action"] for e in entries] == ["apply", "apply", "rollback", "apply", "apply"]
    assert all(e["actor"] == "alice@example.com" and e["contracts_commit"] == "c0ffee" for e in entries)
    changes = [{(c["object"], c["change"], c["classification"]) for c in e["changes"]} for e in entries]
    assert ("sensor_health_v1", "added", "new feature set") in changes[0]
    assert ("sensor_health_v1_readers", "added or updated", "access") in changes[0]
    assert changes[1] == {("sensor_health_v1", "updated", "data (new build)")}
    assert entries[1]["changes"][0]["detail"] == [f"build {first} -> {second}"]
    assert entries[2]["changes"][0]["detail"] == [f"build {second} -> {first}"]
    assert ("sensor_health_v2", "added", "breaking") in changes[3]
    assert {("sensor_health_v1", "removed", "retired"), ("sensor_health_v1_readers", "removed", "retired")
            } <= changes[4]
    assert audit.read(settings, settings.environment(), "another_set") == []

    from feature_platform import feast_bridge

    store = feast_bridge.open_store(settings, settings.environment())
    views = {v.name for v in store.list_feature_views()}
    services = {s.name for s in store.list_feature_services()}
    assert views == {"sensor_health_v2"} and "sensor_health_v1" not in services  # retired: no longer served

    log = settings.home / "local" / "registry" / "audit"
    before = {p.name: p.read_bytes() for p in log.iterdir()}
    time.sleep(0.001)  # distinct timestamps in the keys (entries are never rewritten)
    pipeline.rollback(settings, "sensor_health", second)
    after = {p.name: p.read_bytes() for p in log.iterdir()}
    assert len(after) == len(before) + 1 and all(after[name] == data for name, data in before.items())

    listed = subprocess.run([sys.executable, "-m", "feature_platform.cli", "audit", "sensor_health", "--contracts",
                             str(contracts), "--home", str(settings.home), "--env", "local"],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "rolled back" in listed.stdout and "retired" in listed.stdout


def test_audit_in_the_sql_registry_database(postgres_server, tmp_path: Path) -> None:
    """With a SQL registry the trail is a table in the registry's database, read back by `audit`."""
    import uuid

    import psycopg

    database = f"audit_{uuid.uuid4().hex[:8]}"  # its own database: the server is shared by the session
    with psycopg.connect(postgres_server.url().replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    contracts = tmp_path / "contracts"
    shutil.copytree(CONTRACTS / "environments", contracts / "environments")
    env = yaml.safe_load((contracts / "environments" / "local.yaml").read_text())
    env["registry"] = {"type": "sql", "url_env": "TEST_REGISTRY_URL"}
    (contracts / "environments" / "local.yaml").write_text(yaml.safe_dump(env))
    settings = Settings.from_env(environ={"TEST_REGISTRY_URL": postgres_server.url(database)}, contracts_dir=contracts,
                                 home=tmp_path / "home", env_name="local")
    audit.record(settings, settings.environment(), "apply", ["a"], [{"object": "a_v1", "change": "added"}])
    audit.record(settings, settings.environment(), "rollback", ["b"], [])
    assert [e["action"] for e in audit.read(settings, settings.environment())] == ["apply", "rollback"]
    assert [e["feature_sets"] for e in audit.read(settings, settings.environment(), "b")] == [["b"]]


# --------------------------------------------------------------------------------------------------- ODCS


def test_contracts_export_as_valid_odcs(tmp_path: Path) -> None:
    from open_data_contract_standard.model import OpenDataContractStandard

    contracts = tmp_path / "contracts"
    shutil.copytree(CONTRACTS, contracts)
    write_contract(contracts, patient_contract())
    out = tmp_path / "odcs"
    result = subprocess.run([sys.executable, "-m", "feature_platform.cli", "contracts", "export", "--format", "odcs",
                             "--out", str(out), "--contracts", str(contracts)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["customer_category_spend_v1.odcs.yaml", "customer_embedding_v1.odcs.yaml",
                     "customer_profile_v1.odcs.yaml", "customer_spend_v1.odcs.yaml", "customer_spend_v2.odcs.yaml",
                     "driver_hourly_stats_v1.odcs.yaml", "patient_vitals_v1.odcs.yaml"]
    for name in files:
        document = yaml.safe_load((out / name).read_text())
        assert odcs.validate(document) == []
        OpenDataContractStandard.model_validate(document)  # the standard's own model reads it too
    patient = yaml.safe_load((out / "patient_vitals_v1.odcs.yaml").read_text())
    props = {p["name"]: p for p in patient["schema"][0]["properties"]}
    assert props["postcode"]["classification"] == "restricted" and props["heart_rate"]["classification"] == "internal"
    assert props["patient_id"]["primaryKey"] and props["patient_id"]["logicalType"] == "integer"
    assert {r["role"] for r in patient["roles"]} == {"clinical-ml", "research"}
    assert {s["server"] for s in patient["servers"]} == {"local", "dev", "prod"}
    streamed = subprocess.run([sys.executable, "-m", "feature_platform.cli", "contracts", "export", "--out", "-",
                               "--contracts", str(contracts), "--env", "prod"], capture_output=True, text=True,
                              timeout=120)
    documents = list(yaml.safe_load_all(streamed.stdout))
    assert streamed.returncode == 0 and [d["name"] for d in documents] == [f[:-len(".odcs.yaml")] for f in files]
    assert all(d["servers"] == [{**d["servers"][0], "server": "prod"}] for d in documents)  # --env: prod only
    assert odcs.validate({**patient, "schema": [{**patient["schema"][0], "properties": [
        {**props["heart_rate"], "logicalType": "float64"}]}]})  # the validator does reject a wrong document


def test_odcs_servers_name_parquet_that_tools_can_test(local_settings) -> None:
    """A server entry names Parquet, never the JSON pointer: the promoted build's file where it is known (a
    data-contract tool reads it and finds the documented columns), else a glob over the version's builds."""
    import pyarrow.parquet as pq

    seed_raw(local_settings)
    pipeline.build_and_promote(local_settings, "customer_profile")
    result = subprocess.run([sys.executable, "-m", "feature_platform.cli", "contracts", "export", "--out", "-",
                             "--contracts", str(local_settings.contracts_dir), "--home", str(local_settings.home)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    documents = {d["name"]: d for d in yaml.safe_load_all(result.stdout)}
    for document in documents.values():
        for server in document["servers"]:
            assert not (server.get("path") or server.get("location")).endswith(".json"), server
    servers = {s["server"]: s for s in documents["customer_profile_v1"]["servers"]}
    promoted = pipeline.object_store(local_settings, local_settings.environment())
    from feature_platform import build

    assert servers["local"]["path"] == build.read_pointer(promoted, "customer_profile", "v1")["data"]
    columns = pq.read_schema(servers["local"]["path"]).names
    assert columns == [p["name"] for p in documents["customer_profile_v1"]["schema"][0]["properties"]]
    assert servers["dev"]["location"].endswith("/customer_profile/v1/*/features.parquet")
    unbuilt = {s["server"]: s for s in documents["driver_hourly_stats_v1"]["servers"]}
    assert unbuilt["local"]["path"].endswith("/driver_hourly_stats/v1/*/features.parquet")


def test_the_proof_fails_when_pii_would_leave_unmasked(governed: dict[str, Settings], monkeypatch) -> None:
    from feature_platform import proof

    settings = governed["secure"]
    env = settings.environment()
    status, evidence = proof.check_pii(settings, env)
    assert status == proof.PASS and evidence == ["patient_vitals_v1: team proof-outsider is refused (not a reader)"]
    write_contract(settings.contracts_dir, patient_contract(access={"readers": ["research", "billing"]}))
    status, evidence = proof.check_pii(settings, env)
    assert status == proof.PASS and evidence == ["patient_vitals_v1: as team billing, masked postcode, birth_year, "
                                                 "dropped -"]
    monkeypatch.setattr(governance, "mask_frame", lambda frame, *_: (frame, {"masked": [], "dropped": []}))
    status, evidence = proof.check_pii(settings, env)  # a regression that forgets to mask
    assert status == proof.FAIL and "UNMASKED postcode, birth_year" in evidence[0]
