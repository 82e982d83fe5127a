"""The fault suite: what an operator woken at 3 a.m. meets, injected at exact points, on real parts.

Leases (SIGKILLed holder, skewed clock, long holder, lost lease), the local registry under a full disk and a
SIGKILL at its rename, an emptied or rolled-back Redis under `materialize --incremental`, the quality gate's
refusals, concurrent builds, hostile contract files, and infrastructure failures reaching the CLI as one line.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_platform import build as builds
from feature_platform import feast_bridge, pipeline
from feature_platform.errors import LockTimeout
from feature_platform.locks import LeaseLost, local_lock, s3_lock
from tests.conftest import REPO
from tests.helpers import (
    data_store,
    every_dtype_contract,
    merchant_events,
    raw_store,
    replace_raw,
    seed_raw,
    write_contract,
)
from tests.services import free_port

pytestmark = pytest.mark.e2e
FEATURECTL = str(Path(sys.executable).parent / "featurectl")


def _env(settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings.values, "FEATURE_PLATFORM_CONTRACTS": str(settings.contracts_dir),
            "FEATURE_PLATFORM_HOME": str(settings.home), "FEATURE_PLATFORM_ENV": settings.env_name,
            "PYTHONPATH": str(REPO / "src"), **extra}


def _featurectl(settings, *args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([FEATURECTL, *args], env=_env(settings, **extra), capture_output=True, text=True,
                          timeout=timeout)


# -------------------------------------------------------------------------------------------------- leases

HOLD_SCRIPT = """
import sys, threading
from feature_platform.locks import s3_lock, local_lock
from pathlib import Path
uri, endpoint, period = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = s3_lock(uri, endpoint, 5, period) if uri.startswith("s3://") else local_lock(Path(uri), 5)
with lock:
    print("held", flush=True)
    threading.Event().wait()  # hold until killed
"""


def _hold_in_child(uri: str, endpoint: str, period: int) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, uri, endpoint or "", str(period)],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert child.stdout.readline().strip() == "held"  # synchronized on the child's own word, not a sleep
    return child


def test_sigkilled_lease_holder_blocks_others_for_at_most_one_period(s3_clean) -> None:
    """The holder dies without releasing: the next writer waits (told who holds it and until when), then
    takes the lease within one lease period of the last renewal."""
    uri, period = "s3://feature-platform-dev/faults/registry.db.lock", 3
    child = _hold_in_child(uri, s3_clean.endpoint, period)
    with pytest.raises(LockTimeout) as waited, s3_lock(uri, s3_clean.endpoint, timeout=1, period=period):
        pass
    assert "held by" in str(waited.value) and "taken at" in str(waited.value) and "expires" in str(waited.value)
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed = time.monotonic()
    with s3_lock(uri, s3_clean.endpoint, timeout=60, period=period) as held:
        taken = time.monotonic() - killed
        held.check()
    # Within one period of the last renewal, plus polling and a busy machine's slow S3 answers (a lease that
    # never expired would hit the 60 s timeout instead).
    assert taken <= period + 10, f"took {taken:.1f}s to take over a dead holder's {period}s lease"


SKEWED_SCRIPT = """
import sys, time
real = time.time
time.time = lambda: real() + 86400  # this process's clock runs a day ahead (the store's does not)
from feature_platform.errors import LockTimeout
from feature_platform.locks import s3_lock
try:
    with s3_lock(sys.argv[1], sys.argv[2], 2, 30):
        print("stolen")
except LockTimeout as exc:
    print("waited:", exc)
"""


def test_a_writer_whose_clock_runs_ahead_cannot_steal_a_live_lease(s3_clean) -> None:
    """Expiry is judged by the object store's clock: a waiter (its own process) one day ahead still waits."""
    uri = "s3://feature-platform-dev/faults/skew.lock"
    child = _hold_in_child(uri, s3_clean.endpoint, 30)
    try:
        skewed = subprocess.run([sys.executable, "-c", SKEWED_SCRIPT, uri, s3_clean.endpoint], capture_output=True,
                                text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        assert skewed.stdout.startswith("waited:") and "held by" in skewed.stdout, skewed.stdout + skewed.stderr
    finally:
        child.kill()
        child.wait()


def test_a_long_holder_keeps_its_lease_and_a_lost_lease_is_fenced(s3_clean) -> None:
    """A holder working for several lease periods keeps renewing it; one whose renewals stop loses it to the
    next writer, cannot write any more (check raises), and its release leaves the successor's lease alone."""
    uri, period = "s3://feature-platform-dev/faults/long.lock", 2
    client = s3_clean.client()
    with s3_lock(uri, s3_clean.endpoint, timeout=5, period=period) as held:
        # 2.5 periods of waiting: renewals keep it alive throughout.
        with pytest.raises(LockTimeout), s3_lock(uri, s3_clean.endpoint, timeout=period * 2.5, period=period):
            pass
        assert held.renewals >= 2
        held.check()
        held._stop.set()  # a holder frozen (GC pause, network partition): no more renewals
        with s3_lock(uri, s3_clean.endpoint, timeout=period * 3, period=period) as successor:
            with pytest.raises(LeaseLost, match="not renewed"):  # it notices by itself on waking
                held.check()
            successor.check()
    # The frozen holder's release ran after the successor's: nothing of either is left, nothing was stolen.
    assert "Contents" not in client.list_objects_v2(Bucket="feature-platform-dev", Prefix="faults/long.lock")


def test_local_lock_waiter_names_the_holder_and_a_dead_holder_frees_it(tmp_path) -> None:
    path = tmp_path / "registry.db.lock"
    child = _hold_in_child(str(path), "", 0)
    with pytest.raises(LockTimeout, match=rf":{child.pid} \(since "), local_lock(path, timeout=1):
        pass
    child.send_signal(signal.SIGKILL)
    child.wait()
    with local_lock(path, timeout=5) as held:  # the kernel dropped the dead holder's flock
        held.check()


# ------------------------------------------------------------------------------------- the local registry

def _registry(settings) -> Path:
    return Path(settings.resolve_uri(settings.environment(), settings.environment().registry.uri))


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG, as on a full disk
    return apply


def test_full_disk_or_sigkill_during_apply_leaves_the_registry_readable(local_settings, contracts_copy) -> None:
    """The registry is written to a temporary file, fsynced and renamed: a write that fails (file size limit,
    as a full disk) or a SIGKILL at the rename leaves the previous registry byte for byte, no litter once
    swept, and the next apply works with no manual repair."""
    seed_raw(local_settings)
    pipeline.build_all(local_settings)
    pipeline.apply(local_settings, feature_sets=["customer_profile"])
    registry = _registry(local_settings)
    before = registry.read_bytes()

    env = _env(local_settings)
    full = subprocess.run([FEATURECTL, "apply"], env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size(len(before) + 512))
    assert full.returncode != 0 and "Traceback" not in full.stderr
    assert full.stderr.strip().splitlines()[-1].startswith("error: ")
    assert registry.read_bytes() == before

    strace = shutil.which("strace")
    if strace:  # SIGKILL at the exact rename of the registry into place
        killed = subprocess.run([strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=rename",
                                 "-e", "inject=rename:signal=SIGKILL:when=1", FEATURECTL, "apply"],
                                env=env, capture_output=True, text=True, timeout=300)
        assert killed.returncode != 0
        assert registry.read_bytes() == before
    litter = [p.name for p in registry.parent.iterdir() if p.name.endswith(".tmp")]
    swept = pipeline.collect_garbage(local_settings, None, keep=10, min_age_seconds=0, dry_run=False)
    assert {Path(d["path"]).name for d in swept if d.get("path")} >= set(litter)
    assert not [p for p in registry.parent.iterdir() if p.name.endswith(".tmp")]

    result = _featurectl(local_settings, "apply")
    assert result.returncode == 0, result.stderr
    assert "customer_spend_v2" in {v.name for v in feast_bridge.open_store(
        local_settings, local_settings.environment()).list_feature_views()}


def test_a_corrupt_registry_is_named_with_the_fix(local_settings) -> None:
    seed_raw(local_settings)
    pipeline.build_all(local_settings)
    pipeline.apply(local_settings)
    _registry(local_settings).write_bytes(b"\x0a\xff\xff garbage")
    result = _featurectl(local_settings, "apply")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "move it aside and run `featurectl apply`" in result.stderr


def test_a_corrupt_s3_registry_is_named_with_the_fix(dev_settings) -> None:
    """The same fault on the S3 file registry: one line naming the object and the fix; moved aside, the next
    apply rebuilds it from the contracts."""
    seed_raw(dev_settings)
    pipeline.build_all(dev_settings)
    pipeline.apply(dev_settings)
    env = dev_settings.environment()
    registry = dev_settings.resolve_uri(env, env.registry.uri)
    store = data_store(dev_settings)
    store.fs.pipe_file(registry.removeprefix("s3://"), b"\x0a\xff\xff garbage")
    result = _featurectl(dev_settings, "apply")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"Feast registry {registry} is unreadable" in result.stderr and "move it aside" in result.stderr
    store.fs.mv(registry.removeprefix("s3://"), registry.removeprefix("s3://") + ".corrupt")
    result = _featurectl(dev_settings, "apply")
    assert result.returncode == 0, result.stderr
    assert {"customer_profile_v1", "customer_spend_v2"} <= {
        v.name for v in feast_bridge.open_store(dev_settings, env).list_feature_views(allow_cache=False)}


# ------------------------------------------------------------------------------------- the online store

def test_incremental_materialize_refills_an_emptied_or_rolled_back_redis(dev_settings, redis_clean) -> None:
    """`materialize --incremental` trusts online.json only when Redis holds the recorded build: an emptied Redis
    (restarted without persistence) and one restored from an older snapshot are both reloaded in full."""
    seed_raw(dev_settings)
    pipeline.run_loop(dev_settings)
    client = redis_clean.client(db=0)
    assert pipeline.materialize(dev_settings, incremental=True)[0]["mode"] == "incremental"

    client.flushall()
    done = pipeline.materialize(dev_settings, incremental=True)
    assert {d["mode"] for d in done} == {"full"} and all(d["written"] for d in done)
    assert feast_bridge.verify(dev_settings)[0]["ok"]

    # An older snapshot: every hash's event time for customer_spend_v2 moved back by a day.
    from feature_platform.online.layout import encode_event_timestamps, plan_contract

    contract = dev_settings.contracts().get("customer_spend", 2)
    plan = plan_contract(dev_settings.environment().feast_project, contract)
    old = encode_event_timestamps(pa.array([datetime(2020, 1, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC")))[0]
    for key in client.scan_iter(count=1000):
        if client.hexists(key, plan.ts_field):
            client.hset(key, plan.ts_field, old)
    done = {d["feature_view"]: d["mode"] for d in pipeline.materialize(dev_settings, incremental=True)}
    assert done["customer_spend_v2"] == "full" and done["customer_spend_v1"] == "incremental"

    # A load that never finished (its record still lists the build as pending): verify names the partial state,
    # the next incremental run completes it.
    from feature_platform.errors import FeastError
    from feature_platform.materialization import marker_key, read_marker

    store = pipeline.object_store(dev_settings, dev_settings.environment())
    marker = read_marker(store, contract)
    store.write_json_atomic(marker_key(contract), {**marker, "pending_build_ids": [marker["build_id"]]})
    with pytest.raises(FeastError, match=r"customer_spend_v2: .*partial or mixed: a load of build\(s\) "):
        pipeline.verify(dev_settings, feature_views=["customer_spend_v2"])
    [done] = pipeline.materialize(dev_settings, incremental=True, feature_views=["customer_spend_v2"])
    assert done["mode"] == "full"
    pipeline.verify(dev_settings, feature_views=["customer_spend_v2"])


# ----------------------------------------------------------------------------------------- the quality gate

def _merchant_settings(local_settings, contracts_copy, table: pa.Table, **source: object):
    contract = every_dtype_contract()
    contract["source"].update(source)
    contract["features"][0]["nullable"] = False  # score: float64, non-nullable
    write_contract(contracts_copy, contract)
    replace_raw(local_settings, "merchant_events", table)
    return local_settings


def _events(**columns: pa.Array) -> pa.Table:
    table = merchant_events([f"m{i}" for i in range(20)], null_share=0.0)
    for name, column in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def test_gate_refuses_future_events_nan_and_naive_timestamps(local_settings, contracts_copy, capsys) -> None:
    from tests.test_feast import cli

    base = _events()
    rows = base.num_rows
    future = pa.array([datetime.now(UTC) + timedelta(days=400)] * rows, pa.timestamp("us", tz="UTC"))
    nan = pa.array([float("nan")] + [1.0] * (rows - 1), pa.float64())
    inf = pa.array([float("inf")] + [1.0] * (rows - 1), pa.float64())
    naive = base.column("ts").cast(pa.timestamp("us"))
    cases = [
        (_events(ts=future), "is after now + 1:00:00"),
        (_events(score=nan), "column score: 1 null value(s) in a non-nullable column"),
        (_events(score=inf), "column score: 1 null value(s) in a non-nullable column"),
        (_events(ts=naive), "timestamps without a time zone; set source.timezone"),
    ]
    for table, message in cases:
        _merchant_settings(local_settings, contracts_copy, table)
        code, _, err = cli(local_settings, "build", "merchant_risk", capsys=capsys)
        assert code != 0 and message in err and "Traceback" not in err, err
        with pytest.raises(builds.PointerMissingError):
            builds.read_pointer(data_store(local_settings), "merchant_risk")

    # Mixed naive and aware files: refused whatever the contract says.
    _merchant_settings(local_settings, contracts_copy, base, timezone="Europe/Berlin")
    raw = raw_store(local_settings)
    extra = local_settings.home / "naive.parquet"
    pq.write_table(_events(ts=naive), extra)
    raw.upload(extra, "merchant_events/part-naive.parquet")
    code, _, err = cli(local_settings, "build", "merchant_risk", capsys=capsys)
    assert code != 0 and "has a time zone in" in err and "but none in part-naive.parquet" in err, err

    # Naive timestamps with the zone named: read in that zone (Berlin is UTC+1 in winter, +2 in summer).
    _merchant_settings(local_settings, contracts_copy, _events(ts=naive), timezone="Europe/Berlin")
    code, _, err = cli(local_settings, "build", "merchant_risk", capsys=capsys)
    assert code == 0, err
    built = _latest_table(local_settings)
    shifts = {(a - b) for a, b in zip(sorted(base.column("ts").to_pylist()), sorted(built.column("ts").to_pylist()),
                                      strict=True)}
    assert shifts <= {timedelta(hours=1), timedelta(hours=2)} and shifts


def _latest_table(settings) -> pa.Table:
    store = data_store(settings)
    pointer = builds.read_pointer(store, "merchant_risk")
    return pq.read_table(store.path(pointer["data"].removeprefix(store.root_uri + "/")), filesystem=store.fs)


# ------------------------------------------------------------------------------------- concurrent builds

def test_concurrent_builds_of_the_same_inputs_agree(local_settings) -> None:
    """Six processes build and promote the same feature set at once: all succeed (or one builds and the others
    reuse it), one build id, a readable pointer, and no temporary files left behind."""
    seed_raw(local_settings)
    env = _env(local_settings)
    children = [subprocess.Popen([FEATURECTL, "build", "customer_spend", "--json"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [(child.wait(timeout=600), child.stdout.read(), child.stderr.read()) for child in children]
    assert all(code == 0 for code, _, _ in results), [err[-800:] for code, _, err in results if code]
    assert all("Traceback" not in err for _, _, err in results)
    store = data_store(local_settings)
    pointer = builds.read_pointer(store, "customer_spend")
    assert len({json.loads(out)["build_id"] for _, out, _ in results}) == 1
    assert pointer["build_id"] == json.loads(results[0][1])["build_id"]
    assert not list(Path(store.path()).rglob(".tmp-*"))


def test_gc_sweeps_temporary_files_of_killed_writes(local_settings) -> None:
    seed_raw(local_settings)
    pipeline.build_and_promote(local_settings, "customer_profile")
    store = data_store(local_settings)
    stale = Path(store.path("customer_profile")) / ".tmp-features.parquet-abc"
    fresh = Path(store.path("customer_profile")) / ".tmp-features.parquet-def"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"in progress")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    decisions = pipeline.collect_garbage(local_settings, None, keep=10, min_age_seconds=3600, dry_run=False)
    assert [d["path"] for d in decisions if d.get("path")] == [str(stale)]
    assert not stale.exists() and fresh.exists()


# ------------------------------------------------------------------------------------ hostile contract files

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))


@pytest.mark.parametrize(("content", "fragment"), [
    (BOMB, "expands to more than"),
    ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested deeper than"),
    ("kind: FeatureSet\n" + "x" * (1024 * 1024 + 1), "larger than"),
], ids=["alias-bomb", "deep-nesting", "huge-file"])
def test_hostile_yaml_fails_fast_with_one_line(contracts_copy, content: str, fragment: str) -> None:
    path = contracts_copy / "feature_sets" / "evil" / "v1.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    started = time.monotonic()
    result = subprocess.run([FEATURECTL, "contracts", "validate", "--contracts", str(contracts_copy)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and fragment in result.stderr and "evil/v1.yaml" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and time.monotonic() - started < 30


def test_symlink_loops_huge_ttl_and_sql_errors_fail_validate(contracts_copy, capsys) -> None:
    from feature_platform.cli import main

    def validate() -> subprocess.CompletedProcess:
        code = main(["contracts", "validate", "--contracts", str(contracts_copy)])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([], code, out, err)

    loop = contracts_copy / "feature_sets" / "loop"
    loop.symlink_to(contracts_copy / "feature_sets", target_is_directory=True)
    result = validate()
    assert result.returncode == 2 and "symlink loop" in result.stderr, result.stderr
    loop.unlink()

    contract = every_dtype_contract()
    contract["ttl"] = "99999999999999999999d"
    write_contract(contracts_copy, contract)
    result = validate()
    assert result.returncode == 2 and "longer than 3650d" in result.stderr, result.stderr

    columns = {"merchant_code": "string", "ts": "timestamptz", "score": "float64", "cnt": "int64", "small": "int32",
               "flag": "bool", "label": "string", "seen_at": "timestamptz", "ratio": "float32"}
    bad_sql = {
        "SELEC merchant_code FROM source": "syntax error",
        "SELECT nope, ts, score, cnt, small, flag, label, seen_at, ratio, merchant_code FROM source": "nope",
        "SELECT merchant_code, ts, score FROM source": "does not return",
        "SELECT *, 1 AS extra FROM source": "not in the contract: extra",
    }
    for sql, fragment in bad_sql.items():
        contract = every_dtype_contract(sql=sql)
        contract["source"]["columns"] = columns
        write_contract(contracts_copy, contract)
        result = validate()
        assert result.returncode == 2 and fragment in result.stderr and "merchant_risk/v1.yaml: source.sql" in \
            result.stderr, (sql, result.stderr)
    contract = every_dtype_contract(sql="SELEC merchant_code FROM source")  # no columns declared: parsed only
    write_contract(contracts_copy, contract)
    result = validate()
    assert result.returncode == 2 and "source.sql: does not parse" in result.stderr, result.stderr
    contract = every_dtype_contract(sql="SELECT * FROM source")
    contract["source"]["columns"] = columns
    write_contract(contracts_copy, contract)
    assert validate().returncode == 0


def test_an_entity_clash_blames_the_new_file(contracts_copy) -> None:
    """customer_profile v1 is released (in contracts.lock); a new feature set redeclaring its entity with
    another type is the file named."""
    contract = every_dtype_contract(name="newcomer", key="customer_id", key_dtype="string")
    contract["entity"]["name"] = "customer"
    write_contract(contracts_copy, contract)
    result = subprocess.run([FEATURECTL, "contracts", "validate", "--contracts", str(contracts_copy)],
                            capture_output=True, text=True, timeout=60)
    errors = [line for line in result.stderr.splitlines() if "entity 'customer'" in line]
    assert errors and all("newcomer/v1.yaml" in line.split(":")[0] for line in errors), result.stderr


# ---------------------------------------------------------------------------- infrastructure, one line each

def test_infrastructure_failures_reach_the_cli_as_one_line(dev_settings, local_settings) -> None:
    """S3 unreachable, a read-only work directory: one line naming the resource and the fix, non-zero exit,
    `latest` unmoved; --debug adds the traceback."""
    seed_raw(dev_settings)
    before = pipeline.build_and_promote(dev_settings, "customer_profile")
    down = dev_settings.replace(values={**dev_settings.values,
                                        "FEAST_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
                                        "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"})
    result = _featurectl(down, "build", "customer_profile", timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "object store" in line or "S3" in line or "s3" in line, line

    debug = _featurectl(down, "build", "customer_profile", "--debug", timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert builds.read_pointer(data_store(dev_settings), "customer_profile")["build_id"] == before["build_id"]

    seed_raw(local_settings)
    pipeline.run_loop(local_settings)
    # The view's lease file cannot be created (a directory is in its place; permissions do not stop root).
    contract = local_settings.contracts().get("customer_profile", 1)
    lock = Path(data_store(local_settings).path(f"{builds.version_key(contract)}/materialize.lock"))
    lock.unlink(missing_ok=True)
    lock.mkdir()
    result = _featurectl(local_settings, "materialize")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "cannot create the lock file" in line and "materialize.lock" in line, line


def test_threads_of_one_process_never_hold_a_lease_together(s3_clean) -> None:
    """Two threads of one process contend: exactly one holds at a time (the lease, not the GIL, decides)."""
    uri, inside, overlaps = "s3://feature-platform-dev/faults/threads.lock", [], []
    lock = threading.Lock()

    def work() -> None:
        with s3_lock(uri, s3_clean.endpoint, timeout=60, period=5):
            with lock:
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(1)
            time.sleep(0.2)  # the critical section's work
            with lock:
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []



# ----------------------------------------------------------------------------------------- files and inputs

@pytest.fixture
def local_loop(local_settings):
    seed_raw(local_settings)
    pipeline.run_loop(local_settings)
    return local_settings


def _cli(settings, capsys, *args: str) -> tuple[int, str, str]:
    from feature_platform.cli import main

    code = main([*args, "--contracts", str(settings.contracts_dir), "--home", str(settings.home),
                 "--env", settings.env_name])
    out, err = capsys.readouterr()
    return code, out, err


def test_malformed_entity_files_are_usage_errors_naming_the_problem(local_loop, tmp_path, capsys) -> None:
    """Epoch-second integers (once read as 1970: a silent all-null training set), empty, headerless, corrupt,
    unknown-suffix, missing and wrongly-keyed entity files: each exit 2 with one line naming the file or column;
    no output file is written."""
    cases = {
        "epoch.csv": ("customer_id,event_timestamp\n1001,1796137200\n", "event_timestamp: the column holds int64"),
        "empty.csv": ("", "the file is empty"),
        "text.csv": ("customer_id,event_timestamp\n1001,yesterday\n", "event_timestamp: 1 value(s) are not "),
        "nokey.csv": ("customer,event_timestamp\n1001,2026-11-30T00:00:00Z\n", "needs the columns customer_id"),
        "corrupt.parquet": ("PAR1 not really parquet", "not a readable PARQUET file"),
        "entities.json": ('{"customer_id": [1001]}', "entity files are .csv, .csv.gz or .parquet"),
        "badkey.csv": ("customer_id,event_timestamp\nabc,2026-11-30T00:00:00Z\n", "customer_id: the entity frame's"),
    }
    for name, (content, fragment) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        out = tmp_path / f"{name}.out.parquet"
        code, _, err = _cli(local_loop, capsys, "historical", "customer_spend", "--entities", str(path),
                            "--out", str(out))
        assert code == 2, (name, err)
        assert fragment in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not out.exists()
    code, _, err = _cli(local_loop, capsys, "historical", "customer_spend", "--entities", str(tmp_path / "no.csv"))
    assert code == 2 and "no such entity file" in err


def test_a_full_disk_leaves_the_previous_reports_whole(local_loop, tmp_path) -> None:
    """monitor.{json,md,html} are written together or not at all: a write that fails (file size limit, as a
    full disk) keeps the previous good report, byte for byte, and says which file it could not write."""
    report = tmp_path / "report"
    first = _featurectl(local_loop, "monitor", "--report-dir", str(report))
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    assert {"monitor.json", "monitor.md", "monitor.html", "monitor.prom"} <= set(before)
    smallest = min(len(before[name]) for name in ("monitor.json", "monitor.md", "monitor.html"))
    full = subprocess.run([FEATURECTL, "monitor", "--report-dir", str(report)], env=_env(local_loop),
                          capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(smallest // 2))
    assert full.returncode != 0 and "Traceback" not in full.stderr
    assert str(report) in full.stderr.strip().splitlines()[-1], full.stderr  # names the file, not a temporary
    assert {p.name: p.read_bytes() for p in report.iterdir() if not p.name.startswith(".")} == before
    assert not [p for p in report.iterdir() if p.name.startswith(".tmp-")]


def test_damaged_metadata_and_pointers_are_named_and_healed_by_a_rebuild(local_loop, capsys) -> None:
    """metadata.json replaced by {} or by junk, and a corrupt latest.json: reads fail with one line that names the
    file and the fix; re-running `build` repairs each (same build id), and the loop verifies again."""
    store = data_store(local_loop)
    pointer = builds.read_pointer(store, "customer_profile", "v1")
    build_id = pointer["build_id"]
    metadata_key = f"customer_profile/v1/{build_id}/metadata.json"
    good = store.read_json(metadata_key)
    for damage in (b"{}", b"\x00junk{", b'{"build_id": "other"}'):
        store.write_bytes_atomic(metadata_key, damage)
        code, _, err = _cli(local_loop, capsys, "verify")
        assert code != 0 and "metadata.json is damaged" in err and "featurectl build customer_profile" in err, err
        assert "KeyError" not in err and "report it" not in err
        code, _, err = _cli(local_loop, capsys, "build", "customer_profile", "--version", "1")
        assert code == 0, err
        healed = store.read_json(metadata_key)
        assert healed["build_id"] == build_id and healed["data"] == good["data"]
        assert healed["row_count"] == good["row_count"]
    from feature_platform.errors import StoreError

    for version in (None, "v1"):
        key = "customer_profile/" + (f"{version}/" if version else "") + "latest.json"
        store.write_bytes_atomic(key, b"garbage{")
        with pytest.raises(StoreError, match=r"latest.json is damaged .*re-run `featurectl build customer_profile"):
            builds.read_pointer(store, "customer_profile", version)
        if version is None:  # `versions` marks the feature set's latest
            code, _, err = _cli(local_loop, capsys, "versions", "customer_profile")
            assert code != 0 and "latest.json is damaged" in err, err
        code, _, err = _cli(local_loop, capsys, "build", "customer_profile")
        assert code == 0, err
        assert builds.read_pointer(store, "customer_profile", version)["build_id"] == build_id
    pipeline.verify(local_loop)


def test_rollback_says_what_moved(local_settings, capsys) -> None:
    """Rolling back v1 while v2 exists moves v1's pointer only; the feature set's latest stays on v2 and the
    output says so (it once claimed `latest -> v1`)."""
    seed_raw(local_settings)
    pipeline.build_all(local_settings)
    store = data_store(local_settings)
    v1 = builds.read_pointer(store, "customer_spend", "v1")["build_id"]
    v2 = builds.read_pointer(store, "customer_spend", "v2")["build_id"]
    code, out, err = _cli(local_settings, capsys, "rollback", "customer_spend", "--to", v1)
    assert code == 0, err
    assert f"customer_spend v1: latest -> build {v1} (was {v1})" in out
    assert f"customer_spend: latest unchanged, still v2 build {v2}" in out
    assert "latest -> v1" not in out
    assert builds.read_pointer(store, "customer_spend")["build_id"] == v2
    code, out, _ = _cli(local_settings, capsys, "rollback", "customer_spend", "--to", v1, "--json")
    moved = json.loads(out)
    assert moved["feature_set_latest"] == {"version": "v2", "build_id": v2} and not moved["feature_set_latest_moved"]


# -------------------------------------------------------------------------------------- registry commits

class _HoldingProxy:
    """An HTTP proxy in front of moto that holds the PUTs of one key until released, as a stalled network or a
    paused writer would; everything else passes straight through."""

    def __init__(self, upstream: str, held_suffix: str) -> None:
        import http.client
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlparse

        self.holding, self.arrived, self.release = threading.Event(), threading.Event(), threading.Event()
        target = urlparse(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "PUT" and self.path.split("?")[0].endswith(held_suffix) and proxy.holding.is_set():
                    proxy.arrived.set()
                    assert proxy.release.wait(60), "the test never released the held PUT"
                upstream_conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                upstream_conn.request(self.command, self.path, body=body,
                                      headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                response = upstream_conn.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()


def test_a_stalled_registry_commit_never_overwrites_a_newer_one(dev_settings, s3_clean, monkeypatch) -> None:
    """Writer A reads the S3 registry, and its upload stalls in flight; writer B commits meanwhile. When A's
    upload arrives it is refused by S3 itself (If-Match on the ETag A read): B's commit stays, A fails with one
    true line, and A's re-run (a fresh read) commits on top of B's. A new registry is created only if absent."""
    from feast.repo_config import RegistryConfig

    from feature_platform.registry_store import ConditionalS3RegistryStore, RegistryConflict

    seed_raw(dev_settings)
    pipeline.build_all(dev_settings)
    pipeline.apply(dev_settings)
    env = dev_settings.environment()
    uri = dev_settings.resolve_uri(env, env.registry.uri)
    proxy = _HoldingProxy(s3_clean.endpoint, "registry.db")
    try:
        def store(endpoint: str) -> ConditionalS3RegistryStore:
            monkeypatch.setenv("FEAST_S3_ENDPOINT_URL", endpoint)  # where Feast's S3 store takes its endpoint
            return ConditionalS3RegistryStore(RegistryConfig(registry_type="file", path=uri), Path("."))

        writer_a, writer_b = store(proxy.url), store(s3_clean.endpoint)
        proto_a, proto_b = writer_a.get_registry_proto(), writer_b.get_registry_proto()
        proto_a.feature_views[0].spec.description = "written by A"
        proto_b.feature_views[1].spec.description = "written by B"
        proxy.holding.set()
        outcome: dict[str, BaseException | None] = {}

        def commit_a() -> None:
            try:
                writer_a.update_registry_proto(proto_a)
                outcome["a"] = None
            except BaseException as exc:
                outcome["a"] = exc

        thread = threading.Thread(target=commit_a)
        thread.start()
        assert proxy.arrived.wait(30), "writer A's upload never reached the proxy"
        writer_b.update_registry_proto(proto_b)  # B commits while A's upload is in flight
        proxy.release.set()
        thread.join(60)
        assert isinstance(outcome["a"], RegistryConflict), outcome
        assert "changed after this writer read it" in str(outcome["a"]) and "nothing was written" in str(outcome["a"])
        final = store(s3_clean.endpoint).get_registry_proto()
        assert final.version_id == proto_b.version_id
        assert final.feature_views[1].spec.description == "written by B"
        assert final.feature_views[0].spec.description != "written by A"

        again = store(s3_clean.endpoint)  # A's re-run reads afresh and commits on top of B's
        proto = again.get_registry_proto()
        proto.feature_views[0].spec.description = "written by A"
        proxy.holding.clear()
        again.update_registry_proto(proto)
        final = store(s3_clean.endpoint).get_registry_proto()
        assert [final.feature_views[i].spec.description for i in (0, 1)] == ["written by A", "written by B"]
        with pytest.raises(RegistryConflict):  # a writer that read nothing may only create a registry
            store(s3_clean.endpoint).update_registry_proto(proto_b)
    finally:
        proxy.stop()
    pipeline.apply(dev_settings)  # the platform's own writers go on from the registry as it is
    assert {v.name for v in feast_bridge.open_store(dev_settings, env).list_feature_views(allow_cache=False)} >= {
        "customer_profile_v1", "customer_spend_v2"}


def test_postgresql_killed_mid_apply_leaves_no_registry_change_unaudited(postgres_server, local_settings,
                                                                         contracts_copy, monkeypatch) -> None:
    """Feast's SQL registry commits object by object: PostgreSQL SIGKILLed after two of four views were
    re-pointed leaves those two changed. The apply fails with one line; the audit trail holds it as written
    ahead; the re-run after PostgreSQL's recovery applies the rest and records the interrupted apply's two
    landed changes, so every re-pointed view is in the trail exactly once."""
    import uuid

    import psycopg
    import yaml
    from feast.infra.registry.sql import SqlRegistry

    from feature_platform import audit
    from feature_platform.errors import FeastError
    from feature_platform.sample_data import SampleSpec
    from tests.helpers import AS_OF

    database = f"apply_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.url().replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    path = contracts_copy / "environments" / "local.yaml"
    env_doc = yaml.safe_load(path.read_text())
    env_doc["registry"] = {"type": "sql", "url_env": "FEATURE_PLATFORM_REGISTRY_URL"}
    path.write_text(yaml.safe_dump(env_doc))
    settings = local_settings.replace(values={"FEATURE_PLATFORM_REGISTRY_URL": postgres_server.url(database)})
    seed_raw(settings)
    pipeline.build_all(settings)
    pipeline.apply(settings)
    seed_raw(settings, SampleSpec(seed=11, scale=0.1, as_of=AS_OF))  # new data: every view gets a new build
    pipeline.build_all(settings)
    views = sorted(c.feature_view_name for c in settings.contracts().live())

    original, applied = SqlRegistry.apply_feature_view, []

    def apply_then_crash(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        applied.append(1)
        if len(applied) == 2:
            postgres_server.kill()  # the database dies between two of Feast's per-object commits
        return result

    monkeypatch.setattr(SqlRegistry, "apply_feature_view", apply_then_crash)
    try:
        with pytest.raises(FeastError, match="the next `featurectl apply` records what landed"):
            pipeline.apply(settings)
    finally:
        postgres_server.start()
        monkeypatch.undo()
    result = pipeline.apply(settings)
    assert len(result["changed"]) == len(views) - 2

    entries = audit.read(settings, settings.environment())
    [interrupted] = [e for e in entries if e.get("status") == "interrupted"]
    assert len(interrupted["landed"]) == 2 and "interrupted" in interrupted["note"]
    repointed = []
    for entry in entries[entries.index(interrupted):]:
        landed = entry.get("landed", [c["object"] for c in entry["changes"]])  # what reached the registry
        repointed += [c["object"] for c in entry["changes"] if c["kind"] == "FeatureView" and c["object"] in landed]
    assert sorted(repointed) == views
    assert audit.pending(settings, settings.environment()) == []
    store = feast_bridge.open_store(settings, settings.environment())
    builds_now = {v.name: v.tags["feature_platform.build_id"] for v in store.list_feature_views(allow_cache=False)}
    assert builds_now == {c.feature_view_name: builds.read_pointer(data_store(settings), c.name, c.version_label)[
        "build_id"] for c in settings.contracts().live()}


def test_redis_out_of_memory_is_named_as_such(dev_settings) -> None:
    """A Redis at its maxmemory (noeviction; 1 kB, below what any Redis uses) refuses writes: materialize ends
    with one line that says so and how to fix it, not the address/password advice of an unreachable store; the
    load stays pending for a re-run."""
    import redis

    from tests.services import REDIS_PASSWORD, wait_until

    port = free_port()
    process = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save",
                                "", "--appendonly", "no", "--requirepass", REDIS_PASSWORD, "--maxmemory", "1kb",
                                "--maxmemory-policy", "noeviction"], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: redis.Redis(port=port, password=REDIS_PASSWORD).ping(), "a small redis-server")
        settings = dev_settings.replace(values={**dev_settings.values,
                                                "FEATURE_PLATFORM_REDIS_ADDRESS": f"127.0.0.1:{port}"})
        seed_raw(settings)
        pipeline.build_all(settings)
        pipeline.apply(settings)
        result = _featurectl(settings, "materialize", "--quiet")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert "Redis is out of memory" in last and "maxmemory" in last and "address" not in last, last
    finally:
        process.terminate()
        process.wait(timeout=30)
