"""Faults as a cluster stage meets them, through the real CLI: wrong MinIO secret, MinIO down, MLflow down."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from augpaint_core.infra import storage, tracking, versions
from augpaint_core.errors import AugPaintError
from augpaint_core.data.phantom import write_phantom
from tests.conftest import REPO, tiny_dict
from tests.services import free_port


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "augpaint_core.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env}, cwd=cwd, timeout=300)


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(tiny_dict()))
    return p


def test_wrong_secret_is_a_clear_auth_error_without_the_secret(s3_server, s3_bucket, tmp_path, tiny_yaml):
    raw = write_phantom(tmp_path / "raw", seed=0, num_cases=4, slices=2, size=32)
    storage.upload_dir(raw, f"s3://{s3_bucket}/raw")
    wrong = "Wr0ng-S3cret-Value-4711"
    res = _cli(["preprocess", "--config", str(tiny_yaml), "--in", f"s3://{s3_bucket}/raw", "--out",
                str(tmp_path / "ds"), "--tracking-uri", "none"],
               {"AWS_SECRET_ACCESS_KEY": wrong, "AUGPAINT_S3_RETRIES": "1"}, tmp_path)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "access denied" in err[0] and "AWS_SECRET_ACCESS_KEY" in err[0], res.stderr
    for secret in (wrong, s3_server["secret_key"]):
        assert secret not in res.stderr + res.stdout
    assert "Traceback" not in res.stderr and not (tmp_path / "ds").exists()


def test_minio_down_bounded_retries_then_a_clear_error(tmp_path, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AUGPAINT_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AUGPAINT_S3_RETRIES", "3")
    monkeypatch.setenv("AUGPAINT_S3_BACKOFF_S", "0.1")
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.bin").write_bytes(b"x")
    t0 = time.monotonic()
    with pytest.raises(AugPaintError) as err:
        versions.publish_version(tmp_path / "v", "s3://datasets/acdc")
    msg = str(err.value)
    assert f"S3 endpoint {endpoint} unreachable after 3 attempts" in msg and "\n" not in msg
    assert time.monotonic() - t0 < 10


def test_mlflow_down_stage_finishes_and_metrics_sync_later(mlflow_server, tmp_path, tiny_yaml):
    spool = tmp_path / "spool"
    dead = f"http://127.0.0.1:{free_port()}"
    res = _cli(["preprocess", "--config", str(tiny_yaml), "--out", str(tmp_path / "ds"), "--tracking-uri", dead],
               {tracking.SPOOL_ENV: str(spool), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}, tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ds" / "artifact.json").is_file()  # the stage finished
    assert "MLflow unreachable" in res.stderr and "sync-tracking" in res.stderr
    assert len(tracking.pending_bundles(str(spool))) == 1
    # The server is back (here: the session's server): sync, then read the run back.
    res = _cli(["sync-tracking", "--tracking-uri", mlflow_server.uri, "--spool", str(spool)], {}, tmp_path)
    assert res.returncode == 0 and "replayed 1 bundle" in res.stdout, res.stderr
    from mlflow.tracking import MlflowClient

    c = MlflowClient(mlflow_server.uri)
    run = next(r for r in c.search_runs([c.get_experiment_by_name("augpaint").experiment_id])
               if r.info.run_name == "preprocess" and r.data.tags.get("augpaint.synced") == "true"
               and "slices_train_labeled" in r.data.metrics)
    assert run.info.status == "FINISHED" and run.data.params["data.image_size"] == "32"
    assert tracking.pending_bundles(str(spool)) == []
