"""``augpaint run``: execute the compiled pipeline definition locally with kfp.local.

It is the same ``augpaint_pipeline`` a cluster runs; SubprocessRunner runs each
component as a subprocess of this Python environment (use_venv=False).
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from augpaint_core.config import AugPaintConfig
from augpaint_core.errors import AugPaintError
from augpaint_core.infra.tracking import resolve_uri
from augpaint_core.stages import RUN_KEY_ENV


def find_report(pipeline_root: Path, since: float) -> Path:
    """The evaluate task's report folder written by this run."""
    found = [p.parent for p in pipeline_root.rglob("metrics.json")
             if (p.parent / "report.md").is_file() and p.stat().st_mtime >= since]
    if not found:
        raise AugPaintError(f"{pipeline_root}: the pipeline finished but no evaluation report was written")
    return max(found, key=lambda p: p.stat().st_mtime)


def run_local(cfg: AugPaintConfig, out: Path, tracking_uri: str | None = None, *, quiet: bool = False) -> dict:
    """Run the whole pipeline through kfp.local.

    Args:
        cfg: validated config.
        out: run folder; artifacts go under ``out/pipeline_root``.
        tracking_uri: MLflow URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).
        quiet: do not print the summary.

    Returns:
        the evaluation metrics, plus ``report_dir`` and ``tracking_uri``.
    """
    from kfp import local

    from pipelines.augpaint_pipeline import build_pipeline

    out = out.resolve()
    root = out / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri if tracking_uri == "none" else resolve_uri(tracking_uri)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    t0 = time.time()
    # Tasks find the MLflow parent run by this key (on a cluster: the pod's run-id label); subprocess tasks
    # inherit it from this process's environment.
    old_key = os.environ.get(RUN_KEY_ENV)
    os.environ[RUN_KEY_ENV] = f"local-{uuid.uuid4().hex}"
    try:
        # Built for this config, so inpaint.num_shards fans out locally too.
        build_pipeline(cfg)(config_yaml=cfg.to_yaml(), tracking_uri=uri, experiment=cfg.tracking.experiment)
    except RuntimeError as err:
        raise AugPaintError(f"pipeline failed: {str(err).splitlines()[0]} (task logs above; artifacts in {root})"
                            ) from None
    finally:
        if old_key is None:
            os.environ.pop(RUN_KEY_ENV, None)
        else:
            os.environ[RUN_KEY_ENV] = old_key
    elapsed = time.time() - t0
    report = find_report(root, t0)
    metrics = json.loads((report / "metrics.json").read_text())
    metrics.update(report_dir=str(report), tracking_uri=uri, elapsed_s=elapsed)
    if not quiet:
        print("\n" + (report / "report.md").read_text())
        print(f"Pipeline finished in {elapsed:.0f} s.")
        print(f"Artifacts:      {root}")
        print(f"Report:         {report / 'report.md'}")
        if uri != "none" and uri.startswith("sqlite:"):
            print(f"MLflow UI:      .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000   "
                  f"(then open http://127.0.0.1:5000)")
        elif uri != "none":
            print(f"MLflow:         {uri}")
    return metrics


def run_expansion_local(cfg: AugPaintConfig, incoming: str, versions_uri: str, out: Path,
                        tracking_uri: str | None = None, *, retrain: bool = False, model_prefix: str = "augpaint",
                        experiment: str = "augpaint-expansion", quiet: bool = False) -> dict:
    """Run one round of the expansion pipeline through kfp.local.

    Args:
        cfg: validated config.
        incoming: raw data prefix (s3:// or a folder) where new cases arrive.
        versions_uri: dataset versions root (s3:// or a folder).
        out: run folder; artifacts go under ``out/pipeline_root``.
        tracking_uri: MLflow URI (the registry needs a server or sqlite; default $MLFLOW_TRACKING_URI).
        retrain: retrain AE/LDM instead of reusing the registered ones.
        model_prefix: registered model name prefix.
        experiment: MLflow experiment of the parent run.
        quiet: do not print the summary.

    Returns:
        the latest version's manifest (the one this round published, unless there was nothing new),
        plus ``published`` (bool) and ``pipeline_root``.
    """
    from kfp import local

    from augpaint_core.infra import versions
    from pipelines.expansion_pipeline import build_pipeline

    out = out.resolve()
    root = out / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    uri = resolve_uri(tracking_uri)
    before = versions.latest_version(versions_uri)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    try:
        build_pipeline(cfg)(incoming_uri=incoming, versions_uri=versions_uri, config_yaml=cfg.to_yaml(),
                           retrain=retrain, model_prefix=model_prefix, tracking_uri=uri, experiment=experiment)
    except RuntimeError as err:
        raise AugPaintError(f"expansion pipeline failed: {str(err).splitlines()[0]} (task logs above; artifacts in "
                            f"{root})") from None
    after = versions.latest_version(versions_uri)
    manifest = versions.read_manifest(versions_uri) if after else {}
    result = {**manifest, "published": after != before, "pipeline_root": str(root)}
    if not quiet:
        if result["published"]:
            print(f"expand: published version {after} (parent {manifest['parent']}) at "
                  f"{versions.version_uri(versions_uri, after)}: {json.dumps(manifest['counts'])}")
        else:
            print(f"expand: no new labeled cases in {incoming}; latest version stays {after}")
    return result
