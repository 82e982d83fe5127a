"""One object-store interface over a local directory and S3, through fsspec.

The same code path serves ``local`` (a directory, the embedded default) and dev/prod (S3, or any S3 API such as
moto's server in tests). Small JSON documents (pointers, metadata) are written in one PUT on S3 and with
write-to-temp + rename locally, so a reader sees the old or the new document, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec

from feature_platform.errors import StoreError


def s3_filesystem(endpoint_url: str | None) -> fsspec.AbstractFileSystem:
    """An s3fs filesystem; ``endpoint_url`` for S3-compatible servers. Credentials come from the usual AWS chain."""
    try:
        import s3fs
    except ImportError as exc:  # a known failure: s3fs is in no Feast extra
        raise StoreError("s3fs is not installed, so s3:// cannot be read or written; "
                         "install it: pip install s3fs (the platform image and requirements.lock include it)") from exc
    client_kwargs = {"endpoint_url": endpoint_url} if endpoint_url else {}
    # A fresh instance: fsspec caches instances per argument set, which would outlive a moto server in tests.
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, skip_instance_cache=True, use_listings_cache=False)


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    etag: str | None


class ObjectStore:
    """Keys are ``/``-separated and relative to the store's root (``s3://bucket/prefix`` or a directory)."""

    def __init__(self, root_uri: str, endpoint_url: str | None = None) -> None:
        self.root_uri = root_uri.rstrip("/")
        self.is_s3 = self.root_uri.startswith("s3://")
        if self.is_s3:
            self.fs = s3_filesystem(endpoint_url)
            self._root = self.root_uri.removeprefix("s3://")
        else:
            self.fs = fsspec.filesystem("file")
            self._root = str(Path(self.root_uri).absolute())
        self.endpoint_url = endpoint_url

    def sweep_temporary(self, min_age_seconds: int, dry_run: bool = True) -> list[str]:
        """Temporary files of interrupted local writes (``.tmp-*``) older than ``min_age_seconds``: a killed
        writer leaves them behind; younger ones may belong to a write in progress. S3 writes leave none."""
        if self.is_s3:
            return []
        return sweep_temporary_files(Path(self._root), min_age_seconds, dry_run)

    def path(self, key: str = "") -> str:
        """Path as fsspec and pyarrow (with ``self.fs``) take it: ``bucket/prefix/key`` or ``/abs/dir/key``."""
        return f"{self._root}/{key}".rstrip("/") if key else self._root

    def url(self, key: str = "") -> str:
        """Full URL for tools without our filesystem object (Feast FileSource, humans)."""
        return ("s3://" if self.is_s3 else "") + self.path(key)

    def exists(self, key: str) -> bool:
        try:
            return bool(self.fs.exists(self.path(key)))
        except Exception as exc:
            raise StoreError(f"cannot reach the object store at {self.url(key)}: {exc}") from exc

    def read_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.path(key)))
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot read {self.url(key)}: {exc}") from exc

    def read_json(self, key: str) -> dict[str, Any]:
        raw = self.read_bytes(key)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.url(key)} is not valid JSON ({exc}); it was not written by this platform") from exc

    def write_bytes_atomic(self, key: str, data: bytes) -> None:
        """Readers see the previous object or this one, never a partial write."""
        target = self.path(key)
        try:
            if self.is_s3:
                self.fs.pipe_file(target, data)  # one PUT: S3 makes it visible whole or not at all
                return
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=Path(target).parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot write {self.url(key)}: {exc}") from exc

    def write_json_atomic(self, key: str, document: dict[str, Any]) -> None:
        self.write_bytes_atomic(key, (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode())

    def upload(self, local_path: Path, key: str) -> None:
        """Copy a finished local file into the store (S3: one object, visible only once complete)."""
        target = self.path(key)
        try:
            if not self.is_s3:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                # A unique temp name: concurrent builds of the same inputs must not share one.
                fd, tmp = tempfile.mkstemp(dir=Path(target).parent, prefix=f".tmp-{Path(target).name}-")
                os.close(fd)
                try:
                    self.fs.put_file(str(local_path), tmp)
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
            else:
                self.fs.put_file(str(local_path), target)
        except Exception as exc:
            raise StoreError(f"cannot upload {local_path} to {self.url(key)}: {exc}") from exc

    def list_files(self, key: str, suffix: str = "", digests: bool = True) -> list[FileInfo]:
        """Files below ``key`` (recursively), sorted, with size and ETag where the store has one (locally, with
        ``digests``, the MD5 S3 would compute: it reads every byte)."""
        base = self.path(key)
        try:
            if not self.fs.exists(base):
                return []
            found = self.fs.find(base, detail=True)
        except Exception as exc:
            raise StoreError(f"cannot list {self.url(key)}: {exc}") from exc
        infos = []
        for path, info in sorted(found.items()):
            name = path.rsplit("/", 1)[-1]
            if name.startswith((".", "_")) or not name.endswith(suffix):
                continue
            etag = info.get("ETag") or info.get("etag")
            if etag is None and not self.is_s3 and digests:  # local files: an MD5 of the content, as S3 computes
                with open(path, "rb") as handle:
                    etag = hashlib.file_digest(handle, "md5").hexdigest()
            infos.append(FileInfo(path=path, size=int(info.get("size") or 0), etag=str(etag).strip('"')))
        return infos

    def modified_at(self, key: str) -> datetime | None:
        """When the object (or newest file below a prefix) was last written; None if nothing is there."""
        stamps = []
        for info in self.fs.find(self.path(key), detail=True).values():
            value = info.get("LastModified") or info.get("mtime")
            if isinstance(value, int | float):
                value = datetime.fromtimestamp(value, UTC)
            if isinstance(value, datetime):
                stamps.append(value if value.tzinfo else value.replace(tzinfo=UTC))
        return max(stamps, default=None)

    def list_dirs(self, key: str) -> list[str]:
        """Names of the direct sub-directories (prefixes) of ``key``."""
        base = self.path(key)
        try:
            if not self.fs.exists(base):
                return []
            entries = self.fs.ls(base, detail=True)
        except Exception as exc:
            raise StoreError(f"cannot list {self.url(key)}: {exc}") from exc
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(key), recursive=True)


def write_files_atomic(files: dict[Path, bytes | str]) -> None:
    """Write local files so that a failure (a full disk, a kill) leaves each one as it was: every file is
    written to a temporary file beside it first, and only when all are written are they renamed into place,
    so a set of files (a report's JSON, Markdown and HTML) is never left half new, half old."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, content in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as handle:
                handle.write(content.encode() if isinstance(content, str) else content)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as exc:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        target = staged[-1][1] if staged else next(iter(files), None)
        raise OSError(exc.errno, exc.strerror, str(target)) from exc  # name the file, not the temporary
    for tmp, path in staged:
        os.replace(tmp, path)


def write_file_atomic(path: Path, content: bytes | str) -> None:
    write_files_atomic({path: content})


TEMPORARY_PATTERNS = (".tmp-*", ".*.tmp")  # ObjectStore writes, and the atomic Feast registry store


def sweep_temporary_files(root: Path, min_age_seconds: int, dry_run: bool = True) -> list[str]:
    import time

    if not root.is_dir():
        return []
    cutoff = time.time() - min_age_seconds
    found = sorted({path for pattern in TEMPORARY_PATTERNS for path in root.rglob(pattern) if path.is_file()})
    stale = [path for path in found if path.stat().st_mtime < cutoff]
    if not dry_run:
        for path in stale:
            path.unlink(missing_ok=True)
    return [str(path) for path in stale]
