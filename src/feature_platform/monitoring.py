"""Monitoring from what builds and materializations record: freshness, volume, null rates and drift per view.

Every complete build's ``metadata.json`` carries row and entity counts, per-column null counts and min/max, and
per feature a distribution summary (percentiles for numbers and timestamps, the most frequent values for
strings and bools; see ``build.profile_columns``). :func:`monitor` compares the build each version's ``latest``
points at with the build before it, against the contract's ``monitoring`` thresholds:

- **freshness**: newest event time vs ``monitoring.max_staleness`` (default: the TTL), and the age of the newest
  build vs the environment's schedule (two missed runs is a breach), and the online store serving that build;
- **volume**: relative row count change (``max_row_count_change``);
- **null rate**: the rise of each feature's null share (``max_null_rate_increase``);
- **drift**: PSI over the previous build's deciles for numbers (``drift_threshold``), the largest change of a
  category's share for strings and bools (``category_share_threshold``); per-feature overrides in
  ``features[].monitoring``.

Nothing here reads feature data: the figures come from the recorded summaries, so monitoring a 5M-row view
costs a few small JSON reads.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from feature_platform import build as builds
from feature_platform.contracts import FeatureSetContract, parse_duration
from feature_platform.environments import EnvironmentContract, Settings
from feature_platform.errors import MonitorBreach, PointerMissingError
from feature_platform.store import ObjectStore, write_files_atomic

HISTORY = 10  # builds per version shown in the report's plots
PSI_FLOOR = 1e-4  # share floor in PSI's logarithm (an empty bin is "very rare", not infinitely surprising)
SCHEDULE_SECONDS = {"@hourly": 3600, "@daily": 86400, "@weekly": 7 * 86400, "@monthly": 31 * 86400,
                    "@yearly": 366 * 86400, "@annually": 366 * 86400}
REPORT_PREFIX = "_monitor"  # under the object store root; never a feature set name (those start with a letter)


@dataclass
class FeatureFigures:
    feature: str
    dtype: str
    null_rate: float
    previous_null_rate: float | None = None
    drift_measure: str = ""  # "psi", "category_share", or for arrays "psi_l2_norm" / "psi_length"
    drift: float | None = None
    drift_threshold: float | None = None
    drifted: bool = False
    mean: float | None = None
    previous_mean: float | None = None


@dataclass
class ViewReport:
    feature_set: str
    feature_view: str
    build_id: str
    previous_build_id: str | None
    row_count: int
    previous_row_count: int | None
    entity_count: int
    event_time_max: str
    freshness_seconds: float
    max_staleness_seconds: int
    build_age_seconds: float
    max_build_age_seconds: int | None
    online_build_id: str | None
    online: bool
    features: list[FeatureFigures] = field(default_factory=list)
    breaches: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # older -> newer: build_id, generated_at, figures
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # feature -> {previous, newest} summaries

    @property
    def ok(self) -> bool:
        return not self.breaches

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document.pop("profiles")
        for name in ("freshness_seconds", "build_age_seconds"):  # JSON has no infinity: unknown is null
            if not math.isfinite(document[name]):
                document[name] = None
        document["ok"] = self.ok
        return document


# ------------------------------------------------------------------------------------------------- measures


def cdf(quantiles: list[float], x: np.ndarray) -> np.ndarray:
    """Share of values <= x, from a build's percentiles (p0..p100): the largest percentile not above x."""
    q = np.asarray(quantiles, dtype=float)
    steps = len(q) - 1
    below = np.searchsorted(q, x, side="right")  # how many percentiles are <= x
    return np.clip((below - 1) / steps, 0.0, 1.0) * (below > 0)


def psi(reference: list[float], current: list[float], bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``, both given as percentiles, over the
    reference's deciles (the usual 10 bins; fewer when values repeat). 0.1 is a shift, 0.2 a drift."""
    if not reference or not current:
        return 0.0
    q = np.asarray(reference, dtype=float)
    edges = np.unique(q[np.linspace(0, len(q) - 1, bins + 1).round().astype(int)[1:-1]])
    if edges.size == 0:
        edges = np.unique(q[:1])
    points = np.concatenate([edges, [np.inf]])
    expected = np.diff(np.concatenate([[0.0], cdf(reference, points)]))
    actual = np.diff(np.concatenate([[0.0], cdf(current, points)]))
    expected = np.clip(expected, PSI_FLOOR, None)
    actual = np.clip(actual, PSI_FLOOR, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def category_shares(profile: dict[str, Any]) -> dict[str, float]:
    total = profile.get("values") or 0
    if not total:
        return {}
    shares = {str(value): count / total for value, count in profile.get("top_values", [])}
    other = 1.0 - sum(shares.values())
    if other > 1e-12:
        shares["(other)"] = other
    return shares


def category_share_change(reference: dict[str, Any], current: dict[str, Any]) -> float:
    """The largest absolute change of one category's share (a category absent on one side has share 0)."""
    before, after = category_shares(reference), category_shares(current)
    return max((abs(after.get(k, 0.0) - before.get(k, 0.0)) for k in before.keys() | after.keys()), default=0.0)


# --------------------------------------------------------------------------------------------------- monitor


def schedule_seconds(env: EnvironmentContract) -> int | None:
    """The schedule's interval: presets, or the gap between a cron expression's next two runs."""
    cron = env.schedule.cron
    if cron in SCHEDULE_SECONDS:
        return SCHEDULE_SECONDS[cron]
    try:
        from croniter import croniter

        runs = croniter(cron, datetime.now(UTC))
        first = runs.get_next(datetime)
        return int((runs.get_next(datetime) - first).total_seconds())
    except Exception:  # unknown preset or croniter missing: no schedule-based check
        return None


def _null_rate(metadata: dict[str, Any], feature: str) -> float:
    rows = metadata.get("row_count") or 0
    nulls = (metadata.get("columns", {}).get(feature) or {}).get("null_count") or 0
    return nulls / rows if rows else 0.0


def _profile(metadata: dict[str, Any], feature: str) -> dict[str, Any]:
    return (metadata.get("columns", {}).get(feature) or {}).get("profile") or {}


def _span(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds))) if math.isfinite(seconds) else "unknown"


def _age(now: datetime, stamp: str | None) -> float:
    if not stamp:
        return math.inf
    when = datetime.fromisoformat(stamp)
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return max(0.0, (now - when).total_seconds())


def compare_builds(contract: FeatureSetContract, newest: dict[str, Any], previous: dict[str, Any] | None
                   ) -> tuple[list[FeatureFigures], list[str]]:
    """Per-feature figures of ``newest`` against ``previous`` and the breaches among them."""
    limits = contract.monitoring
    figures, breaches = [], []
    if previous is not None and previous.get("row_count"):
        change = abs(newest["row_count"] - previous["row_count"]) / previous["row_count"]
        if change > limits.max_row_count_change:
            breaches.append(f"row count {previous['row_count']:,} -> {newest['row_count']:,} "
                            f"({change:+.0%} > {limits.max_row_count_change:.0%})")
    for feature in contract.features:
        own = feature.monitoring
        rate = _null_rate(newest, feature.name)
        figure = FeatureFigures(feature.name, feature.dtype, rate, mean=_profile(newest, feature.name).get("mean"))
        figures.append(figure)
        if previous is None:
            continue
        figure.previous_null_rate = _null_rate(previous, feature.name)
        figure.previous_mean = _profile(previous, feature.name).get("mean")
        rise_limit = own.max_null_rate_increase if own and own.max_null_rate_increase is not None \
            else limits.max_null_rate_increase
        if rate - figure.previous_null_rate > rise_limit:
            breaches.append(f"{feature.name}: null rate {figure.previous_null_rate:.1%} -> {rate:.1%} "
                            f"(rise > {rise_limit:.1%})")
        before, after = _profile(previous, feature.name), _profile(newest, feature.name)
        if not before or not after:
            continue  # a build from before profiles were recorded
        if after.get("kind") == "categorical":
            figure.drift_measure = "category_share"
            figure.drift = category_share_change(before, after)
            default = limits.category_share_threshold
        else:  # numbers by their percentiles; arrays by their L2 norm's (or length's) percentiles
            figure.drift_measure = f"psi_{after['measure']}" if after.get("kind") == "array" else "psi"
            figure.drift = psi(before.get("quantiles", []), after.get("quantiles", []))
            default = limits.drift_threshold
        figure.drift_threshold = own.drift_threshold if own and own.drift_threshold is not None else default
        figure.drifted = figure.drift > figure.drift_threshold and not (own and own.ignore_drift)
        if figure.drifted:
            breaches.append(f"{feature.name}: drift {figure.drift_measure} {figure.drift:.3f} > "
                            f"{figure.drift_threshold}")
    return figures, breaches


def monitor_view(store: ObjectStore, env: EnvironmentContract, contract: FeatureSetContract,
                 listed: list[dict[str, Any]], now: datetime) -> ViewReport:
    from feature_platform.materialization import read_marker

    pointer = builds.read_pointer(store, contract.name, contract.version_label)
    complete = [b for b in listed if b["complete"] and b.get("version") == contract.version_label]
    newest = next((b for b in complete if b["build_id"] == pointer["build_id"]), None)
    if newest is None:
        newest = builds.read_metadata(store, contract, pointer["build_id"])
        complete.append(newest)
    older = [b for b in complete if (b.get("generated_at") or "") < (newest.get("generated_at") or "")
             and b["build_id"] != newest["build_id"]]
    previous = older[-1] if older else None
    figures, breaches = compare_builds(contract, newest, previous)
    staleness = parse_duration(contract.monitoring.max_staleness) if contract.monitoring.max_staleness \
        else contract.ttl_seconds
    freshness = _age(now, newest.get("event_time_max"))
    if freshness > staleness:
        breaches.insert(0, f"stale: newest event {newest.get('event_time_max')} is {_span(freshness)}"
                           f" old (limit {timedelta(seconds=staleness)})")
    interval = schedule_seconds(env)
    build_age = _age(now, pointer.get("promoted_at") or newest.get("generated_at"))
    max_build_age = 2 * interval if interval else None
    if max_build_age is not None and build_age > max_build_age:
        breaches.insert(0, f"no new build for {_span(build_age)} (schedule {env.schedule.cron}: "
                           "two runs missed)")
    marker = read_marker(store, contract) if contract.online else {}
    online_build = marker.get("build_id")
    if contract.online and online_build != newest["build_id"]:
        breaches.append(f"online serves build {online_build or 'none'}, latest is {newest['build_id']}; run "
                        "`featurectl materialize`")
    history = []
    for build in [*older[-(HISTORY - 1):], newest]:
        history.append({"build_id": build["build_id"], "generated_at": build.get("generated_at"),
                        "row_count": build.get("row_count"), "event_time_max": build.get("event_time_max"),
                        "lag_seconds": _age(datetime.fromisoformat(build["generated_at"]),
                                            build.get("event_time_max")) if build.get("generated_at") else None,
                        "null_rates": {f.name: _null_rate(build, f.name) for f in contract.features}})
    profiles = {f.name: {"previous": _profile(previous, f.name) if previous else {},
                         "newest": _profile(newest, f.name)} for f in contract.features}
    return ViewReport(contract.name, contract.feature_view_name, newest["build_id"],
                      previous["build_id"] if previous else None, newest["row_count"],
                      previous["row_count"] if previous else None, newest.get("entity_count", 0),
                      newest.get("event_time_max", ""), freshness, staleness, build_age, max_build_age,
                      online_build, contract.online, figures, breaches, history, profiles)


def monitor(settings: Settings, feature_sets: list[str] | None = None, now: datetime | None = None
            ) -> list[ViewReport]:
    """One report per live contract version (of ``feature_sets``, default all)."""
    env = settings.environment()
    contracts = settings.contracts()
    for name in feature_sets or []:
        contracts.get(name)  # a clear error for an unknown name
    store = settings.object_store(env)
    now = now or datetime.now(UTC)
    reports = []
    for name in feature_sets or contracts.names():
        listed = builds.list_builds(store, name)
        for contract in contracts.live_versions(name):
            try:
                reports.append(monitor_view(store, env, contract, listed, now))
            except PointerMissingError:  # never promoted: a breach to report, not a crash hiding the others
                reports.append(ViewReport(contract.name, contract.feature_view_name, "", None, 0, None, 0, "",
                                          math.inf, contract.ttl_seconds, math.inf, None, None, contract.online,
                                          breaches=[f"no promoted build of {contract.version_label}; run the DAG "
                                                    f"(or `featurectl build {contract.name} --version "
                                                    f"{contract.version}`)"]))
    return reports


# ------------------------------------------------------------------------------------------------ exporting


def prometheus_text(reports: list[ViewReport], env: str) -> str:
    """The figures as Prometheus gauges (text format), for the node exporter's textfile collector or a
    Pushgateway. Feast's name where one exists (feast_feature_freshness_seconds)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    labels = ["environment", "feature_view"]
    freshness = Gauge("feast_feature_freshness_seconds", "Seconds since the newest event time of the latest build",
                      labels, registry=registry)
    rows = Gauge("feature_platform_build_rows", "Rows in the latest build", labels, registry=registry)
    entities = Gauge("feature_platform_build_entities", "Entities in the latest build", labels, registry=registry)
    build_age = Gauge("feature_platform_build_age_seconds", "Seconds since the latest build was promoted", labels,
                      registry=registry)
    breaches = Gauge("feature_platform_monitor_breaches", "Thresholds crossed in the last monitor run", labels,
                     registry=registry)
    nulls = Gauge("feature_platform_feature_null_rate", "Null share per feature in the latest build",
                  [*labels, "feature"], registry=registry)
    drift = Gauge("feature_platform_feature_drift", "Drift vs the previous build (PSI or category share change)",
                  [*labels, "feature", "measure"], registry=registry)
    last = Gauge("feature_platform_monitor_last_run_timestamp_seconds", "When the monitor last ran", ["environment"],
                 registry=registry)
    for report in reports:
        key = (env, report.feature_view)
        freshness.labels(*key).set(report.freshness_seconds)
        rows.labels(*key).set(report.row_count)
        entities.labels(*key).set(report.entity_count)
        build_age.labels(*key).set(report.build_age_seconds)
        breaches.labels(*key).set(len(report.breaches))
        for figure in report.features:
            nulls.labels(*key, figure.feature).set(figure.null_rate)
            if figure.drift is not None:
                drift.labels(*key, figure.feature, figure.drift_measure).set(figure.drift)
    last.labels(env).set(datetime.now(UTC).timestamp())
    return generate_latest(registry).decode()


def push_metrics(text: str, gateway: str, env: str) -> None:
    """Send the gauges to a Prometheus Pushgateway (batch jobs have no scrape endpoint)."""
    import urllib.request

    request = urllib.request.Request(f"{gateway.rstrip('/')}/metrics/job/feature_platform_monitor/environment/{env}",
                                     data=text.encode(), method="PUT",
                                     headers={"Content-Type": "text/plain; version=0.0.4"})
    with urllib.request.urlopen(request, timeout=10):
        pass


# --------------------------------------------------------------------------------------------------- report


def _svg(figure: Any) -> str:
    import io

    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # inline: drop the XML prolog and DOCTYPE


def _figure(title: str) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.2, 2.4), dpi=100)
    axes.set_title(title, fontsize=9)
    axes.tick_params(labelsize=7)
    return figure, axes


def plot_freshness(report: ViewReport) -> str:
    """Event-time lag (build time minus newest event) over the builds, against the staleness limit."""
    figure, axes = _figure(f"{report.feature_view}: freshness over builds")
    points = [(i, h["lag_seconds"] / 3600) for i, h in enumerate(report.history) if h["lag_seconds"] is not None]
    if points:
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="lag at build (h)")
    axes.axhline(report.max_staleness_seconds / 3600, color="red", linestyle="--", linewidth=1, label="limit (h)")
    axes.set_xticks(range(len(report.history)), [h["build_id"][:6] for h in report.history], fontsize=6)
    axes.legend(fontsize=6)
    return _svg(figure)


def plot_null_rates(report: ViewReport) -> str:
    figure, axes = _figure(f"{report.feature_view}: null rate over builds")
    for feature in report.features:
        axes.plot(range(len(report.history)), [h["null_rates"].get(feature.feature, 0.0) for h in report.history],
                  marker=".", label=feature.feature)
    axes.set_xticks(range(len(report.history)), [h["build_id"][:6] for h in report.history], fontsize=6)
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=6)
    return _svg(figure)


def plot_drift(report: ViewReport, figure_: FeatureFigures) -> str:
    """Previous vs newest distribution: percentiles (as a CDF) for numbers, category shares otherwise."""
    profiles = report.profiles[figure_.feature]
    figure, axes = _figure(f"{report.feature_view}.{figure_.feature}: {figure_.drift_measure} "
                           f"{figure_.drift:.3f}")
    if figure_.drift_measure.startswith("psi"):
        for label, profile in (("previous", profiles["previous"]), ("newest", profiles["newest"])):
            quantiles = profile.get("quantiles") or []
            axes.plot(quantiles, np.linspace(0, 1, len(quantiles)), label=label)
        axes.set_ylabel("share <= x", fontsize=7)
    else:
        before, after = category_shares(profiles["previous"]), category_shares(profiles["newest"])
        names = sorted(before.keys() | after.keys(), key=lambda k: -max(before.get(k, 0), after.get(k, 0)))[:12]
        x = np.arange(len(names))
        axes.bar(x - 0.2, [before.get(n, 0) for n in names], 0.4, label="previous")
        axes.bar(x + 0.2, [after.get(n, 0) for n in names], 0.4, label="newest")
        axes.set_xticks(x, names, rotation=30, fontsize=6)
    axes.legend(fontsize=6)
    return _svg(figure)


def _table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _rows(report: ViewReport) -> list[list[str]]:
    rows = [["feature", "null rate", "previous", "drift", "threshold", "drifted"]]
    for f in report.features:
        rows.append([f.feature, f"{f.null_rate:.2%}",
                     "" if f.previous_null_rate is None else f"{f.previous_null_rate:.2%}",
                     "" if f.drift is None else f"{f.drift_measure} {f.drift:.3f}",
                     "" if f.drift_threshold is None else str(f.drift_threshold), "yes" if f.drifted else ""])
    return rows


def render_markdown(reports: list[ViewReport], env: str, now: datetime) -> str:
    lines = [f"# Feature monitoring: {env}", "", f"Run at {now.isoformat()}.", ""]
    for r in reports:
        lines += [f"## {r.feature_view}: {'OK' if r.ok else 'BREACH'}", "",
                  f"- build {r.build_id} ({r.row_count:,} rows, {r.entity_count:,} entities), previous "
                  f"{r.previous_build_id or 'none'}",
                  f"- newest event {r.event_time_max}, {_span(r.freshness_seconds)} old "
                  f"(limit {timedelta(seconds=r.max_staleness_seconds)})",
                  f"- online: {r.online_build_id or 'not loaded'}" if r.online else "- offline only", ""]
        lines += [f"- **{b}**" for b in r.breaches] + ([""] if r.breaches else [])
        lines += [_table(_rows(r)), ""]
    return "\n".join(lines)


def render_html(reports: list[ViewReport], env: str, now: datetime) -> str:
    """One self-contained page (inline SVG, no scripts, no network): a freshness and a null-rate chart per view
    and one drift chart per drifting feature."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Feature monitoring: {e(env)}</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}.breach{color:#b00}.ok{color:#070}"
             "figure{display:inline-block;margin:4px}</style></head><body>",
             f"<h1>Feature monitoring: {e(env)}</h1><p>Run at {e(now.isoformat())}.</p>"]
    for r in reports:
        state = "ok" if r.ok else "breach"
        parts.append(f"<section id='{e(r.feature_view)}'><h2 class='{state}'>{e(r.feature_view)}: "
                     f"{'OK' if r.ok else 'BREACH'}</h2>")
        parts.append(f"<p>build {e(r.build_id)}: {r.row_count:,} rows, {r.entity_count:,} entities; previous "
                     f"{e(r.previous_build_id or 'none')}; newest event {e(r.event_time_max)}</p>")
        if r.breaches:
            parts.append("<ul>" + "".join(f"<li class='breach'>{e(b)}</li>" for b in r.breaches) + "</ul>")
        head, *body = _rows(r)
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body)
                     + "</table>")
        charts = [("freshness", plot_freshness(r)), ("null-rate", plot_null_rates(r))] if r.history else []
        charts += [(f"drift-{f.feature}", plot_drift(r, f)) for f in r.features if f.drifted]
        parts += [f"<figure class='chart' data-chart='{e(kind)}'>{svg}</figure>" for kind, svg in charts]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(reports: list[ViewReport], env: str, directory: Path, now: datetime | None = None
                 ) -> dict[str, Path]:
    """monitor.json (figures), monitor.md and monitor.html (with plots) in ``directory``."""
    now = now or datetime.now(UTC)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "monitor.json", "markdown": directory / "monitor.md",
             "html": directory / "monitor.html"}
    # All or nothing: a full disk leaves the previous good report whole.
    write_files_atomic({
        paths["json"]: json.dumps({"environment": env, "at": now.isoformat(), "views": [r.as_dict() for r in reports]},
                                  indent=2, default=str),
        paths["markdown"]: render_markdown(reports, env, now),
        paths["html"]: render_html(reports, env, now)})
    return paths


def publish_report(store: ObjectStore, paths: dict[str, Path], feature_set: str | None) -> list[str]:
    """Keep the report next to the builds (pods have no lasting disk): _monitor/<feature set|all>/monitor.*."""
    published = []
    for path in paths.values():
        key = f"{REPORT_PREFIX}/{feature_set or 'all'}/{path.name}"
        store.write_bytes_atomic(key, path.read_bytes())
        published.append(store.url(key))
    return published


def breach_error(reports: list[ViewReport]) -> MonitorBreach | None:
    bad = [r for r in reports if not r.ok]
    if not bad:
        return None
    return MonitorBreach("monitoring thresholds crossed: " + "; ".join(
        f"{r.feature_view}: {', '.join(r.breaches)}" for r in bad))
