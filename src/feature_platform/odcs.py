"""Contracts as Open Data Contract Standard (ODCS v3.2.0) documents, so data-contract tooling can read them.

One document per contract version: the feature set is one schema object (the build's Parquet), its entity key,
event timestamp and features are properties with logical and physical types, nullability (``required``),
constraints (ODCS library quality rules), PII (``classification: restricted``), the teams (owner, readers,
PII readers) as roles, the TTL and schedule as SLA properties, and one server per environment (the builds'
``latest`` location). Validated against the JSON Schema shipped by the standard's own package
(``open-data-contract-standard``).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from feature_platform.contracts import FeatureSetContract, element_dtype, is_array
from feature_platform.environments import EnvironmentContract

API_VERSION = "v3.2.0"
LOGICAL_TYPES = {"int32": "integer", "int64": "integer", "float32": "number", "float64": "number",
                 "string": "string", "bool": "boolean", "timestamp": "timestamp"}
PHYSICAL_TYPES = {"int32": "INT32", "int64": "INT64", "float32": "FLOAT", "float64": "DOUBLE", "string": "STRING",
                  "bool": "BOOLEAN", "timestamp": "TIMESTAMP(MICROS, UTC)"}


@cache
def odcs_schema() -> dict[str, Any]:
    """The standard's JSON Schema, from its pip package (never a copy of ours)."""
    return json.loads(resources.files("open_data_contract_standard").joinpath("schema.json").read_text())


def _quality(feature: Any) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    if not feature.nullable:
        rules.append({"type": "library", "metric": "nullValues", "mustBe": 0, "dimension": "completeness",
                      "description": f"{feature.name} is never null (quality gate)"})
    constraints = feature.constraints
    if constraints is not None:
        if constraints.min is not None:
            rules.append({"type": "sql", "dimension": "conformity", "mustBe": 0,
                          "query": f'SELECT count(*) FROM {{object}} WHERE "{feature.name}" < {constraints.min!r}',
                          "description": f"{feature.name} >= {constraints.min} (quality gate)"})
        if constraints.max is not None:
            rules.append({"type": "sql", "dimension": "conformity", "mustBe": 0,
                          "query": f'SELECT count(*) FROM {{object}} WHERE "{feature.name}" > {constraints.max!r}',
                          "description": f"{feature.name} <= {constraints.max} (quality gate)"})
        if constraints.allowed_values is not None:
            rules.append({"type": "library", "metric": "invalidValues", "mustBe": 0, "dimension": "conformity",
                          "arguments": {"validValues": list(constraints.allowed_values)},
                          "description": f"{feature.name} in {list(constraints.allowed_values)} (quality gate)"})
    return rules


def _property(name: str, dtype: str, description: str, required: bool, dims: int | None = None,
              nullable_elements: bool = False, **extra: Any) -> dict[str, Any]:
    if is_array(dtype):  # a Parquet list column: ODCS's array, its items typed, its length fixed by dims
        element = element_dtype(dtype)
        prop: dict[str, Any] = {
            "name": name, "logicalType": "array", "physicalType": f"LIST<{PHYSICAL_TYPES[element]}>",
            "physicalName": name, "description": description or name, "required": required,
            "items": {"name": "element", "logicalType": LOGICAL_TYPES[element],
                      "physicalType": PHYSICAL_TYPES[element], "required": not nullable_elements}}
        if dims is not None:
            prop["logicalTypeOptions"] = {"minItems": dims, "maxItems": dims}
    else:
        prop = {"name": name, "logicalType": LOGICAL_TYPES[dtype], "physicalType": PHYSICAL_TYPES[dtype],
                "physicalName": name, "description": description or name, "required": required}
    prop.update({k: v for k, v in extra.items() if v not in (None, [], {})})
    return prop


def to_odcs(contract: FeatureSetContract, environments: list[EnvironmentContract],
            promoted: dict[str, str] | None = None) -> dict[str, Any]:
    """``promoted`` maps an environment name to the Parquet file of the version's promoted build there; a
    server entry names that file, so data-contract tools can test the document as written."""
    pii = set(contract.pii_features)
    # The primary key: every join key (a composite key has several), then the event time.
    properties = [_property(key.join_key, key.dtype, key.description or f"{key.name} key", True, primaryKey=True,
                            primaryKeyPosition=position, businessName=key.name)
                  for position, key in enumerate(contract.entities, start=1)]
    properties.append(_property(contract.timestamp_field, "timestamp", "event time of the feature values", True,
                                primaryKey=True, primaryKeyPosition=len(contract.entities) + 1))
    for feature in contract.features:
        properties.append(_property(
            feature.name, feature.dtype, feature.description, not feature.nullable, feature.dims,
            feature.nullable_elements, classification="restricted" if feature.name in pii else "internal",
            tags=["pii"] if feature.name in pii else None, quality=_quality(feature) or None))
    document: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "DataContract",
        "id": f"feature-platform:{contract.feature_view_name}",
        "name": contract.feature_view_name,
        "version": f"{contract.version}.0.0",
        "status": contract.status,
        "domain": contract.tags.get("domain", "features"),
        "dataProduct": contract.name,
        "description": {"purpose": contract.description,
                        "usage": f"Feast feature view and feature service {contract.feature_view_name}; "
                                 "point-in-time training sets with `featurectl historical`.",
                        "limitations": "PII features are masked outside access.pii_readers." if pii else
                                       "No personal data."},
        "tags": ["feature-set", *(["pii"] if pii or contract.pii else []),
                 *(f"{k}:{v}" for k, v in sorted(contract.tags.items()))],
        "team": {"name": contract.owner_team, "members": [{"username": contract.owner, "role": "owner"}]},
        "roles": [{"role": team, "access": "read",
                   "description": "owner" if team == contract.owner_team else "reader",
                   **({"customProperties": [{"property": "piiUnmasked", "value": True}]}
                      if team in {contract.owner_team, *contract.access.pii_readers} and pii else {})}
                  for team in contract.reader_teams],
        "schema": [{"name": contract.feature_view_name, "logicalType": "object", "physicalType": "table",
                    "physicalName": "features.parquet", "description": contract.description,
                    "dataGranularityDescription": f"one row per {' and '.join(e.name for e in contract.entities)}"
                                                  " and event time",
                    "properties": properties,
                    "quality": [{"type": "library", "metric": "duplicateValues", "mustBe": 0,
                                 "dimension": "uniqueness",
                                 "arguments": {"properties": [*contract.join_keys, contract.timestamp_field]},
                                 "description": "one row per entity and event time (quality gate)"}]}],
        "slaProperties": [{"property": "retention", "value": contract.ttl_seconds // 86400 or 1, "unit": "d",
                           "description": f"feature values are valid for {contract.ttl} (Feast TTL)"},
                          {"property": "latency", "value": contract.monitoring.max_staleness or contract.ttl,
                           "description": "newest event older than this is a monitoring breach"}],
        "servers": [_server(env, contract, (promoted or {}).get(env.name)) for env in environments],
        "customProperties": [{"property": "schemaHash", "value": contract.schema_hash},
                             {"property": "transformSql", "value": contract.source.sql.strip()},
                             {"property": "sourceTable", "value": contract.source.table},
                             {"property": "online", "value": contract.online}],
    }
    return document


def _server(env: EnvironmentContract, contract: FeatureSetContract, data: str | None) -> dict[str, Any]:
    """The promoted build's Parquet where it is known; otherwise every build of the version (a glob), since a
    pointer file (latest.json) is JSON that Parquet readers cannot open."""
    location = data or f"{env.object_store.uri}/{contract.name}/{contract.version_label}/*/features.parquet"
    what = "the promoted build" if data else "every build of this version; the promoted one is named by latest.json"
    description = f"{env.description or env.name} ({what})"
    if location.startswith("s3://"):
        return {"server": env.name, "type": "s3", "environment": env.name, "format": "parquet",
                "location": location, "description": description}
    return {"server": env.name, "type": "local", "environment": env.name, "format": "parquet", "path": location,
            "description": description}


def validate(document: dict[str, Any]) -> list[str]:
    """Schema errors of one document (empty when valid), each with its path."""
    import jsonschema

    validator = jsonschema.Draft201909Validator(odcs_schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '(document)'}: {e.message}"
            for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]
