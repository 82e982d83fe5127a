"""Contracts -> Feast objects: one FeatureView per contract version (``<feature_set>_v<N>``) reading the build its
version's pointer names, its Entity, and the FeatureServices (per version, the moving alias, the models').

Feast objects are derived from the contracts and the ``latest`` pointers, never written by hand."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from feature_platform import build as builds
from feature_platform.contracts import FEAST_TYPE_NAMES, ContractSet, FeatureSetContract, element_dtype, is_array
from feature_platform.contracts import Entity as ContractEntity
from feature_platform.environments import EnvironmentContract, Settings
from feature_platform.errors import (
    PointerMissingError,
)

TAG_PREFIX = "feature_platform."
DEFINITION_TAG = TAG_PREFIX + "definition_hash"



def feast_type(dtype: str) -> Any:
    """Feast's type object of a contract dtype (``array<float32>`` -> ``Array(Float32)``)."""
    from feast import types as feast_types

    if is_array(dtype):
        return feast_types.Array(feast_type(element_dtype(dtype)))
    return getattr(feast_types, FEAST_TYPE_NAMES[dtype])


@dataclass(frozen=True)
class Definitions:
    entities: list[Any]
    feature_views: list[Any]
    feature_services: list[Any]
    permissions: list[Any]  # who may read (governance.permissions)

    def all(self) -> list[Any]:
        return [*self.entities, *self.feature_views, *self.feature_services, *self.permissions]


def definition_hash(contract: FeatureSetContract, pointer: dict[str, Any]) -> str:
    """Changes whenever the Feast objects derived from this contract would change."""
    payload = {"schema": contract.schema_hash, "build": pointer["build_id"], "data": pointer["data"],
               "online": contract.online, "tags": contract.tags, "description": contract.description,
               "owner": contract.owner, "pii": contract.pii, **({"push": True} if contract.push else {})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def feature_view(contract: FeatureSetContract, pointer: dict[str, Any], entities: list[Any],
                 s3_endpoint: str | None) -> Any:
    from feast import FeatureView, Field, FileSource, PushSource

    # An incremental build is several partitions: its source is the manifest (metadata.json), which the
    # platform's offline store and materialization resolve; plain Feast's file reader cannot read it.
    data = str(pointer["metadata"] if isinstance(pointer["data"], list) else pointer["data"])
    source: Any = FileSource(
        name=f"{contract.feature_view_name}_source",
        path=data,
        timestamp_field=contract.timestamp_field,
        s3_endpoint_override=s3_endpoint if data.startswith("s3://") else None,
    )
    schema = [Field(name=key, dtype=feast_type(dtype)) for key, dtype in contract.key_dtypes.items()]
    schema += [Field(name=f.name, dtype=feast_type(f.dtype), description=f.description) for f in contract.features]
    tags = {**contract.tags,
            TAG_PREFIX + "feature_set": contract.name,
            TAG_PREFIX + "version": contract.version_label,
            TAG_PREFIX + "schema_hash": contract.schema_hash,
            TAG_PREFIX + "build_id": str(pointer["build_id"]),
            TAG_PREFIX + "pii": str(contract.pii).lower(),
            DEFINITION_TAG: definition_hash(contract, pointer)}
    if contract.push:  # Feast's PushSource over the batch source: plain `feast apply` and Feast's SDK see it
        from feature_platform.push import push_source_name

        source = PushSource(name=push_source_name(contract), batch_source=source)
    return FeatureView(
        name=contract.feature_view_name,
        entities=entities,  # several for a composite key: Feast keys the view by all their join keys
        ttl=timedelta(seconds=contract.ttl_seconds),
        schema=schema,
        online=contract.online,
        source=source,
        tags=tags,
        owner=contract.owner,
        description=contract.description,
    )


def definitions(settings: Settings, env: EnvironmentContract, contracts: ContractSet | None = None,
                pins: dict[str, str] | None = None, feature_sets: list[str] | None = None) -> Definitions:
    """Feast objects for every contract version (or those of ``feature_sets``), each reading its version's
    ``latest`` build.

    ``pins`` maps a feature view name to a build id to read instead (reproducing an old training set).
    """
    from feast import FeatureService

    contracts = contracts or settings.contracts()
    store = settings.object_store(env)
    entities: dict[str, Any] = {}
    views: dict[str, Any] = {}
    missing = []
    selected = [c for c in contracts.live() if not feature_sets or c.name in feature_sets]
    for contract in selected:
        for e in contract.entities:
            entities.setdefault(e.name, feast_entity(e))
        try:
            if pins and contract.feature_view_name in pins:
                pointer = builds.find_build(store, contract.name, pins[contract.feature_view_name])
            else:
                pointer = builds.read_pointer(store, contract.name, contract.version_label)
        except PointerMissingError:
            missing.append(f"{contract.name} {contract.version_label}")
            continue
        own = [entities[e.name] for e in contract.entities]
        views[contract.feature_view_name] = feature_view(contract, pointer, own, settings.s3_endpoint_url)
    if missing:
        raise PointerMissingError(missing, store.url())
    # One service per contract version, so a model pins the version it was trained on; a moving alias named
    # after the feature set follows the newest version only where its newest contract opts in (latest_alias).
    services = [FeatureService(name=c.feature_view_name, features=[views[c.feature_view_name]],
                               description=f"{c.description} ({c.version_label})",
                               tags={TAG_PREFIX + "version": c.version_label}, owner=c.owner)
                for c in selected if c.feature_view_name in views]
    services += [FeatureService(name=c.name, features=[views[c.feature_view_name]],
                                description=f"{c.description} (moving alias: newest version, {c.version_label})",
                                tags={TAG_PREFIX + "version": c.version_label, TAG_PREFIX + "alias": "latest"},
                                owner=c.owner)
                 for c in contracts.latest_versions()
                 if c.latest_alias and c.feature_view_name in views and (not feature_sets or c.name in feature_sets)]
    # Models' services across feature sets (contracts/feature_services/): with ``feature_sets``, those that read
    # any of them; a set outside the selection lends its view as a projection source only (not applied here).
    models = [m for m in contracts.live_services()
              if not feature_sets or any(c.name in feature_sets for c, _ in contracts.resolve(m))]
    context = dict(views)
    for model in list(models):
        for contract, _ in contracts.resolve(model):
            if contract.feature_view_name not in context:
                try:
                    pointer = builds.read_pointer(store, contract.name, contract.version_label)
                except PointerMissingError:  # not built yet: the apply of the set built last registers it
                    models.remove(model)
                    break
                own = [entities.get(e.name) or feast_entity(e) for e in contract.entities]
                context[contract.feature_view_name] = feature_view(contract, pointer, own, settings.s3_endpoint_url)
    services += [model_service(contracts, model, context) for model in models]
    from feature_platform.governance import permissions

    served = [c for c in selected if c.feature_view_name in views]
    return Definitions(list(entities.values()), list(views.values()), services,
                       permissions(env, contracts, served, models))


def feast_entity(e: ContractEntity) -> Any:
    from feast import Entity, ValueType

    return Entity(name=e.name, join_keys=[e.join_key], description=e.description,
                  value_type={"int64": ValueType.INT64, "int32": ValueType.INT32}.get(e.dtype, ValueType.STRING))


def model_service(contracts: ContractSet, model: Any, views: dict[str, Any]) -> Any:
    """Feast's FeatureService ``<name>_v<N>`` for a model's service contract: one projection per feature-set
    version, holding the features the model takes, in the contract's order."""
    from feast import FeatureService

    projections = [views[c.feature_view_name][names] for c, names in contracts.resolve(model)]
    return FeatureService(name=model.service_name, features=projections,
                          description=f"{model.description} ({model.version_label})", owner=model.owner,
                          tags={**model.tags, TAG_PREFIX + "version": model.version_label,
                                TAG_PREFIX + "model": model.name,
                                TAG_PREFIX + "schema_hash": contracts.service_schema_hash(model)})
