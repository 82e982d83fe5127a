"""The platform's engines as Feast plugins, so Feast's own SDK and CLI read what the platform's paths read.

Feast loads stores by class path; the generated ``feature_store.yaml`` names these. The offline store answers
``FeatureStore.get_historical_features`` with the platform's point-in-time join (:mod:`feature_platform.offline`)
over the builds the registry's views point at: one row per entity row, in input order, nulls where nothing is
valid within the view's TTL, contract dtypes (nullable integers and booleans) in ``to_df()``. Feast's file offline
store drops rows and widens integers to floats. Everything else (materialization's pulls, logging) is Feast's
file store, which this class extends.
"""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from feast.infra.offline_stores.dask import DaskOfflineStore, DaskOfflineStoreConfig
from feast.infra.offline_stores.offline_store import RetrievalJob

from feature_platform.offline import JoinPart, point_in_time_join_many

OFFLINE_STORE = "feature_platform.feast_plugins.PlatformOfflineStore"

# Feast's types -> the contracts' dtypes (what the build wrote, so what the join returns).
FEAST_DTYPES = {"Int32": "int32", "Int64": "int64", "Float32": "float32", "Float64": "float64", "String": "string",
                "Bool": "bool", "UnixTimestamp": "timestamp"}


class PlatformOfflineStoreConfig(DaskOfflineStoreConfig):
    """Feast's offline store config for the platform (the file store's, by another type name)."""

    type: Literal["feature_platform.feast_plugins.PlatformOfflineStore"] = OFFLINE_STORE  # type: ignore[assignment]


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
    keys = [column for column in view.entity_columns]
    if len(keys) != 1:
        raise ValueError(f"{view.name}: the platform's offline store joins views with one join key; "
                         f"it has {len(keys)}")
    key_dtype = FEAST_DTYPES.get(str(keys[0].dtype), "string")
    dtypes = {f.name: FEAST_DTYPES[str(f.dtype)] for f in view.features}
    name = view.projection.name_to_use() if view.projection else view.name
    return JoinPart(view=view.name, join_key=keys[0].name, key_dtype=key_dtype,
                    timestamp_field=source.timestamp_field,
                    ttl_seconds=int(view.ttl.total_seconds()) if view.ttl else 0,
                    data_path=source.path, dtypes={f: dtypes[f] for f in features},
                    names=[f"{name}__{f}" if full_feature_names else f for f in features])


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
                                full_feature_names: bool = False, **kwargs: Any) -> RetrievalJob:
        import os

        if not isinstance(entity_df, pd.DataFrame):
            raise ValueError("the platform's offline store takes an entity_df pandas DataFrame (join keys, "
                             f"event_timestamp, labels); got {type(entity_df).__name__}")
        wanted: dict[str, list[str]] = {}
        for ref in feature_refs:
            view_name, _, feature = ref.partition(":")
            wanted.setdefault(view_name, []).append(feature)
        by_name = {(v.projection.name_to_use() if v.projection else v.name): v for v in feature_views}
        parts = [_part(by_name[name], features, full_feature_names) for name, features in wanted.items()]
        paths = [p.data_path for p in parts]
        endpoint = next((v.batch_source.file_options.s3_endpoint_override for v in feature_views
                         if v.batch_source.file_options.s3_endpoint_override), None) or os.environ.get(
            "FEAST_S3_ENDPOINT_URL")
        filesystem = _filesystem(paths, endpoint)
        if filesystem is not None:
            parts = [JoinPart(**{**p.__dict__, "data_path": p.data_path.removeprefix("s3://")}) for p in parts]
        frame = entity_df

        def compute() -> pd.DataFrame:
            return point_in_time_join_many(frame, parts, filesystem)

        return PlatformRetrievalJob(compute, full_feature_names)
