"""``augpaint submit`` / ``schedule`` / ``runs``: talk to a KFP API server with ``kfp.Client``.

Errors (server unreachable, bad cron, HTTP errors) become one-line AugPaintErrors.
The token, if any, comes from ``$KFP_TOKEN`` (or kfp's own service-account lookup), never a flag.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from augpaint_core.config import AugPaintConfig
from augpaint_core.errors import AugPaintError


def check_cron(cron: str) -> str:
    """KFP cron: 6 fields, seconds first (``0 0 3 * * 1`` = Mondays 03:00:00)."""
    fields = cron.split()
    if len(fields) != 6:
        raise AugPaintError(f"--cron {cron!r}: KFP cron needs 6 fields, seconds first (e.g. '0 0 3 * * 1' for "
                            f"Mondays at 03:00), got {len(fields)}")
    return " ".join(fields)


def _short(err: BaseException) -> str:
    status = getattr(err, "status", None)
    reason = getattr(err, "reason", None)
    if status:
        return f"HTTP {status} {reason or ''}".strip()
    return " ".join(str(err).split())[:200] or type(err).__name__


# The oldest KFP backend that runs our pipelines: 2.4 rejects kfp-kubernetes 2.17's secretAsEnv.optional,
# 2.5 rejects dsl.PipelineTaskFinalStatus (the MLflow exit handler), and dsl.Collected of artifacts (the
# inpainting shard merge) needs 2.14. Kubeflow 1.10.x ships 2.5.0; Kubeflow 1.11 is the first with >= 2.14.
MIN_KFP_BACKEND = (2, 14)
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace(namespace: str | None, kubeconfig: str | None = None) -> str | None:
    """``namespace`` if given, else the current kubeconfig context's namespace, else the pod's own (in-cluster).

    Multi-user Kubeflow needs a profile namespace for every call; this spares typing it each time.
    """
    if namespace:
        return namespace
    try:
        from kubernetes import config as kconfig

        # $KUBECONFIG read now (the library reads it once, at import); a path list is merged.
        path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        _, active = kconfig.list_kube_config_contexts(config_file=path)
        ns = (active or {}).get("context", {}).get("namespace")
        if ns:
            return ns
    except Exception:  # noqa: BLE001 - no kubeconfig, or a broken one: fall through
        pass
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or None
    except OSError:
        return None


def backend_version(client) -> tuple[str, dict]:
    """The KFP API server's version (``tag_name`` of ``GET /apis/v2beta1/healthz``) and the whole answer.

    The generated client model keeps only ``multi_user``, so the raw JSON is read (same auth as the client).
    """
    resp = client._healthz_api.healthz_service_get_healthz(_preload_content=False)
    body = json.loads(resp.data or b"{}")
    return str(body.get("tag_name") or "unknown"), body


def parse_version(tag: str) -> tuple[int, int, int] | None:
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", tag.strip())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def check_backend(client, host: str) -> str:
    """Refuse a KFP backend older than :data:`MIN_KFP_BACKEND`; return its version.

    A build that reports no version ("unknown", dev images) is let through with a warning.
    """
    try:
        tag, _ = backend_version(client)
    except Exception as err:  # noqa: BLE001
        raise AugPaintError(f"KFP API at {host}: reading its version from /apis/v2beta1/healthz failed "
                            f"({_short(err)})") from None
    ver = parse_version(tag)
    need = ".".join(map(str, MIN_KFP_BACKEND))
    if ver is None:
        print(f"augpaint: warning: KFP API at {host} reports version {tag!r}; AugPaint needs {need} or newer, "
              "continuing unchecked", file=sys.stderr)
    elif ver[:2] < MIN_KFP_BACKEND:
        raise AugPaintError(f"KFP API at {host} is version {tag}; AugPaint needs Kubeflow Pipelines {need} or newer "
                            "(Kubeflow 1.11 or newer): older backends reject its exit handler "
                            "(PipelineTaskFinalStatus), its artifact fan-in (dsl.Collected) and kfp-kubernetes "
                            "2.17's optional secret env. Upgrade KFP")
    return tag


def connect(host: str, namespace: str | None = None):
    """A ``kfp.Client`` for ``host`` (its constructor already calls the server).

    On a multi-user server a namespace is required: ``namespace``, else the kubeconfig context's.
    """
    import kfp

    try:
        client = kfp.Client(host=host, namespace=namespace, existing_token=os.environ.get("KFP_TOKEN") or None)
        multi_user = bool(client.get_kfp_healthz().multi_user)
    except Exception as err:  # noqa: BLE001 - urllib3 / ApiException / TimeoutError
        raise AugPaintError(f"KFP API at {host}: unreachable or failing ({_short(err)})") from None
    if multi_user and not (namespace or client.get_user_namespace()):
        raise AugPaintError(f"--namespace: KFP at {host} is multi-user and no namespace is set; pass --namespace "
                            "NS or set one in your kubeconfig context (kubectl config set-context --current "
                            "--namespace NS)")
    return client


def package_for(cfg: AugPaintConfig | None, pipeline: str, package: str | None, image: str | None,
                tmp: Path) -> Path:
    """The pipeline YAML to send: ``package`` as given, else compiled now from ``cfg``."""
    if package:
        p = Path(package)
        if not p.is_file():
            raise AugPaintError(f"{p}: pipeline package not found")
        return p
    from pipelines.compile import compile_pipeline

    return compile_pipeline(tmp / f"{pipeline}.yaml", image=image, cfg=cfg, pipeline=pipeline)


def _arguments(cfg: AugPaintConfig | None, params: dict[str, Any]) -> dict[str, Any]:
    args = dict(params)
    if cfg is not None and "config_yaml" not in args:
        args["config_yaml"] = cfg.to_yaml()
    return args


def submit(host: str, *, cfg: AugPaintConfig | None = None, pipeline: str = "augpaint", package: str | None = None,
           params: dict[str, Any] | None = None, run_name: str | None = None, experiment: str = "augpaint",
           namespace: str | None = None, image: str | None = None) -> str:
    """Create one run; return its id.

    Args:
        host: KFP API URL, e.g. http://ml-pipeline-ui.kubeflow or the Kubeflow gateway's /pipeline.
        cfg: config sent as the ``config_yaml`` parameter (and compiled in when no package is given).
        pipeline: ``augpaint`` or ``expansion``.
        package: compiled YAML (from ``augpaint compile``); default: compile now.
        params: more pipeline parameters.
        run_name: run display name.
        experiment: KFP experiment name (created if missing).
        namespace: Kubeflow profile namespace (multi-user installs); default: the kubeconfig context's.
        image: component image when compiling here.
    """
    namespace = default_namespace(namespace)
    client = connect(host, namespace)
    check_backend(client, host)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = package_for(cfg, pipeline, package, image, Path(tmp))
        try:
            res = client.create_run_from_pipeline_package(str(pkg), arguments=_arguments(cfg, params or {}),
                                                          run_name=run_name, experiment_name=experiment,
                                                          namespace=namespace)
        except Exception as err:  # noqa: BLE001
            raise AugPaintError(f"KFP API at {host}: creating the run failed ({_short(err)})") from None
    return res.run_id


def schedule(host: str, *, cron: str, name: str, cfg: AugPaintConfig | None = None, pipeline: str = "expansion",
             package: str | None = None, params: dict[str, Any] | None = None, experiment: str = "augpaint",
             namespace: str | None = None, image: str | None = None) -> str:
    """Create a recurring run (one at a time, no catch-up of missed slots); return its id.

    A recurring run cannot be updated: delete it in the UI and schedule again.

    Args:
        host: KFP API URL.
        cron: 6-field cron, seconds first.
        name: recurring run name.
        cfg, pipeline, package, params, experiment, namespace, image: as for :func:`submit`.
    """
    cron = check_cron(cron)
    namespace = default_namespace(namespace)
    client = connect(host, namespace)
    check_backend(client, host)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = package_for(cfg, pipeline, package, image, Path(tmp))
        try:
            exp = client.create_experiment(experiment, namespace=namespace)
            rr = client.create_recurring_run(exp.experiment_id, job_name=name, cron_expression=cron,
                                             max_concurrency=1, no_catchup=True, params=_arguments(cfg, params or {}),
                                             pipeline_package_path=str(pkg), enabled=True)
        except Exception as err:  # noqa: BLE001
            raise AugPaintError(f"KFP API at {host}: creating the recurring run failed ({_short(err)})") from None
    return rr.recurring_run_id


def list_runs(host: str, *, experiment: str | None = None, namespace: str | None = None, limit: int = 20
              ) -> list[dict[str, str]]:
    """The newest runs: id, name, state, created time.

    Args:
        host: KFP API URL.
        experiment: only this experiment's runs.
        namespace: Kubeflow profile namespace.
        limit: at most this many.
    """
    namespace = default_namespace(namespace)
    client = connect(host, namespace)
    try:
        exp_id = client.get_experiment(experiment_name=experiment, namespace=namespace).experiment_id \
            if experiment else None
        resp = client.list_runs(page_size=limit, sort_by="created_at desc", experiment_id=exp_id,
                                namespace=namespace)
    except Exception as err:  # noqa: BLE001
        raise AugPaintError(f"KFP API at {host}: listing runs failed ({_short(err)})") from None
    return [{"run_id": r.run_id, "name": r.display_name or "", "state": str(r.state or ""),
             "created_at": str(r.created_at or "")} for r in (resp.runs or [])]


def parse_params(items: list[str]) -> dict[str, Any]:
    """``key=value`` pipeline parameters; values are parsed as JSON when they can be (numbers, booleans)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise AugPaintError(f"--param {item!r}: expected name=value")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out
