"""Airflow Notifiers used by the Airflow tests, configured through FEATURE_PLATFORM_NOTIFIERS exactly as a
deployment configures Slack's (class path + kwargs + events)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airflow.sdk import BaseNotifier


class RepairSourceOnRetry(BaseNotifier):
    """Record what `latest` was when the build failed, then put the raw table back so the retry can succeed."""

    def __init__(self, record: str, backup: str) -> None:
        super().__init__()
        self.record, self.backup = Path(record), Path(backup)

    def notify(self, context: Any) -> None:
        from feature_platform import build, pipeline
        from feature_platform.environments import Settings

        settings = Settings.from_env()
        env = settings.environment()
        store = pipeline.object_store(settings, env)
        try:
            pointer: dict | None = build.read_pointer(store, "customer_profile")
        except build.PointerMissingError:
            pointer = None
        calls = json.loads(self.record.read_text()) if self.record.exists() else []
        calls.append({"task": context["ti"].task_id, "latest": pointer})
        self.record.write_text(json.dumps(calls))
        raw = pipeline.raw_store(settings, env)
        for path in sorted(self.backup.glob("*.parquet")):
            raw.upload(path, f"customers/{path.name}")


class RecordFailure(BaseNotifier):
    """Append the failed task's id to a file: the stand-in for a Slack message."""

    def __init__(self, record: str) -> None:
        super().__init__()
        self.record = Path(record)

    def notify(self, context: Any) -> None:
        with self.record.open("a") as out:
            out.write(f"{context['ti'].task_id}\n")
