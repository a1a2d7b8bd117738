"""MLflow tracking: one parent run per pipeline run, one nested child per stage.

The embedded default is ``sqlite:///mlflow.db`` in the working folder;
``MLFLOW_TRACKING_URI`` overrides it. An empty URI (or ``none``) turns tracking off.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import AugPaintError

DEFAULT_URI = "sqlite:///mlflow.db"
# Fail in seconds, not minutes, when a tracking server is down.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def resolve_uri(uri: str | None) -> str:
    """The tracking URI to use: explicit, else $MLFLOW_TRACKING_URI, else the embedded sqlite file."""
    if uri is None or uri == "":
        uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Make relative sqlite paths absolute: KFP tasks run in other working folders.
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, uri: str, name: str) -> str:
    try:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if uri.startswith("sqlite:///"):
            # Keep artifacts beside the database, wherever the process runs.
            location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        return client.create_experiment(name, artifact_location=location)
    except Exception as err:
        raise AugPaintError(f"MLflow at {uri}: unreachable or failing ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200]})") from None


class Tracker:
    """Thin wrapper over one MLflow run (explicit client, no global fluent state)."""

    def __init__(self, client, run_id: str, parent: "Tracker | None" = None):
        self.client, self.run_id, self.parent = client, run_id, parent

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if np.isfinite(v)]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def log_image(self, image: np.ndarray, name: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=name)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)


def start_parent_run(uri: str | None, experiment: str, run_name: str, tags: dict[str, str] | None = None,
                     params: dict[str, Any] | None = None) -> str:
    """Create the pipeline's parent run (or reuse $MLFLOW_RUN_ID) and return its id.

    Args:
        uri: tracking URI.
        experiment: experiment name (created if missing).
        run_name: the parent run's name (the KFP run name).
        tags: e.g. ``kfp.pipeline_run_id`` and ``kfp.pipeline_run_url``.
        params: the flattened config, logged on the parent for the compare view.
    """
    uri = resolve_uri(uri)
    client = _client(uri)
    if os.environ.get("MLFLOW_RUN_ID"):
        run_id = os.environ["MLFLOW_RUN_ID"]
    else:
        exp = _experiment_id(client, uri, experiment)
        run_id = client.create_run(exp, run_name=run_name, tags=tags or {}).info.run_id
    if params:
        Tracker(client, run_id).log_params(params)
    return run_id


def close_parent_runs(uri: str | None, experiment: str, kfp_run_id: str, status: str = "FINISHED") -> int:
    """Close the parent run(s) tagged with this KFP run id; returns how many were closed.

    Args:
        uri: tracking URI.
        experiment: experiment of the parent run.
        kfp_run_id: the ``kfp.pipeline_run_id`` tag value.
        status: FINISHED, FAILED or KILLED.
    """
    uri = resolve_uri(uri)
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`kfp.pipeline_run_id` = '{kfp_run_id}'")
    for r in runs:
        if r.info.status == "RUNNING":
            client.set_terminated(r.info.run_id, status=status)
    return len(runs)


@contextlib.contextmanager
def stage_run(uri: str | None, parent_run_id: str | None, stage: str, params: dict[str, Any] | None = None
              ) -> Iterator[Tracker | None]:
    """A nested child run for one stage; yields ``None`` when tracking is off.

    Args:
        uri: tracking URI ("none" disables tracking).
        parent_run_id: the pipeline's parent run; empty makes a top-level run.
        stage: stage name, used as run name.
        params: flattened config logged as params.
    """
    if uri in ("none", "off"):
        yield None
        return
    uri = resolve_uri(uri)
    client = _client(uri)
    if parent_run_id:
        try:
            exp = client.get_run(parent_run_id).info.experiment_id
        except Exception as err:
            raise AugPaintError(f"MLflow at {uri}: parent run {parent_run_id} not found "
                                f"({type(err).__name__})") from None
        tags = {"mlflow.parentRunId": parent_run_id}
    else:
        exp = _experiment_id(client, uri, "augpaint")
        tags = {}
    run = client.create_run(exp, run_name=stage, tags={**tags, "augpaint.stage": stage})
    tracker = Tracker(client, run.info.run_id, Tracker(client, parent_run_id) if parent_run_id else None)
    if params:
        tracker.log_params(params)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status=status)
