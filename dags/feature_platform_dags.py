"""Airflow entry point: one DAG per feature set, generated from the mounted contracts.

Configuration comes from the environment (set by the Helm values), never from Airflow Variables:
FEATURE_PLATFORM_CONTRACTS, FEATURE_PLATFORM_ENV, FEATURE_PLATFORM_DAG_MODE (local | kubernetes),
FEATURE_PLATFORM_IMAGE, FEATURE_PLATFORM_NAMESPACE, FEATURE_PLATFORM_NOTIFIERS (JSON list of Airflow Notifiers).
All logic lives in feature_platform.dag_factory.
"""

# Named here, not used here: Airflow's dag-processor imports the `airflow.*` modules that a DAG file imports at
# its top level once, in its parent process, before it forks each parse (`parsing_pre_import_modules`, on by
# default). The operators (the pod operator alone costs ~1.3 s to import) are then warm in every parse, so
# kubernetes mode parses as fast as local mode, far inside `dagbag_import_timeout` on a busy dag-processor.
import airflow.providers.cncf.kubernetes.operators.pod
import airflow.providers.standard.operators.python
import airflow.sdk  # noqa: F401

from feature_platform.dag_factory import build_dags

globals().update(build_dags())
