"""One Airflow DAG per feature set, generated from the mounted contracts.

Parse time stays fast and offline: only the contract YAML is read (no Feast, no DuckDB, no Airflow Variables,
no network); every heavy import happens inside the task when it runs.

Per DAG, for each contract version ``vN``::

    validate_contract >> vN.build >> vN.quality_gate >> vN.write_version >> vN.promote_latest
        >> feast_apply >> materialize.vN (one task per view; mapped over shards "I/N") >> verify_online >> monitor

Airflow-native: promote publishes an Asset per feature view's offline build and materialize one per view's online
table (``feature-platform://<env>/<view>/offline|online``), so training DAGs schedule on fresh features; the
registry writers share a one-slot pool; retries, execution_timeout and pod resources come from the environment
contract; failures notify through Airflow Notifiers configured per environment (``FEATURE_PLATFORM_NOTIFIERS``).

Two execution modes, one graph (``FEATURE_PLATFORM_DAG_MODE``):
- ``local``: each step runs in the worker's Python, calling the library (tests, laptops).
- ``kubernetes``: each step is ``featurectl step ...`` in the platform image (KubernetesPodOperator), so Airflow's
  dependency pins never meet Feast's. Results travel through XCom as small JSON references.
"""

from __future__ import annotations

import importlib
import itertools
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from feature_platform.contracts import ContractSet, FeatureSetContract, load_contracts
from feature_platform.environments import EnvironmentContract, Settings, load_environment

DAG_PREFIX = "feature_set__"
START_DATE = datetime(2026, 1, 1)
# Pools the DAGs use, with their slots; the Airflow chart's migration job creates them on every sync
# (argocd/values/airflow-common.yaml runs `airflow pools set` for each; a test keeps the two equal).
REGISTRY_POOL = "feature_platform_registry"
MATERIALIZE_POOL = "feature_platform_materialize"
POOLS = {REGISTRY_POOL: (1, "Feast registry applies: one at a time"),
         MATERIALIZE_POOL: (8, "Online loads (a task per feature view and shard) running at once")}
STEP_POOLS = {"feast_apply": REGISTRY_POOL, "materialize": MATERIALIZE_POOL}
ASSET_SCHEME = "feature-platform"


def offline_asset_name(env: str, feature_view: str) -> str:
    return f"{env}.{feature_view}.offline"


def online_asset_name(env: str, feature_view: str) -> str:
    return f"{env}.{feature_view}.online"


def _asset(name: str) -> Any:
    from airflow.sdk import Asset

    env, view, kind = name.split(".")
    return Asset(name=name, uri=f"{ASSET_SCHEME}://{env}/{view}/{kind}", group="feature-platform")


@dataclass(frozen=True)
class DagConfig:
    """Everything the DAG file needs, from the process environment (set by the Helm values), read once."""

    settings: Settings
    mode: str = "local"
    image: str = "feature-platform:latest"
    namespace: str = "default"
    service_account: str = "feature-platform"
    env_from_secret: str | None = None
    notifiers: tuple[NotifierSpec, ...] = ()
    pod_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> DagConfig:
        settings = Settings.from_env(environ)  # the one reader of the process environment
        environ = settings.values
        mode = environ.get("FEATURE_PLATFORM_DAG_MODE", "local")
        if mode not in ("local", "kubernetes"):
            raise ValueError(f"FEATURE_PLATFORM_DAG_MODE={mode!r}: use 'local' or 'kubernetes'")
        return cls(
            settings=settings,
            mode=mode,
            image=environ.get("FEATURE_PLATFORM_IMAGE", cls.image),
            namespace=environ.get("FEATURE_PLATFORM_NAMESPACE", cls.namespace),
            service_account=environ.get("FEATURE_PLATFORM_SERVICE_ACCOUNT", cls.service_account),
            env_from_secret=environ.get("FEATURE_PLATFORM_STEP_ENV_FROM") or None,
            notifiers=parse_notifiers(environ.get("FEATURE_PLATFORM_NOTIFIERS", "")),
            # Plain settings travel as env vars; secrets only through env_from_secret, never into a pod spec.
            pod_env={k: v for k, v in environ.items() if k.startswith("FEATURE_PLATFORM_")
                     and k != "FEATURE_PLATFORM_DAG_MODE" and not k.endswith(("PASSWORD", "SECRET", "TOKEN"))},
        )


@dataclass(frozen=True)
class NotifierSpec:
    """One Airflow Notifier from configuration: its class, keyword arguments and the events it hears."""

    class_path: str
    kwargs: dict[str, Any]
    on: tuple[str, ...] = ("failure",)


NOTIFIER_EVENTS = ("failure", "retry")


def parse_notifiers(text: str) -> tuple[NotifierSpec, ...]:
    """``FEATURE_PLATFORM_NOTIFIERS``: a JSON list of ``{"class": "pkg.module.Notifier", "kwargs": {...},
    "on": ["failure", "retry"]}``. Secrets (webhook URLs, tokens) never appear here: notifiers name an Airflow
    connection whose value comes from a Kubernetes Secret (``AIRFLOW_CONN_...``)."""
    if not text.strip():
        return ()
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"FEATURE_PLATFORM_NOTIFIERS is not JSON ({exc}): give a list of "
                         '{"class": ..., "kwargs": {...}}') from exc
    if not isinstance(items, list):
        raise ValueError("FEATURE_PLATFORM_NOTIFIERS must be a JSON list of notifier objects")
    specs = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("class"), str) or "." not in item["class"]:
            raise ValueError(f"FEATURE_PLATFORM_NOTIFIERS[{index}] needs \"class\": \"package.module.Notifier\"")
        unknown = set(item) - {"class", "kwargs", "on"}
        on = tuple(item.get("on", ["failure"]))
        if unknown or not set(on) <= set(NOTIFIER_EVENTS):
            raise ValueError(f"FEATURE_PLATFORM_NOTIFIERS[{index}]: keys are class, kwargs, on; "
                             f"on is a subset of {list(NOTIFIER_EVENTS)}")
        specs.append(NotifierSpec(item["class"], dict(item.get("kwargs", {})), on))
    return tuple(specs)


def _notifier(spec: NotifierSpec) -> Any:
    module, _, name = spec.class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.kwargs)


def _record_failed_run() -> Any:
    """A Notifier that records the failed run (read by `featurectl proof` where no Airflow API is set)."""
    from airflow.sdk import BaseNotifier

    class RecordFailedRun(BaseNotifier):
        def notify(self, context: Any) -> None:  # called once retries are exhausted
            from feature_platform import pipeline

            ti = context["ti"]
            pipeline.record_run(Settings.from_env(), ti.dag_id.removeprefix(DAG_PREFIX), "failed",
                                context.get("run_id"), f"task {ti.task_id} failed: {context.get('exception')}")

    return RecordFailedRun()


# ----------------------------------------------------------------------------------------- the local steps


# Which earlier step's XCom each step reads, under the name pipeline.run_named_step expects.
STEP_INPUTS: dict[str, dict[str, str]] = {
    "quality_gate": {"staged": "build"},
    "write_version": {"staged": "build", "stats": "quality_gate"},
    "promote_latest": {"written": "write_version"},
}


def run_step(step: str, feature_set: str, version: int | None = None, shard: str | None = None,
             **context: Any) -> Any:
    """What a task runs in ``local`` mode: settings from the environment, inputs from XCom, one pipeline step."""
    from feature_platform import pipeline
    from feature_platform.startup import skip_feast_typechecks

    skip_feast_typechecks()

    ti = context["ti"]
    inputs = {name: ti.xcom_pull(task_ids=f"v{version}.{source}")
              for name, source in STEP_INPUTS.get(step, {}).items()}
    if shard:
        inputs["shard"] = shard
    if step == "build" and context.get("data_interval_start") and context.get("data_interval_end"):
        # The run's data interval: an incremental contract builds exactly it (catch-up and backfills: one
        # interval per run); a full contract ignores it.
        inputs["interval"] = [context["data_interval_start"].isoformat(), context["data_interval_end"].isoformat()]
    settings = Settings.from_env()
    actor = f"airflow:{DAG_PREFIX}{feature_set}/{context.get('run_id')}"  # who the audit trail names
    settings = settings.replace(values={**settings.values, "FEATURE_PLATFORM_ACTOR": actor})
    return pipeline.run_named_step(settings, step, feature_set, version, inputs, run_id=context.get("run_id"))


# -------------------------------------------------------------------------------------------- the factory


def _task_arguments(env: EnvironmentContract, step: str, outlets: list[Any], doc_md: str) -> dict[str, Any]:
    """What every operator gets, whatever the mode: retries and timeout from the environment contract, the
    registry pool for registry writers, the Assets it publishes, and its documentation."""
    retries, timeout_minutes, _ = env.schedule.policy(step)
    arguments: dict[str, Any] = {"retries": retries, "execution_timeout": timedelta(minutes=timeout_minutes),
                                 "outlets": outlets, "doc_md": doc_md}
    if step in STEP_POOLS:
        arguments["pool"] = STEP_POOLS[step]
    return arguments


def _operator(config: DagConfig, env: EnvironmentContract, step: str, feature_set: str, version: int | None,
              task_id: str, outlets: list[Any], doc_md: str, shards: int = 1) -> Any:
    """One task, or with ``shards`` > 1 one mapped task (Airflow dynamic task mapping) per shard "I/N"."""
    common = _task_arguments(env, step, outlets, doc_md)
    shard_labels = [f"{i}/{shards}" for i in range(shards)] if shards > 1 else []
    if config.mode == "local":
        from airflow.providers.standard.operators.python import PythonOperator

        kwargs = {"step": step, "feature_set": feature_set, "version": version}
        if shard_labels:
            return PythonOperator.partial(task_id=task_id, python_callable=run_step, **common).expand(
                op_kwargs=[{**kwargs, "shard": label} for label in shard_labels])
        return PythonOperator(task_id=task_id, python_callable=run_step, op_kwargs=kwargs, **common)
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    k8s = _K8sModels()

    group = f"v{version}" if version else None
    arguments = ["step", step, feature_set, "--xcom"]
    if version:
        arguments += ["--version", str(version)]
    for name, source in STEP_INPUTS.get(step, {}).items():
        arguments += [f"--{name}", "{{ ti.xcom_pull(task_ids='" + f"{group}.{source}" + "') | tojson }}"]
    if step == "write_version":
        arguments += ["--run-id", "{{ run_id }}"]
    if step == "build":  # the run's data interval (incremental contracts build exactly it)
        arguments += ["--interval", "{{ data_interval_start.isoformat() }}", "{{ data_interval_end.isoformat() }}",
                      "--run-id", "{{ run_id }}"]
    env_from = ([k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=config.env_from_secret))]
                if config.env_from_secret else None)
    _, _, resources = env.schedule.policy(step)
    pod = dict(
        **common,
        container_resources=k8s.V1ResourceRequirements(requests=dict(resources.requests),
                                                       limits=dict(resources.limits)),
        # Kubernetes' "restricted" Pod Security Standard: non-root, no privilege escalation, no capabilities.
        security_context=k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=10001, run_as_group=10001,
                                                  fs_group=10001,
                                                  seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        container_security_context=k8s.V1SecurityContext(allow_privilege_escalation=False,
                                                         read_only_root_filesystem=True,
                                                         capabilities=k8s.V1Capabilities(drop=["ALL"])),
        task_id=task_id,
        name=f"{feature_set}-{group or ''}-{step}".replace("_", "-").replace("--", "-")[:63],
        namespace=config.namespace,
        image=config.image,
        cmds=["featurectl"],
        env_vars={**config.pod_env, "FEATURE_PLATFORM_ACTOR": "airflow:{{ dag.dag_id }}/{{ run_id }}"},
        env_from=env_from,
        service_account_name=config.service_account,
        labels={"redis-client": "true", "app.kubernetes.io/part-of": "feature-platform"},
        do_xcom_push=True,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        volumes=[k8s.V1Volume(name="contracts", config_map=k8s.V1ConfigMapVolumeSource(
            name=config.pod_env.get("FEATURE_PLATFORM_CONTRACTS_CONFIGMAP", "feature-platform-contracts"))),
                 # The root filesystem is read-only: the work directory and temp files live here.
                 k8s.V1Volume(name="work", empty_dir=k8s.V1EmptyDirVolumeSource()),
                 k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource())],
        # Mounted as a directory, never subPath: the kubelet then updates the files when the ConfigMap changes.
        volume_mounts=[k8s.V1VolumeMount(name="contracts", mount_path=str(config.settings.contracts_dir),
                                         read_only=True),
                       k8s.V1VolumeMount(name="work", mount_path=str(config.settings.home)),
                       k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
    )
    if shard_labels:  # one pod per shard
        return KubernetesPodOperator.partial(**pod).expand(
            arguments=[[*arguments, "--shard", label] for label in shard_labels])
    return KubernetesPodOperator(arguments=arguments, **pod)


class _K8sModels:
    """kubernetes.client.models, each built with one shared Configuration: without it every model copies the
    default Configuration (and resets its loggers), which was most of a kubernetes-mode DAG parse."""

    _configuration: Any = None

    def __getattr__(self, name: str) -> Any:
        from kubernetes.client import Configuration, models

        if _K8sModels._configuration is None:
            _K8sModels._configuration = Configuration()
        model = getattr(models, name)
        return lambda **kwargs: model(**kwargs, local_vars_configuration=_K8sModels._configuration)


def build_dag(config: DagConfig, env: EnvironmentContract, feature_set: str,
              versions: list[FeatureSetContract]) -> Any:
    from airflow.sdk import DAG, TaskGroup

    newest = versions[-1]
    schedule = env.schedule
    failure_notifiers = [_record_failed_run()] + [_notifier(n) for n in config.notifiers if "failure" in n.on]
    retry_notifiers = [_notifier(n) for n in config.notifiers if "retry" in n.on]
    default_args = {
        "owner": newest.owner,
        "retry_delay": timedelta(seconds=schedule.retry_delay_seconds),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(hours=1),
        "on_failure_callback": failure_notifiers,
        **({"on_retry_callback": retry_notifiers} if retry_notifiers else {}),
    }
    with DAG(
        dag_id=f"{DAG_PREFIX}{feature_set}",
        description=f"{newest.description} ({env.name}: contract -> build -> latest -> Feast -> Redis)",
        schedule=schedule.cron,
        start_date=START_DATE,
        catchup=schedule.catchup,
        max_active_runs=1,  # one build per feature set at a time; the registry lease serializes applies
        default_args=default_args,
        tags=["feature-platform", env.name, feature_set, *(["pii"] if newest.pii else [])],
        doc_md=_dag_doc(env, feature_set, versions),
    ) as dag:
        def operator(step: str, version: FeatureSetContract | None, outlets: list[Any] | None = None,
                     shards: int = 1, task_id: str | None = None) -> Any:
            doc = _step_doc(step, version or newest, env)
            return _operator(config, env, step, feature_set, version.version if version else None,
                             task_id or step, outlets or [], doc, shards)

        validate = operator("validate_contract", None)
        apply = operator("feast_apply", None)
        verify = operator("verify_online", None)
        verify >> operator("monitor", None)  # a breach fails this task, which notifies like any failure
        if any(c.push for c in versions):  # pushed rows, folded into one file per version each run
            verify >> operator("compact_pushes", None)
        for contract in versions:
            with TaskGroup(group_id=contract.version_label):
                offline = [_asset(offline_asset_name(env.name, contract.feature_view_name))]
                chain = [operator(step, contract, offline if step == "promote_latest" else None)
                         for step in ("build", "quality_gate", "write_version", "promote_latest")]
            validate >> chain[0]
            for upstream, downstream in itertools.pairwise(chain):
                upstream >> downstream
            chain[-1] >> apply
        # Each view loads in its own task (one pod; one mapped pod per shard), so one view's failure leaves
        # the others served and is retried alone. Their own group: task groups must not form a cycle.
        online = [c for c in versions if c.online]
        with TaskGroup(group_id="materialize"):
            for contract in online:
                view = contract.feature_view_name
                load = operator("materialize", contract, [_asset(online_asset_name(env.name, view))],
                                env.materialization.shards_of(view), task_id=contract.version_label)
                apply >> load >> verify
        if not online:
            apply >> verify
    return dag


STEP_DOCS = {
    "validate_contract": "Validates the mounted contracts and refuses a released version edited in place.",
    "build": "Builds the feature view from its raw sources into a staged Parquet file (sorted, reproducible).",
    "quality_gate": "Checks the staged build against the contract's constraints; nothing moves on failure.",
    "write_version": "Writes the build as a new immutable version with metadata.json.",
    "promote_latest": "Moves the `latest` pointer to this build and publishes the offline Asset.",
    "feast_apply": "Applies the feature views and services to the Feast registry (one writer at a time).",
    "materialize": "Loads the newest values into the online store and publishes the online Assets.",
    "verify_online": "Reads back sampled entities and compares them with the build.",
    "monitor": "Freshness, volume, null rate and drift vs the previous build; fails on a breach (report in the "
               "object store under _monitor/).",
    "compact_pushes": "Folds each version's pushed rows (push: true) into one file; the same rows, fewer to open.",
}


def _step_doc(step: str, contract: FeatureSetContract, env: EnvironmentContract) -> str:
    return (f"**{contract.feature_view_name}** ({env.name}): {contract.description}\n\n{STEP_DOCS[step]}\n\n"
            f"Owner: {contract.owner}.")


def _dag_doc(env: EnvironmentContract, feature_set: str, versions: list[FeatureSetContract]) -> str:
    lines = [f"# {feature_set} ({env.name})", "", versions[-1].description, "",
             f"Generated from `contracts/feature_sets/{feature_set}/` by feature_platform.dag_factory.", "",
             "| view | online Asset | offline Asset |", "|---|---|---|"]
    lines += [f"| {c.feature_view_name} | `{online_asset_name(env.name, c.feature_view_name)}` | "
              f"`{offline_asset_name(env.name, c.feature_view_name)}` |" for c in versions]
    return "\n".join(lines)


def build_dags(config: DagConfig | None = None) -> dict[str, Any]:
    """Every feature set's DAG, in sorted order, keyed by dag_id."""
    config = config or DagConfig.from_env()
    contracts: ContractSet = load_contracts(config.settings.contracts_dir)
    env = load_environment(config.settings.contracts_dir, config.settings.env_name)
    return {f"{DAG_PREFIX}{name}": build_dag(config, env, name, contracts.live_versions(name))
            for name in contracts.names() if contracts.live_versions(name)}  # all versions retired: no DAG


def write_xcom(value: Any, path: Path = Path("/airflow/xcom/return.json")) -> None:
    """KubernetesPodOperator's XCom sidecar reads the step's result from this file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    from feature_platform.store import write_file_atomic

    write_file_atomic(path, json.dumps(value, default=str))


# ------------------------------------------------------------------------------------------ parse-time guard

HEAVY_MODULES = ("feast", "duckdb", "pyarrow", "pandas", "boto3", "s3fs", "redis")


def lint_dag_folder(folder: Path) -> list[str]:
    """Parse-time hazards in a DAG folder, as ``file:line: problem`` lines (read with ``ast``; nothing is run).

    An Airflow Variable read or a heavy import at module level runs on every parse of every file by the DAG
    processor: it slows parsing, hits the metadata DB, and breaks the whole file when the Variable is missing.
    """
    import ast

    class ParseTimeVisitor(ast.NodeVisitor):
        def __init__(self, path: Path) -> None:
            self.path = path
            self.problems: list[str] = []

        def visit_FunctionDef(self, node: ast.AST) -> None:  # bodies run at task time, not parse time
            return

        visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

        def visit_Call(self, node: ast.Call) -> None:
            func = node.func
            if (isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "Variable") or (
                    isinstance(func, ast.Name) and func.id == "Variable"):
                self.problems.append(f"{self.path}:{node.lineno}: Airflow Variable read at parse time; pass "
                                     "configuration through environment variables or read it inside the task")
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for module in names:
                if module.split(".")[0] in HEAVY_MODULES:
                    self.problems.append(f"{self.path}:{node.lineno}: `import {module}` at parse time; import it "
                                         "inside the task that needs it")

        visit_ImportFrom = visit_Import

    problems = []
    for path in sorted(folder.rglob("*.py")):
        visitor = ParseTimeVisitor(path)
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        problems += visitor.problems
    return problems
