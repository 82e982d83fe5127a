"""Every environment variable the platform reads, in one catalogue: the reference in the docs is generated from
it, and a test fails when code reads a ``FEATURE_PLATFORM_*`` variable missing here.

Names an environment contract chooses (``address_env``, ``password_env``, ``url_env``, ``token_key_env``,
``pii_key_env``) are listed with the names the shipped contracts give them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    name: str
    meaning: str
    default: str = ""
    who: str = "every command"  # which part reads it
    secret: bool = False


VARIABLES: tuple[Variable, ...] = (
    Variable("FEATURE_PLATFORM_ENV", "the environment contract to act on (`contracts/environments/<name>.yaml`)",
             "local"),
    Variable("FEATURE_PLATFORM_CONTRACTS", "the contracts directory", "./contracts, else the mounted ConfigMap"),
    Variable("FEATURE_PLATFORM_HOME", "work directory: local stores, generated feature_store.yaml, reports",
             "./.feature-platform"),
    Variable("FEATURE_PLATFORM_CONTRACTS_COMMIT", "the Git commit of the contracts, recorded in builds and the audit "
             "trail (the chart sets it from Argo CD)", "read from the contracts' Git checkout"),
    Variable("FEATURE_PLATFORM_SECRETS_DIR", "a directory of secret files (a mounted Secret), each named like a "
             "variable; a variable set in the environment wins"),
    Variable("FEAST_S3_ENDPOINT_URL", "S3 endpoint (MinIO, moto, a VPC endpoint); also what Feast reads",
             "AWS's"),
    Variable("AWS_ENDPOINT_URL", "S3 endpoint when FEAST_S3_ENDPOINT_URL is unset", "AWS's"),
    Variable("FEATURE_PLATFORM_REDIS_ADDRESS", "host:port of the online Redis (a cluster: seed nodes, "
             "comma-separated); named by the environment's `online_store.address_env`"),
    Variable("FEATURE_PLATFORM_REDIS_PASSWORD", "the Redis password; named by `online_store.password_env`",
             secret=True),
    Variable("FEATURE_PLATFORM_REGISTRY_URL", "SQL registry URL, e.g. postgresql+psycopg://user:pw@host/db; named "
             "by `registry.url_env`", secret=True),
    Variable("FEATURE_PLATFORM_AUTH_KEY", "the key that signs and checks team tokens; named by "
             "`access.token_key_env`", secret=True),
    Variable("FEATURE_PLATFORM_PII_KEY", "the key that masks PII (HMAC) in exports and training sets; named by "
             "`access.pii_key_env`; without it PII is dropped", secret=True),
    Variable("FEATURE_PLATFORM_TOKEN", "your team token, for reads in environments that sign tokens",
             who="featurectl historical, export, online", secret=True),
    Variable("FEATURE_PLATFORM_TEAM", "your team, where the environment signs no tokens",
             who="featurectl historical, export, online"),
    Variable("FEATURE_PLATFORM_ACTOR", "who the audit trail names", "user@host; the DAGs set airflow:<dag>/<run>"),
    Variable("FEATURE_PLATFORM_DEBUG", "1: print a traceback on failure (as --debug)", who="featurectl"),
    Variable("FEATURE_PLATFORM_FEAST_TYPECHECKS", "1: keep typeguard's run-time checks of Feast's classes "
             "(slower start-up)", who="featurectl, the server, DAG steps"),
    Variable("FEATURE_PLATFORM_LEASE_SECONDS", "lease period of the registry and materialize locks", "60",
             who="apply, materialize, rollback"),
    Variable("FEATURE_PLATFORM_SERVER_WORKERS", "worker processes of `featurectl serve`", "1",
             who="featurectl serve"),
    Variable("FEATURE_PLATFORM_SERVER_REDIS_TIMEOUT", "seconds a server read waits on Redis", "1.0",
             who="featurectl serve"),
    Variable("FEATURE_PLATFORM_SERVER_ENFORCE_TTL", "false: serve values past their TTL as PRESENT (Feast 0.67's "
             "behaviour)", "true", who="featurectl serve"),
    Variable("FEATURE_PLATFORM_PUSHGATEWAY", "Prometheus Pushgateway address for the monitor step's metrics",
             who="featurectl monitor, the monitor step"),
    Variable("FEATURE_PLATFORM_AIRFLOW_URL", "Airflow's API server, for the live proof", who="featurectl proof"),
    Variable("FEATURE_PLATFORM_AIRFLOW_USERNAME", "Airflow API user", who="featurectl proof"),
    Variable("FEATURE_PLATFORM_AIRFLOW_PASSWORD", "Airflow API password", who="featurectl proof", secret=True),
    Variable("FEATURE_PLATFORM_AIRFLOW_TOKEN", "Airflow API token (instead of user and password)",
             who="featurectl proof", secret=True),
    Variable("FEATURE_PLATFORM_DAG_MODE", "local: tasks run the steps in Airflow's workers; kubernetes: each step "
             "in a pod of the platform image", "local", who="the DAGs"),
    Variable("FEATURE_PLATFORM_IMAGE", "the platform image of step pods", who="the DAGs (kubernetes mode)"),
    Variable("FEATURE_PLATFORM_NAMESPACE", "the namespace of step pods", who="the DAGs (kubernetes mode)"),
    Variable("FEATURE_PLATFORM_SERVICE_ACCOUNT", "the service account of step pods",
             who="the DAGs (kubernetes mode)"),
    Variable("FEATURE_PLATFORM_STEP_ENV_FROM", "a Secret whose keys become the step pods' variables",
             who="the DAGs (kubernetes mode)"),
    Variable("FEATURE_PLATFORM_CONTRACTS_CONFIGMAP", "the contracts ConfigMap mounted into step pods",
             "feature-platform-contracts", who="the DAGs (kubernetes mode)"),
    Variable("FEATURE_PLATFORM_NOTIFIERS", 'JSON list of Airflow Notifiers for failures: [{"class": '
             '"pkg.module.Notifier", "kwargs": {...}, "on": ["failure"]}]', who="the DAGs"),
)
