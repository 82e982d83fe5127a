"""featurectl, on click: each command parses its line, calls one library function and renders the answer
through ``_render`` (one JSON document with --json, text otherwise). Exit codes: errors.EXIT_CODES."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace as Args
from typing import Any

import click

from feature_platform import __version__
from feature_platform.errors import AddressInUse, ConfigError, PlatformError, describe_failure
from feature_platform.steps import STEP_NAMES
from feature_platform.store import write_file_atomic, write_files_atomic

Handler = Callable[[Args], int]


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _render(args: Args, data: Any, text: Callable[[], None] | str | None = None) -> None:
    """The one way a command answers on stdout: ``data`` as one JSON document under --json; otherwise ``text``
    for people (a line, or a function printing several). Progress and notices go to stderr, never here."""
    if getattr(args, "json", False):
        _print_json(data)
    elif callable(text):
        text()
    elif text is not None:
        print(text)


WAIT_NOTICE_SECONDS = 1.0  # a wait shorter than this shows nothing


@contextlib.contextmanager
def _waiting(args: Args, what: str) -> Iterator[None]:
    """On a terminal, a wait that lasts WAIT_NOTICE_SECONDS says what it waits for on stderr, with a ticking
    count of seconds and the total at the end. Logs and pipes get nothing (a failure stays one line there), and
    neither do --json and --quiet."""
    if getattr(args, "json", False) or getattr(args, "quiet", False) or not sys.stderr.isatty():
        yield
        return
    start = time.monotonic()
    stop, shown = threading.Event(), threading.Event()

    def tick() -> None:
        if stop.wait(WAIT_NOTICE_SECONDS):
            return
        shown.set()
        while True:
            print(f"\r{what}... {time.monotonic() - start:.0f} s", end="", file=sys.stderr, flush=True)
            if stop.wait(1.0):
                return

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    finished = False
    try:
        yield
        finished = True
    finally:
        stop.set()
        ticker.join()
        if shown.is_set():  # the total, or the line cleared for the error that follows
            print(f"\r{what}: {time.monotonic() - start:.1f} s" if finished else "\r\033[K", file=sys.stderr,
                  end="\n" if finished else "", flush=True)


def _settings(args: Args) -> Any:
    from feature_platform.environments import Settings

    return Settings.from_env(contracts_dir=getattr(args, "contracts", None), home=getattr(args, "home", None),
                             env_name=getattr(args, "env", None))


def _report(problems: list[str], ok_message: str, exit_code: int, as_json: bool = False) -> int:
    """One line per problem on stderr and ``exit_code``, or the ok message and 0 (``as_json``: the same as
    ``{"ok", "problems"}`` on stdout, with the same exit code)."""
    if as_json:
        _print_json({"ok": not problems, "problems": problems, **({"message": ok_message} if not problems else {})})
        return exit_code if problems else 0
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(ok_message)
    return exit_code if problems else 0


def _progress(args: Args) -> Callable[[str], None]:
    if getattr(args, "quiet", False):
        return lambda _msg: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- contracts


def cmd_contracts_validate(args: Args) -> int:
    from feature_platform.build import check_transform
    from feature_platform.contracts import load_contracts, load_feature_set
    from feature_platform.environments import load_environments
    from feature_platform.errors import ContractError, ContractErrors

    settings = _settings(args)
    targets = [Path(p) for p in args.paths] or [settings.contracts_dir]
    errors: list[ContractError] = []
    checked: list[str] = []
    for target in targets:
        try:
            if target.is_dir():
                contracts = load_contracts(target)
                environments = load_environments(target)
                loaded = [(c, contracts.files[(c.name, c.version)]) for c in contracts.all()]
                checked += [f"environment {name}" for name in sorted(environments)]
                checked += [f"feature service {m.name} {m.version_label} {contracts.service_schema_hash(m)}"
                            for m in contracts.all_services()]
            else:
                loaded = [(load_feature_set(target), str(target))]
            for contract, file in loaded:
                problems = check_transform(contract)
                errors += [ContractError(file, "source.sql", problem) for problem in problems]
                if not problems:
                    checked.append(f"{contract.name} {contract.version_label} {contract.schema_hash}")
        except ContractErrors as exc:
            errors.extend(exc.errors)
        except ContractError as exc:
            errors.append(exc)

    def text() -> None:
        for line in checked:
            print(f"ok    {line}")
        for error in errors:
            print(f"error {error}", file=sys.stderr)

    _render(args, {"ok": not errors, "checked": checked,
                   "errors": [{"file": e.file, "field": e.field, "problem": e.problem} for e in errors]}, text)
    return 2 if errors else 0


def cmd_contracts_hash(args: Args) -> int:
    from feature_platform.contracts import load_feature_set

    contract = load_feature_set(args.file)
    _render(args, {"feature_set": contract.name, "version": contract.version_label,
                   "schema_hash": contract.schema_hash}, contract.schema_hash)
    return 0


def cmd_contracts_diff(args: Args) -> int:
    from feature_platform.contracts import (
        diff_contracts,
        diff_services,
        load_feature_service,
        load_feature_set,
        read_yaml,
    )

    kinds = {read_yaml(Path(p)).get("kind") for p in (args.old, args.new)}
    if kinds == {"FeatureService"}:
        changes = diff_services(load_feature_service(args.old), load_feature_service(args.new))
    elif "FeatureService" in kinds:
        raise ConfigError("contracts diff compares two feature sets or two feature services, not one of each")
    else:
        changes = diff_contracts(load_feature_set(args.old), load_feature_set(args.new))
    breaking = any(c.breaking for c in changes)

    def text() -> None:
        for change in changes:
            print(f"{'BREAKING  ' if change.breaking else 'compatible'} {change.what}")
        print("result: " + ("breaking" if breaking else "compatible" if changes else "no changes"))

    _render(args, {"breaking": breaking, "changes": [{"breaking": c.breaking, "what": c.what} for c in changes]},
            text)
    return 3 if breaking else 0


def cmd_contracts_check(args: Args) -> int:
    from feature_platform.contracts import check_lock

    settings = _settings(args)
    problems = check_lock(settings.contracts_dir, settings.contracts())
    return _report(problems, f"ok: every contract version matches {settings.contracts_dir.name}/contracts.lock", 3,
                   args.json)


def cmd_contracts_lock(args: Args) -> int:
    from feature_platform.contracts import write_lock

    settings = _settings(args)
    lock = write_lock(settings.contracts_dir, settings.contracts())
    count = sum(len(v) for v in lock.values())
    _render(args, {"lock": str(settings.contracts_dir / "contracts.lock"), "versions": count},
            f"locked {count} contract version(s) in {settings.contracts_dir / 'contracts.lock'}")
    return 0


def cmd_contracts_export(args: Args) -> int:
    """Every contract version as an ODCS document, validated against the standard's schema before writing."""
    import yaml

    from feature_platform import odcs
    from feature_platform.environments import load_environments

    settings = _settings(args)
    contracts = settings.contracts()
    environments = [e for name, e in sorted(load_environments(settings.contracts_dir).items())
                    if not args.env or name == args.env]
    to_stdout = args.out == "-"
    out = Path(args.out)
    if not to_stdout:
        out.mkdir(parents=True, exist_ok=True)
    problems, written, documents = [], [], []
    for contract in contracts.all():
        document = odcs.to_odcs(contract, environments, _promoted_builds(settings, environments, contract,
                                                                         explicit=bool(args.env)))
        errors = odcs.validate(document)
        problems += [f"{contract.feature_view_name}: {e}" for e in errors]
        if errors:
            continue
        documents.append(document)
        if not to_stdout:
            path = out / f"{contract.feature_view_name}.odcs.yaml"
            write_file_atomic(path, yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
            written.append(str(path))
    if args.json:  # the documents themselves, or where they were written
        _print_json({"documents": documents} if to_stdout else {"written": written, "problems": problems})
        return 2 if problems else 0
    if to_stdout:  # one YAML stream, a document per contract version
        print(yaml.safe_dump_all(documents, sort_keys=False, allow_unicode=True), end="")
        return _report(problems, "", 2) if problems else 0
    for line in written:
        print(f"wrote {line}")
    return _report(problems, f"{len(written)} ODCS {odcs.API_VERSION} document(s) valid", 2)


def _promoted_builds(settings: Any, environments: list[Any], contract: Any, explicit: bool) -> dict[str, str]:
    """Per environment, the Parquet of the version's promoted build, read from its latest pointer: local stores
    always, S3 only for the environment named with --env (whose credentials the caller has set)."""
    from feature_platform import build

    found = {}
    for env in environments:
        if env.is_s3 and not explicit:
            continue
        try:
            store = settings.object_store(env)
            data = build.read_pointer(store, contract.name, contract.version_label)["data"]
            # An incremental build's partitions: their directory (it may also hold partitions of other builds).
            found[env.name] = data[0].rsplit("/", 1)[0] + "/*.parquet" if isinstance(data, list) else str(data)
        except Exception:  # best effort: not built there yet, or unreachable; the entry names every build
            continue
    return found


def cmd_init(args: Args) -> int:
    from feature_platform import scaffold

    root = _settings(args).contracts_dir
    if args.feature_service:
        path = scaffold.init_feature_service(root, args.name, args.feature_sets, args.owner)
    else:
        if args.feature_sets:
            raise ConfigError("--feature-set names what a feature service reads: add --feature-service")
        path = scaffold.init_feature_set(root, args.name, args.entity, args.join_key, args.key_dtype, args.table,
                                         args.owner)

    def text() -> None:
        print(f"wrote {path}: it validates; edit it, then `featurectl contracts check` and `featurectl contracts "
              "lock` when it is released")

    _render(args, {"path": str(path), "kind": "FeatureService" if args.feature_service else "FeatureSet"}, text)
    return 0


def cmd_contracts_schema(args: Args) -> int:
    from feature_platform.contracts import json_schema

    _print_json(json_schema())
    return 0


# ------------------------------------------------------------------------------------------- data and builds


def cmd_sample_data(args: Args) -> int:
    from feature_platform import pipeline
    from feature_platform.sample_data import SampleSpec, parse_as_of

    spec = SampleSpec(seed=args.seed, scale=args.scale, as_of=parse_as_of(args.as_of))
    written = pipeline.generate_sample_data(_settings(args), spec)

    def text() -> None:
        for table, rows in written.items():
            print(f"{table}: {rows:,} rows")

    _render(args, {"tables": written}, text)
    return 0


def cmd_build(args: Args) -> int:
    from feature_platform import pipeline

    settings = _settings(args)
    if bool(args.all) == bool(args.feature_set) or (args.all and (args.version or args.interval)):
        raise ConfigError("build: give one FEATURE_SET (optionally --version N, --interval START END), or --all")
    if args.all:
        # One process for the catalogue: start-up, contracts and the environment are paid once, not per set.
        results = pipeline.build_all(settings, run_id=args.run_id, progress=_progress(args))
    else:
        results = [pipeline.build_and_promote(settings, args.feature_set, version=args.version,
                                              run_id=args.run_id, progress=_progress(args),
                                              interval=tuple(args.interval) if args.interval else None)]
    _render(args, results if args.all else results[0], lambda: _print_builds(results))
    return 0


def _print_builds(results: list[dict[str, Any]]) -> None:
    for result in results:
        built = (f", {len(result['intervals'])} interval(s) built, {result['partitions']} partitions"
                 if "intervals" in result else "")
        print(f"{result['feature_set']} {result['version']}: latest -> build {result['build_id']} "
              f"({result['row_count']:,} rows{built}{', reused' if result['reused'] else ''})")


def cmd_backfill(args: Args) -> int:
    from feature_platform import pipeline

    result = pipeline.build_and_promote(_settings(args), args.feature_set, version=args.version,
                                        run_id=args.run_id, progress=_progress(args),
                                        interval=(args.start, args.end), parallel=args.parallel)
    _render(args, result, lambda: _print_builds([result]))
    return 0


def cmd_versions(args: Args) -> int:
    from feature_platform import pipeline

    builds, pointer = pipeline.versions(_settings(args), args.feature_set)

    def text() -> None:
        latest = pointer["build_id"] if pointer else None
        print(f"{'':2}{'version':8}{'build':18}{'generated_at':34}{'rows':>10}  state")
        for b in builds:
            mark = "* " if b["build_id"] == latest else "  "
            state = "complete" if b["complete"] else "UNFINISHED (never promoted)"
            print(f"{mark}{b['version']:8}{b['build_id']:18}{b.get('generated_at', ''):34}"
                  f"{b.get('row_count', ''):>10}  {state}")

    _render(args, {"latest": pointer, "builds": builds}, text)
    return 0


def cmd_rollback(args: Args) -> int:
    from feature_platform import pipeline

    moved = pipeline.rollback(_settings(args), args.feature_set, args.to)

    def text() -> None:
        print(f"{args.feature_set} {moved['version']}: latest -> build {moved['build_id']} "
              f"(was {moved['previous_build_id'] or 'none'})")
        current = moved["feature_set_latest"]
        if moved["feature_set_latest_moved"]:
            print(f"{args.feature_set}: latest -> {current['version']} build {current['build_id']}")
        elif current:
            print(f"{args.feature_set}: latest unchanged, still {current['version']} build {current['build_id']} "
                  f"(it follows the newest version; serving of {moved['version']} changes after `featurectl apply`)")

    _render(args, moved, text)
    return 0


# --------------------------------------------------------------------------------------------------- feast


def cmd_feast_config(args: Args) -> int:
    from feature_platform.feast_bridge import write_feature_store_yaml

    settings = _settings(args)
    env = settings.environment()
    path = write_feature_store_yaml(settings, env)

    def text() -> None:
        print(path)
        print(f"# plain Feast on this repo: FEATURE_PLATFORM_ENV={env.name} feast -c feature_repo -f {path} apply",
              file=sys.stderr)

    _render(args, {"path": str(path), "environment": env.name}, text)
    return 0


def cmd_apply(args: Args) -> int:
    from feature_platform import pipeline

    settings = _settings(args)
    with _waiting(args, f"applying the contracts' Feast objects to {settings.env_name}"):
        result = pipeline.apply(settings, feature_sets=args.feature_set)

    def text() -> None:
        print(f"applied: {', '.join(result['changed']) or 'nothing changed (no-op)'}")
        if result["unmanaged"]:
            print(f"in the registry but in no contract (left alone): {', '.join(result['unmanaged'])}")

    _render(args, result, text)
    return 0


def cmd_plan(args: Args) -> int:
    from feature_platform.feast_bridge import plan

    settings = _settings(args)
    with _waiting(args, f"planning the contracts against {settings.env_name}'s registry"):
        result = plan(settings)

    def text() -> None:
        for line in result["registry_changes"] + result["infra_changes"]:
            print(line)
        print(f"{result['environment']}: " + ("no changes" if not (result["registry_changes"] or result[
            "infra_changes"]) else f"{len(result['registry_changes'])} registry and "
                                   f"{len(result['infra_changes'])} infrastructure change(s)"))

    _render(args, {k: v for k, v in result.items() if not k.endswith("_text")}, text)
    return 0


def cmd_materialize(args: Args) -> int:
    from feature_platform import pipeline

    try:
        done = pipeline.materialize(_settings(args), incremental=args.incremental, feature_views=args.feature_view,
                                    progress=not (args.quiet or args.json), shard=args.shard)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc

    def text() -> None:
        for view in done:
            print(f"{view['feature_view']}: build {view['build_id']} {view['mode']}: {view['written']:,} entities "
                  f"written, {view['deleted']:,} departed deleted ({view['start']} .. {view['end']})")

    _render(args, done, text)
    return 0


def cmd_online(args: Args) -> int:
    from feature_platform.feast_bridge import read_online, read_online_service

    if not args.feature_service and (not args.feature_set or not args.keys):
        raise ConfigError("online takes FEATURE_SET KEY [KEY ...] (JOIN_KEY=VALUE ... for a composite key), or "
                          "--feature-service NAME JOIN_KEY=VALUE ...")
    with _waiting(args, "reading the online store"):
        if args.feature_service:
            rows = read_online_service(_settings(args), args.feature_service, _entity_arguments(
                [a for a in (args.feature_set, *args.keys) if a]), version=args.version,
                full_feature_names=args.full_feature_names)
        else:
            rows = read_online(_settings(args), args.feature_set, args.keys, version=args.version)

    def text() -> None:
        for row in rows:
            print(json.dumps(row, default=str))

    _render(args, rows, text)
    return 0


def _write_frame(frame: Any, out: Path, provenance: dict[str, Any]) -> None:
    """A training set or export (CSV or Parquet by suffix) and its provenance, each written whole or not at all."""
    import io

    buffer = io.BytesIO()
    frame.to_csv(buffer, index=False) if out.suffix == ".csv" else frame.to_parquet(buffer, index=False)
    write_files_atomic({out: buffer.getvalue(), Path(str(out) + ".provenance.json"): json.dumps(provenance, indent=2)})


def _replay(args: Args) -> dict[str, datetime]:
    """``--replay PROVENANCE``: what a training set was made of (its set or service and version, every build, and
    each push-enabled set's ``pushed_through``) set on ``args``; returns the cutoffs by feature set (a single
    set) or feature view (a service)."""
    given = [flag for flag, value in (("FEATURE_SET", args.feature_set), ("--feature-service", args.feature_service),
                                      ("--build", args.build), ("--version", args.version),
                                      ("--full-feature-names", args.full_feature_names)) if value]
    if given:
        raise ConfigError(f"--replay takes the training set's definition from its provenance; drop {', '.join(given)}")
    path = Path(args.replay)
    try:
        recorded = json.loads(path.read_text())
        version = int(str(recorded["version"]).removeprefix("v"))
        if "feature_service" in recorded:
            # recorded as Feast's service name, <service>_v<N>
            args.feature_service = str(recorded["feature_service"]).removesuffix(f"_v{version}")
            args.version = version
            args.full_feature_names = bool(recorded.get("full_feature_names"))
            args.build = [f"{b['feature_set']}_{b['version']}={b['build_id']}" for b in recorded["builds"]]
            return {f"{b['feature_set']}_{b['version']}": datetime.fromisoformat(b["pushed_through"])
                    for b in recorded["builds"] if b.get("pushed_through")}
        args.feature_set, args.version, args.build = recorded["feature_set"], version, [recorded["build_id"]]
        cutoff = recorded.get("pushed_through")
        return {recorded["feature_set"]: datetime.fromisoformat(cutoff)} if cutoff else {}
    except OSError as exc:
        raise ConfigError(f"--replay {path}: {exc.strerror}; give the .provenance.json written beside a training "
                          "set") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--replay {path}: not a training set's provenance ({type(exc).__name__}: {exc}); give "
                          "the .provenance.json `featurectl historical --out` wrote") from None


def cmd_historical(args: Args) -> int:
    from feature_platform.feast_bridge import historical, historical_service
    from feature_platform.offline import read_entity_file

    through: dict[str, datetime] = {}
    if args.replay:
        through = _replay(args)
    if bool(args.feature_set) == bool(args.feature_service):
        raise ConfigError("historical takes a FEATURE_SET or --feature-service NAME (one of them), or --replay")
    entity_df = read_entity_file(Path(args.entities))
    settings = _settings(args)
    builds = args.build or []
    if args.feature_service:
        pins = {}
        for pin in builds:
            name, sep, build_id = pin.partition("=")
            if not sep or not name or not build_id:
                raise ConfigError(f"--build {pin!r}: with --feature-service give FEATURE_SET=BUILD_ID per set")
            pins[name] = build_id
        with _waiting(args, f"joining {len(entity_df):,} entity rows point-in-time"):
            frame, provenance = historical_service(settings, entity_df, args.feature_service, version=args.version,
                                                   builds_by_set=pins, caller=_caller(settings, args),
                                                   full_feature_names=args.full_feature_names,
                                                   pushed_through=through)
    else:
        if len(builds) > 1 or any("=" in b for b in builds):
            raise ConfigError("--build: one build id for a feature set (FEATURE_SET=BUILD_ID is for services)")
        with _waiting(args, f"joining {len(entity_df):,} entity rows point-in-time"):
            frame, provenance = historical(settings, entity_df, args.feature_set, version=args.version,
                                           build_id=builds[0] if builds else None, caller=_caller(settings, args),
                                           pushed_through=through.get(args.feature_set))
    if args.out:
        _write_frame(frame, Path(args.out), provenance)

    def text() -> None:
        if args.out:
            print(f"wrote {len(frame)} rows to {args.out} (provenance: {args.out}.provenance.json)")
        else:
            print(frame.to_string(index=False))
        print(json.dumps(provenance), file=sys.stderr)

    # the rows themselves only when no --out takes them
    _render(args, {"rows": len(frame), "out": args.out, "provenance": provenance,
                     **({} if args.out else {"records": json.loads(frame.to_json(orient="records", date_format="iso",
                                                                                    date_unit="us"))})}, text)
    return 0


def _entity_arguments(pairs: list[str]) -> dict[str, list[str]]:
    """``customer_id=1 customer_id=2 merchant_id=m-7`` -> {join key: [values]}, one value per row."""
    entities: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{pair!r}: give keys as JOIN_KEY=VALUE (e.g. customer_id=1001)")
        entities.setdefault(key, []).append(value)
    if not entities:
        raise ConfigError("give at least one JOIN_KEY=VALUE")
    return entities


def _caller(settings: Any, args: Args) -> Any:
    from feature_platform.governance import caller_from_cli

    return caller_from_cli(settings, settings.environment(), team=args.team, token=args.token)


def _read_push_file(path: Path) -> dict[str, list[Any]]:
    """A push file (Parquet or CSV) as columns of Python values, typed as the file types them."""
    import pyarrow as pa

    from feature_platform.offline import ENTITY_FILE_TYPES

    kind = ENTITY_FILE_TYPES.get("".join(path.suffixes[-2:]).lower()) or ENTITY_FILE_TYPES.get(path.suffix.lower())
    if kind is None or not path.is_file():
        raise ConfigError(f"{path}: push files are existing .parquet, .csv or .csv.gz files")
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
    except (pa.ArrowException, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"{path}: not a readable {kind.upper()} file ({first})") from None
    return table.to_pydict()


def cmd_push(args: Args) -> int:
    from feature_platform import governance, push

    settings = _settings(args)
    env = settings.environment()
    contract = settings.contracts().get(args.feature_set, args.version)
    if not contract.push:
        raise ConfigError(f"{contract.feature_view_name} takes no pushed rows: set `push: true` in its contract")
    caller = governance.caller_from_cli(settings, env, args.team, args.token)
    store = None
    from feature_platform.online.stores import online_store

    if args.to != "offline" and online_store(settings, env).needs_feast_store:
        from feature_platform.feast_bridge import open_store

        store = open_store(settings, env)
    result = push.push(settings, env, contract, _read_push_file(Path(args.file)), args.to, caller, store)
    push.record_pushes(settings, env, {(caller.team or "anonymous", contract.name, contract.feature_view_name,
                                        args.to): (1, result.rows)})
    _render(args, result.__dict__, f"pushed {result.rows} row(s) to {push.push_source_name(contract)} ({result.to}): "
            f"{result.written_online} entities written online, {result.skipped_older} older than the stored row "
            "left alone" + (f"; recorded offline in {result.recorded}" if result.recorded else ""))
    return 0


def cmd_compact(args: Args) -> int:
    from feature_platform import push

    settings = _settings(args)
    env = settings.environment()
    store = settings.object_store(env)
    done = [push.compact(store, c) for c in settings.contracts().live()
            if c.push and (not args.feature_set or c.name in args.feature_set)]

    def text() -> None:
        for item in done:
            print(f"{item['feature_view']}: {item['compacted']} pushed file(s) folded into one"
                  if item["compacted"] else f"{item['feature_view']}: {item['files']} pushed file(s), nothing to do")

    _render(args, done, text)
    return 0


def cmd_export(args: Args) -> int:
    from feature_platform import pipeline

    settings = _settings(args)
    frame, provenance = pipeline.export(settings, args.feature_set, version=args.version, build_id=args.build,
                                        caller=_caller(settings, args))
    out = Path(args.out)
    _write_frame(frame, out, provenance)

    def text() -> None:
        hidden = provenance["pii_masked"] + provenance["pii_dropped"]
        print(f"wrote {len(frame)} rows of {provenance['feature_set']} {provenance['version']} build "
              f"{provenance['build_id']} to {out}"
              + (f" (PII masked or dropped: {', '.join(hidden)})" if hidden else ""))

    _render(args, {"rows": len(frame), "out": str(out), "provenance": provenance}, text)
    return 0


def cmd_audit(args: Args) -> int:
    from feature_platform import audit

    settings = _settings(args)
    env = settings.environment()
    if args.feature_set:
        settings.contracts().get(args.feature_set)  # a clear error for an unknown name
    entries = audit.read(settings, env, args.feature_set)

    def text() -> None:
        for entry in entries:
            status = entry.get("status", "")
            print(f"{entry['at']}  {entry['action']:9} {entry['actor']}  commit {entry['contracts_commit'][:12]}  "
                  f"{', '.join(entry['feature_sets'])}" + (f"  [{status}]" if status not in ("", "applied") else ""))
            if status == "interrupted":
                print(f"    landed before the interruption: {', '.join(entry['landed']) or 'nothing'}")
            for change in entry["changes"]:
                if args.feature_set and change.get("feature_set") not in (args.feature_set, None):
                    continue
                detail = "; ".join(change.get("detail") or [])
                print(f"    {change['change']:20} {change['kind']:15} {change['object']:32} "
                      f"{change['classification']}" + (f": {detail}" if detail else ""))
        if not entries:
            print(f"no audit entries for {args.feature_set or 'any feature set'} in {env.name}")

    _render(args, entries, text)
    return 0


def cmd_token(args: Args) -> int:
    from feature_platform.errors import ConfigError
    from feature_platform.governance import issue_token, token_key

    settings = _settings(args)
    env = settings.environment()
    key = token_key(settings, env)
    if key is None:
        raise ConfigError(f"{env.name} has no access.token_key_env: it signs no tokens (access there is by --team)")
    token = issue_token(key, args.team, env.name, args.subject, args.ttl)
    _render(args, {"token": token, "team": args.team, "environment": env.name}, token)
    return 0


def cmd_verify(args: Args) -> int:
    from feature_platform import pipeline

    results = pipeline.verify(_settings(args), sample=args.sample, feature_views=args.feature_view)

    def text() -> None:
        for r in results:
            print(f"ok  {r['feature_view']}: {r['sampled']} sampled entities online == offline, "
                  f"newest {r['newest_online']} within ttl {r['ttl_seconds']}s")

    _render(args, results, text)
    return 0


def cmd_monitor(args: Args) -> int:
    from feature_platform import pipeline

    result = pipeline.monitor(_settings(args), args.feature_set or None,
                              report_dir=Path(args.report_dir) if args.report_dir else None,
                              publish=args.publish, fail_on_breach=False)

    def text() -> None:
        for view in result["views"]:
            print(f"{'ok    ' if view['ok'] else 'BREACH'} {view['feature_view']}: build {view['build_id']}, "
                  f"{view['row_count']:,} rows, newest event {view['event_time_max']}")
            for breach in view["breaches"]:
                print(f"         {breach}")
        print(f"report: {result['report']['html']}")

    _render(args, result, text)
    return 0 if all(view["ok"] for view in result["views"]) else 1


def serve_command(settings: Any, host: str, port: int) -> list[str]:
    """`feast serve` on the generated config. The registry is refreshed in the background every cache TTL, never
    on the request path, and the server never applies: it only reads what `featurectl apply` registered."""
    from feature_platform.feast_bridge.config import check_runtime_env, write_feature_store_yaml

    env = settings.environment()
    check_runtime_env(settings, env)
    path = write_feature_store_yaml(settings, env)
    return ["feast", "-f", str(path), "serve", "-h", host, "-p", str(port),
            "-r", str(max(env.registry.cache_ttl_seconds, 1)), "--no-access-log"]


def _server_environment(settings: Any) -> dict[str, str]:
    """The environment a server process starts with: this one, plus the resolved settings (a server's workers
    build their Settings from it, as a pod's would). Passed to the new process, never written into this one."""
    environment = {**os.environ,
                   **{k: v for k, v in settings.values.items() if k.startswith(("FEATURE_PLATFORM_", "AWS_"))},
                   "FEATURE_PLATFORM_CONTRACTS": str(settings.contracts_dir),
                   "FEATURE_PLATFORM_HOME": str(settings.home), "FEATURE_PLATFORM_ENV": settings.env_name}
    if settings.s3_endpoint_url:
        environment["FEAST_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return environment


def cmd_serve(args: Args) -> int:
    import shutil

    from feature_platform.feast_bridge.config import check_runtime_env
    from feature_platform.online.stores import online_store

    settings = _settings(args)
    if args.engine == "feast":
        command = serve_command(settings, args.host, args.port)
        if args.print_command:
            _render(args, {"command": command}, " ".join(command))
            return 0
        binary = shutil.which("feast") or str(Path(sys.executable).parent / "feast")
        os.execve(binary, [binary, *command[1:]], _server_environment(settings))
    from feature_platform.online.server import serve_argv

    env = settings.environment()
    check_runtime_env(settings, env)
    workers = args.workers or settings.server_workers()
    command = serve_argv(args.host, args.port, workers)
    if args.print_command:
        _render(args, {"command": command}, " ".join(command))
        return 0
    _check_port_free(args.host, args.port)
    where = online_store(settings, env).describe()
    started = {"environment": env.name, "feast_project": env.feast_project, "online_store": where,
               "url": f"http://{args.host}:{args.port}", "workers": workers}
    # Logs go to stderr; with --json one JSON line, for log collectors.
    print(json.dumps(started) if args.json else
          f"featurectl serve: environment {env.name} (Feast project {env.feast_project}), online store {where}; "
          f"listening on http://{args.host}:{args.port} with {workers} worker(s)", file=sys.stderr, flush=True)
    # This process becomes uvicorn (same pid, so signals and supervisors see one server).
    os.execve(sys.executable, [sys.executable, "-m", *command], _server_environment(settings))


def _check_port_free(host: str, port: int) -> None:
    """A taken address is its own error (exit 5), not a crash inside uvicorn's workers."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise AddressInUse(f"cannot listen on {host}:{port}: {exc.strerror or exc}; stop what holds it or "
                               "choose another --port") from None


def cmd_check_server(args: Args) -> int:
    from feature_platform.governance import platform_token
    from feature_platform.online.check import check_server

    settings = _settings(args)
    problems = check_server(args.url, settings.contracts(),
                            platform_token(settings, settings.environment(), "check-server"))
    def text() -> None:
        for problem in problems:
            print(f"FAIL {problem}", file=sys.stderr)
        if not problems:
            print(f"OK {args.url}: /health and one /get-online-features per online feature set")

    _render(args, {"ok": not problems, "url": args.url, "problems": problems}, text)
    return 1 if problems else 0


def cmd_step(args: Args) -> int:
    from feature_platform import pipeline
    from feature_platform.dag_factory import write_xcom

    inputs = {name: json.loads(value) for name in ("staged", "stats", "written")
              if (value := getattr(args, name)) is not None}
    if args.shard:
        inputs["shard"] = args.shard
    if args.interval:
        inputs["interval"] = list(args.interval)
    result = pipeline.run_named_step(_settings(args), args.step, args.feature_set, args.version, inputs,
                                     run_id=args.run_id)
    _print_json(result)
    if args.xcom:
        write_xcom(result, Path(args.xcom_path))
    return 0


def _print_proof(report: Any) -> None:
    for check in report.checks:
        print(f"{check.status:4}  {check.name}  ({check.seconds:.2f}s)")
        for line in check.evidence:
            print(f"        {line}")
    print(f"proof {'PASSED' if report.ok else 'FAILED'} for environment {report.environment}")


def cmd_proof(args: Args) -> int:
    from feature_platform.proof import run_proof, write_report

    report = run_proof(_settings(args), sample=args.sample)
    if args.report:
        json_path, md_path = write_report(report, Path(args.report))
        print(f"report: {json_path} and {md_path}", file=sys.stderr)

    def text() -> None:
        _print_proof(report)

    _render(args, report.to_json(), text)
    return 0 if report.ok else 1


def cmd_gc(args: Args) -> int:
    from feature_platform import pipeline

    decisions = pipeline.collect_garbage(_settings(args), args.feature_set, args.keep, args.min_age,
                                         dry_run=not args.delete)

    def text() -> None:
        for d in decisions:
            what = d.get("path") or f"{d['feature_set']} {d['version']} {d['build_id']}"
            print(f"{'deleted' if d['deleted'] else 'would delete'} {what} ({d['reason']})")
        if not args.delete:
            print(f"dry run: {len(decisions)} build(s) or temporary file(s) would be deleted; add --delete to "
                  "delete them")

    _render(args, decisions, text)
    return 0


def cmd_lint_dags(args: Args) -> int:
    from feature_platform.dag_factory import lint_dag_folder

    problems = lint_dag_folder(Path(args.folder))
    return _report(problems, f"ok: no parse-time Variable reads or heavy imports in {args.folder}", 1, args.json)


def cmd_demo(args: Args) -> int:
    from feature_platform import pipeline
    from feature_platform.sample_data import SampleSpec

    settings = _settings(args)
    progress = _progress(args)
    contracts = settings.contracts()
    progress(f"contracts: {len(contracts.all())} versions of {len(contracts.names())} feature sets valid")
    written = pipeline.generate_sample_data(settings, SampleSpec(scale=args.scale))
    progress("sample data: " + ", ".join(f"{t} {n:,} rows" for t, n in written.items()))
    pipeline.run_loop(settings, progress=progress)
    from feature_platform.proof import run_proof, write_report

    report = run_proof(settings)
    _, md_path = write_report(report, settings.home / settings.env_name / "proof")

    def text() -> None:
        _print_proof(report)
        print(f"state in {settings.home / settings.env_name}; report {md_path}")

    _render(args, report.to_json(), text)
    return 0 if report.ok else 1


# --------------------------------------------------------------------------------------------- command line


class _Version(click.ParamType):
    """--version 2 or v2: a usage error (exit 2) that says what is expected."""

    name = "VERSION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number = str(value).removeprefix("v")
        if not number.isdigit() or int(number) < 1:
            self.fail(f"{value!r} is not a contract version: give a number like 2 or v2", param, ctx)
        return int(number)


class _Duration(click.ParamType):
    """A duration such as 12h, 30d or 2w, as seconds; anything else is a usage error (exit 2)."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from feature_platform.contracts import parse_duration

        if isinstance(value, int):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


VERSION, DURATION = _Version(), _Duration()

# `featurectl --help` lists the commands by subject, in this order.
SUBJECTS: dict[str, list[str]] = {
    "Contracts": ["contracts", "init"],
    "Builds": ["sample-data", "build", "backfill", "versions", "rollback", "gc", "push", "compact"],
    "Feast and the online store": ["feast-config", "apply", "plan", "materialize", "verify", "serve",
                                   "check-server"],
    "Reading features": ["online", "historical", "export"],
    "Governance": ["audit", "token"],
    "Operations": ["monitor", "step", "proof", "lint-dags", "demo"],
}


class _SubjectGroup(click.Group):
    """A group whose help lists its commands under their subjects (SUBJECTS), in the order written there."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        listed = {name for names in SUBJECTS.values() for name in names}
        sections = [*SUBJECTS.items(), ("Other", [n for n in self.commands if n not in listed])]
        for subject, names in sections:
            rows = [(n, self.commands[n].get_short_help_str(1000)) for n in names if n in self.commands]
            if rows:
                with formatter.section(subject):
                    formatter.write_dl(rows)


def _common(env: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--contracts, --home, --env and --json: where the command acts, and how it answers."""

    def add(function: Callable[..., Any]) -> Callable[..., Any]:
        function = click.option("--json", is_flag=True, help="print JSON for machines")(function)
        if env:
            function = click.option("--env", help="environment name (default: $FEATURE_PLATFORM_ENV or local)"
                                    )(function)
        function = click.option("--home", help="work directory (default: $FEATURE_PLATFORM_HOME or "
                                               "./.feature-platform)")(function)
        return click.option("--contracts", help="contracts directory (default: $FEATURE_PLATFORM_CONTRACTS or "
                                                "./contracts)")(function)

    return add


def _identity(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option("--token", help="your team token (default $FEATURE_PLATFORM_TOKEN)")(function)
    return click.option("--team", help="your team, where the environment signs no tokens "
                                       "(default $FEATURE_PLATFORM_TEAM)")(function)


def _command(group: click.Group, name: str, handler: Handler, help: str,
             *decorators: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Register ``handler`` as ``name`` in ``group``: click parses the line, the handler calls the library and
    renders. Repeatable options and variadic arguments arrive as lists."""

    def callback(**values: Any) -> int:
        return handler(Args(**{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}))

    for decorate in reversed(decorators):
        callback = decorate(callback)
    group.add_command(click.command(name, help=help, short_help=help)(callback))


def build_cli() -> click.Group:
    """featurectl's commands: one definition each, grouped by subject in --help."""
    cli = _SubjectGroup("featurectl", help="feature-platform: contracts -> builds -> Feast -> online reads.\n\n"
                        "Add --debug anywhere for a traceback on failure.",
                        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110,
                                          "terminal_width": 110})
    cli = click.version_option(__version__, "--version", prog_name="featurectl",
                               message="%(prog)s %(version)s")(cli)
    opt, arg = click.option, click.argument

    contracts = click.Group("contracts", help="validate, hash, diff, lock and export contracts")
    cli.add_command(contracts)
    _command(contracts, "validate", cmd_contracts_validate,
             "validate contract files or directories (default: the contracts dir)",
             arg("paths", nargs=-1), _common(env=False))
    _command(contracts, "hash", cmd_contracts_hash, "print the schema_hash of one contract file",
             arg("file"), _common(env=False))
    _command(contracts, "diff", cmd_contracts_diff,
             "classify the change between two contract files; exit 3 if breaking",
             arg("old"), arg("new"), _common(env=False))
    _command(contracts, "check", cmd_contracts_check,
             "fail (exit 3) if a released version changed, vanished or is unlocked", _common(env=False))
    _command(contracts, "lock", cmd_contracts_lock,
             "record new versions' schema_hash in contracts.lock (never rewrites one)", _common(env=False))
    _command(contracts, "export", cmd_contracts_export,
             "write each contract version as an Open Data Contract Standard document",
             opt("--format", type=click.Choice(["odcs"]), default="odcs", show_default=True),
             opt("--out", default="odcs", help="directory for <view>.odcs.yaml (default ./odcs); - prints one "
                                               "YAML stream"),
             opt("--env", help="only this environment's server entry (default: every environment)"),
             _common(env=False))
    _command(contracts, "schema", cmd_contracts_schema, "print the JSON Schema of the contract format",
             opt("--json", is_flag=True, help="(always JSON)"))

    _command(cli, "init", cmd_init, "scaffold a new feature set (or --feature-service) contract that validates",
             arg("name"),
             opt("--feature-service", is_flag=True, help="scaffold a feature service, not a feature set"),
             opt("--feature-set", "feature_sets", multiple=True,
                 help="(feature service) a feature set it reads, newest version (repeatable)"),
             opt("--entity", default="customer", show_default=True, help="(feature set) the entity's name"),
             opt("--join-key", default="customer_id", show_default=True, help="(feature set) its join key"),
             opt("--key-dtype", type=click.Choice(["int64", "int32", "string"]), default="int64", show_default=True,
                 help="(feature set) key type"),
             opt("--table", default="events", show_default=True, help="(feature set) the raw table it reads"),
             opt("--owner", default="team@example.com", show_default=True, help="owner e-mail"),
             _common(env=False))
    _command(cli, "sample-data", cmd_sample_data, "write deterministic raw sample data for the example contracts",
             opt("--scale", type=float, default=1.0, show_default=True, help="1.0 ~ 130k raw rows; 10 ~ 1.3M"),
             opt("--seed", type=int, default=7, show_default=True),
             opt("--as-of", help="end of the generated history, ISO 8601 (default: the current hour, UTC)"),
             _common())
    _command(cli, "build", cmd_build, "build a feature set into versioned Parquet and promote latest",
             arg("feature_set", required=False),
             opt("--all", is_flag=True, help="every live version of every feature set, in one process"),
             opt("--version", type=VERSION, help="contract version (default: newest)"),
             opt("--interval", nargs=2, metavar="START END", help="an incremental contract: build the data "
                 "interval [START, END) (ISO 8601 dates at midnight UTC, or UTC timestamps; END exclusive)"),
             opt("--run-id", help="the logical run that asked for it (recorded in metadata.json)"),
             opt("--quiet", is_flag=True, help="no progress lines"), _common())
    _command(cli, "backfill", cmd_backfill, "rebuild a range of an incremental feature set, in parallel workers, "
             "and promote latest",
             arg("feature_set"),
             opt("--from", "start", required=True, metavar="START", help="ISO 8601 date or UTC timestamp"),
             opt("--to", "end", required=True, metavar="END", help="exclusive; ISO 8601 date or UTC timestamp"),
             opt("--parallel", type=click.IntRange(1, 64), default=1, show_default=True,
                 help="worker processes, one contiguous range of partitions each (memory bounded per worker)"),
             opt("--version", type=VERSION, help="contract version (default: newest)"),
             opt("--run-id", help="the logical run that asked for it (recorded in metadata.json)"),
             opt("--quiet", is_flag=True, help="no progress lines"), _common())
    _command(cli, "versions", cmd_versions, "list the builds of a feature set; * marks latest",
             arg("feature_set"), _common())
    _command(cli, "rollback", cmd_rollback, "point latest back to an earlier complete build",
             arg("feature_set"), opt("--to", required=True, metavar="BUILD_ID"), _common())
    _command(cli, "gc", cmd_gc, "retention: delete old builds (dry run unless --delete)",
             arg("feature_set", nargs=-1),
             opt("--keep", type=int, default=5, show_default=True, help="newest complete builds kept per version"),
             opt("--min-age", type=DURATION, default="1d", show_default=True,
                 help="unfinished builds younger than this are kept"),
             opt("--delete", is_flag=True, help="really delete (default: only list)"), _common())

    _command(cli, "push", cmd_push, "push rows from a file to a feature set (push: true), as POST /push does",
             arg("feature_set"), opt("--version", type=VERSION, help="contract version (default: newest)"),
             opt("--file", required=True, help="Parquet or CSV: the key, the event time and some features"),
             opt("--to", type=click.Choice(["online", "offline", "online_and_offline"]), default="online",
                 show_default=True, help="where the rows go (offline: kept for training sets)"),
             _identity, _common())
    _command(cli, "compact", cmd_compact, "fold each push-enabled feature set's pushed files into one",
             arg("feature_set", nargs=-1), _common())
    _command(cli, "feast-config", cmd_feast_config, "write the environment's feature_store.yaml and print its path",
             _common())
    _command(cli, "apply", cmd_apply, "register the contracts' Feast objects (no-op when unchanged)",
             opt("--feature-set", multiple=True, help="only this feature set's objects (repeatable)"), _common())
    _command(cli, "plan", cmd_plan, "what an apply would change (Feast's plan of the contracts; run on PRs)",
             _common())
    _command(cli, "materialize", cmd_materialize, "load the promoted builds into the online store",
             opt("--incremental", is_flag=True, help="skip views whose served build is already loaded"),
             opt("--feature-view", multiple=True, help="only this feature view (repeatable)"),
             opt("--quiet", is_flag=True, help="no progress bar on stderr"),
             opt("--shard", metavar="I/N", help="only shard I of N (by Redis hash slot): N processes load a view "
                                                "in parallel; the view is recorded once all N finished"),
             _common())
    _command(cli, "verify", cmd_verify, "check online values equal the offline latest and are fresh",
             opt("--sample", type=int, default=20, show_default=True, help="entities sampled per feature view"),
             opt("--feature-view", multiple=True, help="only this feature view (repeatable)"), _common())
    _command(cli, "serve", cmd_serve, "run the feature server (Feast's HTTP API) for the environment",
             opt("--host", default="127.0.0.1", show_default=True),
             opt("--port", type=int, default=6566, show_default=True),
             opt("--workers", type=int, help="worker processes (default $FEATURE_PLATFORM_SERVER_WORKERS or 1)"),
             opt("--engine", type=click.Choice(["platform", "feast"]), default="platform", show_default=True,
                 help="platform: the planned Redis server; feast: plain `feast serve`"),
             opt("--print-command", is_flag=True, help="print the server command instead of running it"),
             _common())
    _command(cli, "check-server", cmd_check_server,
             "call a running feature server's /health and /get-online-features (what `helm test` runs)",
             opt("--url", required=True, help="base URL, e.g. http://feature-platform-server:6566"), _common())

    _command(cli, "online", cmd_online,
             "print online values of a feature set, or of a model's feature service, for entity keys (a composite "
             "key: customer_id=1 merchant_id=m-7, one of each key per row)",
             arg("feature_set", required=False), arg("keys", nargs=-1),
             opt("--feature-service", metavar="NAME", help="a model's feature service (contracts/feature_services);"
                                                          " keys are then JOIN_KEY=VALUE, one per key and row"),
             opt("--full-feature-names", is_flag=True, help="name features <feature_set>_v<N>__<feature>"),
             opt("--version", type=VERSION, help="contract or service version (default: newest)"), _common())
    _command(cli, "historical", cmd_historical,
             "point-in-time join for an entity file (csv or parquet): of a feature set, or of a model's "
             "--feature-service",
             arg("feature_set", required=False),
             opt("--feature-service", metavar="NAME", help="a model's feature service (contracts/feature_services)"),
             opt("--entities", required=True, help="file with the join key(s) and event_timestamp columns"),
             opt("--version", type=VERSION, help="contract or service version (default: newest)"),
             opt("--build", multiple=True, metavar="BUILD_ID|SET=BUILD_ID",
                 help="pin a build to reproduce a training set exactly (a service: FEATURE_SET=BUILD_ID, or "
                      "FEATURE_SET_vN=BUILD_ID, per set)"),
             opt("--full-feature-names", is_flag=True, help="name a service's features <feature_set>_v<N>__<feature>"),
             opt("--replay", metavar="PROVENANCE",
                 help="reproduce a training set from its .provenance.json: the same set or service, builds and "
                      "pushed rows"),
             opt("--out", help="write Parquet here (plus <out>.provenance.json)"), _identity, _common())
    _command(cli, "export", cmd_export, "write a build's rows to Parquet or CSV (PII masked unless allowed)",
             arg("feature_set"), opt("--version", type=VERSION, help="contract version (default: newest)"),
             opt("--build", help="build id (default: the version's latest)"),
             opt("--out", required=True, help="file.parquet or file.csv (plus <out>.provenance.json)"),
             _identity, _common())

    _command(cli, "audit", cmd_audit,
             "the append-only log of definition changes (applies, rollbacks, retirements) and offline reads",
             arg("feature_set", required=False), _common())
    _command(cli, "token", cmd_token, "issue a team token (needs the environment's token key)",
             opt("--team", required=True), opt("--subject", help="who holds it (default: the team)"),
             opt("--ttl", type=DURATION, default="30d", show_default=True, help="lifetime, e.g. 12h or 30d"),
             _common())

    _command(cli, "monitor", cmd_monitor,
             "freshness, volume, null rate and drift per view vs the previous build; exit 1 on a breach "
             "(writes monitor.{json,md,html,prom})",
             arg("feature_set", nargs=-1),
             opt("--report-dir", help="where the report goes (default: <home>/<env>/monitor/<feature set|all>)"),
             opt("--publish", is_flag=True, help="also copy the report into the object store (_monitor/)"),
             _common())
    _command(cli, "step", cmd_step, "run one orchestrated step (what each Airflow task runs in a pod)",
             arg("step", type=click.Choice(list(STEP_NAMES))), arg("feature_set"),
             opt("--version", type=VERSION), opt("--staged", help="JSON result of the build step"),
             opt("--stats", help="JSON result of the quality_gate step"),
             opt("--written", help="JSON result of the write_version step"),
             opt("--shard", metavar="I/N", help="materialize: only shard I of N"), opt("--run-id"),
             opt("--interval", nargs=2, metavar="START END", help="build: the run's data interval (incremental "
                 "contracts)"),
             opt("--xcom", is_flag=True, help="also write the result where KubernetesPodOperator reads XCom"),
             opt("--xcom-path", default="/airflow/xcom/return.json", hidden=True), _common())
    _command(cli, "proof", cmd_proof, "check the whole loop and print PASS/FAIL with evidence",
             opt("--report", help="also write FILE.json and FILE.md"),
             opt("--sample", type=int, default=20, show_default=True, help="entities sampled per feature view"),
             _common())
    _command(cli, "lint-dags", cmd_lint_dags, "flag Airflow Variable reads and heavy imports at DAG parse time",
             arg("folder", default="dags", required=False), opt("--json", is_flag=True, help="print JSON for machines"))
    _command(cli, "demo", cmd_demo, "the whole loop on embedded defaults: sample data -> ... -> verify",
             opt("--scale", type=float, default=1.0, show_default=True, help="sample data size (1.0 ~ 130k raw "
                                                                            "rows)"), _common())
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. No traceback reaches the user unless asked for (``--debug`` anywhere on the command
    line, or FEATURE_PLATFORM_DEBUG=1): every failure is one line naming the resource and what to do. A usage
    error exits 2 with what is expected."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from feature_platform.startup import skip_feast_typechecks

    skip_feast_typechecks()
    debug = "--debug" in argv or os.environ.get("FEATURE_PLATFORM_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    as_json = "--json" in argv
    try:
        result = build_cli().main(argv, prog_name="featurectl", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        raise SystemExit(2) from None
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.Abort:
        print("interrupted", file=sys.stderr)
        return 130
    except PlatformError as exc:
        if debug:
            traceback.print_exc()
        return _fail(as_json, str(exc), exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # infrastructure failures (disk, S3, Redis, permissions) and bugs alike
        if debug:
            traceback.print_exc()
        return _fail(as_json, describe_failure(exc), 1)
    return result if isinstance(result, int) else 0


def _fail(as_json: bool, message: str, code: int) -> int:
    """One line on stderr; with --json also ``{"error", "exit_code"}`` on stdout, so a script always parses it."""
    print(f"error: {message}", file=sys.stderr)
    if as_json:
        _print_json({"error": message, "exit_code": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
