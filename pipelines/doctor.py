"""``augpaint doctor --namespace NS``: check a Kubeflow profile namespace before submitting.

Everything issue 16 found breaks a run late (in a pod, after an image pull, at the exit handler) is
checked here first, through the Kubernetes API (the ``kubernetes`` package, with the kubeconfig or the
pod's service account) and, given ``--host``, the KFP API:

- the KFP backend version (>= 2.14);
- the ``kfp-launcher`` ConfigMap and its pipeline root (our MinIO, with our secret);
- the secrets the pods need, with their keys (names only: values are never printed), and the pipeline
  pods not holding MinIO's root keys;
- allocatable GPUs on nodes that match the config's tolerations and node selector;
- MinIO and MLflow as a pipeline pod sees them: the service, ready endpoints, no Istio sidecar on the pod;
- the component image: a fixed tag, and whether this cluster has pulled it or failed to.

One line per check; a failure names its fix. Exit status 1 when any check fails.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import urllib.parse
from typing import Any, Callable

from augpaint_core.config import AugPaintConfig, ClusterConfig, TolerationConfig
from augpaint_core.errors import AugPaintError

MINIO_SERVICE, MLFLOW_SERVICE = "augpaint-minio", "augpaint-mlflow"
MINIO_ROOT_SECRET = "augpaint-minio-root"
POSTGRES_SECRET = "augpaint-postgres"
KFP_NAMESPACE = "kubeflow"


@dataclasses.dataclass
class Check:
    name: str
    status: str  # "ok", "warn" (could not check, or a risk), "FAIL"
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.fix and self.status != "ok" else ""
        return f"{self.status:<4}  {self.name}: {self.detail}{fix}"


class Kube:
    """Read-only GETs on the Kubernetes API as plain JSON (no model classes: fewer surprises, easy to fake)."""

    def __init__(self, api_client):
        self.api = api_client

    def get(self, path: str, **query: str) -> dict | None:
        """The object at ``path``; ``None`` when it does not exist. Raises ``PermissionError`` on 401/403."""
        from kubernetes.client.rest import ApiException

        qs = [(k, v) for k, v in query.items() if v]
        try:
            resp = self.api.call_api(path, "GET", query_params=qs, header_params={"Accept": "application/json"},
                                     auth_settings=["BearerToken"], _preload_content=False,
                                     _return_http_data_only=True, _request_timeout=20)
        except ApiException as err:
            if err.status == 404:
                return None
            if err.status in (401, 403):
                raise PermissionError(f"HTTP {err.status} on GET {path}") from None
            raise AugPaintError(f"Kubernetes API: GET {path} failed (HTTP {err.status} {err.reason})") from None
        except Exception as err:  # noqa: BLE001 - urllib3 connection errors
            raise AugPaintError(f"Kubernetes API unreachable ({type(err).__name__}: "
                                f"{' '.join(str(err).split())[:160]})") from None
        return json.loads(resp.data or b"{}")


def kube_client(kubeconfig: str | None = None, context: str | None = None) -> Kube:
    """A :class:`Kube` from ``kubeconfig`` (default $KUBECONFIG, ~/.kube/config) or the pod's service account."""
    from kubernetes import client, config

    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        if os.path.exists(path.split(os.pathsep)[0]):
            cfg = client.Configuration()
            config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
        else:
            config.load_incluster_config()
            cfg = client.Configuration.get_default_copy()
    except Exception as err:  # noqa: BLE001 - ConfigException and friends
        raise AugPaintError(f"kubeconfig {path}: cannot use it ({' '.join(str(err).split())[:160]})") from None
    return Kube(client.ApiClient(cfg))


def _secret_keys(obj: dict) -> set[str]:
    return set((obj.get("data") or {}).keys()) | set((obj.get("stringData") or {}).keys())


def _secret_value(obj: dict, key: str) -> str:
    raw = (obj.get("data") or {}).get(key)
    return base64.b64decode(raw).decode(errors="replace") if raw else (obj.get("stringData") or {}).get(key, "")


def required_secret_keys(cluster: ClusterConfig) -> dict[str, set[str]]:
    """Secret -> keys that our pods read (pipeline tasks, kfp-launcher, MLflow, MinIO and its setup job)."""
    from pipelines.cluster import MINIO_ENDPOINT_ALIASES, MINIO_ENV, MLFLOW_ENV

    return {cluster.minio_secret: set(MINIO_ENV) | set(MINIO_ENDPOINT_ALIASES),
            cluster.mlflow_secret: set(MLFLOW_ENV),
            MINIO_ROOT_SECRET: {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
            POSTGRES_SECRET: {"POSTGRES_USER", "POSTGRES_PASSWORD"}}


def _tolerates(tols: list[TolerationConfig], taint: dict) -> bool:
    for t in tols:
        if t.key and t.key != taint.get("key"):
            continue
        if t.operator == "Equal" and (t.value or "") != (taint.get("value") or ""):
            continue
        if t.effect and t.effect != taint.get("effect"):
            continue
        return True
    return False


def _quantity(q: str | int | None) -> int:
    try:
        return int(str(q or "0"))
    except ValueError:
        return 0


# ---------------------------------------------------------------------------------------------- checks


def check_kfp_version(kube: Kube, host: str | None, namespace: str | None = None) -> Check:
    from pipelines.client import MIN_KFP_BACKEND, parse_version

    need = ".".join(map(str, MIN_KFP_BACKEND))
    fix = f"upgrade Kubeflow Pipelines to {need} or newer (Kubeflow 1.11 or newer)"
    if host:
        from pipelines.client import backend_version, connect

        try:
            tag, _ = backend_version(connect(host, namespace))
        except Exception as err:  # noqa: BLE001 - an AugPaintError or an HTTP error from the client
            return Check("kfp-version", "FAIL", f"KFP API at {host}: {' '.join(str(err).split())[:160]}",
                         "check --host (the KFP API or the gateway's /pipeline) and $KFP_TOKEN")
        where = f"KFP API at {host}"
    else:
        try:
            dep = kube.get(f"/apis/apps/v1/namespaces/{KFP_NAMESPACE}/deployments/ml-pipeline")
        except PermissionError:
            return Check("kfp-version", "warn", f"cannot read deployment {KFP_NAMESPACE}/ml-pipeline (forbidden)",
                         "pass --host to ask the KFP API instead")
        if dep is None:
            return Check("kfp-version", "warn", f"no deployment {KFP_NAMESPACE}/ml-pipeline",
                         "pass --host to ask the KFP API instead")
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else "unknown"
        where = f"{KFP_NAMESPACE}/ml-pipeline ({image})"
    ver = parse_version(tag)
    if ver is None:
        return Check("kfp-version", "warn", f"{where} reports version {tag!r}; cannot compare with {need}", fix)
    if ver[:2] < MIN_KFP_BACKEND:
        return Check("kfp-version", "FAIL", f"{where} is {tag}; AugPaint needs {need} or newer", fix)
    return Check("kfp-version", "ok", f"{where} is {tag} (>= {need})")


def check_launcher(kube: Kube, ns: str, cluster: ClusterConfig) -> Check:
    import yaml

    fix = "kubectl apply -k manifests/overlays/kubeflow (our kfp-launcher; README: coexisting with KFP's)"
    cm = kube.get(f"/api/v1/namespaces/{ns}/configmaps/kfp-launcher")
    if cm is None:
        return Check("kfp-launcher", "FAIL", "ConfigMap kfp-launcher missing: artifacts go to KFP's default store",
                     fix)
    data = cm.get("data") or {}
    root = data.get("defaultPipelineRoot", "")
    try:
        prov = (yaml.safe_load(data.get("providers") or "{}") or {}).get("s3", {}).get("default", {})
    except yaml.YAMLError:
        return Check("kfp-launcher", "FAIL", "its providers entry is not YAML", fix)
    endpoint = str(prov.get("endpoint", ""))
    ref = ((prov.get("credentials") or {}).get("secretRef") or {})
    problems = []
    if not root.startswith("s3://"):
        problems.append(f"pipeline root {root or '(none)'} is not s3://")
    if endpoint.split(":")[0] not in (MINIO_SERVICE, f"{MINIO_SERVICE}.{ns}", f"{MINIO_SERVICE}.{ns}.svc"):
        problems.append(f"s3 endpoint {endpoint or '(none)'} is not {MINIO_SERVICE}")
    if ref.get("secretName") != cluster.minio_secret:
        problems.append(f"credentials secret {ref.get('secretName') or '(none)'} is not {cluster.minio_secret}")
    if problems:
        return Check("kfp-launcher", "FAIL", "; ".join(problems) + " (another kfp-launcher is in effect)", fix)
    return Check("kfp-launcher", "ok", f"pipeline root {root} on {endpoint} with secret {cluster.minio_secret}")


def check_secrets(kube: Kube, ns: str, cluster: ClusterConfig) -> list[Check]:
    out = []
    got: dict[str, dict] = {}
    for name, keys in required_secret_keys(cluster).items():
        fix = (f"fill manifests/secrets/{name}.env from its .env.example, then kubectl -n {ns} create secret "
               f"generic {name} --from-env-file=manifests/secrets/{name}.env")
        try:
            obj = kube.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
        except PermissionError:
            out.append(Check(f"secret {name}", "warn", "cannot read it (forbidden)", "run doctor as the namespace's "
                             "owner (kubeflow-edit)"))
            continue
        if obj is None:
            out.append(Check(f"secret {name}", "FAIL", "missing", fix))
            continue
        got[name] = obj
        missing = sorted(keys - _secret_keys(obj))
        if missing:
            out.append(Check(f"secret {name}", "FAIL", f"missing key(s) {', '.join(missing)}",
                             f"add them (kubectl -n {ns} edit secret {name}), or delete and recreate it: {fix}"))
        else:
            out.append(Check(f"secret {name}", "ok", f"keys {', '.join(sorted(keys))}"))
    pipe, root = got.get(cluster.minio_secret), got.get(MINIO_ROOT_SECRET)
    if pipe and root and _secret_value(pipe, "AWS_ACCESS_KEY_ID") == _secret_value(root, "MINIO_ROOT_USER"):
        out.append(Check("minio user", "FAIL", f"{cluster.minio_secret} holds MinIO's root user: every pipeline pod "
                         "could administer MinIO",
                         f"put the scoped user's own keys in {cluster.minio_secret}, then re-run the setup job "
                         f"(kubectl -n {ns} delete job augpaint-minio-buckets; kubectl apply -k ...)"))
    return out


def check_gpus(kube: Kube, cluster: ClusterConfig) -> Check:
    try:
        nodes = (kube.get("/api/v1/nodes") or {}).get("items", [])
    except PermissionError:
        return Check("gpu", "warn", "cannot list nodes (forbidden for profile users)",
                     f"ask an admin to run: kubectl describe nodes | grep -E 'Taints|{cluster.gpu_resource}'")
    fits, total, seen = [], 0, 0
    for n in nodes:
        gpus = _quantity((n.get("status", {}).get("allocatable") or {}).get(cluster.gpu_resource))
        if gpus <= 0:
            continue
        seen += 1
        labels = n["metadata"].get("labels") or {}
        if any(labels.get(k) != v for k, v in cluster.node_selector.items()):
            continue
        if n.get("spec", {}).get("unschedulable"):
            continue
        taints = [t for t in n.get("spec", {}).get("taints") or [] if t.get("effect") in ("NoSchedule", "NoExecute")]
        if all(_tolerates(cluster.tolerations, t) for t in taints) and gpus >= cluster.gpus_per_task:
            fits.append(n["metadata"]["name"])
            total += gpus
    if fits:
        return Check("gpu", "ok", f"{total} allocatable {cluster.gpu_resource} on {len(fits)} node(s) matching the "
                     f"tolerations and node selector ({', '.join(fits[:4])}{' ...' if len(fits) > 4 else ''})")
    sel = ", ".join(f"{k}={v}" for k, v in cluster.node_selector.items()) or "none"
    return Check("gpu", "FAIL", f"no schedulable node with {cluster.gpus_per_task} allocatable {cluster.gpu_resource} "
                 f"matches node selector ({sel}) and tolerations ({seen} node(s) have that resource at all)",
                 "set cluster.node_selector / cluster.tolerations in the config (kubectl get nodes --show-labels; "
                 "kubectl describe node | grep Taints), or install the NVIDIA device plugin")


def _pods(kube: Kube, ns: str, app: str) -> list[dict]:
    return (kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=f"app.kubernetes.io/name={app}")
            or {}).get("items", [])


def check_service(kube: Kube, ns: str, name: str, port: int, label: str) -> Check:
    """The service as a pipeline pod (no sidecar) sees it: it exists, has ready endpoints, its pods have no sidecar."""
    fix_apply = "kubectl apply -k manifests/overlays/kubeflow"
    try:
        svc = kube.get(f"/api/v1/namespaces/{ns}/services/{name}")
        if svc is None:
            return Check(label, "FAIL", f"service {name} missing", fix_apply)
        ports = [p.get("port") for p in svc["spec"].get("ports", [])]
        if port not in ports:
            return Check(label, "FAIL", f"service {name} has port(s) {ports}, the pods call {port}",
                         "make the URI in the secret and the service agree")
        eps = kube.get(f"/api/v1/namespaces/{ns}/endpoints/{name}") or {}
        ready = sum(len(s.get("addresses") or []) for s in eps.get("subsets") or [])
        if not ready:
            return Check(label, "FAIL", f"service {name} has no ready pod", f"kubectl -n {ns} describe pod -l "
                         f"app.kubernetes.io/name={name}; kubectl -n {ns} logs deploy/{name}")
        pods = _pods(kube, ns, name)
    except PermissionError as err:
        return Check(label, "warn", f"cannot check ({err})", "run doctor as the namespace's owner")
    sidecar = [p["metadata"]["name"] for p in pods
               if any(c.get("name") == "istio-proxy" for c in p["spec"].get("containers", []) +
                      p["spec"].get("initContainers", []))]
    if sidecar:
        return Check(label, "FAIL", f"pod {sidecar[0]} has an Istio sidecar: pipeline pods (no sidecar) get "
                     "'403 RBAC: access denied'", f"annotate the pod template sidecar.istio.io/inject: \"false\" "
                     f"({fix_apply}) and restart it: kubectl -n {ns} rollout restart deploy/{name}")
    return Check(label, "ok", f"{name}:{port}, {ready} ready pod(s), no Istio sidecar")


def check_image(kube: Kube, ns: str, image: str) -> Check:
    if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1] and "@sha256:" not in image:
        return Check("image", "FAIL", f"{image} has no fixed tag", "compile with the tag docker/build.sh printed "
                     "(augpaint compile --image ...)")
    if image.endswith("-dirty"):
        return Check("image", "warn", f"{image} was built from uncommitted changes", "commit, rebuild, recompile")
    try:
        pods = (kube.get(f"/api/v1/namespaces/{ns}/pods") or {}).get("items", [])
        events = (kube.get(f"/api/v1/namespaces/{ns}/events") or {}).get("items", [])
    except PermissionError:
        return Check("image", "warn", f"{image}: cannot look at pods/events (forbidden)",
                     f"check it exists: crane manifest {image}")
    for e in events:
        msg = e.get("message") or ""
        if e.get("reason") in ("Failed", "ErrImagePull", "ImagePullBackOff") and image in msg:
            return Check("image", "FAIL", f"this namespace failed to pull {image}: {' '.join(msg.split())[:140]}",
                         f"push it (docker/build.sh; docker push {image}) or add an imagePullSecret to the "
                         "pipeline runner's service account")
    for p in pods:
        for st in (p.get("status") or {}).get("containerStatuses") or []:
            if st.get("image") == image and st.get("imageID"):
                return Check("image", "ok", f"{image} already pulled on this cluster (pod {p['metadata']['name']})")
    return Check("image", "warn", f"{image} not pulled in {ns} yet; cannot ask the registry from here",
                 f"check it exists: crane manifest {image} (or docker manifest inspect)")


def run_checks(kube: Kube, namespace: str, cfg: AugPaintConfig | None = None, *, host: str | None = None,
               image: str | None = None) -> list[Check]:
    """Every check, in order; none raises for a cluster problem (only for an unusable API connection).

    Args:
        kube: Kubernetes API access.
        namespace: the profile namespace the runs go to.
        cfg: config whose ``cluster`` section the pipeline is compiled with (default: the defaults).
        host: KFP API URL; without it the version is read from the ml-pipeline deployment.
        image: component image (default: the components' default, $AUGPAINT_IMAGE).
    """
    cluster = (cfg or AugPaintConfig()).cluster
    try:
        if kube.get(f"/api/v1/namespaces/{namespace}") is None:
            return [Check("namespace", "FAIL", f"{namespace} does not exist",
                          "pass the profile namespace (kubectl get profiles) as --namespace")]
    except PermissionError:
        pass  # profile users may not read Namespace objects; the checks below still say what is missing
    if image is None:
        from components import IMAGE

        image = IMAGE
    mlflow_port = 5000
    def guarded(name: str, fn: Callable[[], Check]) -> Check:
        try:
            return fn()
        except PermissionError as err:
            return Check(name, "warn", f"cannot check ({err})", "run doctor as the namespace's owner")

    checks: list[Check] = [check_kfp_version(kube, host, namespace),
                           guarded("kfp-launcher", lambda: check_launcher(kube, namespace, cluster))]
    checks += check_secrets(kube, namespace, cluster)
    try:
        sec = kube.get(f"/api/v1/namespaces/{namespace}/secrets/{cluster.mlflow_secret}")
        uri = _secret_value(sec, "MLFLOW_TRACKING_URI") if sec else ""
        mlflow_port = urllib.parse.urlsplit(uri).port or mlflow_port
    except (PermissionError, ValueError):
        pass
    checks += [check_gpus(kube, cluster),
               check_service(kube, namespace, MINIO_SERVICE, 9000, "minio"),
               check_service(kube, namespace, MLFLOW_SERVICE, mlflow_port, "mlflow"),
               guarded("image", lambda: check_image(kube, namespace, image))]
    return checks


def doctor(namespace: str | None, *, cfg: AugPaintConfig | None = None, host: str | None = None,
           image: str | None = None, kubeconfig: str | None = None, context: str | None = None,
           echo: Callable[[str], Any] = print) -> int:
    """Print one line per check; return 1 if any failed, else 0.

    Args:
        namespace: profile namespace (default: the kubeconfig context's).
        cfg, host, image: as for :func:`run_checks`.
        kubeconfig: kubeconfig path (default $KUBECONFIG, ~/.kube/config; in a pod its service account).
        context: kubeconfig context.
        echo: where lines go.
    """
    from pipelines.client import default_namespace

    namespace = default_namespace(namespace, kubeconfig)
    if not namespace:
        raise AugPaintError("--namespace: not given and the kubeconfig context names none")
    checks = run_checks(kube_client(kubeconfig, context), namespace, cfg, host=host, image=image)
    for c in checks:
        echo(c.line())
    failed = [c for c in checks if c.status == "FAIL"]
    echo(f"doctor: {namespace}: {len(checks) - len(failed)} of {len(checks)} checks passed"
         + (f", {len(failed)} failed" if failed else ""))
    return 1 if failed else 0
