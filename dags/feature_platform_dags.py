"""Airflow entry point: one DAG per feature set, generated from the mounted contracts.

Configuration comes from the environment (set by the Helm values), never from Airflow Variables:
FEATURE_PLATFORM_CONTRACTS, FEATURE_PLATFORM_ENV, FEATURE_PLATFORM_DAG_MODE (local | kubernetes),
FEATURE_PLATFORM_IMAGE, FEATURE_PLATFORM_NAMESPACE, FEATURE_PLATFORM_NOTIFIERS (JSON list of Airflow Notifiers).
All logic lives in feature_platform.dag_factory.
"""

from feature_platform.dag_factory import build_dags

globals().update(build_dags())
