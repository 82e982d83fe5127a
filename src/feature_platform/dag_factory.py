"""One Airflow DAG per feature set, generated from the mounted contracts.

Parse time stays fast and offline: only the contract YAML is read (no Feast, no DuckDB, no Airflow Variables,
no network); every heavy import happens inside the task when it runs.

Per DAG, for each contract version ``vN``::

    validate_contract >> vN.build >> vN.quality_gate >> vN.write_version >> vN.promote_latest
        >> feast_apply >> materialize >> verify_online

Two execution modes, one graph (``FEATURE_PLATFORM_DAG_MODE``):
- ``local``: each step runs in the worker's Python, calling the library (tests, laptops).
- ``kubernetes``: each step is ``featurectl step ...`` in the platform image (KubernetesPodOperator), so Airflow's
  dependency pins never meet Feast's. Results travel through XCom as small JSON references.
"""

from __future__ import annotations

import importlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from feature_platform.contracts import ContractSet, FeatureSetContract, load_contracts
from feature_platform.environments import EnvironmentContract, Settings, load_environment

DAG_PREFIX = "feature_set__"
START_DATE = datetime(2026, 1, 1)


@dataclass(frozen=True)
class DagConfig:
    """Everything the DAG file needs, from the process environment (set by the Helm values), read once."""

    settings: Settings
    mode: str = "local"
    image: str = "feature-platform:latest"
    namespace: str = "default"
    service_account: str = "feature-platform"
    env_from_secret: str | None = None
    failure_callback: str | None = None
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
            failure_callback=environ.get("FEATURE_PLATFORM_ON_FAILURE") or None,
            # Plain settings travel as env vars; secrets only through env_from_secret, never into a pod spec.
            pod_env={k: v for k, v in environ.items() if k.startswith("FEATURE_PLATFORM_")
                     and k != "FEATURE_PLATFORM_DAG_MODE" and not k.endswith(("PASSWORD", "SECRET", "TOKEN"))},
        )


def _hook(path: str | None) -> Callable[[Any], None] | None:
    """``module:function`` from configuration: a hook that notifies (Slack, PagerDuty...) without code edits."""
    if not path:
        return None
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _failure_callback(config: DagConfig) -> Callable[[Any], None]:
    """Record the failed run (read by `featurectl proof`), then call the configured notifier, if any."""
    hook = _hook(config.failure_callback)

    def on_failure(context: Any) -> None:  # called once retries are exhausted
        from feature_platform import pipeline

        ti = context["ti"]
        pipeline.record_run(Settings.from_env(), ti.dag_id.removeprefix(DAG_PREFIX), "failed",
                            context.get("run_id"), f"task {ti.task_id} failed: {context.get('exception')}")
        if hook:
            hook(context)

    return on_failure


# ----------------------------------------------------------------------------------------- the local steps


# Which earlier step's XCom each step reads, under the name pipeline.run_named_step expects.
STEP_INPUTS: dict[str, dict[str, str]] = {
    "quality_gate": {"staged": "build"},
    "write_version": {"staged": "build", "stats": "quality_gate"},
    "promote_latest": {"written": "write_version"},
}


def run_step(step: str, feature_set: str, version: int | None = None, **context: Any) -> Any:
    """What a task runs in ``local`` mode: settings from the environment, inputs from XCom, one pipeline step."""
    from feature_platform import pipeline

    ti = context["ti"]
    inputs = {name: ti.xcom_pull(task_ids=f"v{version}.{source}")
              for name, source in STEP_INPUTS.get(step, {}).items()}
    return pipeline.run_named_step(Settings.from_env(), step, feature_set, version, inputs,
                                   run_id=context.get("run_id"))


# -------------------------------------------------------------------------------------------- the factory


def _operator(config: DagConfig, step: str, feature_set: str, version: int | None, task_id: str) -> Any:
    if config.mode == "local":
        from airflow.providers.standard.operators.python import PythonOperator

        return PythonOperator(task_id=task_id, python_callable=run_step,
                              op_kwargs={"step": step, "feature_set": feature_set, "version": version})
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    group = f"v{version}" if version else None
    arguments = ["step", step, feature_set, "--xcom"]
    if version:
        arguments += ["--version", str(version)]
    for name, source in STEP_INPUTS.get(step, {}).items():
        arguments += [f"--{name}", "{{ ti.xcom_pull(task_ids='" + f"{group}.{source}" + "') | tojson }}"]
    if step == "write_version":
        arguments += ["--run-id", "{{ run_id }}"]
    env_from = ([k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=config.env_from_secret))]
                if config.env_from_secret else None)
    return KubernetesPodOperator(
        task_id=task_id,
        name=f"{feature_set}-{group or ''}-{task_id}".replace("_", "-").replace("--", "-")[:63],
        namespace=config.namespace,
        image=config.image,
        cmds=["featurectl"],
        arguments=arguments,
        env_vars=config.pod_env,
        env_from=env_from,
        service_account_name=config.service_account,
        labels={"redis-client": "true", "app.kubernetes.io/part-of": "feature-platform"},
        do_xcom_push=True,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        volumes=[k8s.V1Volume(name="contracts", config_map=k8s.V1ConfigMapVolumeSource(
            name=config.pod_env.get("FEATURE_PLATFORM_CONTRACTS_CONFIGMAP", "feature-platform-contracts")))],
        # Mounted as a directory, never subPath: the kubelet then updates the files when the ConfigMap changes.
        volume_mounts=[k8s.V1VolumeMount(name="contracts", mount_path=str(config.settings.contracts_dir),
                                         read_only=True)],
    )


def build_dag(config: DagConfig, env: EnvironmentContract, feature_set: str,
              versions: list[FeatureSetContract]) -> Any:
    from airflow.sdk import DAG, TaskGroup

    newest = versions[-1]
    schedule = env.schedule
    default_args = {
        "owner": newest.owner,
        "retries": schedule.retries,
        "retry_delay": timedelta(seconds=schedule.retry_delay_seconds),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(hours=1),
        "on_failure_callback": _failure_callback(config),
        "on_retry_callback": _hook(config.failure_callback),
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
        doc_md=f"Generated from `contracts/feature_sets/{feature_set}/` by feature_platform.dag_factory.",
    ) as dag:
        validate = _operator(config, "validate_contract", feature_set, None, "validate_contract")
        promotes = []
        for contract in versions:
            with TaskGroup(group_id=contract.version_label):
                chain = [_operator(config, step, feature_set, contract.version, step)  # ids get the group prefix
                         for step in ("build", "quality_gate", "write_version", "promote_latest")]
            validate >> chain[0]
            for upstream, downstream in itertools.pairwise(chain):
                upstream >> downstream
            promotes.append(chain[-1])
        apply = _operator(config, "feast_apply", feature_set, None, "feast_apply")
        materialize = _operator(config, "materialize", feature_set, None, "materialize")
        verify = _operator(config, "verify_online", feature_set, None, "verify_online")
        promotes >> apply
        apply >> materialize >> verify
    return dag


def build_dags(config: DagConfig | None = None) -> dict[str, Any]:
    """Every feature set's DAG, in sorted order, keyed by dag_id."""
    config = config or DagConfig.from_env()
    contracts: ContractSet = load_contracts(config.settings.contracts_dir)
    env = load_environment(config.settings.contracts_dir, config.settings.env_name)
    return {f"{DAG_PREFIX}{name}": build_dag(config, env, name, contracts.versions(name))
            for name in contracts.names()}


def write_xcom(value: Any, path: Path = Path("/airflow/xcom/return.json")) -> None:
    """KubernetesPodOperator's XCom sidecar reads the step's result from this file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, default=str))


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
