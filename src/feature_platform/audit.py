"""An append-only trail of definition changes, next to the registry: who changed which Feast objects, when, from
which contracts commit, and how the change classifies.

Every apply that changes the registry (views added or re-pointed at a new build, services, permissions, retired
versions removed), every rollback of a ``latest`` pointer and every retirement writes one entry, and so does every
offline read (`historical`, `export`: who took which build, PII masked or not) and every refused one. Entries
are never rewritten:

- file registry (``s3://bucket/feast/registry.db``): one object per entry under ``s3://bucket/feast/audit/``,
  keyed ``<UTC time>-<id>.json`` so listing is chronological (enable S3 Object Lock on that prefix to make
  it tamper-proof);
- SQL registry: rows of the table ``feature_platform_audit`` in the registry's database (grant the platform
  INSERT and SELECT only).

An apply is written ahead: its entry (``status: pending``) and a pending marker go in before the registry is
touched, and a ``confirmed`` entry follows the commit. Feast's SQL registry commits object by object, so a crash
(PostgreSQL killed, a pod evicted) can leave some objects changed; the next apply reconciles every pending
marker against the registry and records which of its changes landed, so no registry change is ever missing
from the trail.
"""

from __future__ import annotations

import getpass
import json
import socket
import uuid
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from feature_platform.environments import EnvironmentContract, FileRegistryConfig, Settings
from feature_platform.store import ObjectStore

AUDIT_DIR = "audit"
AUDIT_TABLE = "feature_platform_audit"
ACTOR_VARIABLE = "FEATURE_PLATFORM_ACTOR"  # set by the DAGs ("airflow:<dag>/<run>"); else user@host


def actor(settings: Settings) -> str:
    named = settings.values.get(ACTOR_VARIABLE)
    if named:
        return named
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (arbitrary container uid)
        user = "uid-unknown"
    return f"{user}@{socket.gethostname()}"


def _file_log(settings: Settings, env: EnvironmentContract, directory: str = AUDIT_DIR) -> ObjectStore:
    assert isinstance(env.registry, FileRegistryConfig)
    registry = settings.resolve_uri(env, env.registry.uri)
    parent = registry.rsplit("/", 1)[0] if registry.startswith("s3://") else str(PurePosixPath(registry).parent)
    return ObjectStore(f"{parent}/{directory}", settings.s3_endpoint_url)


def _engine(settings: Settings, env: EnvironmentContract) -> Any:
    from sqlalchemy import create_engine

    return create_engine(settings.require(env.registry.url_env, "the SQL registry's URL"))  # type: ignore[union-attr]


def _table(metadata: Any) -> Any:
    from sqlalchemy import Column, DateTime, String, Table, Text

    return Table(AUDIT_TABLE, metadata,
                 Column("id", String(64), primary_key=True), Column("at", DateTime(timezone=True), index=True),
                 Column("environment", String(64)), Column("action", String(32)), Column("feature_sets", Text),
                 Column("entry", Text))


def record(settings: Settings, env: EnvironmentContract, action: str, feature_sets: list[str],
           changes: list[dict[str, Any]], **detail: Any) -> dict[str, Any]:
    """Append one entry; returns it."""

    now = datetime.now(UTC)
    entry = {"id": uuid.uuid4().hex, "at": now.isoformat(), "environment": env.name, "action": action,
             "actor": actor(settings), "contracts_commit": settings.git_commit() or "unknown",
             "feature_sets": sorted(set(feature_sets)), "changes": changes, **detail}
    if isinstance(env.registry, FileRegistryConfig):
        stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
        _file_log(settings, env).write_json_atomic(f"{stamp}-{entry['id'][:12]}.json", entry)
    else:
        from sqlalchemy import MetaData

        engine = _engine(settings, env)
        try:
            table = _table(MetaData())
            table.create(engine, checkfirst=True)
            with engine.begin() as connection:
                connection.execute(table.insert().values(
                    id=entry["id"], at=now, environment=env.name, action=action,
                    feature_sets=",".join(entry["feature_sets"]), entry=json.dumps(entry, default=str)))
        finally:
            engine.dispose()
    return entry


# File registries: <registry dir>/audit-pending/<id>.json, beside the trail (whose prefix may be under S3 Object
# Lock: markers are deleted once confirmed); SQL: rows of PENDING_TABLE.
PENDING_DIR = "audit-pending"
PENDING_TABLE = "feature_platform_audit_pending"


def _pending_table(metadata: Any) -> Any:
    from sqlalchemy import Column, String, Table, Text

    return Table(PENDING_TABLE, metadata, Column("id", String(64), primary_key=True),
                 Column("environment", String(64)), Column("entry", Text))


def begin(settings: Settings, env: EnvironmentContract, action: str, feature_sets: list[str],
          changes: list[dict[str, Any]]) -> dict[str, Any]:
    """Write an entry ahead of a registry change: in the trail (``status: pending``) and as a pending marker."""
    entry = record(settings, env, action, feature_sets, changes, status="pending")
    if isinstance(env.registry, FileRegistryConfig):
        _file_log(settings, env, PENDING_DIR).write_json_atomic(f"{entry['id']}.json", entry)
    else:
        from sqlalchemy import MetaData

        engine = _engine(settings, env)
        try:
            table = _pending_table(MetaData())
            table.create(engine, checkfirst=True)
            with engine.begin() as connection:
                connection.execute(table.insert().values(id=entry["id"], environment=env.name,
                                                         entry=json.dumps(entry, default=str)))
        finally:
            engine.dispose()
    return entry


def confirm(settings: Settings, env: EnvironmentContract, pending: dict[str, Any], landed: list[dict[str, Any]],
            note: str = "") -> dict[str, Any]:
    """Record which changes of a pending entry are in the registry, then clear its marker."""
    entry = record(settings, env, "confirmed", pending["feature_sets"], landed, confirms=pending["id"],
                   **({"note": note} if note else {}))
    if isinstance(env.registry, FileRegistryConfig):
        _file_log(settings, env, PENDING_DIR).delete(f"{pending['id']}.json")
    else:
        from sqlalchemy import MetaData

        engine = _engine(settings, env)
        try:
            table = _pending_table(MetaData())
            with engine.begin() as connection:
                connection.execute(table.delete().where(table.c.id == pending["id"]))
        finally:
            engine.dispose()
    return entry


def pending(settings: Settings, env: EnvironmentContract) -> list[dict[str, Any]]:
    """Entries written ahead whose outcome was never recorded (the writer crashed), oldest first."""
    return sorted(_stored(settings, env, PENDING_DIR, PENDING_TABLE, _pending_table),
                  key=lambda e: (e["at"], e["id"]))


def read(settings: Settings, env: EnvironmentContract, feature_set: str | None = None) -> list[dict[str, Any]]:
    """The entries, oldest first (of one feature set when given)."""
    entries = sorted(_stored(settings, env, AUDIT_DIR, AUDIT_TABLE, _table), key=lambda e: (e["at"], e["id"]))
    return [e for e in _folded(entries) if feature_set is None or feature_set in e["feature_sets"]]


def _stored(settings: Settings, env: EnvironmentContract, directory: str, table_name: str,
            make_table: Any) -> list[dict[str, Any]]:
    """This environment's JSON entries: the objects of a directory beside a file registry, or the rows of a table
    in a SQL registry's database (none while it does not exist)."""
    if isinstance(env.registry, FileRegistryConfig):
        log = _file_log(settings, env, directory)
        return [json.loads(log.fs.cat_file(info.path)) for info in log.list_files("", ".json")]
    from sqlalchemy import MetaData, inspect, select

    engine = _engine(settings, env)
    try:
        if not inspect(engine).has_table(table_name):
            return []
        table = make_table(MetaData())
        with engine.connect() as connection:
            rows = connection.execute(select(table.c.entry).where(table.c.environment == env.name))
            return [json.loads(row[0]) for row in rows]
    finally:
        engine.dispose()


def _folded(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries as people read them: a written-ahead apply carries its outcome (``status``: ``applied``;
    ``interrupted`` with the objects that ``landed``; or still ``pending``) and its confirmation is not repeated.
    The stored trail itself is never rewritten."""
    confirmations = {e["confirms"]: e for e in entries if e["action"] == "confirmed"}
    out = []
    for entry in entries:
        if entry["action"] == "confirmed":
            continue
        confirmation = confirmations.get(entry["id"])
        if entry.get("status") == "pending" and confirmation is not None:
            landed = [c["object"] for c in confirmation["changes"]]
            complete = landed == [c["object"] for c in entry["changes"]]
            entry = {**entry, "status": "applied" if complete else "interrupted",
                     **({} if complete else {"landed": landed, "note": confirmation.get("note", "")})}
        out.append(entry)
    return out
