"""Feast's file registries, written so that no commit is half written or lost.

Local: Feast rewrites ``registry.db`` in place (open "wb", write, fsync): a full disk or a SIGKILL during the
write leaves it truncated or empty, and every later command fails until it is deleted by hand. This store
writes a temporary file next to it, fsyncs it, renames it over the registry (atomic on POSIX) and fsyncs the
directory, so a reader sees the old registry or the new one, never half of one.

S3: Feast PUTs ``registry.db`` unconditionally, so a writer that stalled (or whose upload was retried or
delayed) after another writer committed overwrites that commit. This store remembers the ETag of the registry
it read and PUTs with ``If-Match`` (``If-None-Match: *`` when there was none): a commit computed from an older
registry is refused by S3 itself and fails with one line; nothing is overwritten.

feature_store.yaml names them as ``registry_store_type``, so plain `feast` uses them too.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from feast.infra.registry.file import FileRegistryStore
from feast.infra.registry.s3 import S3RegistryStore
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.utils import _utc_now
from google.protobuf.message import DecodeError

CLASS_PATH = "feature_platform.registry_store.AtomicFileRegistryStore"
S3_CLASS_PATH = "feature_platform.registry_store.ConditionalS3RegistryStore"


class CorruptRegistryError(RuntimeError):
    """The registry file cannot be parsed."""


class RegistryConflict(RuntimeError):
    """The registry changed between this writer's read and its commit; the commit was refused."""


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


class ConditionalS3RegistryStore(S3RegistryStore):
    """Feast's S3 registry store, with every commit conditional on the registry version it was computed from."""

    def __init__(self, registry_config: Any, repo_path: Any) -> None:
        super().__init__(registry_config, repo_path)
        endpoint = getattr(registry_config, "platform_s3_endpoint_url", None)
        if endpoint:  # the platform's own config names its endpoint; plain `feast` reads FEAST_S3_ENDPOINT_URL
            import boto3

            self.s3_client = boto3.resource("s3", endpoint_url=endpoint)
        self._etag = ""  # of the registry last read or written by this store; "" = none existed

    def get_registry_proto(self) -> RegistryProto:
        from botocore.exceptions import ClientError

        client = self.s3_client.meta.client
        try:
            response = client.get_object(Bucket=self._bucket, Key=self._key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "NoSuchBucket":
                from feast.errors import S3RegistryBucketNotExist

                raise S3RegistryBucketNotExist(self._bucket) from exc
            if code in ("NoSuchKey", "404"):
                self._etag = ""
                raise FileNotFoundError(f"Error while trying to locate Registry at path {self._uri.geturl()}"
                                        ) from exc
            raise
        registry_proto = RegistryProto()
        body = response["Body"].read()
        try:
            registry_proto.ParseFromString(body)
        except DecodeError as exc:
            raise CorruptRegistryError(
                f"Feast registry {self._uri.geturl()} is unreadable ({len(body)} bytes; written by a tool that does "
                "not write it whole?): move it aside (or restore a previous object version) and run "
                "`featurectl apply` to rebuild it from the contracts") from exc
        self._etag = response["ETag"]
        return registry_proto

    def _write_registry(self, registry_proto: RegistryProto) -> None:
        from botocore.exceptions import ClientError

        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        condition = {"IfMatch": self._etag} if self._etag else {"IfNoneMatch": "*"}
        try:
            response = self.s3_client.meta.client.put_object(
                Bucket=self._bucket, Key=self._key, Body=registry_proto.SerializeToString(),
                **condition, **self._boto_extra_args)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise RegistryConflict(
                    f"the Feast registry {self._uri.geturl()} changed after this writer read it (another writer "
                    "committed first): this commit was refused and nothing was written; re-run the command "
                    "(apply and materialize are idempotent)") from exc
            raise
        self._etag = response["ETag"]
