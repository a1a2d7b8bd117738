import socket
import time

import numpy as np
import pytest

from augpaint_core.errors import AugPaintError
from augpaint_core.infra.tracking import close_parent_runs, resolve_uri, stage_run, start_parent_run


def test_parent_and_nested_stage_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = start_parent_run(uri, "exp", "run-1", tags={"kfp.pipeline_run_id": "abc"})
    with stage_run(uri, parent, "train-ae", {"ae.lr": 0.001}) as t:
        t.log_metrics({"ae_loss": 1.5}, step=0)
        t.log_metrics({"ae_loss": 0.5}, step=1)
        t.log_image(np.zeros((8, 8, 3), np.uint8), "grid.png")
    with pytest.raises(RuntimeError):
        with stage_run(uri, parent, "inpaint") as t:
            raise RuntimeError("boom")
    assert close_parent_runs(uri, "exp", "abc", "FINISHED") == 1
    c = MlflowClient(uri)
    runs = {r.info.run_name: r for r in c.search_runs([c.get_experiment_by_name("exp").experiment_id])}
    assert runs["run-1"].info.status == "FINISHED"
    ae = runs["train-ae"]
    assert ae.data.tags["mlflow.parentRunId"] == parent and ae.info.status == "FINISHED"
    assert ae.data.params["ae.lr"] == "0.001"
    assert [m.value for m in c.get_metric_history(ae.info.run_id, "ae_loss")] == [1.5, 0.5]
    assert runs["inpaint"].info.status == "FAILED"


def test_tracking_off():
    with stage_run("none", "", "x") as t:
        assert t is None


def test_relative_sqlite_uri_is_made_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert resolve_uri("") == "http://example:5000"


def test_unreachable_server_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    t0 = time.time()
    with pytest.raises(AugPaintError, match=f"127.0.0.1:{port}.*unreachable"):
        start_parent_run(f"http://127.0.0.1:{port}", "exp", "r")
    assert time.time() - t0 < 60
