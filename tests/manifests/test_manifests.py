"""manifests/: every overlay renders with ``kubectl kustomize`` and validates offline against the Kubernetes
schemas (kubernetes-validate bundles them); cross-references (secrets, buckets, services) line up."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO

K8S_VERSION = "1.32.0"  # the kubectl on these machines; the schemas are strict (no unknown fields)
OVERLAYS = sorted(p.parent.name for p in (REPO / "manifests" / "overlays").glob("*/kustomization.yaml"))
SECRETS = REPO / "manifests" / "secrets"


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the manifests"
    out = subprocess.run([kubectl, "kustomize", str(REPO / "manifests" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def template_keys() -> dict[str, set[str]]:
    """Secret name -> keys, from the committed templates."""
    out = {}
    for p in SECRETS.glob("*.env.example"):
        keys = {line.split("=", 1)[0] for line in p.read_text().splitlines() if line and not line.startswith("#")}
        out[p.name[: -len(".env.example")]] = keys
    return out


def containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def test_overlays_exist():
    assert {"kubeflow", "dev"} <= set(OVERLAYS)


def test_rendered_objects_validate_against_the_schemas(rendered):
    import kubernetes_validate

    _, objs = rendered
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "StatefulSet", "Service", "PersistentVolumeClaim", "Job", "ConfigMap",
            "NetworkPolicy"} <= kinds
    for o in objs:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)


def test_the_validator_catches_a_broken_object(rendered):
    import kubernetes_validate

    dep = next(o for o in rendered[1] if o["kind"] == "Deployment")
    bad = yaml.safe_load(yaml.safe_dump(dep))
    bad["spec"]["replicas"] = "one"
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy_typo"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_no_secret_values_and_every_secret_ref_is_in_a_template(rendered):
    _, objs = rendered
    assert not [o for o in objs if o["kind"] == "Secret"], "secrets are templates only"
    keys = template_keys()
    refs = set()
    for o in objs:
        for c in containers(o):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
    assert refs
    for name, key in refs:
        assert key in keys.get(name, set()), f"{name}/{key} is not in manifests/secrets/{name}.env.example"


def test_pipeline_secret_env_matches_the_templates():
    from augpaint_core.config import ClusterConfig
    from pipelines.cluster import MINIO_ENDPOINT_ALIASES, MINIO_ENV, MLFLOW_ENV

    keys, c = template_keys(), ClusterConfig()
    assert set(MINIO_ENV) | set(MINIO_ENDPOINT_ALIASES) <= keys[c.minio_secret]
    assert set(MLFLOW_ENV) <= keys[c.mlflow_secret]


def test_minio_pinned_kfp_launcher_and_mlflow_wiring(rendered):
    overlay, objs = rendered
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    ns = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert len(ns) == 1 and None not in ns, f"{overlay}: everything in one namespace"
    minio = containers(by[("Deployment", "augpaint-minio")])[0]
    assert re.fullmatch(r"quay\.io/minio/minio@sha256:[0-9a-f]{64}", minio["image"])
    for o in objs:
        for c in containers(o):
            assert "@sha256:" in c["image"] or re.search(r":[\w.-]+$", c["image"]), c["image"]  # no floating
            assert not c["image"].endswith(":latest")
            assert c.get("resources", {}).get("limits", {}).get("memory"), (o["metadata"]["name"], c["name"])
        pod = o.get("spec", {}).get("template", {}).get("spec", {})
        if pod:
            assert pod.get("securityContext", {}).get("runAsNonRoot") is True, o["metadata"]["name"]
    # The bucket job makes every bucket the other pieces write to.
    job = containers(by[("Job", "augpaint-minio-buckets")])[0]
    buckets = set(next(e["value"] for e in job["env"] if e["name"] == "BUCKETS").split())
    launcher = by[("ConfigMap", "kfp-launcher")]["data"]
    root = launcher["defaultPipelineRoot"]
    assert root.startswith("s3://") and root[5:].split("/")[0] in buckets
    prov = yaml.safe_load(launcher["providers"])["s3"]["default"]
    assert prov["credentials"]["fromEnv"] is False
    ref = prov["credentials"]["secretRef"]
    assert {ref["accessKeyKey"], ref["secretKeyKey"]} <= template_keys()[ref["secretName"]]
    host, port = prov["endpoint"].split(":")
    svc = by[("Service", host)]
    assert int(port) in {p["port"] for p in svc["spec"]["ports"]}
    mlflow = containers(by[("Deployment", "augpaint-mlflow")])[0]
    env = {e["name"]: e.get("value") for e in mlflow["env"]}
    backend = env["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql://") and "augpaint-postgres:5432" in backend
    args = " ".join(mlflow["args"])
    dest = re.search(r"--artifacts-destination (s3://\S+)", args).group(1)
    assert dest[5:].split("/")[0] in buckets
    allowed = allowed_hosts(mlflow, "kubeflow-user-example-com")
    spool = [line for line in (SECRETS / "augpaint-mlflow.env.example").read_text().splitlines()
             if line.startswith("AUGPAINT_MLFLOW_SPOOL=")][0].split("=", 1)[1]
    assert spool[5:].split("/")[0] in buckets
    uri = [line for line in (SECRETS / "augpaint-mlflow.env.example").read_text().splitlines()
           if line.startswith("MLFLOW_TRACKING_URI=")][0].split("=", 1)[1]
    from mlflow.server.security_utils import is_allowed_host_header

    assert is_allowed_host_header(allowed, uri.split("//", 1)[1])  # the URI the pipeline pods use is allowed


def allowed_hosts(mlflow: dict, namespace: str) -> list[str]:
    """MLFLOW_SERVER_ALLOWED_HOSTS as the kubelet expands it ($(POD_NAMESPACE) -> namespace)."""
    env = {e["name"]: e.get("value") for e in mlflow["env"]}
    return env["MLFLOW_SERVER_ALLOWED_HOSTS"].replace("$(POD_NAMESPACE)", namespace).split(",")


def test_no_password_on_a_command_line_and_no_istio_sidecar(rendered):
    """Issue 14: the Postgres password is not in MLflow's command or URI; issue 16: MLflow has no sidecar."""
    _, objs = rendered
    pods = [o for o in objs if o.get("spec", {}).get("template")]
    for o in pods:
        tmpl = o["spec"]["template"]
        # Pipeline pods run without a sidecar: a sidecar on a service they call answers 403 RBAC.
        assert tmpl["metadata"].get("annotations", {}).get("sidecar.istio.io/inject") == "false", o["metadata"]
        assert tmpl["spec"]["securityContext"].get("seccompProfile") == {"type": "RuntimeDefault"}
        for c in containers(o):
            line = " ".join(c.get("command", []) + c.get("args", []))
            assert "PASSWORD" not in line.replace("ROOT_PASSWORD}@", ""), (o["metadata"]["name"], line)
            for e in c.get("env", []):
                assert "PASSWORD)" not in (e.get("value") or ""), e  # no $(…PASSWORD) spliced into a value
    mlflow = next(o for o in objs if o["metadata"]["name"] == "augpaint-mlflow" and o["kind"] == "Deployment")
    env = {e["name"]: e for e in containers(mlflow)[0]["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "augpaint-postgres", "key": "POSTGRES_PASSWORD"}


def test_minio_hardened_and_pipelines_get_a_scoped_user(rendered):
    _, objs = rendered
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    dep = by[("Deployment", "augpaint-minio")]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    minio = pod["containers"][0]
    env = {e["name"]: e for e in minio["env"]}
    # The root user comes from its own secret; nothing a pipeline pod mounts holds it.
    assert {env[k]["valueFrom"]["secretKeyRef"]["name"] for k in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")} \
        == {"augpaint-minio-root"}
    assert env["MINIO_BROWSER"]["value"] == "off" and "--console-address" not in minio["args"]
    assert [p["port"] for p in by[("Service", "augpaint-minio")]["spec"]["ports"]] == [9000]  # no console port
    from augpaint_core.config import ClusterConfig

    assert ClusterConfig().minio_secret == "augpaint-minio"
    root_readers = {o["metadata"]["name"] for o in objs for c in containers(o) for e in c.get("env", [])
                    if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "augpaint-minio-root"}
    assert root_readers == {"augpaint-minio", "augpaint-minio-buckets"}
    # The setup job: a small pinned client image; it makes the scoped user and the retention rule.
    job = by[("Job", "augpaint-minio-buckets")]
    c = containers(job)[0]
    assert re.fullmatch(r"quay\.io/minio/mc@sha256:[0-9a-f]{64}", c["image"])
    script = c["args"][0]
    assert "mc admin user add" in script and "mc admin policy attach m augpaint-pipelines" in script
    assert '"s3:*"' not in script and "admin:" not in script  # object access only
    jenv = {e["name"]: e.get("value") for e in c["env"]}
    assert int(jenv["ARTIFACT_RETENTION_DAYS"]) > 0 and "mc ilm import" in script
    launcher = yaml.safe_load(by[("ConfigMap", "kfp-launcher")]["data"]["providers"])["s3"]["default"]
    assert jenv["RETENTION_BUCKET"] in by[("ConfigMap", "kfp-launcher")]["data"]["defaultPipelineRoot"]
    assert launcher["credentials"]["secretRef"]["secretName"] == "augpaint-minio"


def test_network_policies_admit_pipeline_pods_only(rendered):
    _, objs = rendered
    pols = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "NetworkPolicy"}
    assert set(pols) == {"augpaint-mlflow", "augpaint-minio", "augpaint-postgres"}
    labels = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"] for o in objs
              if o.get("spec", {}).get("template")}
    kfp_pod = {"pipelines.kubeflow.org/v2_component": "true"}
    for name, spec in pols.items():
        sel = spec["podSelector"]["matchLabels"]
        assert sel.items() <= labels[name].items(), name  # the policy selects the service's pod
        assert spec["policyTypes"] == ["Ingress"]
        sources = [f for rule in spec["ingress"] for f in rule["from"]]
        assert sources and all("ipBlock" not in f for f in sources)
        admitted = [f.get("podSelector", {}).get("matchLabels") for f in sources]
        if name == "augpaint-postgres":
            assert admitted == [{"app.kubernetes.io/name": "augpaint-mlflow"}]
        else:
            assert kfp_pod in admitted
    # No policy admits pods from any namespace but the KFP UI's.
    other = [f for spec in pols.values() for rule in spec["ingress"] for f in rule["from"] if "namespaceSelector" in f]
    assert all(f["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kubeflow"}
               and f["podSelector"] for f in other)


def test_secret_templates_are_git_ignored_when_filled():
    ignored = (REPO / ".gitignore").read_text()
    assert "manifests/secrets/*.env" in ignored
