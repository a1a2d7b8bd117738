"""``augpaint submit`` / ``schedule`` / ``runs``: talk to a KFP API server with ``kfp.Client``.

Errors (server unreachable, bad cron, HTTP errors) become one-line AugPaintErrors.
The token, if any, comes from ``$KFP_TOKEN`` (or kfp's own service-account lookup), never a flag.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from augpaint_core.config import AugPaintConfig
from augpaint_core.errors import AugPaintError
from augpaint_core.infra.storage import redact


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
    return redact(" ".join(str(err).split())[:200]) or type(err).__name__


def connect(host: str, namespace: str | None = None):
    """A ``kfp.Client`` for ``host`` (its constructor already calls the server)."""
    import kfp

    try:
        return kfp.Client(host=host, namespace=namespace, existing_token=os.environ.get("KFP_TOKEN") or None)
    except Exception as err:  # noqa: BLE001 - urllib3 / ApiException / TimeoutError
        raise AugPaintError(f"KFP API at {redact(host)}: unreachable or failing ({_short(err)})") from None


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
        namespace: Kubeflow profile namespace (multi-user installs).
        image: component image when compiling here.
    """
    client = connect(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = package_for(cfg, pipeline, package, image, Path(tmp))
        try:
            res = client.create_run_from_pipeline_package(str(pkg), arguments=_arguments(cfg, params or {}),
                                                          run_name=run_name, experiment_name=experiment,
                                                          namespace=namespace)
        except Exception as err:  # noqa: BLE001
            raise AugPaintError(f"KFP API at {redact(host)}: creating the run failed ({_short(err)})") from None
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
    client = connect(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = package_for(cfg, pipeline, package, image, Path(tmp))
        try:
            exp = client.create_experiment(experiment, namespace=namespace)
            rr = client.create_recurring_run(exp.experiment_id, job_name=name, cron_expression=cron,
                                             max_concurrency=1, no_catchup=True, params=_arguments(cfg, params or {}),
                                             pipeline_package_path=str(pkg), enabled=True)
        except Exception as err:  # noqa: BLE001
            raise AugPaintError(f"KFP API at {redact(host)}: creating the recurring run failed ({_short(err)})") from None
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
    client = connect(host, namespace)
    try:
        exp_id = client.get_experiment(experiment_name=experiment, namespace=namespace).experiment_id \
            if experiment else None
        resp = client.list_runs(page_size=limit, sort_by="created_at desc", experiment_id=exp_id,
                                namespace=namespace)
    except Exception as err:  # noqa: BLE001
        raise AugPaintError(f"KFP API at {redact(host)}: listing runs failed ({_short(err)})") from None
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
