"""The platform's feature server: Feast's HTTP API, served from Feast's Redis layout through the planner.

``POST /get-online-features`` takes the body ``feast serve`` takes (``features`` or ``feature_service``,
``entities``, ``full_feature_names``) and answers in its shape (``metadata.feature_names``, ``results`` with
``values``, ``statuses``, ``event_timestamps``), so Feast's ``remote`` online store and existing callers work
unchanged. Differences, on purpose: the view's TTL is enforced (``OUTSIDE_MAX_AGE``, null value; Feast 0.67
does not, feast issue 6821), an unknown entity's event timestamp is null (Feast says 1970-01-01), and a null
timestamp feature is null (Feast says -9223372036854775808).

The catalog (one :class:`~feature_platform.online.layout.ViewPlan` per feature view, the feature services) is
built from Feast's registry in the background every ``cache_ttl_seconds``, never on the request path. Requests
the planner cannot serve (on-demand views, non-scalar types, an online store other than Redis) go through
Feast's own ``get_online_features``.

A raw ASGI app (no framework) on uvicorn with uvloop and httptools, JSON by msgspec; Redis reads are one
synchronous pipeline per request on the event loop (sub-millisecond; a thread hop cost more than it saved).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec

from feature_platform.contracts import DTYPE_OF_FEAST_TYPE
from feature_platform.errors import AccessDenied
from feature_platform.governance import ANONYMOUS, PII_READERS_TAG, PII_TAG, Caller, caller_from_bearer, may_read
from feature_platform.online import reader
from feature_platform.online.layout import FeaturePlan, ViewPlan, parse_entity_values, plan_view

log = logging.getLogger("feature_platform.server")

EPOCH = "1970-01-01T00:00:00Z"
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RequestError(Exception):
    """An answer other than 200. Errors Feast's own server raises as a ``FeastError`` (unknown objects,
    permissions, failures) answer as it does, a JSON string of ``{module, class, message}`` that Feast's
    ``remote`` client turns back into that exception; a malformed request answers as FastAPI (which Feast's
    server runs on) does, ``{"detail": ...}``."""

    # Feast's exception class (in feast.errors) per status, where Feast has one.
    FEAST_CLASSES: ClassVar[dict[int, str]] = {401: "FeastPermissionError", 403: "FeastPermissionError",
                                               500: "FeastError", 501: "FeastError", 503: "FeastError"}

    def __init__(self, status: int, detail: str, feast_class: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail
        self.feast_class = feast_class or self.FEAST_CLASSES.get(status)

    def body(self) -> bytes:
        if self.feast_class is None:
            return _encoder.encode({"detail": self.detail})
        detail = _encoder.encode({"module": "feast.errors", "class": self.feast_class, "message": self.detail})
        return _encoder.encode(detail.decode())


# ---------------------------------------------------------------------------------------------- the catalog


@dataclass(frozen=True)
class Catalog:
    """What the registry says, planned: built in the background, swapped whole."""

    views: dict[str, ViewPlan] = field(default_factory=dict)
    unplannable: dict[str, str] = field(default_factory=dict)  # view -> why Feast's path serves it
    services: dict[str, list[tuple[str, list[str]]]] = field(default_factory=dict)  # -> [(view, features)]
    loaded_at: float = 0.0
    # Access: the registry's Permission objects, the views and services they protect, and per view the PII
    # features with the teams that may read them; decisions are cached per (resource, team) until the refresh.
    permissions: list[Any] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    pii: dict[str, tuple[frozenset[str], frozenset[str]]] = field(default_factory=dict)
    decisions: dict[tuple[str, str | None], tuple[bool, str]] = field(default_factory=dict)
    builds: dict[str, str] = field(default_factory=dict)  # view -> the build the registry serves
    # Views whose online store does not record the served build as completely loaded (a load under way or
    # interrupted, a restored snapshot): reads of them are flagged, never passed off as settled.
    unfinished: frozenset[str] = frozenset()


def _feast_dtype(field_: Any) -> str | None:
    return DTYPE_OF_FEAST_TYPE.get(str(field_.dtype))


def build_catalog(store: Any) -> Catalog:
    """Plan every feature view and feature service of the store's project from its registry."""
    registry, project = store.registry, store.project
    registry.refresh(project)
    entities = {e.name: e for e in registry.list_entities(project, allow_cache=True)}
    views: dict[str, ViewPlan] = {}
    unplannable: dict[str, str] = {}
    for view in registry.list_feature_views(project, allow_cache=True):
        join_keys: list[str] = [entities[name].join_key for name in view.entities if name in entities]
        types = {f.name: _feast_dtype(f) for f in view.features}
        key_types = {f.name: _feast_dtype(f) for f in view.entity_columns}
        if not join_keys or any(key_types.get(k) not in ("int64", "int32", "string") for k in join_keys):
            unplannable[view.name] = "the planner serves int64, int32 and string join keys"
            continue
        if None in types.values():
            unplannable[view.name] = "a feature type the planner does not encode"
            continue
        ttl = int(view.ttl.total_seconds()) if view.ttl else 0
        views[view.name] = plan_view(project, view.name, {k: key_types[k] or "string" for k in join_keys},
                                     view.batch_source.timestamp_field if view.batch_source else "", ttl,
                                     [(f.name, types[f.name] or "") for f in view.features])  # None: refused above
    for view in registry.list_on_demand_feature_views(project, allow_cache=True):
        unplannable[view.name] = "on-demand feature view"
    feature_services = registry.list_feature_services(project, allow_cache=True)
    services = {s.name: [(p.name_to_use(), [f.name for f in p.features]) for p in s.feature_view_projections]
                for s in feature_services}
    permissions = registry.list_permissions(project, allow_cache=True)
    resources = {v.name: v for v in registry.list_feature_views(project, allow_cache=True)}
    resources.update({s.name: s for s in feature_services})
    pii = {}
    for permission in permissions:
        features = permission.tags.get(PII_TAG, "")
        if features and permission.name.endswith("_readers"):
            teams = permission.tags.get(PII_READERS_TAG, "")
            pii[permission.name.removesuffix("_readers")] = (frozenset(features.split(",")),
                                                            frozenset(filter(None, teams.split(","))))
    builds = {v.name: v.tags.get("feature_platform.build_id", "")  # online views: only they are materialized
              for v in registry.list_feature_views(project, allow_cache=True) if v.online}
    return Catalog(views=views, unplannable=unplannable, services=services, loaded_at=time.time(),
                   permissions=permissions, resources=resources, pii=pii, builds=builds)


class OnlineAccess:
    """Who may read what online (see governance.py): the caller from the request's bearer token, Feast's
    decision on the catalog's Permission objects, and where the environment denies by default, PII features
    only for their pii_readers."""

    TOKEN_CACHE = 4096  # verified tokens kept (a signature check per request would cost ~30 µs)

    def __init__(self, default: str, key: bytes | None, env: Any) -> None:
        self.default, self.key, self.env = default, key, env
        self._verified: dict[str, tuple[Caller, float]] = {}

    def caller(self, authorization: str | None) -> Caller:
        cached = self._verified.get(authorization) if authorization else None
        if cached is not None and cached[1] > time.time():
            return cached[0]
        try:
            caller = caller_from_bearer(self.env, self.key, authorization)
        except AccessDenied as exc:
            raise RequestError(exc.status, str(exc)) from None
        if authorization and caller.authenticated:
            if len(self._verified) >= self.TOKEN_CACHE:
                self._verified.clear()
            self._verified[authorization] = (caller, caller.expires_at)
        return caller

    def check(self, catalog: Catalog, request: OnlineRequest, caller: Caller) -> None:
        if request.feature_service:
            targets = [request.feature_service]
            groups = catalog.services.get(request.feature_service, [])
        else:
            groups_: dict[str, list[str]] = {}
            for ref in request.features:
                view, _, feature = ref.partition(":")
                groups_.setdefault(view, []).append(feature)
            groups = list(groups_.items())
            targets = [view for view, _ in groups]
        for name in targets:
            allowed, why = self._decide(catalog, name, caller)
            if not allowed:
                raise RequestError(403, f"{caller.describe()} may not read {name}: {why}")
        if self.default != "deny":
            return
        for view, features in groups:
            pii_features, teams = catalog.pii.get(view, (frozenset(), frozenset()))
            hidden = sorted(pii_features.intersection(features))
            if hidden and caller.team not in teams:
                raise RequestError(403, f"{caller.describe()} may not read the PII feature(s) {', '.join(hidden)} of "
                                        f"{view}: ask the owner to add the team to access.pii_readers")

    def _decide(self, catalog: Catalog, name: str, caller: Caller) -> tuple[bool, str]:
        key = (name, caller.team)
        decision = catalog.decisions.get(key)
        if decision is None:
            resource = catalog.resources.get(name)
            if resource is None:
                decision = (True, "")  # unknown names get their 404 from resolve()
            elif not catalog.permissions:
                decision = (self.default == "allow", "no permissions are registered; run `featurectl apply`")
            else:
                decision = may_read(catalog.permissions, caller, resource, online=True)
            catalog.decisions[key] = decision
        return decision


# ------------------------------------------------------------------------------------------------- metrics


class Metrics:
    """Feast's metric names where they exist, in a registry of the server's own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.latency = Histogram("feast_feature_server_request_latency_seconds", "Request latency in seconds",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.requests = Counter("feast_online_features_request_total", "Online feature retrieval requests",
                                registry=self.registry)
        self.entities = Histogram("feast_online_features_entity_count", "Entity rows per online request",
                                  registry=self.registry, buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000))
        self.statuses = Counter("feast_online_features_status_total",
                                "Feature values by retrieval status per feature view (null rate, not found)",
                                ["feature_view", "status"], registry=self.registry)
        self.errors = Counter("feature_platform_server_errors_total", "Failed requests by HTTP status",
                              ["status"], registry=self.registry)
        self.freshness = Gauge("feast_feature_freshness_seconds",
                               "Seconds since the newest event time served per feature view",
                               ["feature_view"], registry=self.registry)
        self.unfinished = Gauge("feature_platform_online_load_unfinished",
                                "1 while the online store does not hold the served build completely",
                                ["feature_view"], registry=self.registry)
        self.pushes = Counter("feast_push_request_total", "Total push requests to the feature store",
                              ["push_source", "mode"], registry=self.registry)
        self.push_latency = Histogram("feature_platform_push_latency_seconds", "Accepted pushes: seconds from "
                                      "request to durable write", ["mode"], registry=self.registry,
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.pushed_rows = Counter("feature_platform_pushed_rows_total", "Rows accepted by pushes",
                                   ["push_source", "mode"], registry=self.registry)
        self.unfinished_reads = Counter("feature_platform_unfinished_load_reads_total",
                                        "Requests that read a view whose online load is unfinished",
                                        ["feature_view"], registry=self.registry)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ------------------------------------------------------------------------------------------------ requests


class OnlineRequest(msgspec.Struct, forbid_unknown_fields=False):
    entities: dict[str, list[Any]]
    features: list[str] = []
    feature_service: str | None = None
    full_feature_names: bool = False


class PushRequest(msgspec.Struct, forbid_unknown_fields=False):
    """Feast's ``POST /push`` body (``allow_registry_cache`` and ``transform_on_write`` are accepted and moot)."""

    push_source_name: str
    df: dict[str, list[Any]]
    to: str = "online"


class WriteRequest(msgspec.Struct, forbid_unknown_fields=False):
    """Feast's ``POST /write-to-online-store`` body (what Feast's ``remote`` client sends)."""

    feature_view_name: str
    df: dict[str, list[Any]]


_decoder = msgspec.json.Decoder(OnlineRequest)
_push_decoder = msgspec.json.Decoder(PushRequest)
_write_decoder = msgspec.json.Decoder(WriteRequest)


def parse_body(decoder: Any, body: bytes) -> Any:
    """A request body decoded, or the 400/422 that says what is wrong with it."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise RequestError(422, f"invalid request body: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise RequestError(422, f"the body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the body is not UTF-8: byte {exc.start} is invalid; send JSON in UTF-8") from None
    except RecursionError:
        raise RequestError(400, "the body's JSON is nested too deeply; columns and entities are lists of values"
                           ) from None


_encoder = msgspec.json.Encoder()


def parse_request(body: bytes) -> OnlineRequest:
    request: OnlineRequest = parse_body(_decoder, body)
    if not request.features and not request.feature_service:
        raise RequestError(422, "features: give `features` (\"view:feature\", ...) or `feature_service`")
    lengths = {len(v) for v in request.entities.values()}
    if len(lengths) > 1:
        raise RequestError(422, "entities: every entity column must have the same number of values")
    return request


def resolve(catalog: Catalog, request: OnlineRequest) -> list[tuple[str, list[str]]] | None:
    """[(view, [feature, ...])] in request order, or None when Feast's own path must answer."""
    if request.feature_service:
        if request.feature_service not in catalog.services:
            raise RequestError(404, f"feature_service: no feature service named {request.feature_service!r}",
                               "FeatureServiceNotFoundException")
        groups = catalog.services[request.feature_service]
    else:
        order: dict[str, list[str]] = {}
        for ref in request.features:
            view, sep, feature = ref.partition(":")
            if not sep or not feature:
                raise RequestError(422, f"features: {ref!r} is not \"view:feature\"")
            order.setdefault(view, []).append(feature)
        groups = list(order.items())
    for view, features in groups:
        if view in catalog.unplannable:
            return None
        plan = catalog.views.get(view)
        if plan is None:
            raise RequestError(404, f"features: no feature view named {view!r}", "FeatureViewNotFoundException")
        known = {f.name for f in plan.features}
        for feature in features:
            if feature not in known:
                raise RequestError(404, f"features: feature view {view!r} has no feature {feature!r}",
                                   "FeastObjectNotFoundException")
    return list(groups)


_ts_cache: dict[int, str] = {}


def format_timestamp(micros: int | None) -> str | None:
    """RFC 3339 with Feast's adaptive precision; null for an entity that was not found."""
    if micros is None:
        return None
    text = _ts_cache.get(micros)
    if text is None:
        seconds, rest = divmod(micros, 1_000_000)
        base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        text = base + ("Z" if rest == 0 else f".{rest // 1000:03d}Z" if rest % 1000 == 0 else f".{rest:06d}Z")
        if len(_ts_cache) > 100_000:
            _ts_cache.clear()
        _ts_cache[micros] = text
    return text


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return value


class FeatureServer:
    """The request logic, independent of the ASGI plumbing (and so testable in-process)."""

    def __init__(self, client: Any, catalog_loader: Callable[[], Catalog], refresh_seconds: float,
                 feast_fallback: Callable[[OnlineRequest], dict[str, Any]] | None = None,
                 enforce_ttl: bool = True, access: OnlineAccess | None = None) -> None:
        self.client = client
        self.access = access
        self.catalog_loader = catalog_loader
        self.refresh_seconds = refresh_seconds
        self.feast_fallback = feast_fallback
        self.enforce_ttl = enforce_ttl
        self.catalog: Catalog | None = None
        # Writes pushed rows (push.push for the named source or view); None: this server accepts no pushes.
        self.pusher: Callable[[str, dict[str, list[Any]], str, Caller, bool], Any] | None = None
        # Records {(team, feature set, view, to): (pushes, rows)} in the audit trail; None: not recorded.
        self.push_auditor: Callable[[dict[tuple[str, str, str, str], tuple[int, int]]], None] | None = None
        self._push_counts: dict[tuple[str, str, str, str], tuple[int, int]] = {}
        self._push_lock = threading.Lock()
        self.metrics = Metrics()
        self._status_counters: dict[tuple[str, str], Any] = {}
        self._latency: dict[str, Any] = {}
        self._stop = threading.Event()

    # -- catalog refresh, never on the request path
    def load_catalog(self) -> None:
        catalog = self.catalog_loader()
        for view in catalog.builds:
            self.metrics.unfinished.labels(view).set(1 if view in catalog.unfinished else 0)
        self.catalog = catalog

    def start_refresh(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.refresh_seconds):
                try:
                    self.load_catalog()
                except Exception as exc:  # keep serving the last good catalog
                    log.warning("registry refresh failed, serving the previous catalog: %s", exc)
                self.flush_push_audit()

        threading.Thread(target=loop, name="registry-refresh", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.flush_push_audit()

    def flush_push_audit(self) -> None:
        """Pushes since the last flush, as counts per team and feature set, into the audit trail (one entry per
        feature set and refresh interval, never one per push, and never values)."""
        with self._push_lock:
            counts, self._push_counts = self._push_counts, {}
        if counts and self.push_auditor is not None:
            try:
                self.push_auditor(counts)
            except Exception as exc:  # the trail's store is down: keep the counts for the next flush
                log.warning("recording pushes in the audit trail failed, will retry: %s", exc)
                with self._push_lock:
                    for key, (pushes, rows) in counts.items():
                        before = self._push_counts.get(key, (0, 0))
                        self._push_counts[key] = (before[0] + pushes, before[1] + rows)

    # -- reads
    def get_online_features(self, request: OnlineRequest, authorization: str | None = None) -> dict[str, Any]:
        return self.read(request, authorization)[0]

    def read(self, request: OnlineRequest, authorization: str | None = None, arrow: bool = False
             ) -> tuple[Any, list[str]]:
        """The answer (Feast's JSON body as a dict; with ``arrow``, an Arrow IPC stream), and the views read whose
        online load is unfinished (the app names them in a header)."""
        catalog = self.catalog
        if catalog is None:
            raise RequestError(503, "the registry is not loaded yet")
        if self.access is not None:
            self.access.check(catalog, request, self.access.caller(authorization))
        groups = resolve(catalog, request)  # unknown names are a 404 on every store, before any read
        unfinished = [view for view, _ in groups or () if view in catalog.unfinished]
        for view in unfinished:
            self.metrics.unfinished_reads.labels(view).inc()
        return self._answer(catalog, request, groups, arrow), unfinished

    def _answer(self, catalog: Catalog, request: OnlineRequest, groups: list[tuple[str, list[str]]] | None,
                arrow: bool = False) -> Any:
        # Every view's keys, checked on every store (Feast's path would read a missing key as NOT_FOUND and
        # fail on a wrong type with its own words): present, and each value of the key's type.
        parsed: dict[tuple[str, str], list[Any]] = {}
        for view, _ in groups or ():
            plan = catalog.views[view]
            for key, dtype in zip(plan.join_keys, plan.key_dtypes, strict=True):
                if key not in request.entities:
                    given = ", ".join(request.entities) or "none"
                    raise RequestError(422, f"entities: {view} is keyed by {' + '.join(plan.join_keys)}; the "
                                            f"entity column {key!r} is missing (given: {given})")
                if (key, dtype) not in parsed:
                    try:
                        parsed[(key, dtype)] = parse_entity_values(dtype, request.entities[key])
                    except ValueError as exc:
                        raise RequestError(422, f"entities.{key}: {exc}") from exc
        if groups is None or self.client is None:
            if arrow:
                raise RequestError(406, "an Arrow answer needs the platform's planned read (a Redis online store "
                                        "and plannable views); ask for JSON (Accept: application/json)")
            if self.feast_fallback is None:
                raise RequestError(501, "this request needs Feast's path, which is not configured")
            return self.feast_fallback(request)
        rows = len(next(iter(request.entities.values()), []))
        queued = []
        for view, features in groups:
            plan = catalog.views[view]
            columns = [parsed[key] for key in zip(plan.join_keys, plan.key_dtypes, strict=True)]
            wanted = [plan.feature(f) for f in features]
            queued.append((plan, wanted, reader.plan_reads(plan, wanted, plan.entity_ids(columns))))
        replies = reader.fetch_shared(self.client, [reads for _, _, reads in queued])
        now = reader.now_micros()
        if arrow:
            return self._arrow_answer(request, parsed, queued, replies, now)
        names = list(request.entities)
        results = [{"values": list(column), "statuses": ["PRESENT"] * rows, "event_timestamps": [EPOCH] * rows}
                   for column in request.entities.values()]
        for (plan, wanted, reads), view_replies in zip(queued, replies, strict=True):
            read = reader.decode_reads(plan, wanted, reads.order, view_replies, now, self.enforce_ttl)
            stamps = [format_timestamp(m) for m in read.event_micros]
            newest = max((m for m in read.event_micros if m is not None), default=None)
            if newest is not None:
                self.metrics.freshness.labels(plan.view).set(max(0.0, (now - newest) / 1e6))
            for feature, values, statuses in zip(wanted, read.values, read.statuses, strict=True):
                names.append(f"{plan.view}__{feature.name}" if request.full_feature_names else feature.name)
                if feature.dtype in ("float32", "float64") and not all(map(math.isfinite, filter(None, values))):
                    values = [_json_value(v) for v in values]
                counts = Counter(statuses)
                for status, count_ in counts.items():  # the metric keeps NULL_VALUE apart: the view's null rate
                    self._status_counter(plan.view, status).inc(count_)
                if reader.NULL_VALUE in counts:  # on the wire, as Feast: a null in a found row is PRESENT
                    statuses = [reader.PRESENT if s == reader.NULL_VALUE else s for s in statuses]
                results.append({"values": values, "statuses": statuses, "event_timestamps": stamps})
        self.metrics.requests.inc()
        self.metrics.entities.observe(rows)
        return {"metadata": {"feature_names": names}, "results": results}

    def _arrow_answer(self, request: OnlineRequest, parsed: dict[tuple[str, str], list[Any]], queued: list[Any],
                      replies: list[list[Any]], now: int) -> bytes:
        """The answer as an Arrow IPC stream of one record batch: the entity columns, then per feature its
        values (the contract's type: an embedding is a list<float> column, no JSON text), ``<name>__status``
        and ``<name>__event_timestamp``; names as in Feast's JSON (full names when asked). Statuses and nulls
        follow the JSON answer's rules."""
        import pyarrow as pa

        from feature_platform.build import ARROW_TYPES
        from feature_platform.online.layout import decode_arrow

        columns: dict[str, pa.Array] = {}
        typed = {key: dtype for key, dtype in parsed}
        for name, values in request.entities.items():
            columns[name] = (pa.array(parsed[(name, typed[name])], ARROW_TYPES[typed[name]]) if name in typed
                             else pa.array(values))
        stamp_type = pa.timestamp("us", tz="UTC")
        for (plan, wanted, reads), view_replies in zip(queued, replies, strict=True):
            stamps, base = reader.row_statuses(plan, view_replies, now, self.enforce_ttl)
            served = [s is reader.PRESENT for s in base]
            order = pa.array(reads.order, pa.int64())  # distinct replies -> the requested rows
            event = pa.array(stamps, pa.int64()).cast(stamp_type).take(order)
            statuses = pa.array(base).take(order)  # on the wire, as Feast: a null in a found row is PRESENT
            for j, feature in enumerate(wanted):
                raws = [reply[j] if keep else None for reply, keep in zip(view_replies, served, strict=True)]
                distinct = decode_arrow(feature.dtype, raws)
                name = f"{plan.view}__{feature.name}" if request.full_feature_names else feature.name
                columns[name] = distinct.take(order)
                columns[f"{name}__status"] = statuses
                columns[f"{name}__event_timestamp"] = event
                valid = distinct.is_valid().to_pylist()
                counts = Counter(reader.NULL_VALUE if base[i] is reader.PRESENT and not valid[i] else base[i]
                                 for i in reads.order)  # per requested row, as the JSON path counts
                for status, count_ in counts.items():
                    self._status_counter(plan.view, status).inc(count_)
        self.metrics.requests.inc()
        self.metrics.entities.observe(len(next(iter(request.entities.values()), [])))
        table = pa.table(columns)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    def push(self, name: str, df: dict[str, list[Any]], to: str, authorization: str | None,
             by_view: bool = False) -> dict[str, Any]:
        """``POST /push`` (``name``: a push source) or ``POST /write-to-online-store`` (``by_view``: a feature
        view, online only): all or nothing; 422 names the column and row, 404 an unknown name, 401/403 a caller
        who may not write."""
        from feature_platform.errors import AccessDenied, NotFound
        from feature_platform.push import PushRejected

        if self.pusher is None:
            raise RequestError(404, "this server accepts no pushes")
        caller = self.access.caller(authorization) if self.access is not None else ANONYMOUS
        started = time.perf_counter()
        try:
            result = self.pusher(name, df, to, caller, by_view)
        except NotFound as exc:
            raise RequestError(404, str(exc), "FeatureViewNotFoundException" if by_view else None) from None
        except AccessDenied as exc:
            raise RequestError(exc.status, str(exc)) from None
        except PushRejected as exc:
            raise RequestError(422, str(exc)) from None
        key = (caller.team or "anonymous", result.feature_set, result.feature_view, to)
        with self._push_lock:
            pushes, rows = self._push_counts.get(key, (0, 0))
            self._push_counts[key] = (pushes + 1, rows + result.rows)
        self.metrics.pushes.labels(name, to).inc()
        self.metrics.pushed_rows.labels(name, to).inc(result.rows)
        self.metrics.push_latency.labels(to).observe(time.perf_counter() - started)
        return {"feature_view": result.feature_view, "rows": result.rows, "to": result.to,
                "written_online": result.written_online, "skipped_older": result.skipped_older,
                "recorded_offline": result.recorded is not None}

    def observe_latency(self, path: str, seconds: float) -> None:
        histogram = self._latency.get(path)
        if histogram is None:
            known = path in ("/get-online-features", "/health", "/metrics", "/push", "/write-to-online-store")
            histogram = self._latency[path] = self.metrics.latency.labels(path if known else "other")
        histogram.observe(seconds)

    def _status_counter(self, view: str, status: str) -> Any:
        key = (view, status)
        counter = self._status_counters.get(key)
        if counter is None:
            counter = self._status_counters[key] = self.metrics.statuses.labels(view, status)
        return counter

    def health(self) -> bool:
        if self.catalog is None:
            return False
        if self.client is not None:
            self.client.ping()
        return True


# --------------------------------------------------------------------------------------------- ASGI plumbing


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


MAX_BODY_BYTES = 16 * 1024 * 1024  # a request larger than this is a 413
DRAIN_BODY_BYTES = 8 * MAX_BODY_BYTES  # a larger body is answered without being read to its end


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            # Read (and drop) the rest before answering, up to a bound: closing on unread data resets the
            # connection, and a client still sending would see the reset instead of the 413.
            while message.get("more_body") and size <= DRAIN_BODY_BYTES:
                message = await receive()
                size += len(message.get("body", b""))
            raise RequestError(413, f"the body is over {MAX_BODY_BYTES // (1024 * 1024)} MiB; send fewer entities "
                                    "per request")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


UNFINISHED_HEADER = b"x-feature-platform-load-unfinished"
ARROW_STREAM = "application/vnd.apache.arrow.stream"


async def _respond(send: Send, status: int, body: bytes, content_type: bytes = b"application/json",
                   extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            *(extra_headers or [])]})
    await send({"type": "http.response.body", "body": body})


class App:
    """ASGI application around a :class:`FeatureServer`."""

    def __init__(self, server: FeatureServer, startup: Callable[[], None] | None = None) -> None:
        self.server = server
        self.startup = startup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        started = time.perf_counter()
        server = self.server
        try:
            if path == "/get-online-features" and method == "POST":
                request = parse_request(await _read_body(receive))
                # Feast's JSON body by default; an Arrow IPC stream for clients that ask (embeddings: no text).
                arrow = ARROW_STREAM in (_header(scope, b"accept") or "")
                try:
                    answer, unfinished = server.read(request, _header(scope, b"authorization"), arrow)
                except reader_errors() as exc:
                    raise RequestError(503, f"online store unavailable: {type(exc).__name__}: {exc}") from exc
                # A view whose online load is unfinished is named in a header.
                extra = [(UNFINISHED_HEADER, ",".join(unfinished).encode())] if unfinished else []
                if arrow:
                    await _respond(send, 200, answer, ARROW_STREAM.encode(), extra_headers=extra)
                else:
                    await _respond(send, 200, _encoder.encode(answer), extra_headers=extra)
            elif path in ("/push", "/write-to-online-store") and method == "POST":
                body = await _read_body(receive)
                if path == "/push":
                    pushed = parse_body(_push_decoder, body)
                    name, df, to, by_view = pushed.push_source_name, pushed.df, pushed.to, False
                else:
                    written = parse_body(_write_decoder, body)
                    name, df, to, by_view = written.feature_view_name, written.df, "online", True
                authorization = _header(scope, b"authorization")
                try:
                    if to == "online":  # a Redis round trip, run on the loop as reads are (no thread hop)
                        answer = server.push(name, df, to, authorization, by_view)
                    else:  # the object store's write may take long: off the loop
                        answer = await asyncio.get_running_loop().run_in_executor(
                            None, server.push, name, df, to, authorization, by_view)
                except reader_errors() as exc:
                    raise RequestError(503, f"online store unavailable: {type(exc).__name__}: {exc}") from exc
                await _respond(send, 200, _encoder.encode(answer))
            elif path == "/health" and method == "GET":
                try:
                    ok = server.health()
                except reader_errors():
                    ok = False
                await _respond(send, 200 if ok else 503, b'{"status":"ok"}' if ok else b'{"status":"unavailable"}')
            elif path == "/metrics" and method == "GET":
                await _respond(send, 200, server.metrics.render(), b"text/plain; version=0.0.4")
            else:
                raise RequestError(404, f"no route {method} {path}; see POST /get-online-features, POST /push, "
                                        "GET /health")
        except RequestError as exc:
            server.metrics.errors.labels(str(exc.status)).inc()
            await _respond(send, exc.status, exc.body())
        except Exception as exc:  # a bug, not the caller's mistake: answer, count and log it, keep serving
            log.exception("unexpected error on %s %s", method, path)
            server.metrics.errors.labels("500").inc()
            await _respond(send, 500, RequestError(500, f"internal error: {type(exc).__name__}").body())
        finally:
            server.observe_latency(path, time.perf_counter() - started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.startup is not None:
                        await asyncio.get_running_loop().run_in_executor(None, self.startup)
                    await send({"type": "lifespan.startup.complete"})
                except Exception as exc:
                    log.error("feature server failed to start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
            elif message["type"] == "lifespan.shutdown":
                self.server.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def reader_errors() -> tuple[type[BaseException], ...]:
    from feature_platform.online.redis_client import unavailable_errors

    return unavailable_errors()


# ------------------------------------------------------------------------------------------ from settings


def create_app() -> App:
    """The app for the environment named by the process environment (what `featurectl serve` sets); uvicorn
    calls this in each worker."""
    from feature_platform.startup import skip_feast_typechecks

    skip_feast_typechecks()  # before feast_bridge imports Feast
    from feature_platform import feast_bridge
    from feature_platform.environments import Settings
    from feature_platform.online.stores import load_unfinished, online_store

    settings = Settings.from_env()
    env = settings.environment()
    timeout = float(settings.values.get("FEATURE_PLATFORM_SERVER_REDIS_TIMEOUT", "1.0"))
    enforce_ttl = settings.values.get("FEATURE_PLATFORM_SERVER_ENFORCE_TTL", "true").lower() != "false"
    store = feast_bridge.open_store(settings, env)
    backend = online_store(settings, env, socket_timeout=timeout)
    client = backend.redis_client()

    def load() -> Catalog:
        catalog = build_catalog(store)
        records = backend.records(env.feast_project)  # one read for every view
        unfinished = {view for view, build_id in catalog.builds.items() if load_unfinished(records.get(view),
                                                                                           build_id)}
        return dataclasses.replace(catalog, unfinished=frozenset(unfinished))

    def fallback(request: OnlineRequest) -> dict[str, Any]:
        from feast.feature_server_utils import convert_response_to_dict

        features: Any = (store.get_feature_service(request.feature_service) if request.feature_service
                         else request.features)
        rows = len(next(iter(request.entities.values()), []))
        entity_rows = [{k: v[i] for k, v in request.entities.items()} for i in range(rows)]
        try:
            response = store.get_online_features(features=features, entity_rows=entity_rows,
                                                 full_feature_names=request.full_feature_names)
        except Exception as exc:
            raise RequestError(422, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                               ) from exc
        return convert_response_to_dict(response.proto)

    from feature_platform.governance import token_key

    access = OnlineAccess(env.access.default, token_key(settings, env), env)  # a named, missing key: no start
    server = FeatureServer(client, load, max(env.registry.cache_ttl_seconds, 1), fallback, enforce_ttl, access)

    checked: list[Any] = [0.0, None]  # when the contracts were last looked up, and what they were

    def current_contracts() -> Any:
        """The contracts, looked up at most once a second (each lookup stats every contract file)."""
        if checked[1] is None or time.monotonic() - checked[0] > 1.0:
            checked[:] = [time.monotonic(), settings.contracts()]
        return checked[1]

    def pusher(name: str, df: dict[str, list[Any]], to: str, caller: Caller, by_view: bool) -> Any:
        from feature_platform import push

        contracts = current_contracts()  # re-read only when the mounted files change
        if by_view:
            contract = push.find_pushable_view(contracts, name)
            df = push.feast_write_columns(contract, df)
        else:
            contract = push.find_push_source(contracts, name)
        return push.push(settings, env, contract, df, to, caller, store, backend)

    server.pusher = pusher

    def audit_pushes(counts: dict[tuple[str, str, str, str], tuple[int, int]]) -> None:
        from feature_platform.push import record_pushes

        record_pushes(settings, env, counts)

    server.push_auditor = audit_pushes

    def startup() -> None:
        """Ready only when warm: registry planned, Redis answering, one planned read done."""
        server.load_catalog()
        if client is not None:
            client.ping()
            catalog = server.catalog
            assert catalog is not None
            for plan in list(catalog.views.values())[:1]:
                reader.read_view(client, plan, [_warm_key(plan)])
        server.start_refresh()
        # Feast's imports leave some 150,000 long-lived objects the collector tracks: frozen, a full collection
        # no longer walks them in the middle of a request (a p99 spike of milliseconds).
        gc.freeze()

    return App(server, startup)


def _warm_key(plan: ViewPlan) -> Any:
    values = tuple("" if dtype == "string" else 0 for dtype in plan.key_dtypes)
    return values if plan.composite else values[0]


def serve_argv(host: str, port: int, workers: int, graceful_seconds: int = 20) -> list[str]:
    """uvicorn's command line for the server (uvloop + httptools). No worker recycling: `feast serve`'s
    --max-requests stalls a request every N; workers live until shutdown, which drains in-flight requests."""
    return ["uvicorn", "feature_platform.online.server:create_app", "--factory", "--host", host, "--port", str(port),
            "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning", "--timeout-graceful-shutdown", str(graceful_seconds), "--lifespan", "on"]


__all__ = ["App", "Catalog", "FeaturePlan", "FeatureServer", "build_catalog", "create_app", "serve_argv"]
