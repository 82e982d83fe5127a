"""Contract loading, validation errors, schema_hash, the lock and the compatibility diff."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from feature_platform.contracts import (
    check_lock,
    diff_contracts,
    load_contracts,
    load_feature_set,
    schema_hash,
    write_lock,
)
from feature_platform.errors import ContractError, ContractErrors
from tests.conftest import CONTRACTS
from tests.helpers import configmap_mount

SPEND_V1 = CONTRACTS / "feature_sets" / "customer_spend" / "v1.yaml"


def base() -> dict[str, Any]:
    return yaml.safe_load(SPEND_V1.read_text())


def write_contract(root: Path, data: dict[str, Any] | str, name: str = "customer_spend", version: int = 1) -> Path:
    path = root / "feature_sets" / name / f"v{version}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def errors_of(path: Path) -> list[ContractError]:
    with pytest.raises((ContractError, ContractErrors)) as info:
        load_feature_set(path)
    exc = info.value
    return exc.errors if isinstance(exc, ContractErrors) else [exc]


def mutate(**changes: Any):
    """A function that applies dotted-path changes (value None deletes the key) to a copy of the base contract."""

    def apply(data: dict[str, Any]) -> dict[str, Any]:
        data = copy.deepcopy(data)
        for dotted, value in changes.items():
            *parents, last = dotted.split("__")
            node: Any = data
            for part in parents:
                node = node[int(part)] if part.isdigit() else node[part]
            key: Any = int(last) if last.isdigit() else last
            if value is _DELETE:
                del node[key]
            else:
                node[key] = value
        return data

    return apply


_DELETE = object()

# (case id, mutation, expected field path, a fragment the message must contain)
MALFORMED = [
    ("dtype-typo", mutate(features__0__dtype="flaot"), "features[0].dtype",
     "'flaot' is not one of int32, int64, float32, float64, string, bool, timestamp"),
    ("missing-name", mutate(name=_DELETE), "name", "required field is missing"),
    ("upper-case-name", mutate(name="CustomerSpend"), "name", "not a safe name"),
    ("path-traversal-name", mutate(name="../etc"), "name", "not a safe name"),
    ("slash-in-feature", mutate(features__0__name="a/b"), "features[0].name", "not a safe name"),
    ("space-in-join-key", mutate(entity__join_key="customer id"), "entity.join_key", "not a safe name"),
    ("version-zero", mutate(version=0), "version", "greater than or equal to 1"),
    ("version-text", mutate(version="one"), "version", "valid integer"),
    ("unknown-top-key", mutate(descripton="x"), "descripton", "did you mean 'description'"),
    ("unknown-feature-key", mutate(features__0__dtyp="int64"), "features[0].dtyp", "did you mean 'dtype'"),
    ("ttl-words", mutate(ttl="forever"), "ttl", "not a duration"),
    ("ttl-zero", mutate(ttl="0d"), "ttl", "not a duration"),
    ("duplicate-feature", mutate(features__1__name="txn_count_1d"), "features", "declared twice"),
    ("feature-is-join-key", mutate(features__0__name="customer_id"), "features", "clashes with the join key"),
    ("timestamp-is-join-key", mutate(timestamp_field="customer_id"), "timestamp_field", "join_key"),
    ("entity-float-key", mutate(entity__dtype="float64"), "entity.dtype", "not one of int64, int32, string"),
    ("entity-missing-join-key", mutate(entity__join_key=_DELETE), "entity.join_key", "required field"),
    ("no-features", mutate(features=[]), "features", "at least 1"),
    ("sql-without-source", mutate(source__sql="SELECT 1 FROM raw"), "source.sql", "view named `source`"),
    ("missing-pii", mutate(pii=_DELETE), "pii", "required field"),
    ("wrong-kind", mutate(kind="Featureset"), "kind", "'Featureset' is not one of FeatureSet"),
    ("min-above-max", mutate(features__0__constraints={"min": 5, "max": 1}), "features[0].constraints",
     "greater than max"),
    ("min-on-string", mutate(features__0__dtype="string"), "features[0]", "numeric dtype"),
    ("nullable-maybe", mutate(features__0__nullable="maybe"), "features[0].nullable", "valid boolean"),
    ("empty-description", mutate(description=""), "description", "at least 1 character"),
    ("bad-tag-key", mutate(tags={"Bad Key": "x"}), "tags.Bad Key", "must match the pattern"),
    ("empty-allowed-values", mutate(features__0__constraints={"allowed_values": []}),
     "features[0].constraints.allowed_values", "at least 1"),
    ("online-text", mutate(online="sometimes"), "online", "valid boolean"),
]


@pytest.mark.parametrize(("mutation", "field", "fragment"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_contract_names_file_and_field(tmp_path: Path, mutation, field: str, fragment: str) -> None:
    """Each malformed contract is rejected with the file, the field path and what is allowed."""
    path = write_contract(tmp_path, mutation(base()))
    errors = errors_of(path)
    matching = [e for e in errors if e.field == field]
    assert matching, f"no error on field {field!r}; got {[str(e) for e in errors]}"
    assert all(e.file == str(path) for e in errors)
    assert fragment in matching[0].problem, str(matching[0])
    assert str(matching[0]).startswith(f"{path}: {field}: ")


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ("kind: FeatureSet\nname: [unclosed\n", "line 3", "invalid YAML"),
        ("kind: FeatureSet\nname: a\nname: b\n", "line 3", "duplicate key 'name'"),
        ("- just\n- a list\n", "", "one YAML mapping"),
        ("!!python/object/apply:os.system ['true']\n", "line 1", "invalid YAML"),
    ],
    ids=["syntax", "duplicate-key", "not-a-mapping", "unsafe-tag"],
)
def test_unreadable_yaml_names_the_file(tmp_path: Path, text: str, field: str, fragment: str) -> None:
    """YAML is parsed safely: syntax errors, duplicate keys and Python tags are clear errors."""
    path = write_contract(tmp_path, text)
    [error] = errors_of(path)
    assert error.file == str(path)
    assert error.field == field
    assert fragment in error.problem


def test_path_must_match_name_and_version(tmp_path: Path) -> None:
    """A contract saved under the wrong version file is rejected, naming the field to fix."""
    path = write_contract(tmp_path, mutate(version=2)(base()), version=1)
    [error] = errors_of(path)
    assert error.field == "version"
    assert "rename the file" in error.problem


def test_directory_errors_are_collected(contracts_copy: Path) -> None:
    """Loading a directory reports every broken file at once, with paths relative to contracts/."""
    write_contract(contracts_copy, mutate(ttl="soon")(base()), version=1)
    write_contract(contracts_copy, mutate(features__0__dtype="int")(base()), name="driver_hourly_stats")
    with pytest.raises(ContractErrors) as info:
        load_contracts(contracts_copy)
    shown = {(e.file, e.field) for e in info.value.errors}
    assert ("contracts/feature_sets/customer_spend/v1.yaml", "ttl") in shown
    assert ("contracts/feature_sets/driver_hourly_stats/v1.yaml", "features[0].dtype") in shown


def test_entity_must_agree_across_contracts(contracts_copy: Path) -> None:
    """One entity name cannot have two join key types: Feast would see two different entities."""
    data = yaml.safe_load((contracts_copy / "feature_sets/customer_profile/v1.yaml").read_text())
    data["entity"]["dtype"] = "string"
    write_contract(contracts_copy, data, name="customer_profile")
    with pytest.raises(ContractErrors) as info:
        load_contracts(contracts_copy)
    assert any(e.field == "entity" and "one join key and type" in e.problem for e in info.value.errors)


def test_repo_contracts_are_valid() -> None:
    """The shipped examples: at least three feature sets over two entities, one with v1 and v2."""
    contracts = load_contracts(CONTRACTS)
    assert len(contracts.names()) >= 3
    assert len({e.name for c in contracts.all() for e in c.entities}) >= 2
    assert [c.version for c in contracts.versions("customer_spend")] == [1, 2]


def test_configmap_mount_layout_reads_each_contract_once(tmp_path: Path) -> None:
    """Symlinks into ..data are followed, hidden ..* entries ignored, every contract read exactly once."""
    from feature_platform.environments import load_environments

    mounted = load_contracts(configmap_mount(CONTRACTS, tmp_path / "mount"))
    from_git = load_contracts(CONTRACTS)
    assert sorted(mounted.feature_sets) == sorted(from_git.feature_sets)
    for key, contract in from_git.feature_sets.items():
        assert mounted.feature_sets[key].schema_hash == contract.schema_hash
    assert sorted(load_environments(tmp_path / "mount")) == ["dev", "local", "prod"]


# ---------------------------------------------------------------------------------------------- schema_hash


def reformatted(data: dict[str, Any]) -> str:
    """Same schema, different text: reversed key order, comments, descriptions edited."""
    data = copy.deepcopy(data)
    data["description"] = "Edited description."
    for feature in data["features"]:
        feature["description"] = feature["description"].upper()
    data["features"] = list(reversed(data["features"]))
    return "# a comment\n" + yaml.safe_dump(dict(reversed(list(data.items()))), indent=4, sort_keys=False)


def test_schema_hash_ignores_formatting_and_docs(tmp_path: Path) -> None:
    """Key order, comments, whitespace, feature order and descriptions do not change the hash."""
    path = write_contract(tmp_path, reformatted(base()))
    assert load_feature_set(path).schema_hash == load_feature_set(SPEND_V1).schema_hash


@pytest.mark.parametrize(
    "mutation",
    [
        mutate(features__0__name="txn_cnt_1d"),
        mutate(features__0__dtype="int32"),
        mutate(features__0__nullable=True),
        mutate(entity__join_key="cust_id"),
        mutate(entity__name="client"),
        mutate(timestamp_field="ts"),
        mutate(ttl="8d"),
        mutate(name="customer_spending"),
    ],
    ids=["feature-name", "feature-type", "nullability", "join-key", "entity-name", "timestamp", "ttl", "name"],
)
def test_schema_hash_changes_with_the_schema(tmp_path: Path, mutation) -> None:
    """Any name, type, entity, timestamp or TTL change gives a different hash."""
    data = mutation(base())
    path = write_contract(tmp_path, data, name=data["name"])
    assert load_feature_set(path).schema_hash != load_feature_set(SPEND_V1).schema_hash


def test_schema_hash_is_pinned() -> None:
    """The hash function itself must not drift between releases: recorded metadata depends on it."""
    contract = load_feature_set(SPEND_V1)
    assert schema_hash(contract) == "sha256:beafa92fd2bff45311d54257d081190f6c7378386a44ad00686a71ae6b26f0ee"


# ------------------------------------------------------------------------------------------------ lock + diff


def test_lock_detects_in_place_change_deletion_and_unlocked(contracts_copy: Path) -> None:
    """A released version may not change or vanish; a new version must be locked."""
    assert check_lock(contracts_copy, load_contracts(contracts_copy)) == []
    write_contract(contracts_copy, mutate(features__0__dtype="int32")(base()))
    problems = check_lock(contracts_copy, load_contracts(contracts_copy))
    assert len(problems) == 1 and "changed its schema in place" in problems[0] and "add v2.yaml" in problems[0]

    write_contract(contracts_copy, base())  # revert
    (contracts_copy / "feature_sets/driver_hourly_stats/v1.yaml").unlink()
    problems = check_lock(contracts_copy, load_contracts(contracts_copy))
    assert len(problems) == 1 and "driver_hourly_stats v1 has no contract file" in problems[0]


def test_lock_refuses_to_rewrite_a_released_hash(contracts_copy: Path) -> None:
    """`contracts lock` adds new versions but never rewrites a released one."""
    from feature_platform.errors import CompatibilityError

    write_contract(contracts_copy, mutate(ttl="9d")(base()))
    with pytest.raises(CompatibilityError, match="changed its schema in place"):
        write_lock(contracts_copy, load_contracts(contracts_copy))
    write_contract(contracts_copy, base())
    v3 = mutate(version=3)(yaml.safe_load((contracts_copy / "feature_sets/customer_spend/v2.yaml").read_text()))
    write_contract(contracts_copy, v3, version=3)
    assert any("v3 is not in contracts.lock" in p for p in check_lock(contracts_copy, load_contracts(contracts_copy)))
    lock = write_lock(contracts_copy, load_contracts(contracts_copy))
    assert "v3" in lock["customer_spend"]
    assert check_lock(contracts_copy, load_contracts(contracts_copy)) == []


@pytest.mark.parametrize(
    ("mutation", "breaking", "fragment"),
    [
        (mutate(features__0__description="new words"), False, "description"),
        (mutate(ttl="14d"), False, "ttl changed"),
        (mutate(features__2=_DELETE), True, "avg_txn_amount_1d removed"),
        (mutate(features__0__name="n_txn_1d"), True, "txn_count_1d removed"),
        (mutate(features__0__dtype="float64"), True, "retyped int64 -> float64"),
        (mutate(entity__join_key="cust_id"), True, "entity changed"),
        (mutate(timestamp_field="ts"), True, "timestamp_field changed"),
        (mutate(features__0__nullable=True), True, "nullable False -> True"),
    ],
    ids=["doc", "ttl", "removed", "renamed", "retyped", "entity", "timestamp", "loosened-nullability"],
)
def test_diff_classifies_changes(tmp_path: Path, mutation, breaking: bool, fragment: str) -> None:
    """Doc and TTL edits are compatible; removing, renaming, retyping, entity or timestamp changes break readers."""
    old = load_feature_set(SPEND_V1)
    new = load_feature_set(write_contract(tmp_path, mutation(base())))
    changes = diff_contracts(old, new)
    assert any(fragment in c.what for c in changes), changes
    assert any(c.breaking for c in changes) is breaking


def test_diff_v1_to_v2_is_compatible() -> None:
    """The shipped v2 only adds an optional feature."""
    old = load_feature_set(SPEND_V1)
    new = load_feature_set(SPEND_V1.with_name("v2.yaml"))
    changes = diff_contracts(old, new)
    assert not any(c.breaking for c in changes)
    assert any("optional feature max_txn_amount_1d" in c.what for c in changes)


def test_adding_a_required_feature_is_breaking(tmp_path: Path) -> None:
    """A non-nullable new feature breaks readers of older builds, which lack the column."""
    data = base()
    data["features"].append({"name": "new_required", "dtype": "int64", "description": "x", "nullable": False})
    changes = diff_contracts(load_feature_set(SPEND_V1), load_feature_set(write_contract(tmp_path, data)))
    assert [c.breaking for c in changes if "new_required" in c.what] == [True]
