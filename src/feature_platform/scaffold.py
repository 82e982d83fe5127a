"""`featurectl init`: a new feature set's or feature service's first contract, which validates as written.

The files are templates to edit (description, owner, SQL, features), not guesses: each is checked with the rest
of the contracts before it is kept, so a scaffold never leaves the directory invalid.
"""

from __future__ import annotations

import re
from pathlib import Path

from feature_platform.contracts import NAME_PATTERN, load_contracts
from feature_platform.errors import ConfigError, ContractErrors

FEATURE_SET_TEMPLATE = """\
# A new feature set: edit the description, owner, source and features, then
#   featurectl contracts check && featurectl build {name}
kind: FeatureSet
name: {name}
version: 1
description: Describe what these features say about a {entity} and who uses them.
owner: {owner}
entity:
  name: {entity}
  join_key: {join_key}
  dtype: {key_dtype}
  description: The {entity}'s identifier.
timestamp_field: event_timestamp
ttl: 7d              # how long a value stays valid for training sets and online reads
online: true         # materialized to the online store and served
pii: false
source:
  table: {table}     # a Parquet dataset under the environment's raw_data.uri
  sql: |
    SELECT {join_key},
           CAST(event_timestamp AS TIMESTAMP) AS event_timestamp,
           CAST(amount AS DOUBLE)             AS amount
    FROM source
features:
  - name: amount
    dtype: float64
    description: Replace with what the feature measures, and its unit.
    nullable: true
"""

FEATURE_SERVICE_TEMPLATE = """\
# A model's features across feature sets: Feast's FeatureService {name}_v1. Narrow each set to the features the
# model reads with `features: [...]`; a released version is immutable (a change is v2).
kind: FeatureService
name: {name}
version: 1
description: Describe the model these features feed.
owner: {owner}
features:
{entries}"""


def _check_name(name: str, what: str) -> None:
    if not re.match(NAME_PATTERN, name):
        raise ConfigError(f"{what} {name!r}: use lower-case letters, digits and _ (start with a letter, at most "
                          "47 characters)")


def _write_checked(root: Path, path: Path, text: str) -> Path:
    """Write ``path`` only if it is new, and keep it only if the whole directory still validates."""
    if path.exists():
        raise ConfigError(f"{path} exists; a released contract changes by a new version file, not by init")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    try:
        load_contracts(root)
    except ContractErrors:
        path.unlink()
        raise
    return path


def init_feature_set(root: Path, name: str, entity: str, join_key: str, key_dtype: str, table: str,
                     owner: str) -> Path:
    for value, what in ((name, "feature set"), (entity, "entity"), (join_key, "join key"), (table, "table")):
        _check_name(value, what)
    if key_dtype not in ("int64", "int32", "string"):
        raise ConfigError(f"--key-dtype {key_dtype!r}: an entity key is int64, int32 or string")
    text = FEATURE_SET_TEMPLATE.format(name=name, entity=entity, join_key=join_key, key_dtype=key_dtype,
                                       table=table, owner=owner)
    return _write_checked(root, root / "feature_sets" / name / "v1.yaml", text)


def init_feature_service(root: Path, name: str, feature_sets: list[str], owner: str) -> Path:
    _check_name(name, "feature service")
    if not feature_sets:
        raise ConfigError("a feature service reads at least one feature set: give --feature-set NAME (repeatable)")
    contracts = load_contracts(root)
    entries = []
    for feature_set in feature_sets:
        newest = contracts.get(feature_set)  # a clear error for an unknown name
        entries.append(f"  - feature_set: {newest.name}\n    version: {newest.version}\n")
    text = FEATURE_SERVICE_TEMPLATE.format(name=name, owner=owner, entries="".join(entries))
    return _write_checked(root, root / "feature_services" / name / "v1.yaml", text)
