"""expand-promote decides on val, deliberately both ways, against a real mlflow server (registry)."""
from __future__ import annotations

import json
import shutil
import uuid

import torch

from augpaint_core.expansion import promote
from augpaint_core.infra.tracking import stage_run
from augpaint_core.segmentation.evaluate import evaluate_model
from augpaint_core.segmentation.segmenters import build_segmenter


def _untrained(trained, dest, cfg, num_classes: int):
    """The trained artifact with the weights of step 0 (a model that is worse on purpose), its recorded
    hashes updated (readers check them)."""
    from augpaint_core.infra.artifacts import ARTIFACT_FILE, files_digest, sha256_file

    shutil.copytree(trained, dest)
    torch.manual_seed(123)
    torch.save(build_segmenter(cfg.seg, num_classes, cfg.data.image_size).state_dict(), dest / "segmenter.pt")
    meta = json.loads((dest / ARTIFACT_FILE).read_text())
    meta["files"]["segmenter.pt"] = sha256_file(dest / "segmenter.pt")
    meta["content_sha256"] = files_digest(meta["files"])
    (dest / ARTIFACT_FILE).write_text(json.dumps(meta, indent=1))
    return dest


def test_promotion_keeps_a_worse_candidate_out_and_promotes_a_better_one(pipeline_artifacts, mlflow_server,
                                                                         tmp_path):
    from mlflow.tracking import MlflowClient

    from augpaint_core.data.dataset import load_dataset
    from augpaint_core.config import parse_config
    from augpaint_core.segmentation.train_seg import train_seg
    from tests.conftest import tiny_dict

    a, uri = pipeline_artifacts, mlflow_server.uri
    d = tiny_dict()
    d["seg"]["max_steps"] = 60  # clearly better than step 0 on val
    cfg = parse_config(d, "tiny")
    ds = load_dataset(a["dataset"])
    good = train_seg(cfg, a["dataset"], tmp_path / "good")
    bad = _untrained(good, tmp_path / "bad", cfg, ds.num_classes)
    val = {k: evaluate_model(m, ds, "val")["mean"]["dice"] for k, m in (("good", good), ("bad", bad))}
    assert val["good"] > val["bad"], val  # the premise of the test (seeded, so it holds run after run)

    prefix = f"t{uuid.uuid4().hex[:6]}"
    results = []
    for k, cand in enumerate((bad, good, bad)):  # no champion yet; better; worse
        with stage_run(uri, None, "expand-promote") as tr:
            out = promote(cfg, tmp_path / f"promote{k}", dataset=a["dataset"], candidate=cand, prefix=prefix,
                          tracking_uri=uri, tracker=tr)
        results.append(json.loads((out / "metrics.json").read_text()))
    assert [r["promoted"] for r in results] == [True, True, False]
    assert all(r["decided_on"] == "val" for r in results)
    assert results[1]["candidate"]["dice"] == val["good"] and results[1]["champion"]["dice"] == val["bad"]
    assert results[2]["candidate"]["dice"] == val["bad"] and results[2]["champion"]["dice"] == val["good"]
    assert results[2]["test"]["candidate"]["dice"] == evaluate_model(bad, ds, "test")["mean"]["dice"]
    c = MlflowClient(uri)
    assert c.get_model_version_by_alias(f"{prefix}-seg", "champion").version == "2"
