"""Monitoring on generated contracts and data: freshness, volume, null rate and drift between two builds, the
exit code, the report (HTML with plots, Markdown, Prometheus gauges) and what must stay quiet."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from feature_platform import build as builds
from feature_platform import monitoring, pipeline
from feature_platform.environments import Settings
from feature_platform.errors import MonitorBreach
from tests.conftest import CONTRACTS
from tests.helpers import AS_OF, data_store, replace_raw, write_contract

DEVICES = [f"dev-{i:03d}" for i in range(400)]


def sensor_contract(online: bool = False, **extra: object) -> dict:
    return {"kind": "FeatureSet", "name": "sensor_health", "version": 1, "description": "Generated sensor health.",
            "owner": "iot-ml@example.com",
            "entity": {"name": "device", "join_key": "device_id", "dtype": "string"},
            "timestamp_field": "ts", "ttl": "3d", "online": online, "pii": False,
            "source": {"table": "sensor_events", "sql": "SELECT device_id, ts, temperature, status, errors "
                                                         "FROM source"},
            "features": [{"name": "temperature", "dtype": "float64", "description": "degrees C"},
                         {"name": "status", "dtype": "string", "description": "state"},
                         {"name": "errors", "dtype": "int32", "description": "error count",
                          "monitoring": {"drift_threshold": 5.0}}],
            **extra}


def sensor_events(seed: int, temperature_mean: float = 20.0, ok_share: float = 0.8, error_nulls: float = 0.05,
                  devices: list[str] = DEVICES, end: datetime = AS_OF) -> pa.Table:
    rng = random.Random(seed)
    rows: dict[str, list] = {"device_id": [], "ts": [], "temperature": [], "status": [], "errors": []}
    for device in devices:
        for hour in range(5):
            rows["device_id"].append(device)
            rows["ts"].append(end - timedelta(hours=hour, minutes=rng.randrange(60)))
            rows["temperature"].append(rng.gauss(temperature_mean, 3.0))
            rows["status"].append("ok" if rng.random() < ok_share else rng.choice(["warn", "fail"]))
            rows["errors"].append(None if rng.random() < error_nulls else rng.randrange(0, 5))
    return pa.table({"device_id": pa.array(rows["device_id"], pa.string()),
                     "ts": pa.array(rows["ts"], pa.timestamp("us", tz="UTC")),
                     "temperature": pa.array(rows["temperature"], pa.float64()),
                     "status": pa.array(rows["status"], pa.string()), "errors": pa.array(rows["errors"], pa.int32())})


@pytest.fixture
def sensor_settings(tmp_path: Path) -> Settings:
    contracts = tmp_path / "contracts"
    shutil.copytree(CONTRACTS / "environments", contracts / "environments")
    write_contract(contracts, sensor_contract())
    return Settings.from_env(environ={}, contracts_dir=contracts, home=tmp_path / "home", env_name="local")


def build(settings: Settings, table: pa.Table) -> dict:
    replace_raw(settings, "sensor_events", table)
    return pipeline.build_and_promote(settings, "sensor_health")


# ---------------------------------------------------------------------------------------------------- measures


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(1)
    base = np.quantile(rng.normal(0, 1, 50_000), monitoring_quantiles()).tolist()
    same = np.quantile(rng.normal(0, 1, 50_000), monitoring_quantiles()).tolist()
    shifted = np.quantile(rng.normal(1, 1, 50_000), monitoring_quantiles()).tolist()
    counts = np.quantile(rng.integers(0, 5, 50_000), monitoring_quantiles(), method="inverted_cdf").tolist()
    assert monitoring.psi(base, base) == pytest.approx(0.0, abs=1e-9)
    assert monitoring.psi(base, same) < 0.02
    assert monitoring.psi(base, shifted) > 0.5  # a one-sigma shift is a drift by any convention
    assert monitoring.psi(counts, counts) == pytest.approx(0.0, abs=1e-9)  # few distinct values, ties
    constant = [3.0] * 101
    assert monitoring.psi(constant, constant) == pytest.approx(0.0, abs=1e-9)
    assert monitoring.psi(constant, [4.0] * 101) > 1


def monitoring_quantiles() -> list[float]:
    return builds.QUANTILES


def test_category_share_change_counts_new_and_vanished_categories() -> None:
    before = {"values": 100, "top_values": [["a", 80], ["b", 20]]}
    after = {"values": 100, "top_values": [["a", 50], ["c", 50]]}
    assert monitoring.category_share_change(before, before) == 0.0
    assert monitoring.category_share_change(before, after) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------ two builds, monitored


def test_profile_is_recorded_per_feature_in_metadata(sensor_settings: Settings) -> None:
    done = build(sensor_settings, sensor_events(seed=1))
    contract = sensor_settings.contracts().get("sensor_health")
    metadata = builds.read_metadata(data_store(sensor_settings), contract, done["build_id"])
    temperature = metadata["columns"]["temperature"]["profile"]
    assert temperature["kind"] == "numeric" and len(temperature["quantiles"]) == 101
    assert temperature["quantiles"] == sorted(temperature["quantiles"])
    assert 19 < temperature["mean"] < 21 and 2 < temperature["stddev"] < 4
    status = metadata["columns"]["status"]["profile"]
    assert status["kind"] == "categorical" and {v for v, _ in status["top_values"]} == {"ok", "warn", "fail"}
    assert sum(c for _, c in status["top_values"]) == status["values"] == metadata["row_count"]
    errors = metadata["columns"]["errors"]["profile"]
    assert errors["values"] == metadata["row_count"] - metadata["columns"]["errors"]["null_count"]
    assert metadata["columns"]["errors"]["null_rate"] == pytest.approx(
        metadata["columns"]["errors"]["null_count"] / metadata["row_count"])
    assert metadata["columns"]["temperature"]["null_rate"] == 0.0


def test_a_stable_rebuild_passes_and_a_drifted_one_breaches(sensor_settings: Settings, tmp_path: Path) -> None:
    build(sensor_settings, sensor_events(seed=1))
    build(sensor_settings, sensor_events(seed=2))  # same distributions, other draws
    calm = pipeline.monitor(sensor_settings, ["sensor_health"])["views"][0]
    assert calm["ok"], calm["breaches"]
    assert calm["previous_build_id"] and calm["previous_build_id"] != calm["build_id"]
    assert all(f["drift"] is not None and not f["drifted"] for f in calm["features"])

    build(sensor_settings, sensor_events(seed=3, temperature_mean=26.0, ok_share=0.4, error_nulls=0.4))
    with pytest.raises(MonitorBreach) as raised:
        pipeline.monitor(sensor_settings, ["sensor_health"], report_dir=tmp_path / "report")
    message = str(raised.value)
    assert "temperature: drift psi" in message and "status: drift category_share" in message
    assert "errors: null rate" in message
    assert "errors: drift" not in message  # its own threshold (5.0) overrides the default

    document = json.loads((tmp_path / "report" / "monitor.json").read_text())  # written before raising
    view = document["views"][0]
    drifted = {f["feature"] for f in view["features"] if f["drifted"]}
    assert drifted == {"temperature", "status"}

    page = ChartParser.parse((tmp_path / "report" / "monitor.html").read_text())
    assert page.charts == ["freshness", "null-rate", "drift-temperature", "drift-status"]  # none for calm ones
    assert all(count > 0 for count in page.paths_per_chart)  # each SVG really draws something
    assert page.scripts == 0  # self-contained: opens without network

    metrics = (tmp_path / "report" / "monitor.prom").read_text()
    assert 'feast_feature_freshness_seconds{environment="local",feature_view="sensor_health_v1"}' in metrics
    assert 'feature_platform_feature_drift{environment="local",feature="temperature",feature_view=' \
           '"sensor_health_v1",measure="psi"}' in metrics
    assert 'feature_platform_monitor_breaches{environment="local",feature_view="sensor_health_v1"} 3.0' in metrics


def test_volume_and_staleness_breach(sensor_settings: Settings) -> None:
    build(sensor_settings, sensor_events(seed=1, end=AS_OF - timedelta(days=5)))
    build(sensor_settings, sensor_events(seed=1, devices=DEVICES[:100], end=AS_OF - timedelta(days=5)))
    view = pipeline.monitor(sensor_settings, fail_on_breach=False)["views"][0]
    breaches = " | ".join(view["breaches"])
    assert "stale: newest event" in breaches and "limit 3 days" in breaches
    assert "row count 2,000 -> 500" in breaches
    assert not any("drift" in b for b in view["breaches"])  # same distribution, fewer devices


def test_contract_thresholds_and_the_cli_exit_code(sensor_settings: Settings, tmp_path: Path) -> None:
    contract = sensor_contract(monitoring={"drift_threshold": 50.0, "category_share_threshold": 0.9,
                                           "max_null_rate_increase": 0.9})
    write_contract(sensor_settings.contracts_dir, contract)
    build(sensor_settings, sensor_events(seed=1))
    build(sensor_settings, sensor_events(seed=3, temperature_mean=26.0, ok_share=0.4, error_nulls=0.4))
    command = [sys.executable, "-m", "feature_platform.cli", "monitor", "--contracts",
               str(sensor_settings.contracts_dir), "--home", str(sensor_settings.home), "--env", "local"]
    relaxed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    write_contract(sensor_settings.contracts_dir, sensor_contract())  # default thresholds again
    strict = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert strict.returncode == 1 and "BREACH sensor_health_v1" in strict.stdout
    assert "temperature: drift psi" in strict.stdout


def test_the_online_store_lagging_the_latest_build_is_a_breach(tmp_path: Path) -> None:
    contracts = tmp_path / "contracts"
    shutil.copytree(CONTRACTS / "environments", contracts / "environments")
    write_contract(contracts, sensor_contract(online=True))
    settings = Settings.from_env(environ={}, contracts_dir=contracts, home=tmp_path / "home", env_name="local")
    build(settings, sensor_events(seed=1))
    pipeline.apply(settings)
    pipeline.materialize(settings)
    assert pipeline.monitor(settings, fail_on_breach=False)["views"][0]["ok"]
    build(settings, sensor_events(seed=2))  # promoted, not loaded
    view = pipeline.monitor(settings, fail_on_breach=False)["views"][0]
    assert [b for b in view["breaches"] if b.startswith("online serves build")]


def test_monitor_ignores_retired_versions_and_names_unknown_sets(sensor_settings: Settings) -> None:
    unbuilt = pipeline.monitor(sensor_settings, fail_on_breach=False)["views"][0]
    assert unbuilt["breaches"] == ["no promoted build of v1; run the DAG (or `featurectl build sensor_health "
                                   "--version 1`)"]
    build(sensor_settings, sensor_events(seed=1))
    with pytest.raises(Exception, match="no feature set named 'nope'"):
        pipeline.monitor(sensor_settings, ["nope"])
    write_contract(sensor_settings.contracts_dir, sensor_contract(status="retired"))
    assert pipeline.monitor(sensor_settings)["views"] == []


def test_schedule_interval_from_presets_and_cron() -> None:
    from feature_platform.environments import load_environment

    env = load_environment(CONTRACTS, "dev")
    assert monitoring.schedule_seconds(env) == 3600
    hourly = env.model_copy(update={"schedule": env.schedule.model_copy(update={"cron": "*/15 * * * *"})})
    assert monitoring.schedule_seconds(hourly) in (900, None)  # None only where croniter is absent
    assert datetime.now(UTC)  # the check itself never needs the network


class ChartParser(HTMLParser):
    """The charts of a monitor page: <figure data-chart=...> each holding an inline <svg> with drawn paths."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[str] = []
        self.paths_per_chart: list[int] = []
        self.scripts = 0
        self._in_svg = False

    @classmethod
    def parse(cls, text: str) -> ChartParser:
        parser = cls()
        parser.feed(text)
        return parser

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "figure" and dict(attrs).get("data-chart"):
            self.charts.append(str(dict(attrs)["data-chart"]))
            self.paths_per_chart.append(0)
        elif tag == "svg" and self.charts:
            self._in_svg = True
        elif tag in ("path", "use") and self._in_svg:
            self.paths_per_chart[-1] += 1
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._in_svg = False
