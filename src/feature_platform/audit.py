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
import socket
import uuid
from datetime import UTC, datetime
from typing import Any

from feature_platform.environments import EnvironmentContract, Settings
from feature_platform.registries import JsonLog, registry

AUDIT_LOG = "audit"  # a directory beside a file registry; the table feature_platform_audit in a SQL one
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


def record(settings: Settings, env: EnvironmentContract, action: str, feature_sets: list[str],
           changes: list[dict[str, Any]], **detail: Any) -> dict[str, Any]:
    """Append one entry; returns it."""

    now = datetime.now(UTC)
    entry = {"id": uuid.uuid4().hex, "at": now.isoformat(), "environment": env.name, "action": action,
             "actor": actor(settings), "contracts_commit": settings.git_commit() or "unknown",
             "feature_sets": sorted(set(feature_sets)), "changes": changes, **detail}
    _trail(settings, env).append(entry, f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{entry['id'][:12]}")
    return entry


# Pending markers beside the trail (whose prefix may be under S3 Object Lock: markers are deleted once confirmed).
PENDING_LOG = "audit-pending"


def _trail(settings: Settings, env: EnvironmentContract) -> JsonLog:
    return registry(settings, env).log(AUDIT_LOG)


def _markers(settings: Settings, env: EnvironmentContract) -> JsonLog:
    return registry(settings, env).log(PENDING_LOG, indexed=False)


def begin(settings: Settings, env: EnvironmentContract, action: str, feature_sets: list[str],
          changes: list[dict[str, Any]]) -> dict[str, Any]:
    """Write an entry ahead of a registry change: in the trail (``status: pending``) and as a pending marker."""
    entry = record(settings, env, action, feature_sets, changes, status="pending")
    _markers(settings, env).append(entry, entry["id"])
    return entry


def confirm(settings: Settings, env: EnvironmentContract, pending: dict[str, Any], landed: list[dict[str, Any]],
            note: str = "") -> dict[str, Any]:
    """Record which changes of a pending entry are in the registry, then clear its marker."""
    entry = record(settings, env, "confirmed", pending["feature_sets"], landed, confirms=pending["id"],
                   **({"note": note} if note else {}))
    _markers(settings, env).remove(pending["id"], pending["id"])
    return entry


def pending(settings: Settings, env: EnvironmentContract) -> list[dict[str, Any]]:
    """Entries written ahead whose outcome was never recorded (the writer crashed), oldest first."""
    return sorted(_markers(settings, env).entries(), key=lambda e: (e["at"], e["id"]))


def read(settings: Settings, env: EnvironmentContract, feature_set: str | None = None) -> list[dict[str, Any]]:
    """The entries, oldest first (of one feature set when given)."""
    entries = sorted(_trail(settings, env).entries(), key=lambda e: (e["at"], e["id"]))
    return [e for e in _folded(entries) if feature_set is None or feature_set in e["feature_sets"]]


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
