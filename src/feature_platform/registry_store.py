"""Feast's local file registry, written atomically.

Feast rewrites ``registry.db`` in place (open "wb", write, fsync): a full disk or a SIGKILL during the write
leaves it truncated or empty, and every later command fails until it is deleted by hand. This store writes a
temporary file next to it, fsyncs it, renames it over the registry (atomic on POSIX) and fsyncs the directory,
so a reader sees the old registry or the new one, never half of one. Feature_store.yaml names it as
``registry_store_type`` for local registries, so plain `feast` uses it too.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from feast.infra.registry.file import FileRegistryStore
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.utils import _utc_now
from google.protobuf.message import DecodeError

CLASS_PATH = "feature_platform.registry_store.AtomicFileRegistryStore"


class CorruptRegistryError(RuntimeError):
    """The registry file cannot be parsed."""


class AtomicFileRegistryStore(FileRegistryStore):
    def get_registry_proto(self) -> RegistryProto:
        try:
            return super().get_registry_proto()
        except DecodeError as exc:
            size = self._filepath.stat().st_size
            raise CorruptRegistryError(
                f"Feast registry {self._filepath} is unreadable ({size} bytes; written by a tool that does not "
                "write it atomically?): move it aside and run `featurectl apply` to rebuild it from the contracts"
            ) from exc

    def _write_registry(self, registry_proto: RegistryProto) -> None:
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        directory = self._filepath.parent
        directory.mkdir(parents=True, exist_ok=True)
        temporary = directory / f".{self._filepath.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(temporary, "wb", buffering=0) as handle:
                handle.write(registry_proto.SerializeToString())
                os.fsync(handle.fileno())
            os.replace(temporary, self._filepath)
        except BaseException:
            temporary.unlink(missing_ok=True)  # a full disk: the old registry stays, and no litter
            raise
        _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
