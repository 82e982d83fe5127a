"""The environment's Feast registry behind one small interface, chosen once by its type.

A :class:`Registry` says how Feast reaches it (the ``registry`` section of feature_store.yaml), serializes the
platform's writers (a lease for a file registry; a SQL registry is transactional), and keeps JSON logs beside it
(the audit trail and its pending markers): objects in a directory next to a file registry, rows of a table in a
SQL registry's database. Adding a backend is one config class and one class here, named in ``BACKENDS``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from feature_platform.environments import (
    Backend,
    EnvironmentContract,
    FileRegistryConfig,
    Settings,
    SqlRegistryConfig,
)
from feature_platform.locks import Lease, lease
from feature_platform.store import ObjectStore

LOCK_TIMEOUT = 600.0  # seconds to wait for the registry lease (and a view's materialize lease)


class JsonLog(ABC):
    """Append-only JSON entries of one environment, each with an ``id``; removal only for markers."""

    @abstractmethod
    def append(self, entry: dict[str, Any], order_key: str) -> None:
        """Store ``entry``; ``order_key`` sorts entries chronologically where the store lists by name."""

    @abstractmethod
    def remove(self, entry_id: str, order_key: str) -> None: ...

    @abstractmethod
    def entries(self) -> list[dict[str, Any]]: ...


class Registry(Backend):
    """One environment's Feast registry."""

    # Whether Feast's cached copy must be re-read before a write (a file registry's commit replaces the whole
    # object, conditional on the version read); a SQL registry writes rows.
    refresh_before_write = False

    @abstractmethod
    @contextmanager
    def lock(self) -> Iterator[Lease]:
        """The registry writers' lease; call ``.check()`` right before each registry write (fencing)."""

    @abstractmethod
    def exists(self) -> tuple[bool, str]:
        """Whether the registry exists, and where it is (for messages)."""

    @abstractmethod
    def log(self, name: str, indexed: bool = True) -> JsonLog:
        """A JSON log stored beside the registry: the directory ``name`` next to a file registry, the table
        ``feature_platform_<name>`` in a SQL registry's database (``indexed``: with the entry's time, action and
        feature sets as columns too, for queries in SQL)."""


class FileRegistry(Registry):
    """Feast's file registry on S3 or a local path: conditional commits on S3, atomic renames locally."""

    refresh_before_write = True

    def __init__(self, settings: Settings, env: EnvironmentContract) -> None:
        super().__init__(settings, env)
        assert isinstance(env.registry, FileRegistryConfig)
        self.config = env.registry
        self.location = settings.resolve_uri(env, self.config.uri)

    def feast_config(self) -> dict[str, Any]:
        # Local: written atomically (Feast writes in place). S3: each commit conditional on the version read.
        store_type = ("feature_platform.registry_store.ConditionalS3RegistryStore" if self.location.startswith(
            "s3://") else "feature_platform.registry_store.AtomicFileRegistryStore")
        return {"registry_type": "file", "path": self.location, "cache_ttl_seconds": self.config.cache_ttl_seconds,
                "registry_store_type": store_type}

    def prepare(self) -> None:
        if not self.location.startswith("s3://"):
            Path(self.location).parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def lock(self) -> Iterator[Lease]:
        with lease(self.location + ".lock", self.settings.s3_endpoint_url, LOCK_TIMEOUT,
                   self.settings.lease_seconds()) as held:
            yield held

    def exists(self) -> tuple[bool, str]:
        if self.location.startswith("s3://"):
            from feature_platform.store import s3_filesystem

            return s3_filesystem(self.settings.s3_endpoint_url).exists(self.location.removeprefix("s3://")), \
                self.location
        return Path(self.location).exists(), self.location

    def log(self, name: str, indexed: bool = True) -> JsonLog:
        parent = (self.location.rsplit("/", 1)[0] if self.location.startswith("s3://")
                  else str(PurePosixPath(self.location).parent))
        return _DirectoryLog(ObjectStore(f"{parent}/{name}", self.settings.s3_endpoint_url))


class SqlRegistry(Registry):
    """Feast's SQL registry (PostgreSQL) for concurrent production writers; the URL comes from a variable."""

    def __init__(self, settings: Settings, env: EnvironmentContract) -> None:
        super().__init__(settings, env)
        assert isinstance(env.registry, SqlRegistryConfig)
        self.config = env.registry

    def feast_config(self) -> dict[str, Any]:
        return {"registry_type": "sql", "path": f"${{{self.config.url_env}}}",
                "cache_ttl_seconds": self.config.cache_ttl_seconds}

    def require(self) -> None:
        self.settings.require(self.config.url_env, "the SQL registry URL, e.g. postgresql+psycopg://user:pw@host/db")

    @contextmanager
    def lock(self) -> Iterator[Lease]:
        yield Lease("sql registry")  # transactional; Feast serializes writers itself

    def exists(self) -> tuple[bool, str]:
        return True, f"the database in {self.config.url_env}"  # Feast creates its tables on first use

    def log(self, name: str, indexed: bool = True) -> JsonLog:
        return _TableLog(self.settings.require(self.config.url_env, "the SQL registry's URL"),
                         "feature_platform_" + name.replace("-", "_"), self.env.name, indexed)


# Each environment contract's registry type and the class that serves it.
BACKENDS: dict[type, type[Registry]] = {FileRegistryConfig: FileRegistry, SqlRegistryConfig: SqlRegistry}


def registry(settings: Settings, env: EnvironmentContract) -> Registry:
    """The environment's registry: the one place that chooses by backend."""
    return BACKENDS[type(env.registry)](settings, env)


class _DirectoryLog(JsonLog):
    """One object per entry, named so that listing is chronological (S3 Object Lock can make it tamper-proof)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def append(self, entry: dict[str, Any], order_key: str) -> None:
        self.store.write_json_atomic(f"{order_key}.json", entry)

    def remove(self, entry_id: str, order_key: str) -> None:
        self.store.delete(f"{order_key}.json")

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(self.store.fs.cat_file(info.path)) for info in self.store.list_files("", ".json")]


class _TableLog(JsonLog):
    """Rows (id, environment, entry; indexed: also at, action, feature_sets) of a table in the registry's
    database. The columns are the tables' released schema: existing databases keep working."""

    def __init__(self, url: str, table: str, environment: str, indexed: bool) -> None:
        self.url, self.name, self.environment, self.indexed = url, table, environment, indexed

    def _table(self, metadata: Any) -> Any:
        from sqlalchemy import Column, DateTime, String, Table, Text

        if not self.indexed:
            return Table(self.name, metadata, Column("id", String(64), primary_key=True),
                         Column("environment", String(64)), Column("entry", Text))
        return Table(self.name, metadata, Column("id", String(64), primary_key=True),
                     Column("at", DateTime(timezone=True), index=True), Column("environment", String(64)),
                     Column("action", String(32)), Column("feature_sets", Text), Column("entry", Text))

    @contextmanager
    def _engine(self) -> Iterator[Any]:
        from sqlalchemy import create_engine

        engine = create_engine(self.url)
        try:
            yield engine
        finally:
            engine.dispose()

    def append(self, entry: dict[str, Any], order_key: str) -> None:
        from datetime import datetime

        from sqlalchemy import MetaData

        with self._engine() as engine:
            table = self._table(MetaData())
            table.create(engine, checkfirst=True)
            columns = {"id": entry["id"], "environment": self.environment, "entry": json.dumps(entry, default=str)}
            if self.indexed:
                columns.update(at=datetime.fromisoformat(entry["at"]), action=entry["action"],
                               feature_sets=",".join(entry["feature_sets"]))
            with engine.begin() as connection:
                connection.execute(table.insert().values(**columns))

    def remove(self, entry_id: str, order_key: str) -> None:
        from sqlalchemy import MetaData, inspect

        with self._engine() as engine:
            if not inspect(engine).has_table(self.name):
                return
            table = self._table(MetaData())
            with engine.begin() as connection:
                connection.execute(table.delete().where(table.c.id == entry_id))

    def entries(self) -> list[dict[str, Any]]:
        from sqlalchemy import MetaData, inspect, select

        with self._engine() as engine:
            if not inspect(engine).has_table(self.name):
                return []
            table = self._table(MetaData())
            with engine.connect() as connection:
                rows = connection.execute(select(table.c.entry).where(table.c.environment == self.environment))
                return [json.loads(row[0]) for row in rows]
