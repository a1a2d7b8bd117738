"""MLflow against a real ``mlflow server`` (sqlite backend, artifacts in weed mini S3), read back from the server."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from augpaint_core.infra import storage, tracking
from augpaint_core.infra.tracking import (close_parent_runs, download_model, model_by_alias, pending_bundles,
                                    register_model, stage_run, start_parent_run, sync_spool)


def _runs(uri: str, experiment: str) -> dict:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    return {r.info.run_name: r for r in c.search_runs([c.get_experiment_by_name(experiment).experiment_id])}


def test_nested_runs_and_registry_aliases_on_the_server(mlflow_server, s3_server, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = mlflow_server.uri
    url = "http://kfp.example/#/runs/details/run-42"
    parent = start_parent_run(uri, "srv", "pipeline-42", tags={"kfp.pipeline_run_id": "run-42",
                                                               "kfp.pipeline_run_url": url}, params={"seed": 3})
    model = tmp_path / "ae"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"\x01" * 100)
    (model / "artifact.json").write_text(json.dumps({"kind": "model"}))
    with stage_run(uri, parent, "train-ae", {"ae.lr": 0.01}) as t:
        t.log_metrics({"loss": 2.0}, step=0)
        t.log_metrics({"loss": 1.0}, step=1)
        v1 = register_model(uri, "test-ae", model, t.run_id, alias="current")
    (model / "weights.bin").write_bytes(b"\x02" * 100)
    with stage_run(uri, parent, "train-ae-2") as t:
        v2 = register_model(uri, "test-ae", model, t.run_id)
    assert (v1, v2) == (1, 2)
    tracking.set_alias(uri, "test-ae", "champion", v2)
    assert close_parent_runs(uri, "srv", "run-42") == 1

    runs = _runs(uri, "srv")
    p = runs["pipeline-42"]
    assert p.info.status == "FINISHED" and p.data.tags["kfp.pipeline_run_url"] == url
    assert p.data.params["seed"] == "3"
    child = runs["train-ae"]
    assert child.data.tags["mlflow.parentRunId"] == parent and child.info.status == "FINISHED"
    c = MlflowClient(uri)
    assert [m.value for m in c.get_metric_history(child.info.run_id, "loss")] == [2.0, 1.0]
    # Aliases, read back from the registry.
    assert model_by_alias(uri, "test-ae", "current").version == "1"
    assert model_by_alias(uri, "test-ae", "champion").version == "2"
    assert model_by_alias(uri, "test-ae", "nope") is None and model_by_alias(uri, "no-such-model", "x") is None
    got = download_model(uri, "test-ae", "current", tmp_path / "got")
    assert (got / "weights.bin").read_bytes() == b"\x01" * 100
    assert download_model(uri, "test-ae", "nope", tmp_path / "none") is None
    # The server stored the model files in the S3 bucket.
    assert [u for u in storage.list_uris(f"s3://{mlflow_server.bucket}/mlartifacts") if u.endswith("weights.bin")]


def test_server_down_stage_finishes_and_records_sync_later(mlflow_server, s3_bucket, monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = mlflow_server.uri
    spool = f"s3://{s3_bucket}/mlflow-spool"  # in a cluster the spool lives in MinIO too
    monkeypatch.setenv(tracking.SPOOL_ENV, spool)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    online_parent = start_parent_run(uri, "down", "online-parent", tags={"kfp.pipeline_run_id": "on-1"})
    mlflow_server.stop()
    try:
        # A stage whose parent exists, while the server is down.
        with stage_run(uri, online_parent, "train-ldm", {"ldm.lr": 1e-4}) as t:
            for step in range(3):
                t.log_metrics({"ldm_loss": 3.0 - step}, step=step)
            t.log_image(np.full((8, 8, 3), 200, np.uint8), "samples.png")
            t.parent.log_metrics({"final": 0.5})
        # A whole pipeline run while the server is down: offline parent, child, exit handler.
        parent = start_parent_run(uri, "down", "offline-parent", tags={"kfp.pipeline_run_id": "off-1"},
                                  params={"seed": 1}, offline_ok=True)
        assert parent.startswith(tracking.OFFLINE_PREFIX)
        with stage_run(uri, parent, "evaluate") as t:
            t.log_metrics({"dice": 0.8})
        assert close_parent_runs(uri, "down", "off-1", "FINISHED", offline_ok=True) == -1
        assert len(pending_bundles(spool)) == 4
    finally:
        mlflow_server.start()
    assert close_parent_runs(uri, "down", "on-1", "FINISHED") == 1  # replays the spool first
    assert pending_bundles(spool) == [] and sync_spool(uri, spool) == 0  # nothing twice

    runs = _runs(uri, "down")
    c = MlflowClient(uri)
    ldm = runs["train-ldm"]
    assert ldm.data.tags["mlflow.parentRunId"] == online_parent and ldm.info.status == "FINISHED"
    assert [m.value for m in c.get_metric_history(ldm.info.run_id, "ldm_loss")] == [3.0, 2.0, 1.0]
    assert ldm.data.params["ldm.lr"] == "0.0001"
    assert "samples.png" in [a.path for a in c.list_artifacts(ldm.info.run_id)]
    assert runs["online-parent"].data.metrics["final"] == 0.5
    off = runs["offline-parent"]
    assert off.data.tags["kfp.pipeline_run_id"] == "off-1" and off.info.status == "FINISHED"
    assert off.data.params["seed"] == "1"
    ev = runs["evaluate"]
    assert ev.data.tags["mlflow.parentRunId"] == off.info.run_id and ev.data.metrics["dice"] == 0.8


def test_missing_parent_is_an_error_not_offline(mlflow_server):
    from augpaint_core.errors import AugPaintError

    with pytest.raises(AugPaintError, match="parent run 0123456789abcdef not found"):
        with stage_run(mlflow_server.uri, "0123456789abcdef", "x"):
            pass


def test_spool_is_replayable_from_a_local_folder(mlflow_server, monkeypatch, tmp_path):
    spool = tmp_path / "spool"
    monkeypatch.setenv(tracking.SPOOL_ENV, str(spool))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    dead = "http://127.0.0.1:9"  # discard port: nothing answers
    name = f"preprocess-{uuid.uuid4().hex[:8]}"  # the server is shared by the session: a name of its own
    with stage_run(dead, "", name) as t:
        t.log_metrics({"slices": 12.0})
    assert len(pending_bundles(str(spool))) == 1
    assert (Path(pending_bundles(str(spool))[0]) / "records.jsonl").is_file()
    assert sync_spool(mlflow_server.uri, str(spool)) == 1
    run = _runs(mlflow_server.uri, "augpaint")[name]
    assert run.data.metrics["slices"] == 12.0 and run.info.status == "FINISHED"


def test_a_refused_record_does_not_block_later_bundles(mlflow_server, monkeypatch, tmp_path):
    spool = tmp_path / "spool"
    bad = spool / "00000000000000000001-bad"
    bad.mkdir(parents=True)
    # A record for a run the server does not know (deleted meanwhile, say): refused for good.
    (bad / "records.jsonl").write_text(json.dumps({"run": "f" * 32, "op": "metrics",
                                                   "metrics": [["x", 1.0, 0, 0]]}) + "\n")
    monkeypatch.setenv(tracking.SPOOL_ENV, str(spool))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with stage_run("http://127.0.0.1:9", "", "later-stage") as t:  # spooled after the bad bundle
        t.log_metrics({"ok": 1.0})
    assert len(pending_bundles(str(spool))) == 2
    assert sync_spool(mlflow_server.uri, str(spool)) == 2
    assert pending_bundles(str(spool)) == []
    note = json.loads((bad / "synced.json").read_text())
    assert note["errors"] and note["errors"][0]["op"] == "metrics"
    assert _runs(mlflow_server.uri, "augpaint")["later-stage"].data.metrics["ok"] == 1.0
