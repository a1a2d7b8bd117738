import numpy as np

from augpaint_core.artifacts import read_artifact_meta
from augpaint_core.config import SegConfig
from augpaint_core.metrics import dice
from augpaint_core.train_seg import fit_segmenter, predict


def test_segmenter_overfits_a_tiny_batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (2, 32, 32, 3)).astype(np.uint8)
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[:, 8:20, 10:22] = 1
    images[labels == 1] += 120  # a bright square to find
    cfg = SegConfig(features=(4, 8, 8, 16, 16, 4), max_steps=80, batch_size=2, lr=5e-3, val_checks=1)
    model, hist = fit_segmenter(images, labels, 2, cfg, seed=0)
    assert dice(predict(model, images) == 1, labels == 1) > 0.8


def test_augpaint_model_saw_the_synthetic_pairs(pipeline_artifacts):
    base = read_artifact_meta(pipeline_artifacts["baseline"])
    aug = read_artifact_meta(pipeline_artifacts["augpaint"])
    flt = read_artifact_meta(pipeline_artifacts["filtered"])
    assert base["num_synthetic"] == 0 and aug["num_synthetic"] == flt["num_kept"] > 0
    assert base["num_real"] == aug["num_real"]
    assert "synthetic" in aug["inputs"] and "synthetic" not in base["inputs"]
