"""featurectl's contract commands (exit codes, one line per problem, --json) and environment contracts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from feature_platform.cli import build_cli, main
from feature_platform.environments import Settings, load_environments
from feature_platform.errors import ContractErrors
from feature_platform.sample_data import SampleSpec, transactions
from tests.conftest import CONTRACTS, REPO
from tests.helpers import AS_OF

SPEND = CONTRACTS / "feature_sets/customer_spend"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_has_help(capsys) -> None:
    """`featurectl --help` lists every command under its subject, and each has its own --help."""
    from feature_platform.cli import SUBJECTS

    commands = build_cli().commands
    assert {"contracts", "sample-data", "build", "versions", "rollback", "apply", "materialize", "online",
            "historical", "verify", "serve", "step", "proof", "demo", "lint-dags", "feast-config"} <= set(commands)
    assert sorted(n for names in SUBJECTS.values() for n in names) == sorted(commands)  # each under one subject
    for name in commands:
        assert main([name, "--help"]) == 0
        assert f"Usage: featurectl {name} " in capsys.readouterr().out
    assert main(["contracts", "validate", "--help"]) == 0 and "[PATHS]..." in capsys.readouterr().out
    result = subprocess.run([str(Path(sys.executable).parent / "featurectl"), "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "proof" in result.stdout
    sections = [line for line in result.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert sections == ["Options:", *(f"{subject}:" for subject in SUBJECTS)], sections
    result = subprocess.run([str(Path(sys.executable).parent / "featurectl"), "--version"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("featurectl ")


def test_validate_ok_and_json(capsys) -> None:
    code, out, _ = run(capsys, "contracts", "validate", "--contracts", str(CONTRACTS))
    assert code == 0 and "ok    customer_spend v2 sha256:" in out and "ok    environment prod" in out
    code, out, _ = run(capsys, "contracts", "validate", "--json", str(SPEND / "v1.yaml"))
    assert code == 0 and json.loads(out)["ok"] is True


def test_validate_reports_one_line_per_problem(capsys, tmp_path: Path) -> None:
    data = yaml.safe_load((SPEND / "v1.yaml").read_text())
    data["features"][0]["dtype"] = "flaot"
    data["ttl"] = "soon"
    bad = tmp_path / "feature_sets/customer_spend/v1.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text(yaml.safe_dump(data))
    code, _, err = run(capsys, "contracts", "validate", str(bad))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2
    assert any(f"{bad}: features[0].dtype: 'flaot' is not one of" in line for line in lines)
    code, out, _ = run(capsys, "contracts", "validate", "--json", str(bad))
    assert {e["field"] for e in json.loads(out)["errors"]} == {"features[0].dtype", "ttl"}


def test_hash_diff_check_schema(capsys, contracts_copy: Path) -> None:
    code, out, _ = run(capsys, "contracts", "hash", str(SPEND / "v1.yaml"))
    assert code == 0 and out.startswith("sha256:")
    code, out, _ = run(capsys, "contracts", "diff", str(SPEND / "v1.yaml"), str(SPEND / "v2.yaml"))
    assert code == 0 and "result: compatible" in out
    code, out, _ = run(capsys, "contracts", "diff", "--json", str(SPEND / "v2.yaml"), str(SPEND / "v1.yaml"))
    assert code == 3 and json.loads(out)["breaking"] is True
    assert run(capsys, "contracts", "check", "--contracts", str(contracts_copy))[0] == 0
    profile = contracts_copy / "feature_sets/customer_profile/v1.yaml"
    profile.write_text(profile.read_text().replace("ttl: 30d", "ttl: 31d"))
    code, _, err = run(capsys, "contracts", "check", "--contracts", str(contracts_copy))
    assert code == 3 and "changed its schema in place" in err
    code, out, _ = run(capsys, "contracts", "schema")
    schema = json.loads(out)
    assert schema["title"] == "feature-platform FeatureSet contract" and "features" in schema["properties"]


def test_repo_lock_is_current(capsys) -> None:
    """The committed contracts.lock records every shipped version (CI fails on an unlocked or edited one)."""
    assert run(capsys, "contracts", "check", "--contracts", str(CONTRACTS))[0] == 0


def test_unknown_feature_set_is_a_clear_error(capsys, local_settings) -> None:
    code, _, err = run(capsys, "build", "nope", "--contracts", str(local_settings.contracts_dir),
                       "--home", str(local_settings.home), "--env", "local")
    assert code == 2 and ("no feature set named 'nope'; known: customer_category_spend, customer_embedding, "
                          "customer_profile") in err


def test_build_all_builds_the_catalogue_in_one_process(capsys, local_settings) -> None:
    """`build --all` builds and promotes every live version (one process for the catalogue); the same as one
    `build` per set, and a second run reuses every build. A set name beside --all is a usage error."""
    from feature_platform import pipeline
    from tests.helpers import seed_raw

    seed_raw(local_settings)
    where = ["--contracts", str(local_settings.contracts_dir), "--home", str(local_settings.home), "--env", "local"]
    code, out, err = run(capsys, "build", "--all", "--json", *where)
    assert code == 0, err
    built = json.loads(out)
    live = [(c.name, c.version_label) for c in local_settings.contracts().live()]
    assert [(b["feature_set"], b["version"]) for b in built] == live and not any(b["reused"] for b in built)
    for b in built:
        versions, _ = pipeline.versions(local_settings, b["feature_set"])
        assert any(v["build_id"] == b["build_id"] and v["complete"] for v in versions)
    newest = max((b for b in built if b["feature_set"] == "customer_spend"), key=lambda b: int(b["version"][1:]))
    assert pipeline.versions(local_settings, "customer_spend")[1]["build_id"] == newest["build_id"], built
    code, out, _ = run(capsys, "build", "--all", "--json", *where)
    assert code == 0 and all(b["reused"] for b in json.loads(out))
    code, _, err = run(capsys, "build", "customer_spend", "--all", *where)
    assert code == 2 and "give one FEATURE_SET" in err
    assert run(capsys, "build", *where)[0] == 2


def test_exit_codes_are_distinct_and_documented() -> None:
    """The command reference's table of exit codes (generated by the docs' hook) is the code's
    (errors.EXIT_CODES), and each error class has its own."""
    import re

    from feature_platform import errors
    from tests.test_docs import docs_hooks

    table = dict(re.findall(r"^\| (\d) \| (.+?) \|$", docs_hooks().command_reference(), re.M))
    assert {int(k): v for k, v in table.items()} == errors.EXIT_CODES
    assert {errors.ContractError.exit_code, errors.CompatibilityError.exit_code, errors.AccessDenied.exit_code,
            errors.AddressInUse.exit_code, errors.PlatformError.exit_code} == {1, 2, 3, 4, 5}


def test_serve_names_a_taken_port_with_its_own_exit_code_and_logs_its_start(local_settings) -> None:
    """A busy port exits 5 with one line (not 3, the code of incompatible contracts); a start says where it
    listens and which store it serves."""
    import os
    import socket

    from tests.services import free_port

    env = {**os.environ, "FEATURE_PLATFORM_CONTRACTS": str(local_settings.contracts_dir),
           "FEATURE_PLATFORM_HOME": str(local_settings.home), "FEATURE_PLATFORM_ENV": "local"}
    featurectl = str(Path(sys.executable).parent / "featurectl")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([featurectl, "serve", "--port", str(port)], env=env, capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 5 and f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr[-2000:]
    port = free_port()
    process = subprocess.Popen([featurectl, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        first = process.stderr.readline()
        assert f"listening on http://127.0.0.1:{port}" in first and "environment local" in first, first
        assert "online store SQLite" in first
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_init_scaffolds_contracts_that_validate_and_build(capsys, local_settings) -> None:
    """`init NAME` writes a feature set contract that validates as written and builds from a table of the shape
    its SQL names; `init --feature-service` one over the newest versions of the sets named. Neither overwrites,
    and a bad name writes nothing."""
    from datetime import timedelta

    import pyarrow as pa

    from feature_platform import pipeline
    from tests.helpers import replace_raw

    where = ["--contracts", str(local_settings.contracts_dir)]
    code, out, err = run(capsys, "init", "merchant_stats", "--entity", "merchant", "--join-key", "merchant_id",
                         "--key-dtype", "string", "--json", *where)
    assert code == 0, err
    path = Path(json.loads(out)["path"])
    assert path == local_settings.contracts_dir / "feature_sets" / "merchant_stats" / "v1.yaml"
    assert run(capsys, "contracts", "validate", *where)[0] == 0
    replace_raw(local_settings, "events", pa.table({
        "merchant_id": ["m1", "m2", "m1"], "amount": [1.5, None, 3.0],
        "event_timestamp": pa.array([AS_OF - timedelta(hours=h) for h in (3, 2, 1)], pa.timestamp("us", "UTC"))}))
    built = pipeline.build_and_promote(local_settings, "merchant_stats")
    assert built["row_count"] == 3

    code, out, err = run(capsys, "init", "ranker", "--feature-service", "--feature-set", "customer_spend",
                         "--feature-set", "merchant_stats", *where)
    assert code == 0, err
    service = local_settings.contracts().service("ranker")
    assert [(e.feature_set, e.version) for e in service.features] == [("customer_spend", 2), ("merchant_stats", 1)]

    before = path.read_text()
    assert run(capsys, "init", "merchant_stats", *where)[0] == 2 and path.read_text() == before
    code, _, err = run(capsys, "init", "Bad-Name", *where)
    assert code == 2 and "lower-case" in err
    assert not (local_settings.contracts_dir / "feature_sets" / "Bad-Name").exists()
    code, _, err = run(capsys, "init", "lonely", "--feature-service", "--feature-set", "nope", *where)
    assert code == 2 and "nope" in err and not (local_settings.contracts_dir / "feature_services" / "lonely").exists()


# ----------------------------------------------------------------------------------------------- environments


def test_environments_are_isolated() -> None:
    """dev and prod differ in Feast project, data prefix, registry and Redis DB."""
    envs = load_environments(CONTRACTS)
    dev, prod = envs["dev"], envs["prod"]
    assert dev.feast_project != prod.feast_project
    assert dev.object_store.uri != prod.object_store.uri
    assert dev.registry.uri != prod.registry.uri
    assert dev.online_store.db != prod.online_store.db


def _write_env(root: Path, name: str, data: dict) -> None:
    (root / "environments").mkdir(parents=True, exist_ok=True)
    (root / "environments" / f"{name}.yaml").write_text(yaml.safe_dump(data))


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"online_store": {"type": "redis", "address_env": "FEATURE_PLATFORM_REDIS_ADDRESS", "db": 0}},
         "online_store", "shares"),
        ({"feast_project": "feature_platform_dev"}, "feast_project", "shares"),
        ({"object_store": {"uri": "s3://feature-platform-dev/features/prod"}}, "object_store.uri", "nested"),
        ({"online_store": {"type": "redis", "address_env": "X", "db": 1, "password": "hunter2"}},
         "online_store.redis.password", "unknown field"),
        ({"object_store": {"uri": "s3://bucket/../dev"}}, "object_store", "'..'"),
    ],
    ids=["same-redis-db", "same-project", "nested-prefix", "literal-password", "dotdot"],
)
def test_bad_environment_contracts(tmp_path: Path, change: dict, field: str, fragment: str) -> None:
    for name in ("dev", "prod"):
        _write_env(tmp_path, name, yaml.safe_load((CONTRACTS / f"environments/{name}.yaml").read_text()))
    prod = yaml.safe_load((CONTRACTS / "environments/prod.yaml").read_text())
    prod.update(change)
    _write_env(tmp_path, "prod", prod)
    with pytest.raises(ContractErrors) as info:
        load_environments(tmp_path)
    matching = [e for e in info.value.errors if e.field == field]
    assert matching, [str(e) for e in info.value.errors]
    assert fragment in matching[0].problem and matching[0].file.endswith("environments/prod.yaml")


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env({"FEATURE_PLATFORM_CONTRACTS": str(CONTRACTS), "FEATURE_PLATFORM_HOME": str(tmp_path),
                                  "FEATURE_PLATFORM_ENV": "dev", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert settings.env_name == "dev" and settings.s3_endpoint_url == "http://127.0.0.1:9"
    assert settings.resolve_uri(settings.environment("local"), "store") == str(tmp_path / "local" / "store")
    default = Settings.from_env({}, repo_root=REPO)
    assert default.contracts_dir == CONTRACTS and default.env_name == "local"


def test_sample_data_is_deterministic() -> None:
    """Same seed, scale and as-of: identical rows; another seed: different rows."""
    spec = SampleSpec(seed=3, scale=0.05, as_of=AS_OF)
    assert transactions(spec).equals(transactions(spec))
    assert not transactions(spec).equals(transactions(SampleSpec(seed=4, scale=0.05, as_of=AS_OF)))
    assert transactions(SampleSpec(scale=2, as_of=AS_OF)).num_rows == 2 * transactions(SampleSpec(as_of=AS_OF)).num_rows


def test_local_source_snapshot_is_content_addressed(local_settings) -> None:
    """Locally, as on S3, a file's ETag is the MD5 of its content: rewriting the same raw data keeps the build id,
    so `scripts/dev demo` run twice reuses its builds."""
    from feature_platform import pipeline
    from tests.helpers import seed_raw

    seed_raw(local_settings)
    first = pipeline.build_and_promote(local_settings, "customer_profile")
    seed_raw(local_settings)
    again = pipeline.build_and_promote(local_settings, "customer_profile")
    assert again["build_id"] == first["build_id"] and again["reused"] is True


@pytest.mark.parametrize(("text", "fragment"), [
    ("{not json", "is not JSON"),
    ('{"class": "a.B"}', "must be a JSON list"),
    ('[{"kwargs": {}}]', 'needs "class"'),
    ('[{"class": "a.B", "on": ["success"]}]', "on is a subset of"),
    ('[{"class": "a.B", "url": "https://hooks.example"}]', "keys are class, kwargs, on"),
])
def test_bad_notifier_configuration_names_the_entry(text: str, fragment: str) -> None:
    from feature_platform.dag_factory import parse_notifiers

    with pytest.raises(ValueError, match="FEATURE_PLATFORM_NOTIFIERS") as error:
        parse_notifiers(text)
    assert fragment in str(error.value)


def test_notifiers_and_step_policies_parse() -> None:
    from feature_platform.dag_factory import parse_notifiers
    from feature_platform.environments import ScheduleConfig

    [spec] = parse_notifiers('[{"class": "pkg.mod.Notifier", "kwargs": {"conn": "x"}, "on": ["retry"]}]')
    assert (spec.class_path, spec.kwargs, spec.on) == ("pkg.mod.Notifier", {"conn": "x"}, ("retry",))
    assert parse_notifiers("  ") == ()
    schedule = ScheduleConfig(retries=2, timeout_minutes=30,
                              steps={"build": {"timeout_minutes": 90, "retries": 0}})
    assert schedule.policy("build")[:2] == (0, 90)
    assert schedule.policy("materialize")[:2] == (2, 30)
    with pytest.raises(ValueError, match="bild"):
        ScheduleConfig(steps={"bild": {"retries": 1}})


def test_secrets_mounted_as_files_become_settings(tmp_path: Path) -> None:
    """FEATURE_PLATFORM_SECRETS_DIR (the chart's projected Secret volume): each file named like a variable is its
    value without the trailing newline; the volume's hidden links are skipped; a set variable wins."""
    from feature_platform.errors import ConfigError

    secrets = tmp_path / "secrets"
    (secrets / "..2026_12_01").mkdir(parents=True)
    (secrets / "..2026_12_01" / "FEATURE_PLATFORM_REDIS_PASSWORD").write_text("s3cret\n")
    (secrets / "..data").symlink_to("..2026_12_01")
    (secrets / "FEATURE_PLATFORM_REDIS_PASSWORD").symlink_to("..data/FEATURE_PLATFORM_REDIS_PASSWORD")
    (secrets / "FEATURE_PLATFORM_AUTH_KEY").write_text("k" * 40)
    settings = Settings.from_env(environ={"FEATURE_PLATFORM_SECRETS_DIR": str(secrets),
                                          "FEATURE_PLATFORM_AUTH_KEY": "from-the-environment"})
    assert settings.values["FEATURE_PLATFORM_REDIS_PASSWORD"] == "s3cret"
    assert settings.values["FEATURE_PLATFORM_AUTH_KEY"] == "from-the-environment"
    assert not any(name.startswith("..") for name in settings.values)
    with pytest.raises(ConfigError, match=r"FEATURE_PLATFORM_SECRETS_DIR=.* is not a directory"):
        Settings.from_env(environ={"FEATURE_PLATFORM_SECRETS_DIR": str(tmp_path / "absent")})


@pytest.mark.parametrize(("args", "fragment"), [
    (["token", "--team", "a", "--ttl", "forever"], "Invalid value for '--ttl': 'forever' is not a duration"),
    (["token", "--team", "a", "--ttl", "0d"], "Invalid value for '--ttl': '0d' is not a duration"),
    (["gc", "--min-age", "1 fortnight"], "Invalid value for '--min-age': '1 fortnight' is not a duration"),
    (["build", "customer_profile", "--version", "x"], "Invalid value for '--version': 'x' is not a contract version"),
    (["step", "nonsense", "customer_profile"], "'nonsense' is not one of 'validate_contract', 'build'"),
    (["build", "--bogus"], "No such option '--bogus'"),
    (["online", "customer_spend", "1", "--version", "v0"], "'v0' is not a contract version"),
])
def test_bad_arguments_are_usage_errors_that_say_what_is_expected(capsys, args: list[str], fragment: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "<lambda>" not in err


def test_infrastructure_messages_name_the_real_cause() -> None:
    """Redis out of memory is not blamed on the address; a refused password names the variable; a full disk
    names the file."""
    import errno

    import redis

    from feature_platform.errors import describe_failure

    oom = describe_failure(redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'."))
    assert "out of memory" in oom and "address" not in oom
    auth = describe_failure(redis.exceptions.AuthenticationError("WRONGPASS invalid username-password pair"))
    assert "FEATURE_PLATFORM_REDIS_PASSWORD" in auth
    full = describe_failure(OSError(errno.ENOSPC, "No space left on device", "/data/monitor.html"))
    assert "disk full writing /data/monitor.html" in full
    assert "FEATURE_PLATFORM_S3_ENDPOINT_URL" not in (REPO / "src/feature_platform/locks.py").read_text()
