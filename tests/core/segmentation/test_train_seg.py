import numpy as np

from augpaint_core.infra.artifacts import read_artifact_meta
from augpaint_core.config import SegConfig
from augpaint_core.segmentation.metrics import dice
from augpaint_core.segmentation.train_seg import fit_segmenter, predict


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


def test_unimatch_loss_uses_confident_pseudo_labels_and_trains():
    import torch

    from augpaint_core.segmentation.segmenters import build_segmenter
    from augpaint_core.segmentation.train_seg import unimatch_loss

    torch.manual_seed(0)
    cfg = SegConfig(features=(4, 8, 8, 16, 16, 4))
    model = build_segmenter(cfg, 2).train()
    xu = torch.rand(4, 3, 32, 32) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    loss, ratio = unimatch_loss(model, "unet", xu, gen, threshold=0.0)  # every pixel pseudo-labeled
    assert ratio == 1.0 and loss.item() > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    none, r0 = unimatch_loss(model, "unet", xu, gen, threshold=0.999999)
    assert r0 < 1.0 and none.item() <= loss.item()


def test_semi_supervised_training_reads_the_unlabeled_images():
    images, labels = _tiny_pair()
    unlabeled = np.random.default_rng(1).integers(0, 255, (6, 32, 32, 3)).astype(np.uint8)
    cfg = SegConfig(features=(4, 8, 8, 16, 16, 4), max_steps=3, batch_size=2, val_checks=1,
                    semi_supervised="unimatch", unimatch_threshold=0.3, unimatch_batch_size=2)
    m_semi, _ = fit_segmenter(images, labels, 2, cfg, seed=0, unlabeled=unlabeled)
    m_sup, _ = fit_segmenter(images, labels, 2, cfg.model_copy(update={"semi_supervised": "none"}), seed=0,
                             unlabeled=unlabeled)
    diff = sum((a - b).abs().sum().item() for a, b in zip(m_semi.state_dict().values(), m_sup.state_dict().values())
               if a.dtype.is_floating_point)
    assert diff > 0  # the consistency loss changed the weights


def _tiny_pair():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (2, 32, 32, 3)).astype(np.uint8)
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[:, 8:20, 10:22] = 1
    images[labels == 1] += 120
    return images, labels
