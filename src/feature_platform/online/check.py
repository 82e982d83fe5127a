"""A deployed feature server answers: what `helm test` runs (`featurectl check-server --url ...`).

Calls ``/health``, then one ``/get-online-features`` per online feature set (newest version, every feature, one
probe entity) and checks the response has Feast's shape: every requested feature, one value and status each.
A probe entity may be unknown (a fresh environment serves ``NOT_FOUND``); a wrong shape or an error is not.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from feature_platform.contracts import ContractSet

PROBE = {"string": "feature-platform-probe", "int64": -1, "int32": -1}


def _call(url: str, body: dict[str, Any] | None = None, timeout: float = 10, token: str | None = None
          ) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")[:300]


def check_server(url: str, contracts: ContractSet, token: str | None = None) -> list[str]:
    """Problems found (empty: the server works), each naming the request that failed. ``token``: the platform's
    own team token where the environment requires one."""
    url = url.rstrip("/")
    try:
        status, _ = _call(f"{url}/health")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return [f"{url}/health unreachable: {exc}; is the feature server running and this pod labelled as a client?"]
    if status != 200:
        return [f"{url}/health answered HTTP {status}"]
    problems = []
    for name in contracts.names():
        live = contracts.live_versions(name)
        if not live or not live[-1].online:
            continue
        contract = live[-1]
        features = [f"{contract.feature_view_name}:{f.name}" for f in contract.features]
        body = {"features": features, "entities": {key: [PROBE[dtype]] for key, dtype in contract.key_dtypes.items()}}
        status, answer = _call(f"{url}/get-online-features", body, token=token)
        if status != 200:
            problems.append(f"{contract.feature_view_name}: /get-online-features answered HTTP {status}: {answer}")
            continue
        names = answer.get("metadata", {}).get("feature_names", [])
        results = answer.get("results", [])
        expected = [*contract.join_keys, *(f.name for f in contract.features)]
        if names != expected or any(len(r.get("values", [])) != 1 or len(r.get("statuses", [])) != 1
                                    for r in results) or len(results) != len(expected):
            problems.append(f"{contract.feature_view_name}: response does not have Feast's shape "
                            f"(feature_names {names}, expected {expected})")
    return problems
