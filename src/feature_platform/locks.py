"""One writer at a time: for an environment's Feast registry, and for each feature view's online rows.

Feast's file registry is rewritten whole on every apply, so two concurrent applies would lose an update.
Locally an ``flock`` serializes writers; on S3 a lease object is created with a conditional PUT
(``If-None-Match: *``), which S3 grants to exactly one writer. A lease past its expiry (a crashed writer) is
taken over. The PostgreSQL (sql) registry is transactional and needs no lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from feature_platform.errors import LockTimeout, StoreError

LEASE_SECONDS = 900
POLL_SECONDS = 0.5


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def local_lock(path: Path, timeout: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"lock {path} is held by another writer for over {timeout:.0f}s; "
                                      "wait for it or find the stuck process") from None
                time.sleep(POLL_SECONDS)  # polling a lock, not synchronizing a test
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def s3_lock(uri: str, endpoint_url: str | None, timeout: float, lease_seconds: int = LEASE_SECONDS) -> Iterator[None]:
    import boto3
    from botocore.exceptions import ClientError

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=endpoint_url)
    body = json.dumps({"owner": _owner(), "expires_at": time.time() + lease_seconds,
                       "taken_at": datetime.now(UTC).isoformat()}).encode()
    deadline = time.monotonic() + timeout
    while True:
        try:
            etag = client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")["ETag"]
            break
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise StoreError(f"cannot take the lock {uri}: {exc}") from exc
        _expire_stale_lease(client, bucket, key)
        if time.monotonic() > deadline:
            raise LockTimeout(f"lock {uri} is held by another writer for over {timeout:.0f}s; "
                              "wait, or delete the object if its owner is gone")
        time.sleep(POLL_SECONDS)  # polling a lease, not synchronizing a test
    try:
        yield
    finally:
        # Only our own lease: if it expired and another writer took over, theirs stays.
        with contextlib.suppress(ClientError):
            client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)


def _expire_stale_lease(client: object, bucket: str, key: str) -> None:
    """Delete a lease whose writer died (expiry passed), only if it is still the same lease (ETag match)."""
    from botocore.exceptions import ClientError

    try:
        current = client.get_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
        lease = json.loads(current["Body"].read())
        if float(lease.get("expires_at", 0)) < time.time():
            client.delete_object(Bucket=bucket, Key=key, IfMatch=current["ETag"])  # type: ignore[attr-defined]
    except (ClientError, ValueError):
        pass  # gone meanwhile, or replaced: try again


@contextmanager
def lease(uri: str, endpoint_url: str | None, timeout: float) -> Iterator[None]:
    """One holder at a time for ``uri``: an S3 lease object for s3:// URIs, an flock for local paths."""
    if uri.startswith("s3://"):
        with s3_lock(uri, endpoint_url, timeout):
            yield
    else:
        with local_lock(Path(uri), timeout):
            yield
