"""deploy/: Kubernetes objects against their schemas (strict), the clinic compose file against the
compose spec, and consistency with the code (settings read, images built, probe routes, Serve config)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "clinic" / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
PACKAGED_SERVE = ROOT / "serving" / "serve_config.yaml"
#: The oldest Kubernetes the manifests claim, and kubernetes-validate's newest.
KUBERNETES_VERSIONS = ("1.30", "1.37")
VERSION = "0.1.0"  # pyproject's; every image tag of ours carries it
#: Images not built here: pinned by an explicit tag (never latest), each documented in docs/deployment.md.
THIRD_PARTY_IMAGES = {"postgres:16.10-bookworm", "redis:7.4.5-alpine", "minio/minio:RELEASE.2025-09-07T16-13-09Z"}
#: Variables not read by a settings class: who reads each (a file, relative to its installed package or
#: the repository, that must contain the name or the given text), or None for a third-party image's
#: documented variable.
OTHER_ENV: dict[str, str | tuple[str, str] | None] = {
    "BIOVERSE_ROLLOUT_STATS_URL": "serving/app.py",
    "MLFLOW_BACKEND_STORE_URI": "mlflow/cli/__init__.py",
    "MLFLOW_DEFAULT_ARTIFACT_ROOT": "mlflow/cli/__init__.py",
    "MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow/environment_variables.py",
    "AWS_SHARED_CREDENTIALS_FILE": "botocore/configprovider.py",
    "AWS_ENDPOINT_URL_S3": ("botocore/configprovider.py", "f'AWS_ENDPOINT_URL_{transformed_service_id_env}'"),
    "RAY_USAGE_STATS_ENABLED": "ray/_common/usage/usage_constants.py",
    "RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION": "ray/_private/ray_constants.py",
    "POSTGRES_USER": None, "POSTGRES_DB": None, "POSTGRES_PASSWORD_FILE": None,
    "MINIO_ROOT_USER_FILE": None, "MINIO_ROOT_PASSWORD_FILE": None,
}


def _manifests() -> list[dict[str, Any]]:
    files = [K8S / name for name in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]]
    return [doc for f in files for doc in yaml.safe_load_all(f.read_text()) if doc]


MANIFESTS = _manifests()
RAYSERVICE = next(m for m in MANIFESTS if m["kind"] == "RayService")
COMPOSE_DOC = yaml.safe_load(COMPOSE.read_text())


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    pods = [(m["metadata"]["name"], m["spec"]["template"]["spec"]) for m in MANIFESTS if m["kind"] == "Deployment"]
    cluster = RAYSERVICE["spec"]["rayClusterConfig"]
    pods.append(("ray-head", cluster["headGroupSpec"]["template"]["spec"]))
    pods += [(f"ray-{g['groupName']}", g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    return pods


def _rayservice_validator() -> jsonschema.Validator:
    schema = json.loads((K8S / "schemas" / "rayservice-ray.io-v1.json").read_text())
    definitions = schema_contents(f"kubernetes-json-schema/v{KUBERNETES_VERSIONS[-1]}.0-local-strict/_definitions.json",
                                  KUBERNETES_VERSIONS[-1])
    registry = Registry().with_resources([("https://kubernetes.io/api/_definitions.json", Resource.from_contents(definitions))])
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_objects_follow_their_schemas_strictly(version: str) -> None:
    core = [m for m in MANIFESTS if m["kind"] != "RayService"]
    assert {m["kind"] for m in core} >= {"Namespace", "Deployment", "Service", "HorizontalPodAutoscaler",
                                         "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount", "ConfigMap"}
    for manifest in core:
        kubernetes_validate.validate(manifest, version, strict=True)
    hpa = next(m for m in core if m["kind"] == "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    typo = {**core[0], "metadata": {**core[0]["metadata"], "lables": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):  # strict: an unknown field fails
        kubernetes_validate.validate(typo, version, strict=True)


def test_rayservice_follows_kuberay_schema_with_kubernetes_pod_templates() -> None:
    validator = _rayservice_validator()
    validator.validate(RAYSERVICE)
    bad_spec = {**RAYSERVICE, "spec": {**RAYSERVICE["spec"], "serveConfig": ""}}
    assert not validator.is_valid(bad_spec)  # a KubeRay field misspelt
    worker = RAYSERVICE["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    container = {**worker["template"]["spec"]["containers"][0], "resource": {}}  # inside a pod template
    group = {**worker, "template": {**worker["template"], "spec": {**worker["template"]["spec"], "containers": [container]}}}
    cluster = {**RAYSERVICE["spec"]["rayClusterConfig"], "workerGroupSpecs": [group]}
    assert not validator.is_valid({**RAYSERVICE, "spec": {**RAYSERVICE["spec"], "rayClusterConfig": cluster}})


def _same_applications(config: dict[str, Any], allowed_args: set[str]) -> None:
    packaged = yaml.safe_load(PACKAGED_SERVE.read_text())["applications"]
    assert [a["name"] for a in config["applications"]] == [a["name"] for a in packaged]
    for ours, theirs in zip(config["applications"], packaged, strict=True):
        assert {k: v for k, v in ours.items() if k != "args"} == {k: v for k, v in theirs.items() if k != "args"}
        changed = {k for k in ours["args"].keys() | theirs["args"].keys() if ours["args"].get(k) != theirs["args"].get(k)}
        assert changed <= allowed_args, (ours["name"], changed)


def test_rayservice_serves_the_packaged_applications_on_gpu_and_cpu_groups() -> None:
    config = yaml.safe_load(RAYSERVICE["spec"]["serveConfigV2"])
    _same_applications(config, set())  # models from the production profile's registry (the pods' variables)
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    vision = next(a for a in config["applications"] if a["name"] == "vision")
    assert vision["args"]["num_gpus"] > 0
    groups = {g["groupName"]: g["template"]["spec"] for g in RAYSERVICE["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    gpu, cpu = groups["gpu"], groups["cpu"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert gpu["nodeSelector"] and gpu["containers"][0]["image"].startswith("bioverse-ai-gpu:")
    assert "nvidia.com/gpu" not in json.dumps(cpu["containers"][0]["resources"])


def test_clinic_compose_follows_the_compose_spec() -> None:
    schema = json.loads((DEPLOY / "hospital" / "compose-spec.json").read_text())
    jsonschema.validate(COMPOSE_DOC, schema)
    api = COMPOSE_DOC["services"]["api"]
    with pytest.raises(jsonschema.ValidationError):  # the schema does check
        jsonschema.validate({**COMPOSE_DOC, "services": {"api": {**api, "healthcheck": {"test": 1}}}}, schema)


def test_clinic_limits_healthchecks_and_start_order() -> None:
    services = COMPOSE_DOC["services"]
    assert services["api"]["deploy"]["resources"]["limits"] == {"memory": "512M", "cpus": "0.5"}
    assert services["ai"]["deploy"]["resources"]["limits"] == {"memory": "2G", "cpus": "1.0"}
    assert set(services) >= {"api", "ai", "mlflow", "postgres", "redis"}
    for name, service in services.items():
        assert "healthcheck" in service, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition["condition"] in {"service_healthy", "service_started"} and dependency in services
    assert services["api"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    for name in ("api", "ai", "mlflow"):  # ours: read-only, no capabilities, secrets as files
        assert services[name]["read_only"] is True and services[name]["cap_drop"] == ["ALL"]
    secrets = COMPOSE_DOC["secrets"]
    assert all(set(s) == {"file"} and s["file"].startswith("./secrets/") for s in secrets.values())
    assert (DEPLOY / "clinic" / "secrets" / ".gitignore").read_text().split() == ["*", "!.gitignore"]


def test_clinic_serve_config_is_the_packaged_one_fitted_to_one_cpu() -> None:
    config = yaml.safe_load((DEPLOY / "clinic" / "serve_config.yaml").read_text())
    _same_applications(config, {"num_cpus", "num_gpus"})
    assert config["http_options"]["host"] == "0.0.0.0"
    cpus = sum(a["args"]["num_cpus"] * a["deployments"][0]["autoscaling_config"]["min_replicas"] for a in config["applications"])
    assert cpus <= float(COMPOSE_DOC["services"]["ai"]["deploy"]["resources"]["limits"]["cpus"])


def _settings_env_names() -> set[str]:
    """Every variable a pydantic settings class of the project reads (prefix + field, or its aliases)."""
    from pydantic import AliasChoices
    from pydantic_settings import BaseSettings

    names: set[str] = set()
    for path in ROOT.glob("*/*.py"):
        if "(BaseSettings)" not in path.read_text():
            continue
        module = importlib.import_module(f"{path.parent.name}.{path.stem}")
        for cls in vars(module).values():
            if not (isinstance(cls, type) and issubclass(cls, BaseSettings) and cls.__module__ == module.__name__):
                continue
            prefix = cls.model_config.get("env_prefix", "")
            for field_name, field in cls.model_fields.items():
                alias = field.validation_alias
                if isinstance(alias, AliasChoices):
                    names |= {str(a).upper() for a in alias.choices}
                else:
                    names.add(str(alias or f"{prefix}{field_name}").upper())
    return names


def _env_set_by_deployables() -> set[str]:
    names = {n for s in COMPOSE_DOC["services"].values() for n in s.get("environment", {})}
    for manifest in MANIFESTS:
        if manifest["kind"] == "ConfigMap":
            names |= set(manifest["data"])
    for _, pod in _pod_specs():
        names |= {e["name"] for c in pod["containers"] for e in c.get("env", [])}
    return names


def _unread(names: set[str], settings: set[str]) -> list[str]:
    """The names that neither a settings class nor the file OTHER_ENV names reads."""
    unread = []
    for name in sorted(names):
        read = name.removesuffix("_FILE") if name.startswith(("BIOVERSE_", "MLFLOW_")) else name  # entrypoint.sh
        if read in settings:
            continue
        if read not in OTHER_ENV:
            unread.append(name)
            continue
        where = OTHER_ENV[read]
        if where is not None:
            where, text = where if isinstance(where, tuple) else (where, read)
            base = ROOT if (ROOT / where).exists() else Path(importlib.util.find_spec(where.split("/")[0]).origin).parents[1]
            if text not in (base / where).read_text():
                unread.append(name)
    return unread


def test_every_variable_set_is_one_that_is_read() -> None:
    settings = _settings_env_names()
    assert {"BIOVERSE_API_DATABASE_URL", "BIOVERSE_ONLINE_STORE", "BIOVERSE_PROFILE"} <= settings
    assert not _unread(_env_set_by_deployables(), settings)
    assert _unread({"BIOVERSE_API_DATABSE_URL_FILE", "BIOVERSE_PRODUCTION_REDIS_URL"}, settings) == ["BIOVERSE_API_DATABSE_URL_FILE"]


#: Example values of the secrets the deployables pass as files (the *_FILE variables).
SECRET_EXAMPLES = {"BIOVERSE_PRODUCTION_POSTGRES_URL": "postgresql://bioverse:pw@db:5432",
                   "BIOVERSE_PRODUCTION_REDIS_URL": "redis://:pw@cache:6379/0",
                   "BIOVERSE_API_TOKEN_SECRET": "t", "BIOVERSE_API_METRICS_TOKEN": "m"}


def _api_environment(where: str) -> dict[str, str]:
    if where == "compose":
        env = dict(COMPOSE_DOC["services"]["api"]["environment"])
    else:
        (api,) = [m for m in MANIFESTS if m["kind"] == "Deployment" and m["metadata"]["name"] == "bioverse-api"]
        (config,) = [m for m in MANIFESTS if m["kind"] == "ConfigMap"]
        env = {**config["data"], **{e["name"]: e["value"] for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}}
    resolved = {}
    for name, value in env.items():
        if name.startswith("BIOVERSE_") and name.endswith("_FILE"):
            name, value = name.removesuffix("_FILE"), SECRET_EXAMPLES[name.removesuffix("_FILE")]
        resolved[name] = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))  # compose's ${VAR:-default}
    return resolved


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_the_api_settings_accept_the_deployables_values(where: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The API's variables make a complete production profile: every store on its server."""
    from experiments.settings import ExperimentSettings
    from feature_store.profile import get_profile
    from feature_store.settings import FeatureStoreSettings
    from platform_api.settings import ApiSettings

    for name in [n for n in os.environ if n.startswith("BIOVERSE_")]:
        monkeypatch.delenv(name)
    for name, value in {**_api_environment(where), "BIOVERSE_DATA_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    get_profile.cache_clear()
    try:
        api, features, experiments = ApiSettings(), FeatureStoreSettings(), ExperimentSettings()
    finally:
        get_profile.cache_clear()
    assert api.database_url == "postgresql+psycopg2://bioverse:pw@db:5432/bioverse"
    assert api.cache_url.startswith("redis://") and api.risk_scoring == "serve" and api.cookie_secure
    assert features.online_store == "redis" and features.feast_registry.endswith("/bioverse_feast")
    assert experiments.resolved_tracking_uri().endswith("/bioverse_mlflow")
    assert experiments.resolved_artifact_root().startswith("s3://")


def _built_images() -> dict[str, str]:
    """name:tag -> target, from the build commands atop the Dockerfile, each target a stage of it."""
    text = DOCKERFILE.read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.M))
    built = {tag: target for target, tag in re.findall(r"^#\s+docker build .*--target (\S+).* -t (\S+) ", text, flags=re.M)}
    assert set(built.values()) <= stages and {"api", "ai", "mlflow"} <= set(built.values())
    return built


def test_every_image_is_built_here_or_pinned_third_party() -> None:
    built = _built_images()
    kustomized = {i["name"]: i["newTag"] for i in yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"]}
    assert set(kustomized.values()) == {VERSION}
    images = {s["image"].replace("${BIOVERSE_VERSION:-0.1.0}", VERSION) for s in COMPOSE_DOC["services"].values()}
    cluster = {c["image"] for _, pod in _pod_specs() for c in pod["containers"]}
    assert {i.split(":")[0] for i in cluster} == set(kustomized)  # each pinnable at release, none retagged by another
    images |= cluster
    for image in images:
        if image in THIRD_PARTY_IMAGES:
            assert not image.endswith(":latest")
            continue
        assert image in built, f"{image} is built by no Dockerfile here"
        assert image.split(":")[1] == VERSION


def test_dockerfile_stages_are_non_root_with_healthchecks_and_no_secrets() -> None:
    text = DOCKERFILE.read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    runtime = next(s for s in stages if s.split()[2] == "runtime")
    instructions = [line for line in runtime.splitlines() if line and not line.startswith("#")]
    assert instructions[-2:] == ["USER 10001:10001", 'ENTRYPOINT ["bioverse-entrypoint"]']  # the base ends non-root
    images = [s for s in stages if s.startswith("runtime AS ")]  # built from it, none switching back
    assert len(images) == 4
    for stage in images:
        assert "HEALTHCHECK" in stage and "USER" not in stage, stage.splitlines()[0]
    assert not re.search(r"^(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", text, flags=re.M | re.I)
    builder = stages[0]
    assert builder.index("torch==${TORCH_VERSION}") < builder.index("pip install -c /tmp/constraints.txt .")
    pin = re.search(r"ARG TORCH_VERSION=(\S+)", text).group(1)
    assert f"torch=={pin}" in (ROOT / "Makefile").read_text()  # the Makefile's pin


def test_pods_are_hardened_and_take_secrets_by_reference() -> None:
    for name, pod in _pod_specs():
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"] and "limits" in container["resources"], name
            for env in container.get("env", []):
                if re.search(r"URL|SECRET|TOKEN|PASSWORD", env["name"]) and "value" in env:
                    assert env["name"].endswith("_FILE") or env["value"].startswith("http://"), (name, env["name"])
    assert all(m["automountServiceAccountToken"] is False for m in MANIFESTS if m["kind"] == "ServiceAccount")
    assert not [m for m in MANIFESTS if m["kind"] == "Secret"]  # secrets exist in the cluster, named only


def test_probes_call_routes_that_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BIOVERSE_DATA_DIR", str(tmp_path))
    from platform_api.main import create_app
    from platform_api.settings import get_settings

    get_settings.cache_clear()
    try:
        routes = {getattr(r, "path", None) for r in create_app(migrate_on_start=False).routes}
    finally:
        get_settings.cache_clear()
    api = next(m for m in MANIFESTS if m["kind"] == "Deployment" and m["metadata"]["name"] == "bioverse-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    probes = {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {"/healthz", "/readyz"} and probes <= routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    compose_api = " ".join(COMPOSE_DOC["services"]["api"]["healthcheck"]["test"])
    assert set(re.findall(r"127\.0\.0\.1:8080(/\w+)", compose_api + DOCKERFILE.read_text())) <= routes
    mlflow_server = Path(importlib.util.find_spec("mlflow").origin).parent / "server" / "__init__.py"
    assert '"/health"' in mlflow_server.read_text()
    serve = Path(importlib.util.find_spec("ray").origin).parent / "serve" / "_private" / "proxy_request_response.py"
    assert '"/-/healthz"' in serve.read_text()


def test_network_policies_deny_by_default_and_open_serve_to_the_api_only() -> None:
    policies = {m["metadata"]["name"]: m["spec"] for m in MANIFESTS if m["kind"] == "NetworkPolicy"}
    deny = policies["default-deny-all"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny
    serve_rules = [r for r in policies["bioverse-ray"]["ingress"] if {"protocol": "TCP", "port": 8000} in r.get("ports", [])]
    sources = [peer for rule in serve_rules for peer in rule["from"]]
    namespaces = [p for p in sources if "namespaceSelector" in p]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "bioverse-api"}}} in sources
    assert [p["namespaceSelector"]["matchLabels"] for p in namespaces] == [{"kubernetes.io/metadata.name": "kuberay-system"}]
    api_ports = {p["port"] for rule in policies["bioverse-api"]["egress"] for p in rule["ports"]}
    assert api_ports == {5432, 6379, 443, 8000}
