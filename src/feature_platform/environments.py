"""Environment (repo) contracts and runtime settings.

An environment contract (``contracts/environments/<name>.yaml``) says where one environment keeps its data, its
Feast registry and its online store. Secrets are never in it: it names the environment variables that hold them.

:class:`Settings` is the one place that reads the process environment; everything else receives values.
"""

from __future__ import annotations

import dataclasses
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from feature_platform.contracts import (
    NAME_PATTERN,
    ContractSet,
    FeatureSetContract,
    StrictModel,
    enforce_lock,
    iter_contract_files,
    load_contracts,
    load_each,
    parsed_once,
    read_yaml,
    service_lock_problems,
    validate_model,
)
from feature_platform.errors import CompatibilityError, ConfigError, ContractError, ContractErrors
from feature_platform.steps import StepName

if TYPE_CHECKING:
    from feature_platform.store import ObjectStore

ENV_VAR_PATTERN = r"^[A-Z][A-Z0-9_]*$"
EnvVarName = Annotated[str, Field(pattern=ENV_VAR_PATTERN, description="name of an environment variable")]


def _check_uri(uri: str) -> str:
    if ".." in uri.split("/") or " " in uri:
        raise ValueError(f"{uri!r} must not contain '..' segments or spaces")
    if "://" in uri and not uri.startswith("s3://"):
        raise ValueError(f"{uri!r}: only s3:// URIs or local paths (relative to FEATURE_PLATFORM_HOME) are allowed")
    return uri.rstrip("/")


class ObjectStoreConfig(StrictModel):
    """``s3://bucket/prefix`` or a local directory relative to FEATURE_PLATFORM_HOME (local only)."""

    uri: str = Field(min_length=1)

    @model_validator(mode="after")
    def _safe(self) -> ObjectStoreConfig:
        _check_uri(self.uri)
        return self


class FileRegistryConfig(StrictModel):
    type: Literal["file"] = "file"
    uri: str = Field(min_length=1, description="s3://bucket/key.db or a local path")
    cache_ttl_seconds: int = Field(default=600, ge=0, description="how long a server trusts its registry copy")

    @model_validator(mode="after")
    def _safe(self) -> FileRegistryConfig:
        _check_uri(self.uri)
        return self

    def isolation_key(self) -> Any:
        """What two environments must not share."""
        return self.uri


class SqlRegistryConfig(StrictModel):
    """PostgreSQL registry for concurrent production writers; the URL (with password) comes from an env var."""

    type: Literal["sql"]
    url_env: EnvVarName
    cache_ttl_seconds: int = Field(default=600, ge=0)

    def isolation_key(self) -> Any:
        return self.url_env


class RedisConfig(StrictModel):
    type: Literal["redis"]
    address_env: EnvVarName = Field(description="env var holding host:port (a cluster: seed nodes, comma-separated)")
    password_env: EnvVarName | None = Field(default=None, description="env var holding the password")
    db: int = Field(ge=0, le=15)
    cluster: bool = Field(default=False, description="a Redis Cluster (Feast's redis_type: redis_cluster)")

    @model_validator(mode="after")
    def _cluster_has_one_db(self) -> RedisConfig:
        if self.cluster and self.db != 0:
            raise ValueError("a Redis Cluster has only database 0: set db: 0 (separate environments by cluster)")
        return self

    def isolation_key(self) -> Any:
        # A cluster is never the same server as a standalone Redis: prod may move to a cluster (db 0) while
        # dev keeps db 0 of its own Redis under the same variable name.
        return (self.address_env, self.db, self.cluster)


class SqliteConfig(StrictModel):
    type: Literal["sqlite"]
    path: str = Field(default="online_store.db", description="relative to the environment's work directory")

    def isolation_key(self) -> Any:
        return None  # a file in each environment's own work directory


class OfflineStoreConfig(StrictModel):
    type: Literal["file"] = "file"


Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$", description="a Kubernetes quantity")]


ResourceName = Literal["cpu", "memory", "ephemeral-storage"]


def _resources(cpu: str, memory: str) -> dict[ResourceName, str]:
    return {"cpu": cpu, "memory": memory}


class PodResources(StrictModel):
    """Requests and limits of a step's pod (kubernetes mode), e.g. ``{cpu: 500m, memory: 1Gi}``."""

    requests: dict[ResourceName, Quantity] = Field(default_factory=lambda: _resources(cpu="250m", memory="512Mi"))
    limits: dict[ResourceName, Quantity] = Field(default_factory=lambda: _resources(cpu="1", memory="2Gi"))


class StepPolicy(StrictModel):
    """Overrides for one step; unset fields fall back to the schedule's defaults."""

    retries: int | None = Field(default=None, ge=0, le=10)
    timeout_minutes: int | None = Field(default=None, ge=1, le=24 * 60)
    resources: PodResources | None = None


class ScheduleConfig(StrictModel):
    cron: str = Field(default="@daily", description="Airflow schedule of every feature set's DAG")
    catchup: bool = False
    retries: int = Field(default=2, ge=0, le=10)
    retry_delay_seconds: int = Field(default=60, ge=1)
    timeout_minutes: int = Field(default=60, ge=1, le=24 * 60, description="each task's execution_timeout")
    resources: PodResources = Field(default_factory=PodResources, description="each step pod's resources")
    steps: dict[StepName, StepPolicy] = Field(default_factory=dict, description="per-step overrides")

    def policy(self, step: str) -> tuple[int, int, PodResources]:
        """(retries, timeout in minutes, pod resources) of one step."""
        override = self.steps.get(step) or StepPolicy()  # type: ignore[call-overload]
        return (self.retries if override.retries is None else override.retries,
                override.timeout_minutes or self.timeout_minutes, override.resources or self.resources)


class MaterializationConfig(StrictModel):
    shards: int = Field(default=1, ge=1, le=64, description="shard processes (pods) per feature view load")
    shards_per_view: dict[str, Annotated[int, Field(ge=1, le=64)]] = Field(
        default_factory=dict, description="overrides for large views, e.g. {customer_spend_v2: 4}")

    def shards_of(self, feature_view: str) -> int:
        return self.shards_per_view.get(feature_view, self.shards)


class QualityConfig(StrictModel):
    future_event_tolerance_minutes: int = Field(
        default=60, ge=0, le=7 * 24 * 60,
        description="event timestamps later than now plus this are refused by the quality gate (clock skew slack)")


class AccessConfig(StrictModel):
    """Who may read (see governance.py). Secrets are named, never written."""

    default: Literal["allow", "deny"] = Field(
        default="allow", description="allow: every caller reads every view (an open dev); deny: only the teams a "
                                     "contract names (prod)")
    token_key_env: EnvVarName | None = Field(
        default=None, description="variable holding the key that signs team tokens (HS256); required by deny")
    pii_key_env: EnvVarName | None = Field(
        default=None, description="variable holding the HMAC key that masks PII in exports; without it PII "
                                  "features are dropped from exports")

    @model_validator(mode="after")
    def _deny_needs_identities(self) -> AccessConfig:
        if self.default == "deny" and not self.token_key_env:
            raise ValueError("default: deny needs token_key_env (callers must prove their team)")
        return self


class EnvironmentContract(StrictModel):
    kind: Literal["Environment"]
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str = ""
    feast_project: Annotated[str, Field(pattern=NAME_PATTERN)]
    object_store: ObjectStoreConfig
    raw_data: ObjectStoreConfig
    registry: FileRegistryConfig | SqlRegistryConfig = Field(discriminator="type")
    online_store: RedisConfig | SqliteConfig = Field(discriminator="type")
    offline_store: OfflineStoreConfig = Field(default_factory=OfflineStoreConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    materialization: MaterializationConfig = Field(default_factory=MaterializationConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
    # Released versions are always immutable; this also refuses versions missing from contracts.lock (dev and
    # prod deploy from Git, where CI locks every version; `local` lets authors try a version before locking it).
    require_locked_contracts: bool = False

    @property
    def is_s3(self) -> bool:
        return self.object_store.uri.startswith("s3://")


def load_environment(root: Path, name: str) -> EnvironmentContract:
    environments = load_environments(root)
    if name not in environments:
        known = ", ".join(sorted(environments)) or "none"
        raise ConfigError(f"no environment named {name!r} in {root}; known: {known}")
    return environments[name]


def _is_environment_file(relative: str) -> bool:
    return relative.startswith("environments/") or relative.startswith("environments.")


def load_environments(root: Path) -> dict[str, EnvironmentContract]:
    """Every environment contract under ``root`` (Git or ConfigMap layout), validated and checked for isolation."""
    environments: dict[str, EnvironmentContract] = {}
    files: dict[str, str] = {}
    errors: list[ContractError] = []
    env_files = [(path, relative) for path, relative in iter_contract_files(root) if _is_environment_file(relative)]
    for shown, env in load_each(root, env_files, lambda path, shown: validate_model(
            EnvironmentContract, read_yaml(path, shown), shown), errors):
        # Git: environments/dev.yaml; ConfigMap key: environments.dev.yaml
        stem = Path(shown).stem.removeprefix("environments.")
        if stem != env.name:
            errors.append(ContractError(shown, "name", f"file is named {stem!r} but declares {env.name!r}; "
                                        "make them equal"))
            continue
        environments[env.name] = env
        files[env.name] = shown
    errors.extend(_check_isolation(environments, files))
    if errors:
        raise ContractErrors(errors)
    return environments


def _check_isolation(envs: dict[str, EnvironmentContract], files: dict[str, str]) -> list[ContractError]:
    """No two environments may share a Feast project, data prefix, registry or Redis database."""

    def keys(env: EnvironmentContract) -> dict[str, Any]:
        return {
            "feast_project": env.feast_project,
            "object_store.uri": env.object_store.uri,
            "registry": env.registry.isolation_key(),
            "online_store": env.online_store.isolation_key(),
        }

    errors = []
    names = sorted(envs)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = keys(envs[first]), keys(envs[second])
            for key, value in a.items():
                if value is not None and value == b[key]:
                    errors.append(ContractError(files[second], key, f"shares {value!r} with environment {first}; "
                                                "environments must never share data, registry or Redis DB"))
            store_a, store_b = envs[first].object_store.uri + "/", envs[second].object_store.uri + "/"
            if store_a != store_b and (store_a.startswith(store_b) or store_b.startswith(store_a)):
                errors.append(ContractError(files[second], "object_store.uri",
                                            f"is nested with {first}'s {store_a!r}; use disjoint prefixes"))
    return errors


# --------------------------------------------------------------------------------------------------- settings

DEFAULT_MOUNTED_CONTRACTS = Path("/etc/feature-platform/contracts")
_VARIABLE_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def read_secrets_dir(directory: str | None) -> dict[str, str]:
    """Secrets mounted as files (a Kubernetes Secret volume): each file named like a variable holds its value.
    A variable set in the environment wins; a trailing newline is not part of the value."""
    if not directory:
        return {}
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"FEATURE_PLATFORM_SECRETS_DIR={directory} is not a directory; mount the secrets volume "
                          "there or unset the variable")
    values = {}
    for path in sorted(root.iterdir()):
        if _VARIABLE_NAME.match(path.name) and path.is_file():  # skips the volume's ..data links
            try:
                values[path.name] = path.read_text().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"secret file {path} cannot be read ({exc}); check the volume's mode and owner"
                                  ) from exc
    return values


class Backend(ABC):
    """A part of an environment that the platform and Feast reach (its online store, its registry), built from
    the settings and the environment contract. Subclasses: online.stores.OnlineStore, registries.Registry."""

    def __init__(self, settings: Settings, env: EnvironmentContract) -> None:
        self.settings, self.env = settings, env

    @abstractmethod
    def feast_config(self) -> dict[str, Any]:
        """Its section of feature_store.yaml (secrets as ``${VAR}`` references)."""

    def require(self) -> None:
        """Fail early, with the variable's name, when an address or secret it needs is not set."""
        return None  # needs nothing by default

    def prepare(self) -> None:
        """Create what must exist before Feast opens it (a local file's directory)."""
        return None


@dataclass(frozen=True)
class Settings:
    """Runtime settings, read once from the process environment."""

    contracts_dir: Path
    home: Path
    env_name: str
    s3_endpoint_url: str | None
    contracts_commit: str | None
    values: dict[str, str]

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, repo_root: Path | None = None,
                 **overrides: Any) -> Settings:
        """``repo_root``: where ``contracts/`` and ``.feature-platform/`` are when the variables are unset
        (default: the current directory; falls back to the Kubernetes mount for contracts)."""
        environ = dict(os.environ if environ is None else environ)
        environ = {**read_secrets_dir(environ.get("FEATURE_PLATFORM_SECRETS_DIR")), **environ}
        root = repo_root or Path.cwd()
        contracts = environ.get("FEATURE_PLATFORM_CONTRACTS")
        if contracts is None:
            contracts = str(root / "contracts") if (root / "contracts").is_dir() else str(DEFAULT_MOUNTED_CONTRACTS)
        settings = cls(
            contracts_dir=Path(contracts).absolute(),
            home=Path(environ.get("FEATURE_PLATFORM_HOME", root / ".feature-platform")).absolute(),
            env_name=environ.get("FEATURE_PLATFORM_ENV", "local"),
            s3_endpoint_url=environ.get("FEAST_S3_ENDPOINT_URL") or environ.get("AWS_ENDPOINT_URL") or None,
            contracts_commit=environ.get("FEATURE_PLATFORM_CONTRACTS_COMMIT") or None,
            values=environ,
        )
        return settings.replace(**{k: v for k, v in overrides.items() if v is not None})

    def replace(self, **changes: Any) -> Settings:
        if "contracts_dir" in changes:
            changes["contracts_dir"] = Path(changes["contracts_dir"]).absolute()
        if "home" in changes:
            changes["home"] = Path(changes["home"]).absolute()
        return dataclasses.replace(self, **changes)

    def require(self, var: str, why: str) -> str:
        value = self.values.get(var)
        if not value:
            raise ConfigError(f"environment variable {var} is not set; it must hold {why}")
        return value

    def server_workers(self) -> int:
        """`featurectl serve`'s worker processes when --workers is not given."""
        value = self.values.get("FEATURE_PLATFORM_SERVER_WORKERS", "1")
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"FEATURE_PLATFORM_SERVER_WORKERS={value!r} is not a number of worker processes; "
                              "set a whole number >= 1")
        return int(value)

    def lease_seconds(self) -> int:
        """Lease period of the registry and materialize locks on S3 (a writer that stops renewing loses it)."""
        value = self.values.get("FEATURE_PLATFORM_LEASE_SECONDS", "60")
        if not value.isdigit() or int(value) < 2:
            raise ConfigError(f"FEATURE_PLATFORM_LEASE_SECONDS={value!r} is not a lease period; set whole "
                              "seconds >= 2")
        return int(value)

    def contracts(self) -> ContractSet:
        """The contracts, parsed once per process while their files are unchanged (shared: do not mutate)."""
        return parsed_once("contracts", self.contracts_dir, load_contracts)

    def environment(self, name: str | None = None) -> EnvironmentContract:
        environments = parsed_once("environments", self.contracts_dir, load_environments)
        wanted = name or self.env_name
        if wanted not in environments:
            known = ", ".join(sorted(environments)) or "none"
            raise ConfigError(f"no environment named {wanted!r} in {self.contracts_dir}; known: {known}")
        return environments[wanted]

    def writable_contracts(self, env: EnvironmentContract, selected: list[FeatureSetContract] | None = None
                           ) -> ContractSet:
        """The contracts, refusing (CompatibilityError) any of ``selected`` (default: all) that differs from
        contracts.lock: what every step that writes data or definitions loads them with."""
        contracts = self.contracts()
        chosen = contracts.all() if selected is None else selected
        enforce_lock(self.contracts_dir, contracts, chosen, env.require_locked_contracts)
        # The models' services that read any of them: a released service edited in place is refused too.
        names = {(c.name, c.version) for c in chosen}
        models = [m for m in contracts.all_services() if any((e.feature_set, e.version) in names for e in m.features)]
        problems = service_lock_problems(self.contracts_dir, contracts, models, env.require_locked_contracts)
        if problems:
            raise CompatibilityError("\n".join(problems))
        return contracts

    def env_home(self, env: EnvironmentContract) -> Path:
        """Local working directory of one environment (generated Feast config, local data, run records)."""
        return self.home / env.name

    def resolve_uri(self, env: EnvironmentContract, uri: str) -> str:
        """s3:// URIs stay; local paths are taken relative to the environment's work directory."""
        if uri.startswith("s3://"):
            return uri
        path = Path(uri)
        return str(path if path.is_absolute() else self.env_home(env) / path)

    def object_store(self, env: EnvironmentContract) -> ObjectStore:
        """Where the environment's builds, pointers and records live."""
        from feature_platform.store import ObjectStore

        return ObjectStore(self.resolve_uri(env, env.object_store.uri), self.s3_endpoint_url)

    def raw_store(self, env: EnvironmentContract) -> ObjectStore:
        """Where the environment's raw tables are read from."""
        from feature_platform.store import ObjectStore

        return ObjectStore(self.resolve_uri(env, env.raw_data.uri), self.s3_endpoint_url)

    def git_commit(self) -> str | None:
        """The Git commit the contracts came from: set by the deployment, else asked of git, else unknown."""
        if self.contracts_commit:
            return self.contracts_commit
        import subprocess

        try:
            out = subprocess.run(["git", "-C", str(self.contracts_dir), "rev-parse", "HEAD"],
                                 capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(self.contracts_dir), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
