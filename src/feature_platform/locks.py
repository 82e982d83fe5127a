"""One writer at a time: for an environment's Feast registry, for each feature view's online rows, for pointers.

Feast's file registry is rewritten whole on every apply, so two concurrent applies would lose an update.

- Locally an ``flock`` serializes writers; the kernel drops it the moment its holder dies. The holder writes its
  name into the lock file so a waiter can say who it waits for.
- On S3 a lease object is created with a conditional PUT (``If-None-Match: *``), which S3 grants to exactly one
  writer. Leases are short (Settings.lease_seconds, default 60 s) and renewed by a heartbeat thread
  every third of that with ``If-Match: <etag>``, so a long materialization keeps its lease and a dead holder
  blocks others for at most one lease period. Expiry is judged by the object store's clock (the lease object's
  ``LastModified`` against the ``Date`` of the same response), never the waiter's: a writer whose clock runs
  ahead cannot steal a live lease. Takeover and release are conditional on the ETag, so a holder that lost its
  lease cannot delete its successor's; :meth:`Lease.check` (called before commits) fences a holder whose
  renewal failed.

The PostgreSQL (sql) registry is transactional and needs no lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from feature_platform.errors import LockTimeout, StoreError

DEFAULT_LEASE_SECONDS = 60
POLL_SECONDS = 0.5


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseLost(StoreError):
    """This writer's lease expired or was taken over: it must not write."""


@dataclass
class Lease:
    """What a holder gets: :meth:`check` raises once the lease can no longer be trusted."""

    uri: str
    etag: str = ""
    period: float | None = None  # None: held until released (a local flock)
    lost: str | None = None
    renewals: int = 0
    renewed_at: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def check(self) -> None:
        """Raise when the heartbeat reported a takeover, or when the last renewal is a whole period old (a
        holder paused or cut off: its lease may have lapsed and been taken, even if no beat could tell)."""
        if not self.lost and self.period and time.monotonic() - self.renewed_at > self.period:
            self.lost = f"not renewed for over {self.period:.0f}s"
        if self.lost:
            raise LeaseLost(f"lost the lease {self.uri}: {self.lost}; nothing more was written, re-run the command")


# ----------------------------------------------------------------------------------------------------- local


def _describe_local(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "another writer"
    return f"{holder.get('owner', '?')} (since {holder.get('taken_at', '?')})"


def _open_lock_file(path: Path) -> Any:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+")
    except OSError as exc:
        raise StoreError(f"cannot create the lock file {path}: {exc.strerror}; the work directory must be "
                         "writable (check permissions, a read-only mount or a full disk)") from exc


@contextmanager
def local_lock(path: Path, timeout: float) -> Iterator[Lease]:
    with _open_lock_file(path) as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"lock {path} is held by {_describe_local(path)} for over {timeout:.0f}s; it is "
                                      "released the moment that process ends: wait for it, or stop it") from None
                time.sleep(POLL_SECONDS)  # polling a lock, not synchronizing a test
        with contextlib.suppress(OSError):  # a read-only or full disk: the lock itself still holds
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"owner": _owner(), "taken_at": datetime.now(UTC).isoformat()}))
            handle.flush()
        try:
            yield Lease(str(path))
        finally:
            with contextlib.suppress(OSError):
                handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


# -------------------------------------------------------------------------------------------------------- S3


def _server_now(response: dict[str, Any]) -> datetime:
    """The object store's clock, from the Date header of one of its responses."""
    header = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    return parsedate_to_datetime(header) if header else datetime.now(UTC)


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


@dataclass
class _Holder:
    """The current lease object, as the store describes it."""

    etag: str
    owner: str
    taken_at: str
    expires: datetime
    expired: bool

    def describe(self) -> str:
        return (f"{self.owner} (taken at {self.taken_at}, expires {self.expires.isoformat(timespec='seconds')} "
                "by the store's clock unless renewed)")


def _read_holder(client: Any, bucket: str, key: str) -> _Holder | None:
    from botocore.exceptions import ClientError

    try:
        current = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _error_code(exc) in ("NoSuchKey", "404"):
            return None
        raise
    try:
        body = json.loads(current["Body"].read())
    except ValueError:
        body = {}
    period = float(body.get("lease_seconds", DEFAULT_LEASE_SECONDS))
    expires = current["LastModified"] + timedelta(seconds=period)
    return _Holder(current["ETag"], str(body.get("owner", "unknown")), str(body.get("taken_at", "?")), expires,
                   expires < _server_now(current))


def _heartbeat(client: Any, bucket: str, key: str, body: bytes, etag: str, period: int, handle: Lease) -> None:
    """Renew every period/3 with If-Match; mark the lease lost when it was replaced or could not be renewed in
    time (the store unreachable for a whole period: another writer may take it over)."""
    from botocore.exceptions import BotoCoreError, ClientError

    while not handle._stop.wait(period / 3):
        try:
            etag = client.put_object(Bucket=bucket, Key=key, Body=body, IfMatch=etag)["ETag"]
            handle.renewed_at = time.monotonic()
            handle.renewals += 1
            handle.etag = etag
        except ClientError as exc:
            if _error_code(exc) in ("PreconditionFailed", "NoSuchKey", "ConditionalRequestConflict", "404"):
                handle.lost = "another writer took it over after it expired"
                return
        except BotoCoreError:
            pass  # the store is unreachable: try again at the next beat
        if time.monotonic() - handle.renewed_at > period:
            handle.lost = f"not renewed for {period}s (object store unreachable)"
            return


@contextmanager
def s3_lock(uri: str, endpoint_url: str | None, timeout: float, period: int | None = None) -> Iterator[Lease]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    period = period or DEFAULT_LEASE_SECONDS
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=endpoint_url)
    body = json.dumps({"owner": _owner(), "taken_at": datetime.now(UTC).isoformat(timespec="seconds"),
                       "lease_seconds": period, "token": uuid.uuid4().hex}).encode()
    deadline = time.monotonic() + timeout
    holder: _Holder | None = None
    try:
        while True:
            try:
                etag = client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")["ETag"]
                break
            except ClientError as exc:
                if _error_code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise StoreError(f"cannot take the lock {uri}: {_error_code(exc) or exc}; check the bucket "
                                     "exists and this identity may write it") from exc
            holder = _read_holder(client, bucket, key)
            if holder is not None and holder.expired:
                # Its writer died (no renewal for a whole period): remove exactly that lease, then race for it.
                with contextlib.suppress(ClientError):
                    client.delete_object(Bucket=bucket, Key=key, IfMatch=holder.etag)
                continue
            if time.monotonic() > deadline:
                who = holder.describe() if holder else "another writer"
                raise LockTimeout(f"lock {uri} is held by {who}; waited {timeout:.0f}s. A dead holder's lease "
                                  f"lapses within {period}s; a live one is still working: wait for it")
            time.sleep(POLL_SECONDS)  # polling a lease, not synchronizing a test
    except (BotoCoreError, ConnectionError) as exc:
        raise StoreError(f"cannot reach the object store for the lock {uri}: {exc}; check FEAST_S3_ENDPOINT_URL "
                         "(or AWS_ENDPOINT_URL), the credentials and the network, then re-run") from exc
    handle = Lease(uri, etag, period)
    beat = threading.Thread(target=_heartbeat, args=(client, bucket, key, body, etag, period, handle),
                            name=f"lease-heartbeat {uri}", daemon=True)
    beat.start()
    try:
        yield handle
    finally:
        handle._stop.set()
        beat.join(timeout=period)
        # Only our own lease: if it lapsed and another writer took over, theirs stays. Unreachable store: the
        # lease lapses by itself within one period.
        with contextlib.suppress(ClientError, BotoCoreError):
            client.delete_object(Bucket=bucket, Key=key, IfMatch=handle.etag)


@contextmanager
def lease(uri: str, endpoint_url: str | None, timeout: float, period: int | None = None) -> Iterator[Lease]:
    """One holder at a time for ``uri``: an S3 lease object for s3:// URIs (renewed every ``period`` seconds;
    Settings.lease_seconds), an flock for local paths."""
    if uri.startswith("s3://"):
        with s3_lock(uri, endpoint_url, timeout, period) as held:
            yield held
    else:
        with local_lock(Path(uri), timeout) as held:
            yield held
