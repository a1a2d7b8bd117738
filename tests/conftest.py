"""Shared fixtures: a tiny config (32x32, a few steps) and one session-wide run of every stage."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from augpaint_core.config import AugPaintConfig, parse_config
from tests.services import mlflow_server, s3_bucket, s3_server  # noqa: F401  (real weed mini S3, mlflow server)

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"image_size": 32, "num_labeled": 1, "workers": 1,
             "phantom": {"num_cases": 8, "slices_per_case": 4, "size": 48}},
    "ae": {"block_channels": [8, 16, 16], "layers_per_block": 1, "num_embeddings": 32, "max_steps": 3,
           "batch_size": 4, "lr": 1.0e-3},
    "ldm": {"block_channels": [16, 16, 32, 32], "attention": [False, False, False, True], "layers_per_block": 1,
            "max_steps": 3, "batch_size": 4},
    "inpaint": {"num_inference_steps": 4, "samples_per_pair": 2, "batch_size": 8},
    "filter": {"scorer_max_steps": 2},
    "seg": {"features": [4, 8, 8, 16, 16, 4], "max_steps": 2, "val_checks": 1},
}

REPO = Path(__file__).resolve().parents[1]


def tiny_dict() -> dict:
    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_cfg() -> AugPaintConfig:
    return parse_config(tiny_dict(), "tiny")


@pytest.fixture(scope="session")
def pipeline_artifacts(tmp_path_factory) -> dict[str, Path]:
    """Every stage once, in process, on the tiny config (no tracking)."""
    from augpaint_core.segmentation.evaluate import evaluate
    from augpaint_core.segmentation.filter import filter_synthetic
    from augpaint_core.generative.inpaint import inpaint
    from augpaint_core.data.preprocess import preprocess
    from augpaint_core.generative.train_ae import train_ae
    from augpaint_core.generative.train_ldm import train_ldm
    from augpaint_core.segmentation.train_seg import train_seg

    cfg = parse_config(tiny_dict(), "tiny")
    d = tmp_path_factory.mktemp("stages")
    a = {k: d / k for k in ("dataset", "ae", "ldm", "synthetic", "filtered", "baseline", "augpaint", "report")}
    preprocess(cfg, a["dataset"])
    train_ae(cfg, a["dataset"], a["ae"])
    train_ldm(cfg, a["dataset"], a["ae"], a["ldm"])
    inpaint(cfg, a["dataset"], a["ae"], a["ldm"], a["synthetic"])
    filter_synthetic(cfg, a["dataset"], a["synthetic"], a["filtered"])
    train_seg(cfg, a["dataset"], a["baseline"])
    train_seg(cfg, a["dataset"], a["augpaint"], synthetic=a["filtered"])
    evaluate(cfg, a["dataset"], a["baseline"], a["augpaint"], a["report"])
    a["cfg"] = cfg
    return a


@pytest.fixture(scope="session", autouse=True)
def _mlflow_spool(tmp_path_factory):
    """Tracking records spooled while a server is down go to a temp folder, never the home folder."""
    import os

    old = os.environ.get("AUGPAINT_MLFLOW_SPOOL")
    os.environ["AUGPAINT_MLFLOW_SPOOL"] = str(tmp_path_factory.mktemp("mlflow-spool"))
    yield
    if old is None:
        os.environ.pop("AUGPAINT_MLFLOW_SPOOL", None)
    else:
        os.environ["AUGPAINT_MLFLOW_SPOOL"] = old


# Tests that `make test-fast` leaves out (-m "not slow"): whole pipelines, servers, multi-process training.
SLOW_MODULES = ("tests/kfp/test_local_pipeline.py", "tests/kfp/test_expansion_local.py",
                "tests/core/test_expansion.py",
                "tests/core/infra/test_tracking_server.py", "tests/core/infra/test_cluster_faults.py")
SLOW_TESTS = ("test_ddp_with_accelerate_launch_matches_one_process", "test_local_run_writes_the_table",
              "test_pipeline_and_in_process_harness_give_the_same_table",
              "test_killed_segmenter_training_resumes_from_its_s3_checkpoint")
SLOW_FIXTURES = ("experiment", "controls")  # the harness over splits and variants (tests/core/test_experiment.py)


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the slow tests; tests marked ``gpu`` skip without a visible CUDA GPU (the suite runs CPU-only)."""
    import torch

    skip_gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        path = Path(str(item.fspath)).resolve().relative_to(REPO).as_posix()
        if path in SLOW_MODULES or item.originalname in SLOW_TESTS or set(SLOW_FIXTURES) & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
        if skip_gpu is not None and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
