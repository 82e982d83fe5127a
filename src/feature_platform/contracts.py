"""Feature-set contracts: the typed model, the loader, schema_hash, the lock and the compatibility diff.

A contract is one YAML file per feature set *and version*. In Git it lives at
``contracts/feature_sets/<name>/v<N>.yaml``; Kubernetes mounts the same files from a ConfigMap whose keys are
the relative paths with ``/`` replaced by ``.`` (``feature_sets.<name>.v<N>.yaml``), so the loader accepts both.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from feature_platform.errors import CompatibilityError, ContractError, ContractErrors

# Names end up in S3 keys, Redis keys, Feast object names, DAG ids and (with _ -> -) Kubernetes names.
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,46}$"
SafeName = Annotated[str, Field(pattern=NAME_PATTERN)]

DType = Literal["int32", "int64", "float32", "float64", "string", "bool", "timestamp",
                "array<int32>", "array<int64>", "array<float32>", "array<float64>", "array<string>", "array<bool>"]
DTYPES: tuple[str, ...] = DType.__args__  # type: ignore[attr-defined]
NUMERIC_DTYPES = ("int32", "int64", "float32", "float64")


def is_array(dtype: str) -> bool:
    """An array feature (an embedding, a list of ids): ``array<element>``."""
    return dtype.startswith("array<")


def element_dtype(dtype: str) -> str:
    """The element type of ``array<element>``."""
    return dtype[len("array<"):-1]


# Feast's type of each dtype, as ``str(feast.types.X)`` spells it (arrays: ``Array(Float32)``).
_FEAST_SCALARS = {"int32": "Int32", "int64": "Int64", "float32": "Float32", "float64": "Float64",
                  "string": "String", "bool": "Bool", "timestamp": "UnixTimestamp"}
FEAST_TYPE_NAMES: dict[str, str] = {
    dtype: f"Array({_FEAST_SCALARS[element_dtype(dtype)]})" if is_array(dtype) else _FEAST_SCALARS[dtype]
    for dtype in DTYPES}
DTYPE_OF_FEAST_TYPE: dict[str, str] = {name: dtype for dtype, name in FEAST_TYPE_NAMES.items()}
EntityDType = Literal["int64", "int32", "string"]
MAX_ENTITIES = 4  # key columns of one feature set (pairs, triples; more is a modelling smell)
SourceDType = Literal["int32", "int64", "float32", "float64", "string", "bool", "timestamp", "timestamptz", "date"]

T = TypeVar("T")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str) -> int:
    """``"30d"`` -> seconds. Units: s, m, h, d, w."""
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{value!r} is not a duration like '12h', '30d' or '2w' (units s, m, h, d, w; > 0)")
    seconds = int(match.group(1)) * _DURATION_SECONDS[match.group(2)]
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{value!r} is longer than 3650d (Feast's TTL is a protobuf Duration; keep it realistic)")
    return seconds


MAX_DURATION_SECONDS = 3650 * 86400


class StrictModel(BaseModel):
    """Unknown keys are errors, so a typo never silently drops a setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Constraints(StrictModel):
    min: float | None = None
    max: float | None = None
    allowed_values: list[str | int | float | bool] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Constraints:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class FeatureMonitoring(StrictModel):
    """Per-feature overrides of the feature set's monitoring thresholds."""

    drift_threshold: float | None = Field(default=None, gt=0, description="PSI (numbers) or largest category "
                                          "share change (strings, bools) above which the feature has drifted")
    max_null_rate_increase: float | None = Field(default=None, ge=0, le=1)
    ignore_drift: bool = False


class Feature(StrictModel):
    name: SafeName
    dtype: DType
    description: str = Field(min_length=1)
    nullable: bool = True
    constraints: Constraints | None = None
    pii: bool = Field(default=False, description="personal data: masked in exports and training sets unless the "
                                                 "reader's team is in access.pii_readers")
    monitoring: FeatureMonitoring | None = None
    dims: int | None = Field(default=None, ge=1, le=65536, description="an array's length (an embedding's "
                             "dimensions): the quality gate refuses any other")
    nullable_elements: bool = Field(default=False, description="an array may hold null elements (refused "
                                    "otherwise); online, Feast drops them (strings: empty)")

    @model_validator(mode="after")
    def _constraints_fit_dtype(self) -> Feature:
        c = self.constraints
        if c and (c.min is not None or c.max is not None) and self.dtype not in NUMERIC_DTYPES:
            raise ValueError(f"min/max constraints need a numeric dtype, not {self.dtype}")
        if c and is_array(self.dtype):
            raise ValueError(f"constraints apply to scalar features, not {self.dtype}; use dims for its length")
        if not is_array(self.dtype) and (self.dims is not None or self.nullable_elements):
            raise ValueError(f"dims and nullable_elements are for array dtypes (array<float32>, ...), not "
                             f"{self.dtype}")
        return self


class Entity(StrictModel):
    name: SafeName
    join_key: SafeName
    dtype: EntityDType
    description: str = ""


class Source(StrictModel):
    """Where the raw rows are and how they become feature rows.

    ``table`` is a Parquet dataset under the environment's ``raw_data.uri``; ``sql`` is DuckDB SQL that reads
    it as the view ``source`` and returns exactly the contract's columns.
    """

    table: SafeName
    sql: str = Field(min_length=1)
    columns: dict[SafeName, SourceDType] | None = Field(
        default=None, description="the raw table's columns and types; declared, the SQL is checked against them "
                                  "by `featurectl contracts validate` (in CI) instead of failing in the DAG")
    timezone: str | None = Field(
        default=None, description="IANA zone of the raw table's timestamps without time zone (e.g. Europe/Berlin); "
                                  "without it such timestamps are refused instead of silently read as UTC")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str | None) -> str | None:
        if zone is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {zone!r}: use an IANA name such as UTC or Europe/Berlin"
                                 ) from None
        return zone

    @field_validator("sql")
    @classmethod
    def _reads_source(cls, sql: str) -> str:
        if not re.search(r"\bsource\b", sql, re.IGNORECASE):
            raise ValueError("the SQL must read the raw table through the view named `source`")
        return sql


class BuildMode(StrictModel):
    """How a build runs. ``full`` (the default): the SQL over the whole raw table, one snapshot. ``incremental``:
    the SQL per data interval (``$interval_start``/``$interval_end``) over the raw rows of ``[start - lookback,
    end)`` by ``time_column``; the build keeps the rows whose event time is in ``[start, end)``, written as
    partitions of ``partition`` each (docs/builds.md#incremental-builds)."""

    mode: Literal["full", "incremental"] = "full"
    partition: str = "1d"
    lookback: str | None = None  # e.g. 30d for a 30-day window; none: only the interval's raw rows
    time_column: SafeName | None = Field(
        default=None, description="the raw table's event-time column the interval prunes (incremental builds)")

    @field_validator("partition", "lookback")
    @classmethod
    def _is_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _incremental_needs_time(self) -> BuildMode:
        if self.mode == "incremental" and self.time_column is None:
            raise ValueError("time_column is missing: an incremental build prunes the raw table by event time; "
                             "name the raw column holding it (e.g. time_column: ts)")
        seconds = parse_duration(self.partition)
        if seconds < 3600 or (86400 % seconds and seconds % 86400):
            raise ValueError(f"partition {self.partition!r}: use whole hours dividing a day (1h, 6h ...) or "
                             "whole days (1d, 7d)")
        return self

    @property
    def incremental(self) -> bool:
        return self.mode == "incremental"

    @property
    def partition_seconds(self) -> int:
        return parse_duration(self.partition)

    @property
    def lookback_seconds(self) -> int:
        return parse_duration(self.lookback) if self.lookback else 0


TeamName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]


class Access(StrictModel):
    """Who may read the feature set (Feast ``Permission`` objects are derived from this)."""

    team: TeamName | None = Field(default=None, description="owning team; default: the owner's e-mail local part")
    readers: list[TeamName] = Field(default_factory=list, description="teams that may read (online and offline)")
    pii_readers: list[TeamName] = Field(default_factory=list, description="teams that see PII features unmasked "
                                                                          "(must also be readers or the owner)")
    writers: list[TeamName] = Field(default_factory=list, description="teams that may push rows (with push: true); "
                                                                      "default: the owner team")


class Monitoring(StrictModel):
    """Thresholds of `featurectl monitor` for this feature set (defaults in parentheses)."""

    max_staleness: str | None = Field(default=None, description="newest event time older than this is stale "
                                                                "(the ttl)")
    max_null_rate_increase: float = Field(default=0.05, ge=0, le=1, description="null share rise vs the "
                                                                                "previous build (0.05)")
    drift_threshold: float = Field(default=0.2, gt=0, description="PSI for numbers (0.2)")
    category_share_threshold: float = Field(default=0.1, gt=0, le=1, description="largest category share change "
                                                                                 "for strings and bools (0.1)")
    max_row_count_change: float = Field(default=0.5, gt=0, description="relative row count change (0.5)")

    @field_validator("max_staleness")
    @classmethod
    def _staleness_is_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


def _team_of(owner: str) -> str:
    """payments-ml@example.com -> payments-ml (the default owning team)."""
    local = owner.split("@", 1)[0].strip().lower()
    return re.sub(r"[^a-z0-9_.-]+", "-", local).strip("-.") or "owners"


class FeatureSetContract(StrictModel):
    kind: Literal["FeatureSet"]
    name: SafeName
    version: int = Field(ge=1)
    description: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    # The entity key: one entity (``entity:``), or several for pair features (``entities:``, customer x merchant;
    # Feast's several entities on one view). Written either way; held as a list, in the declared order.
    entities: list[Entity] = Field(min_length=1, max_length=MAX_ENTITIES)
    timestamp_field: SafeName
    ttl: str
    online: bool = True
    # Also serve the newest version under the feature set's own name (a moving alias). Off by default: every
    # version has its own feature service (<name>_v<N>), so a breaking version never reaches pinned models.
    latest_alias: bool = False
    # Fresh rows from a stream processor between builds: a Feast PushSource <feature_set>_v<N>_push, POST /push
    # on the server and `featurectl push` (see push.py), writable by access.writers.
    push: bool = False
    pii: bool
    # Lifecycle (ODCS's status): a retired version is no longer built, applied or served; its file stays (the
    # lock keeps released versions) and `featurectl apply` removes its Feast objects, recorded in the audit log.
    status: Literal["active", "deprecated", "retired"] = "active"
    access: Access = Field(default_factory=Access)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    tags: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,62}$")], str] = Field(default_factory=dict)
    source: Source
    build: BuildMode = Field(default_factory=BuildMode)
    features: list[Feature] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_entity_or_several(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "entity" not in data:
            return data
        if "entities" in data:
            raise ValueError("declare the key as `entity:` (one) or `entities:` (several), not both")
        data = dict(data)
        data["entities"] = [data.pop("entity")]
        return data

    @field_validator("entities")
    @classmethod
    def _distinct_entities(cls, entities: list[Entity]) -> list[Entity]:
        for what in ("name", "join_key"):
            names = [getattr(e, what) for e in entities]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"entity {what} {', '.join(twice)} is listed twice; each key column once")
        return entities

    @field_validator("ttl")
    @classmethod
    def _ttl_is_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("timestamp_field")
    @classmethod
    def _timestamp_is_not_the_key(cls, value: str, info: ValidationInfo) -> str:
        if value in {e.join_key for e in info.data.get("entities") or []}:
            raise ValueError(f"{value!r} is an entity's join_key; the event timestamp needs its own column")
        return value

    @field_validator("features")
    @classmethod
    def _unique_columns(cls, features: list[Feature], info: ValidationInfo) -> list[Feature]:
        timestamp = info.data.get("timestamp_field")
        reserved = {e.join_key for e in info.data.get("entities") or []} | ({timestamp} if timestamp else set())
        seen: set[str] = set()
        for index, feature in enumerate(features):
            if feature.name in reserved:
                raise ValueError(f"features[{index}] {feature.name!r} clashes with the join key or timestamp column")
            if feature.name in seen:
                raise ValueError(f"features[{index}] {feature.name!r} is declared twice; feature names are unique")
            seen.add(feature.name)
        return features

    @model_validator(mode="after")
    def _interval_parameters_need_incremental(self) -> FeatureSetContract:
        used = sorted(set(re.findall(r"\$(interval_start|interval_end)\b", self.source.sql)))
        if used and not self.build.incremental:
            raise ValueError(f"source.sql uses ${' and $'.join(used)}, which only incremental builds set; add "
                             "`build: {mode: incremental, partition: 1d, time_column: <raw event-time column>}`")
        return self

    @model_validator(mode="after")
    def _pii_readers_can_read(self) -> FeatureSetContract:
        allowed = {self.owner_team, *self.access.readers}
        outsiders = [t for t in self.access.pii_readers if t not in allowed]
        if outsiders:
            raise ValueError(f"access.pii_readers: {', '.join(outsiders)} may not read this feature set at all; "
                             "add them to access.readers")
        return self

    @property
    def ttl_seconds(self) -> int:
        return parse_duration(self.ttl)

    @property
    def owner_team(self) -> str:
        return self.access.team or _team_of(self.owner)

    @property
    def reader_teams(self) -> list[str]:
        return sorted({self.owner_team, *self.access.readers})

    @property
    def writer_teams(self) -> list[str]:
        """Who may push rows: access.writers, or the owner team."""
        return sorted(set(self.access.writers or [self.owner_team]))

    @property
    def pii_features(self) -> list[str]:
        """Features masked for readers outside pii_readers: the ones marked ``pii: true``; a feature set marked
        ``pii: true`` without per-feature marks treats every feature as personal data."""
        marked = [f.name for f in self.features if f.pii]
        if marked:
            return marked
        return [f.name for f in self.features] if self.pii else []

    @property
    def retired(self) -> bool:
        return self.status == "retired"

    @property
    def version_label(self) -> str:
        return f"v{self.version}"

    @property
    def feature_view_name(self) -> str:
        """One Feast feature view per contract version, so v1 readers keep working after v2 ships."""
        return f"{self.name}_{self.version_label}"

    @property
    def join_keys(self) -> list[str]:
        """The entity key's columns, in the declared order (builds sort by them, then by event time)."""
        return [e.join_key for e in self.entities]

    @property
    def key_dtypes(self) -> dict[str, str]:
        """join key -> dtype, in the declared order."""
        return {e.join_key: e.dtype for e in self.entities}

    @property
    def composite(self) -> bool:
        return len(self.entities) > 1

    @property
    def columns(self) -> list[str]:
        return [*self.join_keys, self.timestamp_field, *(f.name for f in self.features)]

    def schema_dict(self) -> dict[str, Any]:
        """The part of the contract that defines the data's shape; see :func:`schema_hash`."""
        keys = [{"name": e.name, "join_key": e.join_key, "dtype": e.dtype} for e in self.entities]
        return {
            "name": self.name,
            # One entity keeps the form it always had, so the hashes of released single-key contracts stand.
            **({"entities": keys} if self.composite else {"entity": keys[0]}),
            "timestamp_field": self.timestamp_field,
            "ttl_seconds": self.ttl_seconds,
            "features": sorted(
                # An array's shape is its dims and element nullability (written only for arrays: the hashes of
                # scalar contracts stay as they were).
                ({"name": f.name, "dtype": f.dtype, "nullable": f.nullable,
                  **({"dims": f.dims, "nullable_elements": f.nullable_elements} if is_array(f.dtype) else {})}
                 for f in self.features),
                key=lambda f: f["name"],
            ),
        }

    @property
    def schema_hash(self) -> str:
        return schema_hash(self)

    @property
    def transform_hash(self) -> str:
        """Changes when the rows a build would produce can change (source table or SQL)."""
        zone = {"timezone": self.source.timezone} if self.source.timezone else {}  # unchanged hashes without one
        # Incremental builds: the partitioning and the raw rows the SQL sees change the rows (full: not written).
        mode = {"build": self.build.model_dump()} if self.build.incremental else {}
        payload = json.dumps({"table": self.source.table, "sql": " ".join(self.source.sql.split()), **zone, **mode},
                             sort_keys=bool(mode))
        return hashlib.sha256(payload.encode()).hexdigest()


def schema_hash(contract: FeatureSetContract) -> str:
    """Stable across key order, comments, whitespace and descriptions; changes with any name, type,
    nullability, entity, timestamp or TTL change."""
    canonical = json.dumps(contract.schema_dict(), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------- loading


# libyaml's parser where PyYAML was built with it (~10x faster: a DAG parse reads every contract); same safety.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ServiceFeatures(StrictModel):
    """Features of one feature-set version in a model's feature service."""

    feature_set: SafeName
    version: int = Field(ge=1)
    features: list[SafeName] | None = None  # omitted: every feature of that version

    @field_validator("features")
    @classmethod
    def _listed_once(cls, features: list[str] | None) -> list[str] | None:
        if features is not None:
            if not features:
                raise ValueError("an empty list selects nothing; omit `features` for every feature of the version")
            seen: set[str] = set()
            for index, name in enumerate(features):
                if name in seen:
                    raise ValueError(f"[{index}] {name!r} is listed twice")
                seen.add(name)
        return features


class FeatureServiceContract(StrictModel):
    """A model's features across feature sets: one file per service and version,
    ``contracts/feature_services/<name>/v<N>.yaml``; Feast's FeatureService ``<name>_v<N>``."""

    kind: Literal["FeatureService"]
    name: SafeName
    version: int = Field(ge=1)
    description: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    status: Literal["active", "deprecated", "retired"] = "active"
    tags: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,62}$")], str] = Field(default_factory=dict)
    features: list[ServiceFeatures] = Field(min_length=1)

    @field_validator("features")
    @classmethod
    def _sets_listed_once(cls, features: list[ServiceFeatures]) -> list[ServiceFeatures]:
        seen: dict[tuple[str, int], int] = {}
        for index, entry in enumerate(features):
            key = (entry.feature_set, entry.version)
            if key in seen:
                raise ValueError(f"[{index}] {entry.feature_set} v{entry.version} is listed twice (also at "
                                 f"[{seen[key]}]); list its features once")
            seen[key] = index
        return features

    @property
    def version_label(self) -> str:
        return f"v{self.version}"

    @property
    def service_name(self) -> str:
        """The Feast FeatureService: ``<name>_v<N>``, so a model pins the version it was trained on."""
        return f"{self.name}_{self.version_label}"

    @property
    def retired(self) -> bool:
        return self.status == "retired"

    @property
    def owner_team(self) -> str:
        return _team_of(self.owner)


class _UniqueKeyLoader(_SafeLoader):
    """Safe YAML loader that rejects duplicate mapping keys instead of silently keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# Bounds on what a contract file may be: a ConfigMap holds 1 MiB, and no contract needs deep nesting or more
# than a few thousand values; past these a file is a mistake or an attack (an alias bomb expands exponentially).
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_NODES = 20_000


def _check_yaml_shape(text: str, shown: str) -> None:
    """Depth and expanded size from the parser's event stream (iterative: no recursion, nothing expanded), before
    PyYAML builds any object. Aliases count as the size of what they point to."""
    sizes: dict[str, int] = {}
    stack: list[list[Any]] = [[None, 0]]
    try:
        for event in yaml.parse(text, Loader=_SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                stack.append([event.anchor, 1])
                if len(stack) - 1 > MAX_DEPTH:
                    raise ContractError(shown, f"line {event.start_mark.line + 1}",
                                        f"nested deeper than {MAX_DEPTH} levels; a contract is a few levels deep")
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                anchor, size = stack.pop()
            elif isinstance(event, yaml.ScalarEvent):
                anchor, size = event.anchor, 1
            elif isinstance(event, yaml.AliasEvent):
                anchor, size = None, sizes.get(event.anchor, 1)
            else:
                continue
            if anchor:
                sizes[anchor] = size
            stack[-1][1] += size
            if stack[-1][1] > MAX_NODES or size > MAX_NODES:
                raise ContractError(shown, f"line {event.start_mark.line + 1}",
                                    f"expands to more than {MAX_NODES} values (YAML aliases?); write it out plainly")
    except yaml.YAMLError:
        return  # read_yaml reports syntax errors with their line


def read_yaml(path: Path, display: str | None = None) -> dict[str, Any]:
    """Parse one YAML document safely; any problem becomes a ContractError naming the file."""
    shown = display or str(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ContractError(shown, "", f"{path.stat().st_size} bytes: larger than {MAX_FILE_BYTES} (a ConfigMap "
                                "holds 1 MiB); split it")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ContractError(shown, "", f"cannot read the file ({exc})") from exc
    _check_yaml_shape(text, shown)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ContractError(shown, where, f"invalid YAML: {problem}; fix the syntax") from exc
    if not isinstance(data, dict):
        raise ContractError(shown, "", "the file must hold one YAML mapping (key: value pairs), not "
                            f"{type(data).__name__}")
    return data


def _field_path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic marks an invalid dict key this way; the key itself is already in the path
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at ``loc``'s parent, to suggest the fix for an unknown key."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = getattr(current, "model_fields", {}).get(part) if isinstance(current, type) else None
        if info is None:
            return []
        annotation = info.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                current = candidate
                break
            for inner in getattr(candidate, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    current = inner
                    break
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _explain(error: dict[str, Any], model: type[BaseModel]) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "missing" and tuple(error["loc"]) == ("entities",):
        return "required field is missing; add `entity:` (or `entities:`, a list, for a key of several columns)"
    if kind == "missing":
        return "required field is missing; add it"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, tuple(error["loc"]))
        close = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown field; {hint}allowed fields: {', '.join(allowed)}"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        names = re.findall(r"'([^']*)'", expected) or [expected]
        return f"{value!r} is not one of {', '.join(names)}"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") != NAME_PATTERN:
        return f"{value!r} must match the pattern {ctx.get('pattern')}"
    if kind == "string_pattern_mismatch":
        return (f"{value!r} is not a safe name: use lower-case letters, digits and underscores, starting with a "
                f"letter, at most 47 characters (pattern {ctx.get('pattern')})")
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']} (got {value!r})"


M = TypeVar("M", bound=BaseModel)


def validate_model(model: type[M], data: dict[str, Any], file: str) -> M:
    """Validate ``data`` against ``model``; every problem is reported with file and field path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [ContractError(file, _field_path(_as_written(e["loc"], data)), _explain(dict(e), model))
                  for e in exc.errors()]
        raise ContractErrors(errors) from exc


def _as_written(loc: tuple[Any, ...], data: dict[str, Any]) -> tuple[Any, ...]:
    """A feature set's single ``entity:`` is held as ``entities[0]``; errors name the field the file has."""
    if loc[:1] != ("entities",):
        return loc
    if "entity" in data and "entities" not in data:
        return ("entity", *loc[2:])
    if "entity" not in data and "entities" not in data:
        return ("entity",)  # neither: name the usual form (the message says both)
    return loc


_GIT_PATH = re.compile(r"(?:^|/)feature_sets/(?P<name>[^/]+)/v(?P<version>\d+)\.ya?ml$")
_FLAT_PATH = re.compile(r"(?:^|/)feature_sets\.(?P<name>[^/.]+)\.v(?P<version>\d+)\.ya?ml$")


def expected_identity(relative_path: str) -> tuple[str, int] | None:
    """(name, version) implied by a contract's path, in Git or ConfigMap layout; None for other paths."""
    match = _GIT_PATH.search(relative_path) or _FLAT_PATH.search(relative_path)
    return (match["name"], int(match["version"])) if match else None


_SERVICE_GIT_PATH = re.compile(r"(?:^|/)feature_services/(?P<name>[^/]+)/v(?P<version>\d+)\.ya?ml$")
_SERVICE_FLAT_PATH = re.compile(r"(?:^|/)feature_services\.(?P<name>[^/.]+)\.v(?P<version>\d+)\.ya?ml$")


def parse_feature_service(data: dict[str, Any], file: str) -> FeatureServiceContract:
    service = validate_model(FeatureServiceContract, data, file)
    match = _SERVICE_GIT_PATH.search(file) or _SERVICE_FLAT_PATH.search(file)
    if match and (match["name"], int(match["version"])) != (service.name, service.version):
        problem_field = "name" if match["name"] != service.name else "version"
        raise ContractError(
            file, problem_field,
            f"the file path says {match['name']} v{match['version']} but the file says {service.name} "
            f"v{service.version}; rename the file to feature_services/{service.name}/v{service.version}.yaml "
            "or fix the field")
    return service


def load_feature_service(path: Path | str, display: str | None = None) -> FeatureServiceContract:
    path = Path(path)
    shown = display or str(path)
    return parse_feature_service(read_yaml(path, shown), shown)


def parse_feature_set(data: dict[str, Any], file: str) -> FeatureSetContract:
    contract = validate_model(FeatureSetContract, data, file)
    identity = expected_identity(file)
    if identity and identity != (contract.name, contract.version):
        name, version = identity
        problem_field = "name" if name != contract.name else "version"
        raise ContractError(
            file, problem_field,
            f"the file path says {name} v{version} but the file says {contract.name} v{contract.version}; "
            f"rename the file to feature_sets/{contract.name}/v{contract.version}.yaml or fix the field",
        )
    return contract


def load_feature_set(path: Path | str, display: str | None = None) -> FeatureSetContract:
    path = Path(path)
    shown = display or str(path)
    return parse_feature_set(read_yaml(path, shown), shown)


def iter_contract_files(root: Path) -> Iterator[tuple[Path, str]]:
    """Every ``*.yaml`` below ``root`` exactly once, as (path, path relative to root).

    Kubernetes mounts a ConfigMap as symlinks into a hidden ``..data`` -> ``..<timestamp>`` directory; names
    starting with ``.`` are skipped so each contract is read once, through its visible symlink.
    """
    found = []
    seen: dict[tuple[int, int], str] = {}
    for directory, subdirs, files in os.walk(root, followlinks=True):
        here = os.stat(directory)
        relative_dir = Path(directory).relative_to(root).as_posix()
        if (here.st_dev, here.st_ino) in seen:  # a symlink back to a directory already walked
            raise ContractError(display_path(root, relative_dir), "",
                                f"is a symlink loop back to {display_path(root, seen[here.st_dev, here.st_ino])}; "
                                "remove the link")
        seen[(here.st_dev, here.st_ino)] = relative_dir
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in files:
            path = Path(directory) / name
            if not name.startswith(".") and path.suffix in (".yaml", ".yml") and path.is_file():
                found.append((path, path.relative_to(root).as_posix()))
    yield from sorted(found, key=lambda item: item[1])


@dataclass(frozen=True)
class ContractSet:
    """All contracts of one directory, indexed."""

    root: Path
    feature_sets: dict[tuple[str, int], FeatureSetContract] = field(default_factory=dict)
    files: dict[tuple[str, int], str] = field(default_factory=dict)
    services: dict[tuple[str, int], FeatureServiceContract] = field(default_factory=dict)
    service_files: dict[tuple[str, int], str] = field(default_factory=dict)

    # -- feature services (models)
    def service_names(self) -> list[str]:
        return sorted({name for name, _ in self.services})

    def service(self, name: str, version: int | None = None) -> FeatureServiceContract:
        versions = [self.services[k] for k in sorted(k for k in self.services if k[0] == name)]
        if not versions:
            known = ", ".join(self.service_names()) or "none"
            raise ContractError(str(self.root), "", f"no feature service named {name!r}; known: {known}")
        if version is None:
            live = [s for s in versions if not s.retired]
            return (live or versions)[-1]
        for service in versions:
            if service.version == version:
                return service
        have = ", ".join(s.version_label for s in versions)
        raise ContractError(str(self.root), "", f"feature service {name} has no version v{version}; have {have}")

    def all_services(self) -> list[FeatureServiceContract]:
        return [self.services[k] for k in sorted(self.services)]

    def live_services(self) -> list[FeatureServiceContract]:
        return [s for s in self.all_services() if not s.retired]

    def resolve(self, service: FeatureServiceContract) -> list[tuple[FeatureSetContract, list[str]]]:
        """Each feature-set version of a service with the features it takes, in the service's order."""
        out = []
        for entry in service.features:
            contract = self.feature_sets[(entry.feature_set, entry.version)]
            out.append((contract, list(entry.features) if entry.features else [f.name for f in contract.features]))
        return out

    def service_schema_hash(self, service: FeatureServiceContract) -> str:
        """Changes when what the model reads changes: the set versions (their schemas) and the features taken."""
        payload = {"name": service.name, "features": [
            {"feature_set": c.name, "version": c.version, "schema_hash": c.schema_hash, "features": names}
            for c, names in self.resolve(service)]}
        return "sha256:" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def names(self) -> list[str]:
        return sorted({name for name, _ in self.feature_sets})

    def versions(self, name: str) -> list[FeatureSetContract]:
        return [self.feature_sets[k] for k in sorted(k for k in self.feature_sets if k[0] == name)]

    def get(self, name: str, version: int | None = None) -> FeatureSetContract:
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise ContractError(str(self.root), "", f"no feature set named {name!r}; known: {known}")
        if version is None:  # the newest live version (a retired newest one only if all are retired)
            return (self.live_versions(name) or versions)[-1]
        for contract in versions:
            if contract.version == version:
                return contract
        have = ", ".join(c.version_label for c in versions)
        raise ContractError(str(self.root), "", f"{name} has no version v{version}; have {have}")

    def latest_versions(self) -> list[FeatureSetContract]:
        """The newest live version of each feature set (a set whose versions are all retired has none)."""
        return [live[-1] for name in self.names() if (live := self.live_versions(name))]

    def all(self) -> list[FeatureSetContract]:
        """Every version, retired ones included (the lock and the audit know them)."""
        return [self.feature_sets[k] for k in sorted(self.feature_sets)]

    def live(self) -> list[FeatureSetContract]:
        """The versions that are built, applied, materialized and served: all but retired ones."""
        return [c for c in self.all() if not c.retired]

    def live_versions(self, name: str) -> list[FeatureSetContract]:
        return [c for c in self.versions(name) if not c.retired]


def _is_feature_set_file(relative: str) -> bool:
    return relative.startswith("feature_sets/") or relative.startswith("feature_sets.")


# How many times each kind of catalogue was parsed in this process (a test keeps it at one per command).
parse_counts: Counter[str] = Counter()
_parsed: dict[tuple[str, str], tuple[tuple[Any, ...], Any]] = {}


def files_fingerprint(root: Path) -> tuple[Any, ...]:
    """What the catalogue under ``root`` is made of: each YAML file's path, inode, size and mtime (a Git checkout
    or a ConfigMap swap changes at least one of them)."""
    out = []
    for path, relative in iter_contract_files(root):
        stat = path.stat()
        out.append((relative, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(out)


def parsed_once(kind: str, root: Path, load: Callable[[Path], T]) -> T:
    """``load(root)``, parsed once per process while the files stay the same: the edges (a CLI command, a DAG
    task, the server, the Feast plugins) ask for the catalogue many times. The result is shared: do not mutate."""
    key = (kind, str(Path(root).absolute()))
    fingerprint = files_fingerprint(root) if Path(root).is_dir() else ()
    hit = _parsed.get(key)
    if hit is not None and hit[0] == fingerprint:
        return hit[1]
    value = load(root)
    parse_counts[kind] += 1
    _parsed[key] = (fingerprint, value)
    return value


def load_contracts(root: Path | str) -> ContractSet:
    """Load and validate every feature-set contract under ``root``; all errors are collected and raised together."""
    root = Path(root)
    if not root.is_dir():
        raise ContractErrors([ContractError(str(root), "", "contracts directory does not exist; set "
                                            "FEATURE_PLATFORM_CONTRACTS or pass --contracts")])
    contracts = ContractSet(root=root)
    errors: list[ContractError] = []
    service_files = []
    set_files = []
    for path, relative in iter_contract_files(root):
        if _is_feature_service_file(relative):
            service_files.append((path, relative))
        elif _is_feature_set_file(relative):
            set_files.append((path, relative))
    for shown, contract in load_each(root, set_files, load_feature_set, errors):
        key = (contract.name, contract.version)
        if key in contracts.feature_sets:
            errors.append(ContractError(shown, "version", f"{contract.name} v{contract.version} is also "
                                        f"declared in {contracts.files[key]}; each version lives in one file"))
            continue
        contracts.feature_sets[key] = contract
        contracts.files[key] = shown
    errors.extend(_check_entities_agree(contracts))
    for shown, service in load_each(root, service_files, load_feature_service, errors):
        key = (service.name, service.version)
        if key in contracts.services:
            errors.append(ContractError(shown, "version", f"feature service {service.name} v{service.version} is "
                                        f"also declared in {contracts.service_files[key]}; one file per version"))
            continue
        problems = _check_service(contracts, service, shown)
        errors.extend(problems)
        if not problems:
            contracts.services[key] = service
            contracts.service_files[key] = shown
    if errors:
        raise ContractErrors(errors)
    return contracts


def load_each(root: Path, files: list[tuple[Path, str]], load: Callable[[Path, str], T],
              errors: list[ContractError]) -> Iterator[tuple[str, T]]:
    """(shown path, loaded object) for each file that loads; the errors of those that do not go to ``errors``,
    so one run reports every broken file."""
    for path, relative in files:
        shown = display_path(root, relative)
        try:
            yield shown, load(path, shown)
        except ContractErrors as exc:
            errors.extend(exc.errors)
        except ContractError as exc:
            errors.append(exc)


def _is_feature_service_file(relative: str) -> bool:
    return relative.startswith("feature_services/") or relative.startswith("feature_services.")


def _check_service(contracts: ContractSet, service: FeatureServiceContract, file: str) -> list[ContractError]:
    """A service names feature-set versions and features that exist (and are live, unless it is retired itself);
    its Feast name clashes with no feature set's."""
    errors = []
    if service.name in contracts.names() or any(service.service_name == c.feature_view_name
                                                 for c in contracts.all()):
        errors.append(ContractError(file, "name", f"{service.name!r} is also a feature set (Feast would get two "
                                    "feature services of one name); name the model's service differently"))
    for index, entry in enumerate(service.features):
        where = f"features[{index}]"
        versions = contracts.versions(entry.feature_set)
        if not versions:
            names = ", ".join(contracts.names()) or "none"
            errors.append(ContractError(file, f"{where}.feature_set", f"no feature set named "
                                        f"{entry.feature_set!r}; known: {names}"))
            continue
        contract = contracts.feature_sets.get((entry.feature_set, entry.version))
        if contract is None:
            have = ", ".join(c.version_label for c in versions)
            errors.append(ContractError(file, f"{where}.version", f"{entry.feature_set} has no version "
                                        f"v{entry.version}; have {have}"))
            continue
        if contract.retired and not service.retired:
            errors.append(ContractError(file, f"{where}.version", f"{entry.feature_set} v{entry.version} is "
                                        "retired (no longer built or served); use a live version in a new service "
                                        "version, or retire this one"))
        features_known = {f.name for f in contract.features}
        for position, name in enumerate(entry.features or []):
            if name not in features_known:
                errors.append(ContractError(file, f"{where}.features[{position}]", f"{entry.feature_set} "
                                            f"v{entry.version} has no feature {name!r}; it has "
                                            f"{', '.join(sorted(features_known))}"))
    return errors


def display_path(root: Path, relative: str) -> str:
    """How a contract file is named in messages: ``contracts/<relative>`` for the repo, else the full path."""
    return f"{root.name}/{relative}" if root.name == "contracts" else str(root / relative)


def _check_entities_agree(contracts: ContractSet) -> list[ContractError]:
    """One entity name means one join key and type everywhere, or Feast would get two different entities."""
    lock = read_lock(contracts.root) if (contracts.root / LOCK_FILE).exists() else {}

    def released(key: tuple[str, int]) -> bool:
        return f"v{key[1]}" in lock.get(key[0], {})

    # Released versions first: the declaration that disagrees with them is the new one, and gets the blame.
    first: dict[str, tuple[Entity, str]] = {}
    errors = []
    for key, contract in sorted(contracts.feature_sets.items(), key=lambda item: (not released(item[0]), item[0])):
        for entity in contract.entities:
            if entity.name in first:
                seen, file = first[entity.name]
                if (seen.join_key, seen.dtype) != (entity.join_key, entity.dtype):
                    errors.append(ContractError(
                        contracts.files[key], "entity" if not contract.composite else "entities",
                        f"entity {entity.name!r} is declared with join_key {entity.join_key}/{entity.dtype} here "
                        f"but {seen.join_key}/{seen.dtype} in {file}; one entity has one join key and type"))
            else:
                first[entity.name] = (entity, contracts.files[key])
    return errors


def json_schema() -> dict[str, Any]:
    """JSON Schema of the feature-set contract format (for editors and CI)."""
    schema = FeatureSetContract.model_json_schema()
    # The model holds the key as a list; a file writes one entity (`entity:`) or several (`entities:`).
    schema["properties"]["entity"] = {"$ref": "#/$defs/Entity"}
    schema["required"] = [name for name in schema["required"] if name != "entities"]
    schema["oneOf"] = [{"required": ["entity"]}, {"required": ["entities"]}]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "feature-platform FeatureSet contract"
    return schema


# ------------------------------------------------------------------------------------------ lock and diff

LOCK_FILE = "contracts.lock"


def read_lock(root: Path, section: str = "feature_sets") -> dict[str, dict[str, str]]:
    """{feature set: {"v1": schema_hash}} of released versions (``section="feature_services"``: of services);
    empty when there is no lock yet."""
    path = root / LOCK_FILE
    if not path.exists():
        return {}
    data = read_yaml(path, display_path(root, LOCK_FILE))
    return {str(name): {str(label): str(digest) for label, digest in (versions or {}).items()}
            for name, versions in (data.get(section) or {}).items()}


def write_lock(root: Path, contracts: ContractSet) -> dict[str, dict[str, str]]:
    """Record every version's schema_hash. Refuses to change an already locked (released) hash."""
    problems = check_lock(root, contracts, require_locked=False)
    if problems:
        raise CompatibilityError("\n".join(problems))
    lock: dict[str, dict[str, str]] = {}
    for contract in contracts.all():
        lock.setdefault(contract.name, {})[contract.version_label] = contract.schema_hash
    for name, versions in read_lock(root).items():  # keep entries whose files are gone: check reports them
        for label, digest in versions.items():
            lock.setdefault(name, {}).setdefault(label, digest)
    services: dict[str, dict[str, str]] = {}
    for service in contracts.all_services():
        services.setdefault(service.name, {})[service.version_label] = contracts.service_schema_hash(service)
    for name, versions in read_lock(root, "feature_services").items():
        for label, digest in versions.items():
            services.setdefault(name, {}).setdefault(label, digest)
    header = ("# Released contract versions and their schema_hash. Written by `featurectl contracts lock`;\n"
              "# a released version is immutable: change the schema in a new version file instead.\n")
    body = yaml.safe_dump({"feature_sets": lock, **({"feature_services": services} if services else {})},
                          sort_keys=True)
    from feature_platform.store import write_file_atomic

    write_file_atomic(root / LOCK_FILE, header + body)
    return lock


def _lock_problem(contract: FeatureSetContract, file: str, locked: str | None, require_locked: bool) -> str | None:
    """The `contracts check` line for one version, or None when it agrees with the lock."""
    if locked is None:
        if not require_locked:
            return None
        return (f"{file}: {contract.name} {contract.version_label} is not in {LOCK_FILE}; "
                "run `featurectl contracts lock` and commit the lock with the new version")
    if locked != contract.schema_hash:
        return (f"{file}: released version {contract.name} {contract.version_label} changed its "
                f"schema in place ({locked} -> {contract.schema_hash}); revert it and add "
                f"v{contract.version + 1}.yaml instead")
    return None


def check_lock(root: Path, contracts: ContractSet, require_locked: bool = True) -> list[str]:
    """Problems between the working tree and the lock: changed or deleted released versions, unlocked ones."""
    lock = read_lock(root)
    problems = [problem for contract in contracts.all()
                if (problem := _lock_problem(contract, contracts.files[(contract.name, contract.version)],
                                             lock.get(contract.name, {}).get(contract.version_label),
                                             require_locked))]
    for name, versions in lock.items():
        for label in versions:
            if (name, int(label.lstrip("v"))) not in contracts.feature_sets:
                problems.append(f"{display_path(root, LOCK_FILE)}: released version {name} {label} has no "
                                "contract file; released versions cannot be deleted while readers may use them")
    problems += service_lock_problems(root, contracts, contracts.all_services(), require_locked)
    for name, versions in read_lock(root, "feature_services").items():
        for label in versions:
            if (name, int(label.lstrip("v"))) not in contracts.services:
                problems.append(f"{display_path(root, LOCK_FILE)}: released feature service {name} {label} has no "
                                "contract file; released versions cannot be deleted while models may use them")
    return problems


def service_lock_problems(root: Path, contracts: ContractSet, selected: list[FeatureServiceContract],
                          require_locked: bool) -> list[str]:
    """A released service version edited in place (what it reads changed) or, where required, not locked yet."""
    lock = read_lock(root, "feature_services")
    problems = []
    for service in selected:
        file = contracts.service_files[(service.name, service.version)]
        locked = lock.get(service.name, {}).get(service.version_label)
        digest = contracts.service_schema_hash(service)
        if locked is None:
            if require_locked:
                problems.append(f"{file}: feature service {service.name} {service.version_label} is not in "
                                f"{LOCK_FILE}; run `featurectl contracts lock` and commit the lock with it")
        elif locked != digest:
            problems.append(f"{file}: released feature service {service.name} {service.version_label} changed in "
                            f"place ({locked} -> {digest}); revert it and add v{service.version + 1}.yaml instead")
    return problems


def enforce_lock(root: Path, contracts: ContractSet, selected: list[FeatureSetContract], require_locked: bool
                 ) -> None:
    """Refuse to build, apply or materialize a released version whose schema changed in place (and, where the
    environment requires it, a version not in the lock yet), with the lines `contracts check` prints."""
    lock = read_lock(root)
    problems = [problem for contract in selected
                if (problem := _lock_problem(contract, contracts.files[(contract.name, contract.version)],
                                             lock.get(contract.name, {}).get(contract.version_label),
                                             require_locked))]
    if problems:
        raise CompatibilityError("\n".join(problems))


@dataclass(frozen=True)
class Change:
    breaking: bool
    what: str


def _key_shape(contract: FeatureSetContract) -> list[tuple[str, str, str]]:
    return [(e.name, e.join_key, e.dtype) for e in contract.entities]


def _key_label(contract: FeatureSetContract) -> str:
    return " + ".join(f"{e.name}/{e.join_key}/{e.dtype}" for e in contract.entities)


def diff_contracts(old: FeatureSetContract, new: FeatureSetContract) -> list[Change]:
    """Classify each difference between two versions as breaking (for readers or the store) or compatible."""
    changes: list[Change] = []
    if old.name != new.name:
        changes.append(Change(True, f"feature set renamed {old.name} -> {new.name}"))
    if _key_shape(old) != _key_shape(new):
        changes.append(Change(True, f"entity changed {_key_label(old)} -> {_key_label(new)} (a key added, "
                                    "removed, renamed or retyped: old rows no longer address the same entities)"))
    if old.timestamp_field != new.timestamp_field:
        changes.append(Change(True, f"timestamp_field changed {old.timestamp_field} -> {new.timestamp_field}"))
    if old.ttl_seconds != new.ttl_seconds:
        changes.append(Change(False, f"ttl changed {old.ttl} -> {new.ttl}"))
    old_features = {f.name: f for f in old.features}
    new_features = {f.name: f for f in new.features}
    for name in sorted(old_features.keys() - new_features.keys()):
        changes.append(Change(True, f"feature {name} removed (or renamed)"))
    for name in sorted(new_features.keys() - old_features.keys()):
        feature = new_features[name]
        if feature.nullable:
            changes.append(Change(False, f"optional feature {name} ({feature.dtype}) added"))
        else:
            changes.append(Change(True, f"required (non-nullable) feature {name} added; older builds lack it"))
    for name in sorted(old_features.keys() & new_features.keys()):
        before, after = old_features[name], new_features[name]
        if before.dtype != after.dtype:
            changes.append(Change(True, f"feature {name} retyped {before.dtype} -> {after.dtype}"))
        if before.dims != after.dims:
            changes.append(Change(True, f"feature {name} dims {before.dims} -> {after.dims}"))
        if before.nullable_elements != after.nullable_elements:
            changes.append(Change(after.nullable_elements, f"feature {name} nullable_elements "
                                                           f"{before.nullable_elements} -> {after.nullable_elements}"))
        if before.nullable != after.nullable:
            changes.append(Change(after.nullable, f"feature {name} nullable {before.nullable} -> {after.nullable}"))
        if before.description != after.description or before.constraints != after.constraints:
            changes.append(Change(False, f"feature {name} description or constraints changed"))
        if before.pii != after.pii or before.monitoring != after.monitoring:
            changes.append(Change(False, f"feature {name} pii flag or monitoring thresholds changed"))
    if (old.description, old.owner, old.tags, old.pii, old.online) != (
            new.description, new.owner, new.tags, new.pii, new.online):
        changes.append(Change(False, "documentation, owner, tags, pii or online flag changed"))
    if old.push != new.push:
        changes.append(Change(False, f"push {'enabled' if new.push else 'disabled'} (a Feast PushSource "
                                     f"{'added' if new.push else 'removed'})"))
    if (old.access, old.monitoring, old.status) != (new.access, new.monitoring, new.status):
        changes.append(Change(False, "access (teams), monitoring thresholds or status changed"))
    if old.transform_hash != new.transform_hash:
        changes.append(Change(False, "source table or SQL changed (rows may differ; schema is checked at build)"))
    return changes


def diff_services(old: FeatureServiceContract, new: FeatureServiceContract, contracts: ContractSet | None = None
                  ) -> list[Change]:
    """Classify the change between two service versions for the model reading it: a feature or feature set
    dropped, or a set's version moved (other data, maybe other types), breaks it; a feature added does not."""
    changes: list[Change] = []
    if old.name != new.name:
        changes.append(Change(True, f"feature service renamed {old.name} -> {new.name}"))

    def taken(service: FeatureServiceContract) -> dict[str, tuple[int, list[str] | None]]:
        return {e.feature_set: (e.version, e.features) for e in service.features}

    before, after = taken(old), taken(new)
    for name in sorted(before.keys() - after.keys()):
        changes.append(Change(True, f"feature set {name} removed from the service"))
    for name in sorted(after.keys() - before.keys()):
        changes.append(Change(False, f"feature set {name} v{after[name][0]} added to the service"))
    for name in sorted(before.keys() & after.keys()):
        (old_version, old_features), (new_version, new_features) = before[name], after[name]
        if old_version != new_version:
            changes.append(Change(True, f"{name} moved v{old_version} -> v{new_version} (other builds and schema)"))
        if old_features != new_features:
            if old_features is None or new_features is None:
                changes.append(Change(new_features is None, f"{name}: the service now takes "
                                      f"{'every feature' if new_features is None else ', '.join(new_features)}"))
            else:
                dropped = [f for f in old_features if f not in new_features]
                added = [f for f in new_features if f not in old_features]
                changes += [Change(True, f"{name}: feature {f} removed") for f in dropped]
                changes += [Change(False, f"{name}: feature {f} added") for f in added]
                if not dropped and not added:
                    changes.append(Change(False, f"{name}: features reordered"))
    if (old.description, old.owner, old.tags, old.status) != (new.description, new.owner, new.tags, new.status):
        changes.append(Change(False, "documentation, owner, tags or status changed"))
    return changes
