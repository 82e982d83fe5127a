"""A model's features across feature sets: feature-service contracts (validation, lock, diff, retirement), the
Feast FeatureService and Permission they become, training sets of a service in one point-in-time query, and online
reads of a service through the CLI, the platform server and Feast's own SDK."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from feature_platform import feast_bridge, pipeline
from feature_platform.cli import main
from feature_platform.contracts import load_contracts
from feature_platform.errors import CompatibilityError, ContractErrors
from tests.helpers import AS_OF, every_dtype_contract, merchant_events, replace_raw, seed_raw, write_contract

MERCHANTS = [f"m{i:03d}" for i in range(40)]


def write_service(contracts: Path, document: dict) -> Path:
    path = contracts / "feature_services" / document["name"] / f"v{document['version']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def service(name: str = "risk_model", version: int = 1, features: list | None = None, **extra) -> dict:
    return {"kind": "FeatureService", "name": name, "version": version, "description": "Generated for tests.",
            "owner": "fraud-ml@example.com", **extra,
            "features": features or [{"feature_set": "customer_spend", "version": 2,
                                      "features": ["txn_count_1d", "avg_txn_amount_1d"]},
                                     {"feature_set": "merchant_risk", "version": 1}]}


def cli(settings, capsys, *args: str) -> tuple[int, str, str]:
    where = ["--env", settings.env_name] if args[0] != "contracts" else []
    code = main([*args, "--contracts", str(settings.contracts_dir), "--home", str(settings.home), *where])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------------ contracts

@pytest.mark.parametrize(("features", "field", "fragment"), [
    ([{"feature_set": "nope", "version": 1}], "features[0].feature_set", "no feature set named 'nope'"),
    ([{"feature_set": "customer_spend", "version": 7}], "features[0].version", "has no version v7; have v1, v2"),
    ([{"feature_set": "customer_spend", "version": 2, "features": ["txn_count_1d", "nope"]}],
     "features[0].features[1]", "has no feature 'nope'"),
    ([{"feature_set": "customer_spend", "version": 2, "features": ["txn_count_1d", "txn_count_1d"]}],
     "features[0].features", "'txn_count_1d' is listed twice"),
    ([{"feature_set": "customer_spend", "version": 2}, {"feature_set": "customer_spend", "version": 2}],
     "features", "customer_spend v2 is listed twice"),
    ([{"feature_set": "customer_spend", "version": 2, "features": []}], "features[0].features", "selects nothing"),
])
def test_bad_service_contracts_name_the_file_and_field(contracts_copy, features, field, fragment) -> None:
    path = write_service(contracts_copy, service(features=features))
    with pytest.raises(ContractErrors) as info:
        load_contracts(contracts_copy)
    [error] = [e for e in info.value.errors if "risk_model" in e.file]
    assert error.file.endswith("feature_services/risk_model/v1.yaml") and str(path).endswith(error.file[-30:])
    assert error.field == field and fragment in error.problem, (error.field, error.problem)


def test_a_retired_set_version_a_name_clash_and_a_wrong_path_are_refused(contracts_copy) -> None:
    spend_v1 = contracts_copy / "feature_sets/customer_spend/v1.yaml"
    spend_v1.write_text(spend_v1.read_text().replace("online: true", "online: true\nstatus: retired", 1))
    write_service(contracts_copy, service(features=[{"feature_set": "customer_spend", "version": 1}]))
    write_service(contracts_copy, service(name="customer_profile"))
    (contracts_copy / "feature_services/moved").mkdir()
    (contracts_copy / "feature_services/moved/v1.yaml").write_text(yaml.safe_dump(service(name="other")))
    with pytest.raises(ContractErrors) as info:
        load_contracts(contracts_copy)
    problems = {(e.file.split("feature_services/")[-1], e.field): e.problem for e in info.value.errors}
    assert "is retired" in problems[("risk_model/v1.yaml", "features[0].version")]
    assert "is also a feature set" in problems[("customer_profile/v1.yaml", "name")]
    assert "the file path says moved v1" in problems[("moved/v1.yaml", "name")]


def test_a_released_service_is_immutable_and_diff_classifies_changes(local_settings, contracts_copy, capsys,
                                                                     tmp_path) -> None:
    """Locked with its schema_hash; an in-place edit is refused by check and apply (exit 3); a new version is
    the way; `contracts diff` says what a change does to the model."""
    write_contract(contracts_copy, every_dtype_contract())
    path = write_service(contracts_copy, service())
    assert cli(local_settings, capsys, "contracts", "lock")[0] == 0
    lock = yaml.safe_load((contracts_copy / "contracts.lock").read_text())
    contracts = load_contracts(contracts_copy)
    digest = contracts.service_schema_hash(contracts.service("risk_model"))
    assert lock["feature_services"]["risk_model"]["v1"] == digest
    old = tmp_path / "old.yaml"
    old.write_text(path.read_text())
    edited = service(features=[{"feature_set": "customer_spend", "version": 2, "features": ["txn_count_1d"]},
                               {"feature_set": "merchant_risk", "version": 1}])
    path.write_text(yaml.safe_dump(edited))
    code, _, err = cli(local_settings, capsys, "contracts", "check")
    assert code == 3 and "released feature service risk_model v1 changed in place" in err
    with pytest.raises(CompatibilityError, match="released feature service risk_model v1 changed in place"):
        pipeline.apply(local_settings)
    code, out, _ = cli(local_settings, capsys, "contracts", "diff", str(old), str(path))
    assert code == 3 and "customer_spend: feature avg_txn_amount_1d removed" in out
    added = tmp_path / "added.yaml"
    added.write_text(yaml.safe_dump(service(features=[
        {"feature_set": "customer_spend", "version": 2, "features": ["txn_count_1d", "avg_txn_amount_1d",
                                                                     "max_txn_amount_1d"]},
        {"feature_set": "merchant_risk", "version": 1}])))
    code, out, _ = cli(local_settings, capsys, "contracts", "diff", str(old), str(added))
    assert code == 0 and "compatible customer_spend: feature max_txn_amount_1d added" in out


# -------------------------------------------------------------------------------------------- training sets

@pytest.fixture
def two_sets(local_settings, contracts_copy):
    """customer_spend (int keys) and merchant_risk (string keys, every dtype, nulls) built and applied, with a
    service over both."""
    write_contract(contracts_copy, every_dtype_contract(ttl="2d"))
    write_service(contracts_copy, service())
    seed_raw(local_settings)
    replace_raw(local_settings, "merchant_events", merchant_events(MERCHANTS, rows_per_merchant=12))
    pipeline.build_all(local_settings)
    pipeline.apply(local_settings)
    return local_settings


def _entities(rows: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    stamps = pd.Timestamp(AS_OF) - pd.to_timedelta(rng.integers(-3600, 6 * 86400, rows), unit="s")
    frame = pd.DataFrame({"customer_id": rng.choice([1001, 1002, 1003, 1500, 999999], rows),
                          "merchant_code": rng.choice([*MERCHANTS, "unknown"], rows),
                          "event_timestamp": stamps, "is_fraud": rng.integers(0, 2, rows)})
    return pd.concat([frame, frame.iloc[:25]], ignore_index=True)  # duplicate rows stay duplicates


def test_a_service_training_set_equals_its_sets_joined_one_by_one(two_sets) -> None:
    """One row per input row in input order, labels kept, each set joined with its own key and TTL, types kept,
    nulls where nothing is valid: equal, column by column, to the single-set training sets."""
    entities = _entities()
    frame, provenance = feast_bridge.historical_service(two_sets, entities, "risk_model")
    spend, spend_provenance = feast_bridge.historical(two_sets, entities[["customer_id", "event_timestamp"]],
                                                      "customer_spend", version=2)
    risk, risk_provenance = feast_bridge.historical(two_sets, entities[["merchant_code", "event_timestamp"]],
                                                    "merchant_risk")
    risk_features = [c for c in risk.columns if c not in ("merchant_code", "event_timestamp")]
    assert list(frame.columns) == [*entities.columns, "txn_count_1d", "avg_txn_amount_1d", *risk_features]
    assert len(frame) == len(entities)
    pd.testing.assert_frame_equal(frame[entities.columns], entities)
    for column in ("txn_count_1d", "avg_txn_amount_1d"):
        pd.testing.assert_series_equal(frame[column], spend[column])
    for column in risk_features:
        pd.testing.assert_series_equal(frame[column], risk[column])
    assert str(frame["txn_count_1d"].dtype) == "Int64" and frame["txn_count_1d"].isna().any()
    assert {b["feature_set"]: b["build_id"] for b in provenance["builds"]} == {
        "customer_spend": spend_provenance["build_id"], "merchant_risk": risk_provenance["build_id"]}

    pinned, _ = feast_bridge.historical_service(two_sets, entities, "risk_model", builds_by_set={
        "customer_spend": spend_provenance["build_id"]})
    pd.testing.assert_frame_equal(pinned, frame)


def test_name_clashes_need_full_feature_names_and_the_cli_writes_provenance(two_sets, tmp_path, capsys) -> None:
    contracts = two_sets.contracts_dir
    write_service(contracts, service(name="clash_model", features=[
        {"feature_set": "customer_spend", "version": 1, "features": ["txn_count_1d"]},
        {"feature_set": "customer_spend", "version": 2, "features": ["txn_count_1d"]}]))
    path = tmp_path / "entities.csv"
    _entities(40).to_csv(path, index=False)
    code, _, err = cli(two_sets, capsys, "historical", "--feature-service", "clash_model", "--entities", str(path))
    assert code == 2 and "--full-feature-names" in err and "customer_spend_v1__txn_count_1d" in err
    out = tmp_path / "train.parquet"
    code, _, err = cli(two_sets, capsys, "historical", "--feature-service", "clash_model", "--entities", str(path),
                       "--full-feature-names", "--out", str(out))
    assert code == 0, err
    frame = pd.read_parquet(out)
    assert list(frame.columns)[-2:] == ["customer_spend_v1__txn_count_1d", "customer_spend_v2__txn_count_1d"]
    provenance = json.loads(Path(str(out) + ".provenance.json").read_text())
    assert provenance["feature_service"] == "clash_model_v1" and len(provenance["builds"]) == 2
    code, _, err = cli(two_sets, capsys, "historical", "--feature-service", "clash_model", "--entities", str(path),
                       "--full-feature-names", "--build", "merchant_risk=abc")
    assert code == 2 and "does not read" in err
    code, _, err = cli(two_sets, capsys, "historical", "customer_spend", "--feature-service", "clash_model",
                       "--entities", str(path))
    assert code == 2 and "one of them" in err


def test_pii_is_masked_per_set_for_a_service_reader(local_settings, contracts_copy) -> None:
    """The example model reads customer_profile's PII email_domain: masked for a reader outside pii_readers,
    plain for one inside, as for the feature set itself; the trail records the read per set."""
    from feature_platform import audit, governance

    seed_raw(local_settings)
    pipeline.run_loop(local_settings)
    entities = pd.DataFrame({"customer_id": [1001, 1002], "event_timestamp": [pd.Timestamp(AS_OF)] * 2})
    outsider = governance.Caller(team="payments-ml", subject="test", authenticated=False)
    insider = governance.Caller(team="fraud-ml", subject="test", authenticated=False)
    masked, provenance = feast_bridge.historical_service(local_settings, entities, "fraud_model", caller=outsider)
    plain, _ = feast_bridge.historical_service(local_settings, entities, "fraud_model", caller=insider)
    single, _ = feast_bridge.historical(local_settings, entities, "customer_profile", caller=outsider)
    assert provenance["pii_masked"] in ([], ["email_domain"])
    if provenance["pii_masked"]:
        assert masked["email_domain"].tolist() == single["email_domain"].tolist()
        assert masked["email_domain"].tolist() != plain["email_domain"].tolist()
    else:
        assert "email_domain" not in masked.columns and provenance["pii_dropped"] == ["email_domain"]
    reads = [e for e in audit.read(local_settings, local_settings.environment()) if e["action"] == "historical"]
    assert {c["object"] for e in reads for c in e["changes"]} >= {"customer_spend_v2", "customer_profile_v1"}


# ------------------------------------------------------------------------------------------------ online

@pytest.mark.e2e
def test_online_reads_of_a_service_through_cli_server_and_feasts_sdk(dev_settings, contracts_copy) -> None:
    """A service over an int-keyed and a string-keyed set on Redis: `featurectl online --feature-service`, the
    platform server's Feast API and Feast's own SDK give the same values; unknown entities are NOT_FOUND."""
    from tests.test_server import Server

    write_contract(contracts_copy, every_dtype_contract())
    write_service(contracts_copy, service())
    seed_raw(dev_settings)
    replace_raw(dev_settings, "merchant_events", merchant_events(MERCHANTS))
    pipeline.run_loop(dev_settings)
    customers, merchants = [1001, 1002, 424242], [MERCHANTS[0], MERCHANTS[1], "nobody"]
    from tests.test_faults import _featurectl

    done = _featurectl(dev_settings, "online", "--feature-service", "risk_model", "--json",
                       *[f"customer_id={c}" for c in customers], *[f"merchant_code={m}" for m in merchants])
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    spend = feast_bridge.read_online(dev_settings, "customer_spend", customers, version=2)
    risk = feast_bridge.read_online(dev_settings, "merchant_risk", merchants)
    assert [r["txn_count_1d"] for r in rows] == [r["txn_count_1d"] for r in spend]
    assert [r["score"] for r in rows] == [r["score"] for r in risk]
    assert rows[2]["statuses"] == {"customer_spend_v2": "NOT_FOUND", "merchant_risk_v1": "NOT_FOUND"}

    server = Server(dev_settings)
    try:
        code, body = server.post({"feature_service": "risk_model_v1",
                                  "entities": {"customer_id": customers, "merchant_code": merchants}})
        assert code == 200, body
        names = body["metadata"]["feature_names"]
        assert names[:2] == ["customer_id", "merchant_code"] and names[2:4] == ["txn_count_1d", "avg_txn_amount_1d"]
        assert body["results"][names.index("txn_count_1d")]["values"] == [r["txn_count_1d"] for r in spend]
        assert body["results"][names.index("score")]["values"][:2] == [r["score"] for r in risk][:2]
        code, body = server.post({"feature_service": "risk_model_v1", "entities": {"customer_id": customers}})
        assert code == 422 and "merchant_code" in body["detail"]
    finally:
        server.stop()

    store = feast_bridge.open_store(dev_settings, dev_settings.environment())
    answer = store.get_online_features(features=store.get_feature_service("risk_model_v1"), entity_rows=[
        {"customer_id": c, "merchant_code": m} for c, m in zip(customers, merchants, strict=True)]).to_dict()
    assert answer["txn_count_1d"] == [r["txn_count_1d"] for r in spend]
    assert answer["label"] == [r["label"] for r in risk]


def test_a_retired_service_is_removed_by_apply_and_audited(two_sets) -> None:
    from feature_platform import audit

    store = feast_bridge.open_store(two_sets, two_sets.environment())
    assert "risk_model_v1" in {s.name for s in store.list_feature_services()}
    assert "risk_model_v1_readers" in {p.name for p in store.list_permissions()}
    path = two_sets.contracts_dir / "feature_services/risk_model/v1.yaml"
    path.write_text(yaml.safe_dump(service(status="retired")))
    pipeline.apply(two_sets)
    store = feast_bridge.open_store(two_sets, two_sets.environment())
    assert "risk_model_v1" not in {s.name for s in store.registry.list_feature_services(store.project)}
    assert "risk_model_v1_readers" not in {p.name for p in store.registry.list_permissions(store.project)}
    removed = [c for e in audit.read(two_sets, two_sets.environment()) for c in e["changes"]
               if c["change"] == "removed"]
    assert {c["object"] for c in removed} >= {"risk_model_v1", "risk_model_v1_readers"}
    with pytest.raises(Exception, match="retired"):
        feast_bridge.historical_service(two_sets, _entities(5), "risk_model", version=1)


def test_only_teams_that_read_every_set_read_the_service(contracts_copy) -> None:
    """The service's Permission: the teams that may read every feature set in it (plus the platform's own)."""
    from feature_platform.governance import PLATFORM_TEAM, model_permission

    contracts = load_contracts(contracts_copy)
    model = contracts.service("fraud_model")
    expected = set.intersection(*(set(c.reader_teams) for c, _ in contracts.resolve(model)))
    permission = model_permission(contracts, model)
    assert set(permission.policy.get_roles()) == expected | {PLATFORM_TEAM}
    assert permission.name_patterns == ["^fraud_model_v1$"]


def test_readme_and_docs_examples_run_as_written(tmp_path) -> None:
    """The Python example of docs/feature-services.md, and README's five-minute tour (each `featurectl` line and
    its Python example), after the demo's loop, in a directory laid out as the repo is."""
    import os
    import shutil
    import subprocess
    import sys

    from feature_platform.environments import Settings
    from tests.conftest import CONTRACTS, REPO

    snippet = (REPO / "docs" / "feature-services.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    repo = tmp_path / "repo"
    shutil.copytree(CONTRACTS, repo / "contracts")
    settings = Settings.from_env(environ={}, repo_root=repo)
    seed_raw(settings)
    pipeline.run_loop(settings)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FEATURE_PLATFORM_")}
    result = subprocess.run([sys.executable, "-c", snippet], cwd=repo, env=environ, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.strip().splitlines()[-1]
    assert "is_fraud" in printed and "txn_count_1d" in printed and "account_age_days" in printed
    assert "email_domain" not in printed  # PII: dropped for an anonymous caller where no masking key is set

    tour = (REPO / "README.md").read_text().split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("#", 1)[0].split() for line in tour.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
             if line.startswith("featurectl ")]
    assert len(lines) >= 6
    featurectl = str(Path(sys.executable).parent / "featurectl")
    for words in lines:
        done = subprocess.run([featurectl, *words[1:]], cwd=repo, env=environ, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, (words, done.stderr[-2000:])
        assert done.stdout.strip(), words
    python = tour.split("```python\n", 1)[1].split("```", 1)[0]
    result = subprocess.run([sys.executable, "-c", python], cwd=repo, env=environ, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith("[1001, 1002] [")


def test_feasts_sdk_trains_on_the_platforms_join(two_sets) -> None:
    """`FeatureStore.get_historical_features` (a feature service, or a list of references, with and without full
    names) goes through the platform's offline store plugin: equal to `historical`, row for row and dtype for
    dtype (duplicates, unknown entities, TTL expiry, nulls, string and int keys); Feast's file store dropped rows
    and widened integers."""
    entities = _entities(300)
    expected, _ = feast_bridge.historical_service(two_sets, entities, "risk_model")
    store = feast_bridge.open_store(two_sets, two_sets.environment())
    through_service = store.get_historical_features(
        entity_df=entities, features=store.get_feature_service("risk_model_v1")).to_df()
    refs = ["merchant_risk_v1:score", "merchant_risk_v1:cnt", "merchant_risk_v1:flag", "merchant_risk_v1:seen_at"]
    through_refs = store.get_historical_features(entity_df=entities[["merchant_code", "event_timestamp"]],
                                                 features=refs, full_feature_names=True).to_df()
    pd.testing.assert_frame_equal(through_service, expected)
    single, _ = feast_bridge.historical(two_sets, entities[["merchant_code", "event_timestamp"]], "merchant_risk")
    for ref in refs:
        feature = ref.split(":")[1]
        pd.testing.assert_series_equal(through_refs[f"merchant_risk_v1__{feature}"], single[feature],
                                       check_names=False)
    assert len(through_service) == len(entities) and str(through_service["cnt"].dtype) == "Int64"
