"""The platform's engines as Feast plugins, so Feast's own SDK and CLI read and write what the platform's paths do.

Feast loads stores and providers by class path; the generated ``feature_store.yaml`` names these.

- The **offline store** answers ``FeatureStore.get_historical_features`` with the platform's point-in-time join
  (:mod:`feature_platform.offline`) over the builds the registry's views point at: one row per entity row, in
  input order, nulls where nothing is valid within the view's TTL, contract dtypes (nullable integers and
  booleans) in ``to_df()``. Feast's file offline store drops rows and widens integers to floats. Everything else
  (materialization's pulls, logging) is Feast's file store, which this class extends.
- The **online stores** (Redis and Redis Cluster, SQLite) answer ``get_online_features`` with the platform's
  read rules: a view's TTL is enforced (``OUTSIDE_MAX_AGE``, value null; Feast 0.67 ignores it, Feast issue
  6821), an entity never loaded is ``NOT_FOUND`` with a ``None`` event timestamp (Feast's Redis store answers
  ``PRESENT`` with nulls at 1970). On Redis the reads are the platform's: one
  pipelined HMGET per entity key, whatever the number of views sharing its hash.
- The **provider** makes ``feast materialize`` and ``feast materialize-incremental`` run the platform's
  materialization of each view: the served build's newest row per entity, departed entities deleted, the load
  recorded, exactly what ``featurectl materialize`` writes. Feast's time window is not used to select rows: a
  window would leave departed entities and rows of older builds online.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from feast.infra.offline_stores.dask import DaskOfflineStore, DaskOfflineStoreConfig
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig
from feast.infra.passthrough_provider import PassthroughProvider
from feast.online_response import OnlineResponse
from pydantic import PrivateAttr

from feature_platform import feast_modes
from feature_platform.contracts import DTYPE_OF_FEAST_TYPE  # Feast type -> dtype: what the build wrote
from feature_platform.offline import JoinPart, point_in_time_join_many

OFFLINE_STORE, ONLINE_STORES = feast_modes.OFFLINE_STORE, feast_modes.ONLINE_STORES



class PlatformOfflineStoreConfig(DaskOfflineStoreConfig):
    """Feast's offline store config for the platform (the file store's, by another type name), with the platform
    environment the generated file belongs to, so plain ``feast`` commands act on that environment."""

    type: Literal["feature_platform.feast_plugins.PlatformOfflineStore"] = OFFLINE_STORE  # type: ignore[assignment]
    platform_environment: str | None = None
    platform_contracts: str | None = None
    platform_home: str | None = None
    _platform_settings: Any = PrivateAttr(default=None)  # the platform's own Settings (feast_modes.bind_settings)


class PlatformRetrievalJob(RetrievalJob):
    """A training set computed when asked for; ``to_df`` keeps the contract dtypes (Feast's default goes through
    Arrow's ``to_pandas``, which turns nullable integers into floats)."""

    def __init__(self, compute: Any, full_feature_names: bool) -> None:
        self._compute = compute
        self._full_feature_names = full_feature_names
        self._frame: pd.DataFrame | None = None

    def _frame_once(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = self._compute()
        return self._frame

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[Any]:
        return []

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._frame_once().copy()

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return pa.Table.from_pandas(self._frame_once(), preserve_index=False)

    def to_df(self, validation_reference: Any = None, timeout: int | None = None) -> pd.DataFrame:
        if validation_reference is not None:
            return super().to_df(validation_reference=validation_reference, timeout=timeout)
        return self._to_df_internal(timeout)

    @property
    def metadata(self) -> Any:
        return None

    def persist(self, storage: Any, allow_overwrite: bool | None = False, timeout: int | None = None) -> None:
        raise NotImplementedError("saved datasets: write to_df() to Parquet, or use `featurectl historical --out`")


def _part(view: Any, features: list[str], full_feature_names: bool) -> JoinPart:
    """What the join needs of one Feast feature view (or its projection in a feature service)."""
    source = view.batch_source
    if not view.entity_columns:
        raise ValueError(f"{view.name}: the platform's offline store joins views on their join keys; it has none")
    # Every join key (a composite key joins on all of them).
    keys = {column.name: DTYPE_OF_FEAST_TYPE.get(str(column.dtype), "string") for column in view.entity_columns}
    dtypes = {f.name: DTYPE_OF_FEAST_TYPE[str(f.dtype)] for f in view.features}
    name = view.projection.name_to_use() if view.projection else view.name
    return JoinPart(view=view.name, keys=keys, timestamp_field=source.timestamp_field,
                    ttl_seconds=int(view.ttl.total_seconds()) if view.ttl else 0,
                    data_path=source.path, dtypes={f: dtypes[f] for f in features},
                    names=[f"{name}__{f}" if full_feature_names else f for f in features])


def _data_files(path: str, filesystem: Any) -> str | list[str]:
    """A view's source path for the join: its Parquet file, or an incremental build's partitions named by its
    manifest (``metadata.json``); without the s3:// scheme when read through ``filesystem``."""
    from feature_platform.build import METADATA_FILE, data_files

    local = path.removeprefix("s3://") if filesystem is not None else path
    if not path.endswith("/" + METADATA_FILE):
        return local
    with (filesystem.open(local) if filesystem is not None else open(local, "rb")) as handle:
        files = data_files(json.loads(handle.read()))
    return [f.removeprefix("s3://") if filesystem is not None else f for f in files]


def _with_pushed_rows(config: Any, parts: list[JoinPart], views: list[Any]) -> list[JoinPart]:
    """Parts of views that take pushes, with their recorded pushes (as ``featurectl historical`` joins them)."""
    from feature_platform.feast_bridge.definitions import TAG_PREFIX
    from feature_platform.push import pushed_files

    tagged = [(getattr(v, "tags", None) or {}) for v in views]
    if not any(TAG_PREFIX + "feature_set" in tags for tags in tagged):
        return parts
    settings = platform_settings(config)
    contracts, store = settings.contracts(), settings.object_store(settings.environment())
    out = []
    for part, tags in zip(parts, tagged, strict=True):
        name, version = tags.get(TAG_PREFIX + "feature_set"), tags.get(TAG_PREFIX + "version", "v0")
        contract = contracts.feature_sets.get((name, int(version.removeprefix("v")))) if name else None
        if contract is not None and contract.push:
            part = JoinPart(**{**part.__dict__, "pushed": tuple(pushed_files(store, contract))})
        out.append(part)
    return out


def _filesystem(paths: list[str], endpoint: str | None) -> Any:
    from feature_platform.store import ObjectStore

    s3 = [p for p in paths if p.startswith("s3://")]
    if not s3:
        return None
    bucket = s3[0].removeprefix("s3://").split("/", 1)[0]
    return ObjectStore(f"s3://{bucket}", endpoint).fs


class PlatformOfflineStore(DaskOfflineStore):
    """Feast's file offline store, with historical retrieval by the platform's exact point-in-time join."""

    @staticmethod
    def get_historical_features(config: Any, feature_views: list[Any], feature_refs: list[str],
                                entity_df: pd.DataFrame | str | None, registry: Any, project: str,
                                full_feature_names: bool = False, filter_by_created_timestamp: bool = False,
                                **kwargs: Any) -> RetrievalJob:
        # filter_by_created_timestamp is moot: a build holds one row per key and event time (its quality gate).
        if not isinstance(entity_df, pd.DataFrame):
            raise ValueError("the platform's offline store takes an entity_df pandas DataFrame (join keys, "
                             f"event_timestamp, labels); got {type(entity_df).__name__}")
        wanted: dict[str, list[str]] = {}
        for ref in feature_refs:
            view_name, _, feature = ref.partition(":")
            wanted.setdefault(view_name, []).append(feature)
        by_name = {(v.projection.name_to_use() if v.projection else v.name): v for v in feature_views}
        parts = [_part(by_name[name], features, full_feature_names) for name, features in wanted.items()]
        endpoint = next((v.batch_source.file_options.s3_endpoint_override for v in feature_views
                         if v.batch_source.file_options.s3_endpoint_override), None) or \
            platform_settings(config).s3_endpoint_url
        paths = [path for p in parts for path in ([p.data_path] if isinstance(p.data_path, str) else p.data_path)]
        filesystem = _filesystem(paths, endpoint)
        parts = [JoinPart(**{**p.__dict__, "data_path": _data_files(str(p.data_path), filesystem)}) for p in parts]
        parts = _with_pushed_rows(config, parts, [by_name[name] for name in wanted])
        frame = entity_df

        def compute() -> pd.DataFrame:
            return point_in_time_join_many(frame, parts, filesystem)

        return PlatformRetrievalJob(compute, full_feature_names)


# ---------------------------------------------------------------------------------------------- online stores


# Feast's FieldStatus numbers (serving.proto).
_PRESENT, _NOT_FOUND, _OUTSIDE_MAX_AGE = 1, 3, 4


def _platform_statuses(response: Any, grouped_refs: list[Any], first: int) -> None:
    """Apply the platform's rules to the feature vectors Feast appended from index ``first`` (one per requested
    feature, view after view): rows older than the view's TTL are ``OUTSIDE_MAX_AGE`` with a null value (their
    event timestamp is kept, as the platform's server does). A stored null in a found row stays ``PRESENT``, as
    Feast and the platform's server answer it."""
    now = time.time()
    enforce = feast_modes.ttl_enforced()
    index = first
    for table, requested in grouped_refs:
        ttl = table.ttl.total_seconds() if table.ttl else 0.0
        for vector in response.results[index:index + len(requested)]:
            for i, status in enumerate(vector.statuses):
                if status != _PRESENT:
                    continue
                stamp = vector.event_timestamps[i]
                if enforce and ttl > 0 and now - (stamp.seconds + stamp.nanos / 1e9) > ttl:
                    vector.values[i].Clear()
                    vector.statuses[i] = _OUTSIDE_MAX_AGE
        index += len(requested)


class PlatformOnlineResponse(OnlineResponse):
    """``to_dict``/``to_df``/``to_arrow`` with a ``None`` event timestamp where nothing was found (Feast's gives
    0, read as 1970-01-01)."""

    def to_dict(self, include_event_timestamps: bool = False) -> dict[str, Any]:
        out = super().to_dict(include_event_timestamps)
        if include_event_timestamps:
            for name, vector in zip(self.proto.metadata.feature_names.val, self.proto.results, strict=True):
                stamps = out.get(name + "__ts")
                if stamps is not None:
                    out[name + "__ts"] = [None if status == _NOT_FOUND else stamp
                                          for stamp, status in zip(stamps, vector.statuses, strict=True)]
        return out


def _platform_response(response: Any) -> PlatformOnlineResponse:
    return PlatformOnlineResponse(response.proto, feature_types=getattr(response, "_feature_types", None))


class _PlatformReads:
    """Mixed into Feast's online stores: the platform's read rules on Feast's own read path."""

    def get_online_features(self, *args: Any, **kwargs: Any) -> Any:
        return _platform_response(super().get_online_features(*args, **kwargs))  # type: ignore[misc]

    async def get_online_features_async(self, *args: Any, **kwargs: Any) -> Any:
        # Feast's async path (``feast serve`` on Redis) reads through the same rules, off the event loop.
        import asyncio

        return await asyncio.to_thread(self.get_online_features, *args, **kwargs)

    def _read_features_per_fv(self, config: Any, grouped_refs: list[Any], join_key_values: Any,
                              entity_name_to_join_key_map: Any, response: Any, full_feature_names: bool,
                              include_feature_view_version_metadata: bool) -> None:
        first = len(response.results)
        self._read_views(config, grouped_refs, join_key_values, entity_name_to_join_key_map, response,
                         full_feature_names, include_feature_view_version_metadata)
        _platform_statuses(response, grouped_refs, first)

    def _read_views(self, *args: Any) -> None:
        super()._read_features_per_fv(*args)  # type: ignore[misc]


def _redis_row(reply: list[Any], features: list[str]) -> tuple[datetime | None, dict[str, Any] | None]:
    """One HMGET reply (the features' fields, then ``_ts:view``) as Feast's ``online_read`` row; an entity
    without the view's timestamp was never loaded (or left the served build): not found."""
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    from feature_platform.online.layout import decode_timestamp_micros

    micros = decode_timestamp_micros(reply[-1])
    if micros is None:
        return None, None
    values = {}
    for name, raw in zip(features, reply, strict=False):
        value = ValueProto()
        if raw:
            value.ParseFromString(raw)
        values[name] = value
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC), values


class PlatformRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    type: Literal["feature_platform.feast_plugins.PlatformRedisOnlineStore"] = ONLINE_STORES["redis"]  # type: ignore[assignment]


class PlatformRedisOnlineStore(_PlatformReads, RedisOnlineStore):
    """Feast's Redis store (its layout and writer) read by the platform's reader: the views of a request that
    share an entity key are read with one HMGET per key (Feast's layout keeps them in one hash)."""

    def _read_views(self, config: Any, grouped_refs: list[Any], join_key_values: Any,
                    entity_name_to_join_key_map: Any, response: Any, full_feature_names: bool,
                    include_feature_view_version_metadata: bool) -> None:
        from feast import utils

        from feature_platform.online import reader
        from feature_platform.online.layout import mmh3_field, ts_field

        work = []
        for table, requested in grouped_refs:
            entity_values, indexes, output_len = utils._get_unique_entities(
                table, join_key_values, entity_name_to_join_key_map)
            keys = self._generate_redis_keys_for_entities(config, utils._get_entity_key_protos(entity_values))
            features = list(requested) or [f.name for f in table.features]
            fields = [mmh3_field(table.name, f) for f in features] + [ts_field(table.name)]
            work.append((table, features, indexes, output_len, reader.Reads(list(range(len(keys))), keys, fields)))
        replies = reader.fetch_shared(self._get_client(config.online_store), [w[-1] for w in work])
        for (table, features, indexes, output_len, _), rows in zip(work, replies, strict=True):
            utils._populate_response_from_feature_data(
                features, [_redis_row(list(reply), features) for reply in rows], indexes, response,
                full_feature_names, table, output_len, include_feature_view_version_metadata)


class PlatformSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    type: Literal["feature_platform.feast_plugins.PlatformSqliteOnlineStore"] = ONLINE_STORES["sqlite"]  # type: ignore[assignment]


class PlatformSqliteOnlineStore(_PlatformReads, SqliteOnlineStore):
    """Feast's SQLite store (``local``) with the platform's read rules."""


# ---------------------------------------------------------------------------------------------- provider


def platform_settings(config: Any) -> Any:
    """The platform settings of the environment a generated ``feature_store.yaml`` belongs to: those the platform
    bound to the config it built, else (plain ``feast``) read from the process environment, which supplies
    secrets and addresses as Feast's own ``${VAR}`` expansion does."""
    from feature_platform.environments import Settings

    bound = feast_modes.bound_settings(config)
    if bound is not None:
        return bound
    offline = config.offline_store
    return Settings.from_env(env_name=getattr(offline, "platform_environment", None),
                             contracts_dir=getattr(offline, "platform_contracts", None),
                             home=getattr(offline, "platform_home", None))


class PlatformProvider(PassthroughProvider):
    """Feast's local provider; ``feast materialize`` and ``materialize-incremental`` run the platform's
    materialization of each platform view (what ``featurectl materialize`` writes, deletions included)."""

    def _platform_view(self, feature_view: Any) -> tuple[Any, Any]:
        """(settings, contract) of a view the platform derived from a contract, or (None, None)."""
        from feature_platform.feast_bridge.definitions import TAG_PREFIX

        tags = getattr(feature_view, "tags", None) or {}
        if TAG_PREFIX + "feature_set" not in tags or feast_modes.feast_writes():
            return None, None
        settings = platform_settings(self.repo_config)
        version = int(tags[TAG_PREFIX + "version"].removeprefix("v"))
        return settings, settings.contracts().get(tags[TAG_PREFIX + "feature_set"], version)

    def _push(self, feature_view: Any, columns: dict[str, list[Any]], to: str) -> None:
        """Feast's SDK writing rows to a platform view (``push``, ``write_to_online_store``,
        ``write_to_offline_store``): the platform's push, validated and written as ``POST /push`` does."""
        from types import SimpleNamespace

        from feature_platform import governance, push

        settings, contract = self._platform_view(feature_view)
        if not contract.push:
            raise push.PushRejected(f"{contract.feature_view_name} takes no pushed rows (its values come from builds "
                                    "only): set `push: true` in its contract to write to it; nothing was written")
        env = settings.environment()
        # The Feast writer of the online store (SQLite) is reached through this provider, as Feast's store would.
        store = SimpleNamespace(config=self.repo_config, provider=self, get_feature_view=lambda _name: feature_view)
        push.push(settings, env, contract, push.feast_write_columns(contract, columns), to,
                  governance.caller_from_cli(settings, env), store)

    def ingest_df(self, feature_view: Any, df: pd.DataFrame, field_mapping: dict[str, str] | None = None) -> None:
        from feature_platform.push import columns_of

        remote = getattr(self.repo_config.online_store, "type", "") == "remote"  # the server validates it
        if remote or self._platform_view(feature_view)[1] is None:
            super().ingest_df(feature_view, df, field_mapping)
            return
        self._push(feature_view, columns_of(df), "online")

    async def ingest_df_async(self, feature_view: Any, df: pd.DataFrame,
                              field_mapping: dict[str, str] | None = None) -> None:
        import asyncio

        await asyncio.to_thread(self.ingest_df, feature_view, df, field_mapping)

    def ingest_df_to_offline_store(self, feature_view: Any, table: pa.Table) -> None:
        if self._platform_view(feature_view)[1] is None:
            super().ingest_df_to_offline_store(feature_view, table)
            return
        self._push(feature_view, table.to_pydict(), "offline")

    def materialize_single_feature_view(self, config: Any, feature_view: Any, start_date: datetime,
                                        end_date: datetime, registry: Any, project: str, tqdm_builder: Any,
                                        disable_event_timestamp: bool = False) -> None:
        from feature_platform.feast_bridge import TAG_PREFIX

        tags = getattr(feature_view, "tags", None) or {}
        if feast_modes.feast_writes() or TAG_PREFIX + "build_id" not in tags:
            super().materialize_single_feature_view(config, feature_view, start_date, end_date, registry, project,
                                                    tqdm_builder, disable_event_timestamp)
            return
        from feature_platform import feast_bridge

        settings = platform_settings(config)
        feast_bridge.materialize(settings, settings.environment(), feature_views=[feature_view.name])
        # The platform recorded the load in the registry; Feast records its own interval next, on a fresh copy.
        registry.refresh(project)
