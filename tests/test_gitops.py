"""Deployment manifests, validated offline with the real tools: helm lint/template (a real helm binary),
kubernetes-validate --strict for every rendered object, Argo CD objects against Argo CD's CRD schemas."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, SHARED

CHART = REPO / "charts" / "feature-platform"
ARGOCD = REPO / "argocd"
NAMESPACES = {"dev": "feature-platform-dev", "prod": "feature-platform-prod"}
K8S_VERSION = "1.35.0"


@pytest.fixture(scope="session")
def helm() -> str:
    binary = shutil.which("helm") or str(REPO / ".tools" / "bin" / "helm")
    if not Path(binary).exists():
        pytest.fail("helm is not installed: run `scripts/dev setup` (fetches it from npm into .tools/bin)")
    return binary


def render_chart(helm: str, env: str, *, chart: Path = CHART, namespace: str | None = None,
                 set_values: dict[str, str] | None = None, expect_error: bool = False) -> list[dict[str, Any]] | str:
    """`helm template` for one environment; returns the objects, or the error text when ``expect_error``."""
    command = [helm, "template", "feature-platform", str(chart), "-f", str(chart / f"values-{env}.yaml"),
               "--namespace", namespace or NAMESPACES[env]]
    for key, value in (set_values or {}).items():
        command += ["--set", f"{key}={value}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if expect_error:
        assert result.returncode != 0, "rendering should have failed"
        return result.stderr
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_helm_lint(helm: str, env: str) -> None:
    result = subprocess.run([helm, "lint", str(CHART), "-f", str(CHART / f"values-{env}.yaml"),
                             "--namespace", NAMESPACES[env], "--strict"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_rendered_objects_are_valid_kubernetes(helm: str, env: str) -> None:
    """Every object passes kubernetes-validate --strict (unknown fields rejected) for Kubernetes 1.35."""
    import kubernetes_validate

    objects = render_chart(helm, env)
    assert {"ConfigMap", "Deployment", "Service", "ServiceAccount", "NetworkPolicy", "Role"} <= {
        o["kind"] for o in objects}
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_objects_land_only_in_their_namespace(helm: str, env: str) -> None:
    objects = render_chart(helm, env)
    assert {o["metadata"]["namespace"] for o in objects} == {NAMESPACES[env]}
    other = NAMESPACES["prod" if env == "dev" else "dev"]
    rendered = [o for o in objects if o["kind"] != "ConfigMap"]  # the contracts describe every environment
    assert other not in json.dumps(rendered)


def test_wrong_namespace_fails_at_render(helm: str) -> None:
    """Installing dev's values into prod's namespace is refused, with the fix in the message."""
    error = render_chart(helm, "dev", namespace="feature-platform-prod", expect_error=True)
    assert "must be installed into namespace feature-platform-dev" in error


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"image.tag": "latest"}, "/image/tag"),
        ({"featureServer.replicas": "0"}, "/featureServer/replicas"),
        ({"featureServer.bogus": "1"}, "bogus"),
        ({"redis.passwordSecret.name": ""}, "comes from a Secret"),
        ({"environment.name": "staging"},
         "no contract contracts/environments/staging.yaml"),
        ({"featureServer.autoscaling.minReplicas": "9", "featureServer.autoscaling.maxReplicas": "3"},
         "must not exceed maxReplicas"),
        ({"image.digest": "", "image.tag": "0.1.0"}, "environment prod runs images by digest only"),
    ],
    ids=["latest-tag", "zero-replicas", "unknown-key", "no-password-secret", "unknown-environment", "min-above-max",
         "prod-tag-without-digest"],
)
def test_impossible_values_fail_with_a_clear_message(helm: str, values: dict[str, str], fragment: str) -> None:
    assert fragment in render_chart(helm, "prod", set_values=values, expect_error=True)


def _flatten(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict) and value:
        keys = set()
        for key, child in value.items():
            keys |= {f"{prefix}{key}"} | _flatten(child, f"{prefix}{key}.")
        return keys
    return set()


def _schema_keys(schema: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, child in schema.get("properties", {}).items():
        keys |= {f"{prefix}{key}"} | _schema_keys(child, f"{prefix}{key}.")
    return keys


def test_values_and_schema_stay_in_sync() -> None:
    """Every values.yaml key is described in values.schema.json and vice versa; objects forbid unknown keys."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    free_maps = {"serviceAccount.annotations", "featureServer.podAnnotations", "featureServer.nodeSelector",
                 "featureServer.affinity", "networkPolicy.redisPodLabels", "featureServer.podLabels",
                 "featureServer.networkPolicy.metricsNamespaceSelector", "metrics.serviceMonitor.labels"}
    value_keys = {k for k in _flatten(values) if not any(k.startswith(f + ".") for f in free_maps)}
    assert value_keys == _schema_keys(schema)

    def check(node: dict[str, Any], path: str) -> None:
        if "description" not in node and path:
            raise AssertionError(f"{path} has no description")
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or 'root'} must set additionalProperties"
            for key, child in node["properties"].items():
                check(child, f"{path}.{key}" if path else key)

    check(schema, "")


def test_contracts_configmap_mirrors_the_repo(helm: str) -> None:
    """The ConfigMap holds every contract file, keyed path-with-dots, byte for byte, under 1 MiB."""
    [configmap] = [o for o in render_chart(helm, "dev") if o["kind"] == "ConfigMap"]
    expected = {p.relative_to(REPO / "contracts").as_posix().replace("/", "."): p.read_text()
                for p in (REPO / "contracts").rglob("*.yaml")}
    data = configmap["data"]
    assert {k: v for k, v in data.items() if k != "contracts.lock"} == {k: v.rstrip("\n") for k, v in expected.items()}
    assert all("/" not in key for key in data)
    assert len(json.dumps(data).encode()) < 1024 * 1024
    assert configmap["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"


def test_contracts_mounted_as_directory_and_pods_hardened(helm: str) -> None:
    for obj in render_chart(helm, "prod"):
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert all("subPath" not in m for m in container["volumeMounts"])
            assert "@sha256:" in container["image"] or not container["image"].endswith(":latest")
        assert obj["spec"]["template"]["metadata"]["labels"]["redis-client"] == "true"


def test_checksum_annotation_changes_with_a_contract(helm: str, tmp_path: Path) -> None:
    """Editing a contract changes the pods' checksum annotation, so Deployments roll."""
    chart = tmp_path / "feature-platform"
    shutil.copytree(CHART, chart, symlinks=True)
    contracts = tmp_path / "contracts"
    shutil.copytree(REPO / "contracts", contracts)
    (chart / "contracts").unlink()
    (chart / "contracts").symlink_to(contracts)

    def checksum() -> str:
        [deployment] = [o for o in render_chart(helm, "dev", chart=chart) if o["kind"] == "Deployment"]
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/contracts"]

    before = checksum()
    assert checksum() == before  # stable when nothing changes
    profile = contracts / "feature_sets/customer_profile/v1.yaml"
    profile.write_text(profile.read_text().replace("Loyalty tier.", "Loyalty tier (bronze..gold)."))
    assert checksum() != before


def _is_secret_name(name: str) -> bool:
    return any(word in name.upper() for word in ("PASSWORD", "SECRET", "TOKEN", "KEY_ID", "ACCESS_KEY"))


def _pods(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"] if o["kind"] == "Deployment" else o["spec"])
            for o in objects if o["kind"] in ("Deployment", "Pod")]


def test_no_secret_value_is_rendered_from_git(helm: str) -> None:
    """No Secret object and no secret in an environment variable: secrets reach the pods as files of a
    projected volume (FEATURE_PLATFORM_SECRETS_DIR), each file named after the variable Settings gives it."""
    for env in ("dev", "prod"):
        objects = render_chart(helm, env)
        assert all(obj["kind"] != "Secret" for obj in objects)
        for name, pod in _pods(objects):
            for container in pod["containers"]:
                for var in container.get("env", []):
                    assert "secretKeyRef" not in var.get("valueFrom", {}), (name, var)
                    if _is_secret_name(var["name"]) and var["name"] != "FEATURE_PLATFORM_SECRETS_DIR":
                        raise AssertionError(f"{name}: secret {var['name']} as an environment variable")
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            secret_files = {item["path"] for source in volumes["secrets"]["projected"]["sources"]
                            for item in source["secret"]["items"]}
            env_vars = {v["name"]: v.get("value") for c in pod["containers"] for v in c.get("env", [])}
            assert env_vars["FEATURE_PLATFORM_SECRETS_DIR"] == "/var/run/secrets/feature-platform"
            if name.endswith("-test-online-read"):  # the helm test pod gets the token key only
                assert secret_files == {"FEATURE_PLATFORM_AUTH_KEY"}
            else:
                assert {"FEATURE_PLATFORM_REDIS_PASSWORD", "FEATURE_PLATFORM_AUTH_KEY"} <= secret_files


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_security_scan_findings_stay_fixed(helm: str, env: str) -> None:
    """What checkov's Kubernetes checks flagged (CKV_K8S_43 digest, 15 pull policy, 35 secrets as files, 8/9
    probes, CKV2_K8S_6 NetworkPolicy): every pod runs an image by digest, pulled Always, with probes (the one-shot
    helm test pod says why not, in checkov's skip annotation), and every pod is selected by a NetworkPolicy."""
    objects = render_chart(helm, env)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for name, pod in _pods(objects):
        obj = next(o for o in objects if o["metadata"]["name"] == name and o["kind"] in ("Deployment", "Pod"))
        meta = obj["spec"]["template"]["metadata"] if obj["kind"] == "Deployment" else obj["metadata"]
        for container in pod["containers"]:
            assert re.search(r"@sha256:[0-9a-f]{64}$", container["image"]), (name, container["image"])
            assert container["imagePullPolicy"] == "Always", name
            if obj["kind"] == "Deployment":
                assert {"readinessProbe", "livenessProbe"} <= set(container), name
            else:
                skips = " ".join(v for k, v in obj["metadata"].get("annotations", {}).items()
                                 if k.startswith("checkov.io/skip"))
                assert "CKV_K8S_8=" in skips and "CKV_K8S_9=" in skips, name
        labels = meta.get("labels", {})
        assert any(all(labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())
                   for p in policies), f"{name} is selected by no NetworkPolicy"
    [test_policy] = [p for p in policies if p["metadata"]["name"].endswith("-test-online-read")]
    assert test_policy["spec"]["ingress"] == [] and set(test_policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for path in ARGOCD.rglob("*.yaml"):
        text = path.read_text().lower()
        assert "password:" not in text and "aws_secret_access_key" not in text, path


# ------------------------------------------------------------------------------------------------- Argo CD


def _argocd_objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under argocd/ (values files and the argocd-cm patch are not objects)."""
    found = []
    for path in sorted(ARGOCD.rglob("*.yaml")):
        if "values" in path.relative_to(ARGOCD).parts:
            continue
        found += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc and "kind" in doc]
    return found


def _unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """The CRD schemas, like the API server, accept unknown fields; this reports them."""
    problems: list[str] = []
    if isinstance(value, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for key, child in value.items():
            if key not in schema["properties"]:
                problems.append(f"{path}.{key}")
            else:
                problems += _unknown_fields(child, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            problems += _unknown_fields(item, schema["items"], f"{path}[{index}]")
    return problems


def test_argocd_objects_validate_against_the_crd_schemas() -> None:
    import jsonschema

    schema_dir = SHARED / "schemas" / "argocd"
    if not schema_dir.is_dir():
        pytest.skip(f"Argo CD CRD schemas not found at {schema_dir} (shared/ is absent)")
    schemas = {"Application": "application-argoproj-v1alpha1.json", "AppProject": "appproject-argoproj-v1alpha1.json",
               "ApplicationSet": "applicationset-argoproj-v1alpha1.json"}
    import kubernetes_validate

    objects = _argocd_objects()
    assert objects
    for path, obj in objects:
        if obj["kind"] == "Namespace":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            continue
        schema = json.loads((schema_dir / schemas[obj["kind"]]).read_text())
        jsonschema.validate(obj, schema)
        top = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        assert _unknown_fields(top, schema) == [], path


def test_dev_and_prod_applications_are_mirror_images() -> None:
    """Same files and object names in dev/ and prod/, each deploying only into its own namespace;
    dev syncs automatically with prune + self-heal, prod by hand from a release tag."""
    apps = {env: {p.name: doc for p, doc in _argocd_objects() if p.parent.name == env and doc["kind"] == "Application"}
            for env in ("dev", "prod")}
    assert sorted(apps["dev"]) == sorted(apps["prod"]) == ["airflow.yaml", "feature-platform.yaml", "redis.yaml"]
    names = {env: {doc["metadata"]["name"] for doc in apps[env].values()} for env in apps}
    assert names["dev"].isdisjoint(names["prod"])
    for env, docs in apps.items():
        for doc in docs.values():
            spec = doc["spec"]
            assert spec["destination"]["namespace"] == NAMESPACES[env]
            assert spec["project"] == "feature-platform"
            sources = spec.get("sources") or [spec["source"]]
            for source in sources:
                for file in source.get("helm", {}).get("valueFiles", []):
                    local = file.replace("$values/", "") if file.startswith("$values/") else \
                        f"{source['path']}/{file}"
                    assert (REPO / local).is_file(), f"{doc['metadata']['name']}: missing values file {local}"
                    assert "prod" not in local if env == "dev" else "dev" not in local
                if "chart" in source:
                    assert source["targetRevision"][0].isdigit(), "upstream charts are pinned to a version"
            automated = spec.get("syncPolicy", {}).get("automated")
            if env == "dev":
                assert automated == {"prune": True, "selfHeal": True}
                assert all(s["targetRevision"] == "main" for s in sources if "chart" not in s)
            else:
                assert automated is None
                assert all(s["targetRevision"].startswith("v") for s in sources if "chart" not in s)


WAVE = "argocd.argoproj.io/sync-wave"


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_one_root_per_environment_orders_its_children(env: str) -> None:
    """App-of-apps: the root syncs argocd/<env>/ (namespace, Redis, platform, Airflow), where the sync waves
    order them (namespace < Redis < platform < Airflow), made real by the Application health check; dev and
    prod roots never share a name, folder or namespace; prod's root syncs by hand from a release tag."""
    [root] = [doc for p, doc in _argocd_objects() if p == ARGOCD / "bootstrap" / f"{env}.yaml"]
    assert root["metadata"]["name"] == f"feature-platform-{env}-root"
    assert root["spec"]["source"]["path"] == f"argocd/{env}"
    assert root["spec"]["project"] == "feature-platform-root"
    if env == "dev":
        assert root["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    else:
        assert "automated" not in root["spec"].get("syncPolicy", {})
        assert root["spec"]["source"]["targetRevision"].startswith("v")
    waves = {(doc["kind"], doc["metadata"]["name"]): int(doc["metadata"]["annotations"][WAVE])
             for p, doc in _argocd_objects() if p.parent.name == env}
    app = "Application"
    assert waves[("Namespace", NAMESPACES[env])] < waves[(app, f"redis-{env}")] < \
        waves[(app, f"feature-platform-{env}")] < waves[(app, f"airflow-{env}")]
    assert len(waves) == 4
    # The roots' project may create nothing but the namespaces and Applications.
    [project] = [doc for _, doc in _argocd_objects() if doc["metadata"]["name"] == "feature-platform-root"]
    assert project["spec"]["namespaceResourceWhitelist"] == [{"group": "argoproj.io", "kind": "Application"}]
    health = yaml.safe_load((ARGOCD / "bootstrap" / "argocd-cm-application-health.yaml").read_text())
    lua = health["data"]["resource.customizations.health.argoproj.io_Application"]
    assert "obj.status.health.status" in lua and 'hs.status = "Progressing"' in lua


def test_airflow_mounts_contracts_as_a_directory() -> None:
    common = yaml.safe_load((ARGOCD / "values" / "airflow-common.yaml").read_text())
    [mount] = [m for m in common["volumeMounts"] if m["name"] == "contracts"]
    assert "subPath" not in mount and mount["mountPath"] == "/etc/feature-platform/contracts"
    assert common["volumes"][0]["configMap"]["name"] == "feature-platform-contracts"
    for env in ("dev", "prod"):
        values = yaml.safe_load((ARGOCD / "values" / f"airflow-{env}.yaml").read_text())
        variables = {v["name"]: v.get("value") for v in values["env"]}
        assert variables["FEATURE_PLATFORM_ENV"] == env
        assert variables["FEATURE_PLATFORM_NAMESPACE"] == NAMESPACES[env]
        assert not any(_is_secret_name(name) for name in variables)


# --------------------------------------------------------------------------------- upstream charts, as synced

REDIS_CHART = SHARED / "upstream-charts" / "redis-20.11.3"
VALUES = ARGOCD / "values"


@pytest.fixture(scope="session")
def redis_chart() -> Path:
    if not (REDIS_CHART / "Chart.yaml").is_file():
        pytest.skip(f"Bitnami's Redis chart not found at {REDIS_CHART} (shared/ is absent)")
    return REDIS_CHART


def render_redis(helm: str, env: str, *extra: str, install: bool = False) -> subprocess.CompletedProcess:
    """Bitnami's Redis chart with our values, the way Argo CD renders it (or `helm install --dry-run`, which
    also renders the chart's NOTES.txt checks)."""
    verb = ["install", "--dry-run=client"] if install else ["template"]
    command = [helm, *verb, "redis", str(REDIS_CHART), "-f", str(VALUES / "redis-common.yaml"),
               "-f", str(VALUES / f"redis-{env}.yaml"), "--namespace", NAMESPACES[env], *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _images(objects: list[dict[str, Any]]) -> list[str]:
    images = []
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec") or (obj.get("spec") if obj["kind"] == "Pod" else None)
        for container in (pod or {}).get("containers", []) + (pod or {}).get("initContainers", []):
            images.append(container["image"])
    return images


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_upstream_redis_renders_pullable_pinned_and_locked_down(helm: str, redis_chart: Path, env: str) -> None:
    """Bitnami Redis 20.11.3 rendered with our values: every image pinned by digest and none from
    docker.io/bitnami (moved away, ImagePullBackOff), the password only from the existing Secret, persistent
    volumes, a NetworkPolicy admitting labelled clients; every object valid for Kubernetes 1.35; the chart's
    install-time image check passes (and fails without our allowance, so the check is real)."""
    import kubernetes_validate

    result = render_redis(helm, env)
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    images = _images(objects)
    assert images and all("@sha256:" in image and not image.startswith("docker.io/bitnami/") for image in images)
    assert "Secret" not in {o["kind"] for o in objects}
    statefulsets = [o for o in objects if o["kind"] == "StatefulSet"]
    assert statefulsets and all(o["spec"]["volumeClaimTemplates"] for o in statefulsets)
    for obj in statefulsets:
        env_vars = {v["name"]: v for c in obj["spec"]["template"]["spec"]["containers"] for v in c.get("env", [])}
        secret = env_vars["REDIS_PASSWORD_FILE"] if "REDIS_PASSWORD_FILE" in env_vars else env_vars["REDIS_PASSWORD"]
        volumes = {v["name"]: v for v in obj["spec"]["template"]["spec"]["volumes"]}
        referenced = json.dumps([secret, volumes.get("redis-password")])
        assert "feature-platform-redis" in referenced
    [policy] = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert {"redis-client": "true"} in [f.get("podSelector", {}).get("matchLabels") for rule in
                                        policy["spec"]["ingress"] for f in rule.get("from", [])]
    if env == "prod":
        assert {o["metadata"]["name"] for o in statefulsets} == {"redis-master", "redis-replicas"}
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert render_redis(helm, env, install=True).returncode == 0
    refused = render_redis(helm, env, "--set", "global.security.allowInsecureImages=false", install=True)
    assert refused.returncode != 0 and "Original containers have been substituted" in refused.stderr


def test_renders_are_stable(helm: str, redis_chart: Path) -> None:
    """Two renders are byte-identical (no generated passwords or keys), so Argo CD never sees drift."""
    for env in ("dev", "prod"):
        first, second = render_redis(helm, env), render_redis(helm, env)
        assert first.returncode == 0 and first.stdout == second.stdout
        assert render_chart(helm, env) == render_chart(helm, env)


# Keys of the official Airflow chart 1.21.0 that these values may set, from its parameters reference
# (https://airflow.apache.org/docs/helm-chart/1.21.0/parameters-ref.html). Lists and free-form maps are leaves.
AIRFLOW_CHART = "1.21.0"
AIRFLOW_CHART_KEYS = {
    "airflowVersion", "executor", "env", "secret", "volumes", "volumeMounts", "labels",
    "images.airflow.repository", "images.airflow.tag", "images.airflow.digest",
    "fernetKeySecretName", "webserverSecretKeySecretName", "apiSecretKeySecretName", "jwtSecretName",
    "data.metadataSecretName", "postgresql.enabled",
    "migrateDatabaseJob.useHelmHooks", "migrateDatabaseJob.applyCustomEnv", "migrateDatabaseJob.jobAnnotations",
    "migrateDatabaseJob.args",
    "createUserJob.useHelmHooks", "createUserJob.applyCustomEnv", "createUserJob.defaultUser.enabled",
}
AIRFLOW_LEAVES = {"env", "secret", "volumes", "volumeMounts", "labels", "migrateDatabaseJob.jobAnnotations",
                  "migrateDatabaseJob.args"}


def _leaf_keys(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict) and prefix.rstrip(".") not in AIRFLOW_LEAVES:
        return set().union(*(_leaf_keys(child, f"{prefix}{key}.") for key, child in value.items()))
    return {prefix.rstrip(".")}


def test_airflow_values_use_documented_keys_and_survive_argo_cd() -> None:
    """Every key we set is a documented key of the pinned chart; the jobs run without Helm hooks or custom env
    (the chart's own instruction for Argo CD), every secret key comes from an existing Secret (stable renders),
    the metadata DB is external, and prod pins both images by digest."""
    apps = {env: yaml.safe_load((ARGOCD / env / "airflow.yaml").read_text()) for env in ("dev", "prod")}
    assert {apps[env]["spec"]["sources"][0]["targetRevision"] for env in apps} == {AIRFLOW_CHART}
    for env in ("dev", "prod"):
        merged: dict[str, Any] = {}
        for name in ("airflow-common.yaml", f"airflow-{env}.yaml"):
            values = yaml.safe_load((VALUES / name).read_text())
            assert _leaf_keys(values) <= AIRFLOW_CHART_KEYS, (name, _leaf_keys(values) - AIRFLOW_CHART_KEYS)
            merged = _merge(merged, values)
        for job in ("migrateDatabaseJob", "createUserJob"):
            assert merged[job]["useHelmHooks"] is False and merged[job]["applyCustomEnv"] is False
        assert merged["migrateDatabaseJob"]["jobAnnotations"]["argocd.argoproj.io/hook"] == "Sync"
        assert all(merged[key] for key in ("fernetKeySecretName", "webserverSecretKeySecretName",
                                           "apiSecretKeySecretName", "jwtSecretName"))
        assert merged["postgresql"]["enabled"] is False and merged["data"]["metadataSecretName"]
        assert merged["createUserJob"]["defaultUser"]["enabled"] is False  # no password in values
        assert all("value" not in entry or not _is_secret_name(entry["envName"]) for entry in merged["secret"])


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def test_prod_runs_exactly_the_images_dev_verified(helm: str, tmp_path: Path) -> None:
    """Prod references every image by digest: the feature server and the DAG step pods the same platform
    digest, Airflow its own; scripts/pin-prod-images moves them together."""
    digest = r"sha256:[0-9a-f]{64}"
    import re

    def prod_digests(root: Path) -> tuple[str, str, str]:
        chart = yaml.safe_load((root / "charts/feature-platform/values-prod.yaml").read_text())
        airflow = yaml.safe_load((root / "argocd/values/airflow-prod.yaml").read_text())
        step_image = {v["name"]: v["value"] for v in airflow["env"]}["FEATURE_PLATFORM_IMAGE"]
        assert re.fullmatch(rf"[^@:]+(:[^@]+)?@{digest}", step_image), f"step pods run {step_image} by tag"
        assert chart["image"]["requireDigest"] is True and re.fullmatch(digest, chart["image"]["digest"])
        assert re.fullmatch(digest, airflow["images"]["airflow"]["digest"])
        assert "tag" not in airflow["images"]["airflow"]
        return chart["image"]["digest"], step_image.split("@")[1], airflow["images"]["airflow"]["digest"]

    server, steps, _ = prod_digests(REPO)
    assert server == steps
    [deployment] = [o for o in render_chart(helm, "prod") if o["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f"@{server}")

    for relative in ("charts/feature-platform/values-prod.yaml", "argocd/values/airflow-prod.yaml"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / relative, tmp_path / relative)
    platform, airflow = "sha256:" + "a1" * 32, "sha256:" + "b2" * 32
    result = subprocess.run([str(REPO / "scripts" / "pin-prod-images"), "--root", str(tmp_path),
                             "--platform", platform, "--airflow", airflow], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert prod_digests(tmp_path) == (platform, platform, airflow)


def test_pod_launcher_binds_the_account_that_runs_tasks(helm: str) -> None:
    """Under LocalExecutor the scheduler runs the tasks (and so launches the step pods): the Role is bound to
    the scheduler's service account, not to workers that do not exist."""
    executor = yaml.safe_load((VALUES / "airflow-common.yaml").read_text())["executor"]
    expected = {"LocalExecutor": "airflow-scheduler", "CeleryExecutor": "airflow-worker",
                "KubernetesExecutor": "airflow-worker"}[executor]
    for env in ("dev", "prod"):
        [binding] = [o for o in render_chart(helm, env) if o["kind"] == "RoleBinding"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": expected, "namespace": NAMESPACES[env]}]


def test_feature_server_is_reachable_only_by_clients_and_the_scraper(helm: str) -> None:
    """Ingress NetworkPolicy: labelled clients and the metrics namespace; the ServiceMonitor only on request;
    imagePullSecrets, extra env, pod labels and topology spread reach the pod; the Airflow credentials are
    optional so serving never waits for them."""
    import kubernetes_validate

    objects = render_chart(helm, "prod", set_values={
        "metrics.serviceMonitor.enabled": "true", "image.pullSecrets[0].name": "registry-credentials",
        "featureServer.extraEnv[0].name": "FEATURE_PLATFORM_SERVER_REDIS_TIMEOUT",
        "featureServer.extraEnv[0].value": "0.5", "featureServer.podLabels.team": "ml-platform"})
    [policy] = [o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-server")]
    sources = [f for rule in policy["spec"]["ingress"] for f in rule["from"]]
    assert {"namespaceSelector": {}, "podSelector": {"matchLabels": {"feature-platform-client": "true"}}} in sources
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in sources
    [monitor] = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["metadata"]["labels"]["team"] == "ml-platform"
    assert {c["topologyKey"] for c in pod["spec"]["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    env = {v["name"]: v for v in pod["spec"]["containers"][0]["env"]}
    assert env["FEATURE_PLATFORM_SERVER_REDIS_TIMEOUT"]["value"] == "0.5"
    assert "FEATURE_PLATFORM_AIRFLOW_PASSWORD" not in env  # a file of the secrets volume, optional there
    [airflow] = [source["secret"] for source in next(v for v in pod["spec"]["volumes"] if v["name"] == "secrets")[
        "projected"]["sources"] if any(i["path"] == "FEATURE_PLATFORM_AIRFLOW_PASSWORD" for i in source["secret"][
            "items"])]
    assert airflow["optional"] is True
    for obj in objects:
        if obj["kind"] != "ServiceMonitor":  # a CRD: not in Kubernetes' own schemas
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert "ServiceMonitor" not in {o["kind"] for o in render_chart(helm, "prod")}


def test_images_are_built_from_the_lock_as_non_root() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "requirements.lock" in dockerfile and "USER 10001" in dockerfile
    assert "s3fs==" in (REPO / "requirements.lock").read_text()  # materialize needs it; no Feast extra has it


def test_prod_can_point_at_a_redis_cluster_by_configuration(helm: str, tmp_path: Path) -> None:
    """Seed nodes in the chart's redis.address and `cluster: true` in the environment contract: the pods get the
    seed list, the contract validates, and Feast's config says redis_cluster."""
    from feature_platform.environments import Settings
    from feature_platform.feast_bridge import feature_store_config

    seeds = ",".join(f"redis-cluster-{i}.redis-cluster-headless.feature-platform-prod.svc.cluster.local:6379"
                     for i in range(3))
    [deployment] = [o for o in render_chart(helm, "prod", set_values={"redis.address": seeds.replace(",", "\\,")})
                    if o["kind"] == "Deployment"]
    env = {v["name"]: v.get("value") for v in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FEATURE_PLATFORM_REDIS_ADDRESS"] == seeds
    contracts = tmp_path / "contracts"
    shutil.copytree(REPO / "contracts", contracts)
    path = contracts / "environments" / "prod.yaml"
    data = yaml.safe_load(path.read_text())
    data["online_store"].update({"cluster": True, "db": 0})
    path.write_text(yaml.safe_dump(data))
    settings = Settings.from_env({"FEATURE_PLATFORM_REDIS_ADDRESS": seeds}, contracts_dir=contracts,
                                 home=tmp_path / "home", env_name="prod")
    config = feature_store_config(settings, settings.environment())
    assert config["online_store"]["redis_type"] == "redis_cluster"
