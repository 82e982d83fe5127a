"""Every featurectl command answers `--json` with JSON on stdout (and nothing else there), success or failure: a
walk over the parser's commands, so a new command without JSON fails here."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import pandas as pd

from feature_platform import pipeline
from feature_platform.cli import build_cli, main
from tests.conftest import REPO
from tests.helpers import AS_OF, seed_raw


def _commands() -> set[tuple[str, ...]]:
    import click

    found = set()
    for name, command in build_cli().commands.items():
        if isinstance(command, click.Group):
            found |= {(name, child) for child in command.commands}
        else:
            found.add((name,))
    return found


def test_every_command_answers_json(local_settings, tmp_path, capsys) -> None:
    seed_raw(local_settings)
    pipeline.run_loop(local_settings)
    contracts = local_settings.contracts_dir
    where = ["--contracts", str(contracts), "--home", str(local_settings.home)]
    env = [*where, "--env", "local"]
    build_id = pipeline.versions(local_settings, "customer_profile")[1]["build_id"]
    entities = tmp_path / "entities.csv"
    pd.DataFrame({"customer_id": [1001, 999999], "event_timestamp": [AS_OF.isoformat()] * 2}).to_csv(entities,
                                                                                                   index=False)
    profile = str(contracts / "feature_sets" / "customer_profile" / "v1.yaml")
    scratch = tmp_path / "scratch-contracts"  # init adds an unbuilt set: not to the loop's contracts
    shutil.copytree(contracts, scratch)
    spend = [str(contracts / "feature_sets" / "customer_spend" / f"v{v}.yaml") for v in (1, 2)]
    walk: dict[tuple[str, ...], list[str]] = {
        ("contracts", "validate"): where, ("contracts", "hash"): [profile, *where],
        ("contracts", "diff"): [*spend, *where], ("contracts", "check"): where, ("contracts", "lock"): where,
        ("contracts", "export"): ["--out", str(tmp_path / "odcs"), *where], ("contracts", "schema"): [],
        ("init",): ["scaffolded", "--contracts", str(scratch)], ("sample-data",): ["--scale", "0.02", *env],
        ("build",): ["customer_profile", *env], ("versions",): ["customer_profile", *env],
        ("rollback",): ["customer_profile", "--to", build_id, *env], ("feast-config",): env, ("apply",): env,
        ("plan",): env, ("materialize",): ["--quiet", *env], ("online",): ["customer_profile", "1001", *env],
        ("historical",): ["customer_profile", "--entities", str(entities), *env],
        ("export",): ["customer_profile", "--out", str(tmp_path / "out.parquet"), *env], ("audit",): env,
        ("token",): ["--team", "fraud-ml", *env], ("verify",): env, ("monitor",): env,
        ("serve",): ["--print-command", *env], ("check-server",): ["--url", "http://127.0.0.1:9", *env],
        ("step",): ["validate_contract", "customer_profile", *env], ("proof",): env, ("gc",): env,
        ("lint-dags",): [str(REPO / "dags")], ("demo",): ["--scale", "0.02", *env],
        ("push",): ["customer_profile", "--file", str(entities), *env], ("compact",): env,
        ("backfill",): ["customer_category_spend", "--from", (AS_OF - timedelta(days=2)).date().isoformat(),
                        "--to", (AS_OF - timedelta(days=1)).date().isoformat(), *env],
    }
    assert set(walk) == _commands(), "add the new command to this walk"
    answers = {}
    for command, args in walk.items():
        code = main([*command, *args, "--json"])
        out, err = capsys.readouterr()
        assert out.strip(), (command, code, err[-1000:])
        answers[command] = (code, json.loads(out))  # stdout is one JSON document, whatever the outcome
    # Failures keep their exit code and say why in the JSON (or on stderr): nothing is hidden by --json.
    assert answers[("check-server",)][0] == 1 and answers[("check-server",)][1]["problems"]
    assert answers[("historical",)][1]["rows"] == 2 and len(answers[("historical",)][1]["records"]) == 2
    assert answers[("online",)][0] == 0 and answers[("plan",)][0] == 0, answers[("plan",)]
    assert answers[("token",)] == (2, answers[("token",)][1]) and "signs no tokens" in answers[("token",)][1]["error"]
    # customer_profile takes no pushed rows: a bad-input error, as JSON.
    assert answers[("push",)][0] == 2 and "takes no pushed rows" in answers[("push",)][1]["error"]
    assert answers[("compact",)] == (0, [])
    assert all(code == 0 for command, (code, _) in answers.items() if command not in {("check-server",),
                                                                                      ("token",), ("push",)})


def test_an_error_under_json_is_json_too(local_settings, capsys) -> None:
    """A failure is one line on stderr and its exit code; with --json stdout also carries it as JSON."""
    code = main(["token", "--team", "fraud-ml", "--json", "--contracts", str(local_settings.contracts_dir),
                 "--env", "local"])
    out, err = capsys.readouterr()
    assert code == 2 and "signs no tokens" in err
    assert json.loads(out) == {"error": err.strip().removeprefix("error: "), "exit_code": 2}
    assert main(["token", "--team", "fraud-ml", "--contracts", str(local_settings.contracts_dir), "--env",
                 "local"]) == 2
    assert capsys.readouterr().out == ""  # without --json, stdout stays empty on failure


def test_long_waits_say_what_they_wait_for_on_a_terminal(local_settings, capsys, monkeypatch) -> None:
    """On a terminal, apply, plan, online and historical name a wait that lasts (a ticking line, then the total);
    --json, a pipe or a log get nothing of it, so stdout stays pure and a failure stays one line."""
    import sys

    from feature_platform import cli

    seed_raw(local_settings)
    pipeline.build_all(local_settings)
    env = ["--contracts", str(local_settings.contracts_dir), "--home", str(local_settings.home), "--env", "local"]
    assert main(["apply", *env]) == 0  # not a terminal: nothing but the result
    out, err = capsys.readouterr()
    assert out.startswith("applied:") and "applying" not in err

    monkeypatch.setattr(cli, "WAIT_NOTICE_SECONDS", 0.0)  # every wait counts as long here
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["apply", *env]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("applied:")
    assert "\rapplying the contracts' Feast objects to local... " in err
    last = err.rstrip("\n").split("\r")[-1]
    assert last.startswith("applying the contracts' Feast objects to local: ") and last.endswith(" s"), err
    assert main(["plan", "--json", *env]) == 0
    out, err = capsys.readouterr()
    assert "planning" not in err and json.loads(out)["registry_changes"] == []
