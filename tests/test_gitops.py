"""Deployment manifests, validated offline with the real tools: helm lint/template (a real helm binary),
kubernetes-validate --strict for every rendered object, Argo CD objects against Argo CD's CRD schemas."""

from __future__ import annotations

import json
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
    ],
    ids=["latest-tag", "zero-replicas", "unknown-key", "no-password-secret", "unknown-environment", "min-above-max"],
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
                 "featureServer.affinity", "networkPolicy.redisPodLabels"}
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


def test_no_secret_value_is_rendered_from_git(helm: str) -> None:
    for env in ("dev", "prod"):
        for obj in render_chart(helm, env):
            assert obj["kind"] != "Secret"
            if obj["kind"] != "Deployment":
                continue
            for container in obj["spec"]["template"]["spec"]["containers"]:
                for var in container.get("env", []):
                    if _is_secret_name(var["name"]):
                        assert "value" not in var and "secretKeyRef" in var["valueFrom"], var
    for path in ARGOCD.rglob("*.yaml"):
        text = path.read_text().lower()
        assert "password:" not in text and "aws_secret_access_key" not in text, path


# ------------------------------------------------------------------------------------------------- Argo CD


def _argocd_objects() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(ARGOCD.rglob("*.yaml")):
        if "values" in path.relative_to(ARGOCD).parts:
            continue
        found += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
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
    objects = _argocd_objects()
    assert objects
    for path, obj in objects:
        schema = json.loads((schema_dir / schemas[obj["kind"]]).read_text())
        jsonschema.validate(obj, schema)
        top = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        assert _unknown_fields(top, schema) == [], path


def test_dev_and_prod_applications_are_mirror_images() -> None:
    """Same files and object names in dev/ and prod/, each deploying only into its own namespace;
    dev syncs automatically with prune + self-heal, prod by hand from a release tag."""
    apps = {env: {p.name: doc for p, doc in _argocd_objects() if p.parent.name == env} for env in ("dev", "prod")}
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
    wave = "argocd.argoproj.io/sync-wave"
    waves = {doc["metadata"]["name"].rsplit("-", 1)[0]: int(doc["metadata"]["annotations"][wave])
             for doc in apps["dev"].values()}
    assert waves["redis"] < waves["feature-platform"] < waves["airflow"]


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


def test_images_are_built_from_the_lock_as_non_root() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "requirements.lock" in dockerfile and "USER 10001" in dockerfile
    assert "s3fs==" in (REPO / "requirements.lock").read_text()  # materialize needs it; no Feast extra has it
