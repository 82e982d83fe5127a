"""The platform's feature server over real HTTP: equal to `feast serve` column by column, read by Feast's own
`remote` online store, TTL enforced, clear errors, Redis outage and recovery, metrics, Feast fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from feature_platform import feast_bridge, pipeline
from tests.conftest import REPO
from tests.helpers import AS_OF, every_dtype_contract, merchant_events, replace_raw, seed_raw, write_contract
from tests.services import free_port, start_redis, wait_until

pytestmark = pytest.mark.e2e

MERCHANTS = [f"m{i:02d}" for i in range(40)]


def _env(settings) -> dict[str, str]:
    return {**os.environ, **settings.values, "FEATURE_PLATFORM_CONTRACTS": str(settings.contracts_dir),
            "FEATURE_PLATFORM_HOME": str(settings.home), "FEATURE_PLATFORM_ENV": settings.env_name,
            "PYTHONPATH": str(REPO / "src")}


def error_body(raw: bytes) -> dict:
    """An error answer as a dict with ``detail``: FastAPI's ``{"detail": ...}`` for malformed requests, or
    Feast's error format (a JSON string of ``{module, class, message}``, what Feast's ``remote`` client maps
    back to the exception) for the errors Feast's server raises as exceptions."""
    answer = json.loads(raw or b"{}")
    if isinstance(answer, str):
        feast_error = json.loads(answer)
        assert set(feast_error) == {"module", "class", "message"}, feast_error
        return {**feast_error, "detail": feast_error["message"]}
    return answer


class Server:
    def __init__(self, settings, engine: str = "platform", extra: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        command = [str(Path(sys.executable).parent / "featurectl"), "serve", "--port", str(self.port),
                   "--engine", engine]
        self.process = subprocess.Popen(command, env={**_env(settings), **(extra or {})},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_until(self._healthy, f"{engine} server", timeout=120)

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(self.process.stderr.read()[-3000:])
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
            return response.status == 200

    def post(self, body: dict | bytes, path: str = "/get-online-features") -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, error_body(exc.read())

    def post_with_headers(self, body: dict) -> tuple[int, dict, dict[str, str]]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/get-online-features",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def loaded(dev_settings, contracts_copy):
    """The example contracts plus a string-keyed, every-dtype contract (nulls included), materialized."""
    write_contract(contracts_copy, every_dtype_contract())
    seed_raw(dev_settings)
    replace_raw(dev_settings, "merchant_events", merchant_events(MERCHANTS))
    pipeline.run_loop(dev_settings)
    return dev_settings


REQUESTS = [
    {"features": ["customer_profile_v1:tier", "customer_spend_v2:txn_count_1d", "customer_spend_v2:avg_txn_amount_1d"],
     "entities": {"customer_id": [1001, 1002, 999999, 1001]}},                       # several views, missing, dup
    {"feature_service": "customer_spend_v1", "entities": {"customer_id": [1003, 1004]}},
    {"features": ["driver_hourly_stats_v1:conv_rate", "driver_hourly_stats_v1:trips_1h"],
     "entities": {"driver_id": [5001, 5002]}, "full_feature_names": True},
    {"features": [f"merchant_risk_v1:{f}" for f in ("score", "cnt", "small", "flag", "label", "seen_at", "ratio")],
     "entities": {"merchant_code": [*MERCHANTS, "nobody"]}},                         # every dtype, nulls, string keys
]


def _normalized(answer: dict) -> dict:
    """Feast serve's answers with the platform's documented differences applied: an unknown entity is
    NOT_FOUND with a null event timestamp (Feast: PRESENT at 1970-01-01), a null timestamp feature is null
    (Feast: -2**63)."""
    out = json.loads(json.dumps(answer))
    for result in out["results"][len(answer["results"]) - len(answer["metadata"]["feature_names"]):]:
        for i, status in enumerate(result["statuses"]):
            unknown = result["event_timestamps"][i] == "1970-01-01T00:00:00Z" and result["values"][i] is None
            if status == "NOT_FOUND" or (status == "PRESENT" and unknown):
                result["statuses"][i] = "NOT_FOUND"
                result["event_timestamps"][i] = None
        result["values"] = [None if v == -(2**63) else v for v in result["values"]]
    return out


def test_equal_to_feast_serve_column_by_column(loaded, redis_server) -> None:
    """Missing and duplicate entities, a feature service, full_feature_names, every dtype with nulls, string
    keys, several views in one request: the same answer as `feast serve` on the same Redis."""
    ours, feast = Server(loaded), Server(loaded, engine="feast")
    try:
        for body in REQUESTS:
            status_ours, answer_ours = ours.post(body)
            status_feast, answer_feast = feast.post(body)
            assert status_ours == status_feast == 200, (answer_ours, answer_feast)
            expected = _normalized(answer_feast)
            # Feast groups a view's features in a set, so its column order varies per process; the platform
            # keeps request order. Compare column by column, by name.
            ours_by_name = dict(zip(answer_ours["metadata"]["feature_names"], answer_ours["results"], strict=True))
            theirs_by_name = dict(zip(expected["metadata"]["feature_names"], expected["results"], strict=True))
            assert sorted(ours_by_name) == sorted(theirs_by_name)
            for name, want in theirs_by_name.items():
                got = ours_by_name[name]
                assert got["statuses"] == want["statuses"], name
                if any(isinstance(v, float) for v in want["values"]):
                    assert got["values"] == pytest.approx(want["values"], nan_ok=True), name
                else:
                    assert got["values"] == want["values"], name
                assert got["event_timestamps"] == want["event_timestamps"], name
        _, merchants = ours.post(REQUESTS[3])
        values = [v for r in merchants["results"][1:] for v in r["values"]]
        assert None in values and any(v is not None for v in values)  # nulls were really exercised
        assert merchants["results"][1]["statuses"][-1] == "NOT_FOUND"
        assert merchants["results"][1]["event_timestamps"][-1] is None

        # Views of one entity share its hash: one HMGET per distinct entity key, whatever the number of views.
        client = redis_server.client()
        client.config_resetstat()
        code, _ = ours.post({"features": ["customer_profile_v1:tier", "customer_spend_v1:txn_count_1d",
                                          "customer_spend_v2:avg_txn_amount_1d", "customer_spend_v2:txn_count_1d"],
                             "entities": {"customer_id": [1001, 1002, 1003, 1001]}})
        assert code == 200
        assert client.info("commandstats")["cmdstat_hmget"]["calls"] == 3
    finally:
        ours.stop()
        feast.stop()


def test_feasts_remote_online_store_reads_the_server(loaded, tmp_path, monkeypatch) -> None:
    """Feast's own `remote` online store client, pointed at the platform server, gets the SDK's values, and
    the server's errors as Feast's own exceptions."""
    from feast import FeatureService, FeatureStore

    server = Server(loaded)
    try:
        config = feast_bridge.feature_store_config(loaded, loaded.environment())
        config["online_store"] = {"type": "remote", "path": f"http://127.0.0.1:{server.port}"}
        repo = tmp_path / "remote"
        repo.mkdir()
        import yaml

        (repo / "feature_store.yaml").write_text(yaml.safe_dump(config))
        monkeypatch.setenv("FEAST_S3_ENDPOINT_URL", loaded.s3_endpoint_url)  # as the client's own process has it
        remote = FeatureStore(repo_path=str(repo))
        refs = ["customer_spend_v2:txn_count_1d", "customer_spend_v2:max_txn_amount_1d"]
        got = remote.get_online_features(features=refs, entity_rows=[{"customer_id": k}
                                                                     for k in (1001, 1002, 1003)]).to_dict()
        # The server's errors come back as Feast's own exceptions with its message, not a generic error.
        from feast.errors import FeatureServiceNotFoundException

        with pytest.raises(FeatureServiceNotFoundException, match="no feature service named 'ghost_v1'"):
            remote.provider.online_store.get_online_features(
                remote.config, FeatureService(name="ghost_v1", features=[]), {"customer_id": [1001]},
                remote.registry, remote.project)
        rows = feast_bridge.read_online(loaded, "customer_spend", [1001, 1002, 1003], version=2)
        assert got["txn_count_1d"] == [r["txn_count_1d"] for r in rows]
        assert got["max_txn_amount_1d"] == pytest.approx([r["max_txn_amount_1d"] for r in rows])
    finally:
        server.stop()


def test_clear_errors_metrics_and_ttl(loaded, contracts_copy) -> None:
    """Unknown view/feature/service -> 404 naming it; malformed body -> 422 naming the field; /metrics with
    Feast's names; a row older than the TTL is null with status OUTSIDE_MAX_AGE."""
    stale = every_dtype_contract(name="merchant_stale", ttl="1h")
    write_contract(contracts_copy, stale)
    replace_raw(loaded, "merchant_events", merchant_events(MERCHANTS, end=AS_OF - timedelta(days=3)))
    pipeline.build_and_promote(loaded, "merchant_stale")
    pipeline.apply(loaded, feature_sets=["merchant_stale"])
    pipeline.materialize(loaded, feature_views=["merchant_stale_v1"])
    server = Server(loaded)
    try:
        code, body = server.post({"features": ["nope_v1:x"], "entities": {"customer_id": [1]}})
        assert code == 404 and "nope_v1" in body["detail"] and body["class"] == "FeatureViewNotFoundException"
        code, body = server.post({"features": ["customer_spend_v2:nope"], "entities": {"customer_id": [1]}})
        assert code == 404 and "nope" in body["detail"]
        code, body = server.post({"feature_service": "nope", "entities": {"customer_id": [1]}})
        assert code == 404 and "nope" in body["detail"] and body["class"] == "FeatureServiceNotFoundException"
        code, body = server.post(b'{"features": ["customer_spend_v2:txn_count_1d"]}')
        assert code == 422 and "entities" in body["detail"] and "class" not in body  # FastAPI's shape
        code, body = server.post(b"not json")
        assert code == 422
        code, body = server.post({"features": ["customer_spend_v2:txn_count_1d"], "entities": {"driver_id": [1]}})
        assert code == 422 and "customer_id" in body["detail"]
        code, body = server.post({"features": ["customer_spend_v2:txn_count_1d"],
                                  "entities": {"customer_id": ["abc"]}})
        assert code == 422 and "customer_id" in body["detail"]

        code, body = server.post({"features": ["merchant_stale_v1:cnt"], "entities": {"merchant_code": ["m01"]}})
        assert code == 200 and body["results"][1]["statuses"] == ["OUTSIDE_MAX_AGE"]
        assert body["results"][1]["values"] == [None] and body["results"][1]["event_timestamps"][0] is not None

        # Client mistakes are never a 500 and each is counted: out-of-range keys, bad UTF-8, deep nesting, size.
        code, body = server.post({"features": ["customer_spend_v2:txn_count_1d"],
                                  "entities": {"customer_id": [99999999999999999999]}})
        assert code == 422 and "int64 range" in body["detail"] and "customer_id" in body["detail"]
        code, body = server.post(b'{"features": ["customer_spend_v2:\xff"], "entities": {"customer_id": [1]}}')
        assert code == 400 and "UTF-8" in body["detail"]
        code, body = server.post(b'{"entities": {"customer_id": ' + b"[" * 5000 + b"]" * 5000 + b"}}")
        assert code == 400 and "nested" in body["detail"]
        code, body = server.post(b'{"features": ["customer_spend_v2:txn_count_1d"], "entities": {"customer_id": ['
                                 + b"1," * (9 * 1024 * 1024) + b"1]}}")
        assert code == 413 and "MiB" in body["detail"]

        code, metrics = server.get("/metrics")
        text = metrics.decode()
        for status in ("400", "404", "413", "422"):
            assert f'feature_platform_server_errors_total{{status="{status}"}}' in text, status
        assert 'feature_platform_server_errors_total{status="500"}' not in text
        for name in ("feast_feature_server_request_latency_seconds", "feast_online_features_request_total",
                     "feast_online_features_entity_count", "feast_feature_freshness_seconds",
                     'feast_online_features_status_total{feature_view="merchant_stale_v1",status="OUTSIDE_MAX_AGE"}'):
            assert name in text, name
    finally:
        server.stop()


def test_redis_down_is_503_and_the_server_recovers(loaded) -> None:
    """Redis stops: requests answer 503 within the timeout; Redis returns: the server serves again by itself."""
    redis = start_redis()
    settings = loaded.replace(values={**loaded.values, "FEATURE_PLATFORM_REDIS_ADDRESS": redis.address})
    pipeline.materialize(settings)
    server = Server(settings)
    body = {"features": ["customer_profile_v1:tier"], "entities": {"customer_id": [1001]}}
    try:
        assert server.post(body)[1]["results"][1]["statuses"] == ["PRESENT"]
        port = redis.port
        redis.stop()
        code, answer = server.post(body)
        assert code == 503 and "online store unavailable" in answer["detail"] and answer["class"] == "FeastError"
        assert server.get("/health")[0] == 503
        back = start_redis_on(port)
        try:
            wait_until(lambda: server.post(body)[0] == 200, "recovery after Redis returned", timeout=60)
        finally:
            back.stop()
    finally:
        server.stop()


def start_redis_on(port: int):
    """A fresh redis-server on a given port (the address the server was configured with)."""
    import shutil

    from tests.services import REDIS_PASSWORD, RedisServer

    process = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--requirepass", REDIS_PASSWORD],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(port, REDIS_PASSWORD, process)
    wait_until(lambda: server.client().ping(), "redis-server")
    return server


def test_sqlite_environment_falls_back_to_feasts_path(local_settings) -> None:
    """Stores the planner does not cover (SQLite in `local`) are served through Feast's own path."""
    seed_raw(local_settings)
    pipeline.run_loop(local_settings)
    server = Server(local_settings)
    try:
        code, body = server.post({"features": ["customer_profile_v1:tier"], "entities": {"customer_id": [1001]}})
        assert code == 200
        [row] = feast_bridge.read_online(local_settings, "customer_profile", [1001])
        assert body["results"][1]["values"] == [row["tier"]]
        # Unknown names are 404s naming them on this path too (Feast's own path raised a 500 for a service).
        code, body = server.post({"feature_service": "no_such_service", "entities": {"customer_id": [1001]}})
        assert code == 404 and "no_such_service" in body["detail"]
        code, body = server.post({"features": ["no_such_view:x"], "entities": {"customer_id": [1001]}})
        assert code == 404 and "no_such_view" in body["detail"]
        code, body = server.post({"features": ["customer_profile_v1:tier"], "entities": {"customer_id": ["x"]}})
        assert code == 422
    finally:
        server.stop()


def test_malformed_requests_never_get_a_500_and_the_server_keeps_serving(loaded) -> None:
    """Generated bodies (valid JSON of the wrong shapes, junk bytes, wrong key types, huge numbers, deep and odd
    nesting) get 4xx answers naming the problem, none a 500; a good request still answers after them."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    server = Server(loaded)
    good = {"features": ["customer_spend_v2:txn_count_1d"], "entities": {"customer_id": [1001]}}
    scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                        st.floats(allow_nan=False), st.text(max_size=20))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=8), inner, max_size=4), max_leaves=12)
    refs = st.sampled_from(["customer_spend_v2:txn_count_1d", "merchant_risk_v1:score", "nope:x", "bad", ":", ""])
    bodies = st.one_of(
        st.binary(max_size=200),
        values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries({"features": st.lists(refs, max_size=3) | values,
                               "entities": st.dictionaries(st.sampled_from(["customer_id", "merchant_code", "x"]),
                                                           st.lists(scalars, max_size=3) | values, max_size=2)},
                              optional={"feature_service": st.sampled_from(["customer_spend_v1", "nope"]) | values,
                                        "full_feature_names": values}).map(lambda b: json.dumps(b).encode()))

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(bodies)
    def never_500(body: bytes) -> None:
        code, answer = server.post(body)
        assert code < 500, (body, code, answer)
        if code != 200:
            assert answer.get("detail"), (body, answer)

    try:
        never_500()
        code, answer = server.post(good)
        assert code == 200 and answer["results"][1]["statuses"] == ["PRESENT"]
        assert 'feature_platform_server_errors_total{status="500"}' not in server.get("/metrics")[1].decode()
    finally:
        server.stop()


def test_a_newly_applied_view_is_served_after_one_refresh(dev_settings, contracts_copy) -> None:
    """The registry is re-planned in the background every cache_ttl_seconds: a view applied while the server runs
    is served without a restart (404 before, 200 after at most one refresh)."""
    import yaml

    path = contracts_copy / "environments/dev.yaml"
    env = yaml.safe_load(path.read_text())
    env["registry"]["cache_ttl_seconds"] = 1
    path.write_text(yaml.safe_dump(env))
    seed_raw(dev_settings)
    pipeline.run_loop(dev_settings)
    server = Server(dev_settings)
    body = {"features": ["merchant_risk_v1:cnt"], "entities": {"merchant_code": ["m01"]}}
    try:
        assert server.post(body)[0] == 404
        write_contract(contracts_copy, every_dtype_contract())
        replace_raw(dev_settings, "merchant_events", merchant_events(MERCHANTS))
        pipeline.build_and_promote(dev_settings, "merchant_risk")
        pipeline.apply(dev_settings, feature_sets=["merchant_risk"])
        pipeline.materialize(dev_settings, feature_views=["merchant_risk_v1"])
        wait_until(lambda: server.post(body)[0] == 200, "the new view served after a registry refresh", timeout=30)
        assert server.post(body)[1]["results"][1]["statuses"] == ["PRESENT"]
    finally:
        server.stop()


def test_helm_test_pod_checks_a_real_server(loaded) -> None:
    """The chart's `helm test` pod command (rendered from the chart, only the URL pointed here) passes against
    the running server, and fails, naming the cause, when the server is gone."""
    import shutil

    import yaml

    helm = shutil.which("helm") or str(REPO / ".tools" / "bin" / "helm")
    chart = REPO / "charts" / "feature-platform"
    rendered = subprocess.run([helm, "template", "feature-platform", str(chart), "-f", str(chart / "values-dev.yaml"),
                               "--namespace", "feature-platform-dev"], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    [pod] = [o for o in yaml.safe_load_all(rendered.stdout) if o and o["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = pod["spec"]["containers"][0]["args"]
    assert args[:2] == ["check-server", "--url"]
    server = Server(loaded)
    featurectl = str(Path(sys.executable).parent / "featurectl")
    try:
        args[2] = f"http://127.0.0.1:{server.port}"
        result = subprocess.run([featurectl, *args], env=_env(loaded), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("OK ")
    finally:
        server.stop()
    result = subprocess.run([featurectl, *args], env=_env(loaded), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "/health unreachable" in result.stderr


def test_documented_curl_examples_work_as_written(loaded) -> None:
    """Every `curl` example in README.md and docs/, run as written against a server on the port it names."""
    import re
    import shlex

    text = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))])
    commands = [block.replace("\\\n", " ") for block in re.findall(r"```bash\n(.*?)```", text, re.S)]
    examples = [line.strip() for block in commands for line in block.splitlines() if line.strip().startswith("curl")]
    assert examples, "the docs have no curl example"
    written = int(re.search(r"localhost:(\d+)", examples[0]).group(1))
    port = written if _port_is_free(written) else free_port()  # the documented port, unless taken here
    server = Server(loaded, port=port)
    try:
        for example in examples:
            command = shlex.split(example.replace(f"localhost:{written}", f"localhost:{port}"))
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, (example, result.stderr)
            answer = json.loads(result.stdout)
            assert answer["metadata"]["feature_names"] and all(
                "PRESENT" in r["statuses"] for r in answer["results"][1:]), (example, answer)
    finally:
        server.stop()


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_teams_read_what_the_contracts_allow_and_feasts_client_sends_the_token(loaded, contracts_copy,
                                                                               tmp_path, monkeypatch) -> None:
    """prod's rules on a real server: no token 401; a reader team reads its views, an outsider gets 403, a reader
    outside pii_readers is refused PII features (also through a feature service); Feast's `remote` client with
    `auth: {type: oidc, token_env_var}` presents the token and gets the values or Feast's error."""
    import yaml
    from feast import FeatureStore

    from feature_platform.governance import issue_token

    key = "server-test-auth-key-0123456789abcdef-xyz"
    path = contracts_copy / "environments" / "dev.yaml"
    env = yaml.safe_load(path.read_text())
    env["access"] = {"default": "deny", "token_key_env": "TEST_AUTH_KEY"}
    path.write_text(yaml.safe_dump(env))
    settings = loaded.replace(values={**loaded.values, "TEST_AUTH_KEY": key})
    pipeline.apply(settings)  # closes the open permission

    def bearer(team: str, ttl: int = 600, signing_key: str = key) -> str:
        return issue_token(signing_key.encode(), team, "dev", ttl_seconds=ttl)

    def post(server: Server, body: dict, token: str | None) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}/get-online-features",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, error_body(exc.read())

    spend = {"features": ["customer_spend_v2:txn_count_1d"], "entities": {"customer_id": [1001]}}
    tier = {"features": ["customer_profile_v1:tier"], "entities": {"customer_id": [1001]}}
    email = {"features": ["customer_profile_v1:tier", "customer_profile_v1:email_domain"],
             "entities": {"customer_id": [1001]}}
    profile_service = {"feature_service": "customer_profile_v1", "entities": {"customer_id": [1001]}}
    server = Server(settings, extra={"TEST_AUTH_KEY": key})
    try:
        status, answer = post(server, spend, None)
        assert status == 401 and "no token" in answer["detail"]
        assert post(server, spend, bearer("payments-ml", ttl=-5))[0] == 401
        assert post(server, spend, bearer("payments-ml", signing_key="some-other-environments-key-0123456789"))[0] \
            == 401
        status, answer = post(server, spend, bearer("payments-ml"))
        assert status == 200 and answer["results"][1]["statuses"] == ["PRESENT"]
        status, answer = post(server, spend, bearer("marketing"))
        assert status == 403 and "team marketing may not read customer_spend_v2" in answer["detail"]
        assert answer["class"] == "FeastPermissionError"
        assert post(server, tier, bearer("payments-ml"))[0] == 200  # a reader of customer_profile
        status, answer = post(server, email, bearer("payments-ml"))
        assert status == 403 and "PII feature(s) email_domain of customer_profile_v1" in answer["detail"]
        assert post(server, profile_service, bearer("payments-ml"))[0] == 403
        assert post(server, email, bearer("fraud-ml"))[0] == 200  # in pii_readers
        assert post(server, profile_service, bearer("crm-data"))[0] == 200  # the owner
        check = [str(Path(sys.executable).parent / "featurectl"), "check-server", "--url",
                 f"http://127.0.0.1:{server.port}"]  # `helm test`: the platform's own token, PII views included
        result = subprocess.run(check, env=_env(settings), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        keyless = {k: v for k, v in _env(settings).items() if k != "TEST_AUTH_KEY"}
        result = subprocess.run(check, env=keyless, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and "HTTP 401" in result.stderr

        config = feast_bridge.feature_store_config(settings, settings.environment())
        config["online_store"] = {"type": "remote", "path": f"http://127.0.0.1:{server.port}"}
        config["auth"] = {"type": "oidc", "token_env_var": "TEST_FEAST_TOKEN"}
        repo = tmp_path / "remote"
        repo.mkdir()
        (repo / "feature_store.yaml").write_text(yaml.safe_dump(config))
        os.environ["TEST_FEAST_TOKEN"] = bearer("payments-ml")
        monkeypatch.setenv("FEAST_S3_ENDPOINT_URL", settings.s3_endpoint_url)  # as the client's own process has it
        try:
            remote = FeatureStore(repo_path=str(repo))
            got = remote.get_online_features(features=spend["features"],
                                             entity_rows=[{"customer_id": 1001}]).to_dict()
            assert got["txn_count_1d"] == [feast_bridge.read_online(settings, "customer_spend", [1001],
                                                                    version=2)[0]["txn_count_1d"]]
            os.environ["TEST_FEAST_TOKEN"] = bearer("marketing")
            from feast.errors import FeastPermissionError

            # Feast's error format: the remote client raises Feast's own exception with the server's message.
            with pytest.raises(FeastPermissionError, match=r"team marketing may not read customer_spend_v2"):
                FeatureStore(repo_path=str(repo)).get_online_features(
                    features=spend["features"], entity_rows=[{"customer_id": 1001}]).to_dict()
        finally:
            os.environ.pop("TEST_FEAST_TOKEN", None)
    finally:
        server.stop()
