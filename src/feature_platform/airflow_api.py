"""A small client of Airflow 3's REST API (v2) for the proof: signs in and refreshes its token.

Airflow 3 API tokens expire (24 h by default), so a static bearer token breaks the proof a day after it is set.
The client signs in with a user (``POST /auth/token``, the auth manager's token endpoint), keeps the token,
and signs in again once when the API answers 401/403 (expired or rotated signing key).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote


class AirflowApiError(RuntimeError):
    """The API refused or failed a request; the message names the URL and the fix."""


@dataclass
class AirflowClient:
    url: str
    username: str | None = None
    password: str | None = None
    token: str | None = None  # a static token, used when no user is configured
    timeout: float = 10.0
    _signed_in: bool = field(default=False, repr=False)

    @classmethod
    def from_settings(cls, values: dict[str, str]) -> AirflowClient:
        return cls(url=values["FEATURE_PLATFORM_AIRFLOW_URL"].rstrip("/"),
                   username=values.get("FEATURE_PLATFORM_AIRFLOW_USERNAME") or None,
                   password=values.get("FEATURE_PLATFORM_AIRFLOW_PASSWORD") or None,
                   token=values.get("FEATURE_PLATFORM_AIRFLOW_TOKEN") or None)

    def _send(self, request: urllib.request.Request) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def sign_in(self) -> None:
        if not (self.username and self.password):
            return
        body = json.dumps({"username": self.username, "password": self.password}).encode()
        request = urllib.request.Request(f"{self.url}/auth/token", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        status, payload = self._send(request)
        if status not in (200, 201):
            raise AirflowApiError(f"Airflow at {self.url} refused the sign-in of {self.username!r} (HTTP {status}): "
                                  "check FEATURE_PLATFORM_AIRFLOW_USERNAME/PASSWORD in the credentials Secret")
        self.token = json.loads(payload)["access_token"]
        self._signed_in = True

    def get(self, path: str) -> tuple[int, Any]:
        """(status, JSON body) of ``GET <url><path>``, signing in first and once more on 401/403."""
        if self.username and not self._signed_in:
            self.sign_in()
        for attempt in (1, 2):
            request = urllib.request.Request(f"{self.url}{path}")
            if self.token:
                request.add_header("Authorization", f"Bearer {self.token}")
            status, payload = self._send(request)
            if status in (401, 403) and attempt == 1 and self.username:
                self.sign_in()  # the token expired or the signing key rotated
                continue
            if status in (401, 403):
                raise AirflowApiError(f"Airflow at {self.url} answered HTTP {status} for {path}: give the proof "
                                      "an API user (FEATURE_PLATFORM_AIRFLOW_USERNAME/PASSWORD) allowed to read "
                                      "DAG runs")
            return status, json.loads(payload) if payload else None
        raise AssertionError("unreachable")

    def last_dag_run(self, dag_id: str) -> dict[str, Any]:
        """The newest run of a DAG, or {} when it has none (or is not parsed yet)."""
        status, body = self.get(f"/api/v2/dags/{quote(dag_id)}/dagRuns?order_by=-run_after&limit=1")
        if status == 404:
            return {}
        if status != 200:
            raise AirflowApiError(f"Airflow at {self.url} answered HTTP {status} for the runs of {dag_id}: {body}")
        runs = body.get("dag_runs", [])
        return runs[0] if runs else {}
