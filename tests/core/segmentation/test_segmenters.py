import numpy as np
import pytest
import torch

from augpaint_core.config import SegConfig, parse_config
from augpaint_core.errors import AugPaintError
from augpaint_core.segmentation.metrics import dice
from augpaint_core.segmentation.segmenters import build_segmenter, capture_features, num_params, perturb_features
from augpaint_core.segmentation.train_seg import fit_segmenter, predict, predict_with_features

TINY = {
    "unet": dict(features=(4, 8, 8, 16, 16, 4)),
    "deeplabv3": dict(resnet_width=8, output_stride=8),
    "transunet": dict(resnet_width=8, vit_hidden=32, vit_layers=2, vit_heads=4),
}


def _square_batch(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (2, size, size, 3)).astype(np.uint8)
    labels = np.zeros((2, size, size), np.uint8)
    labels[0, 8:20, 10:22] = 1
    labels[1, 12:26, 4:16] = 1
    images[labels == 1] += 120  # a bright square to find
    return images, labels


@pytest.mark.parametrize("arch", ["unet", "deeplabv3", "transunet"])
def test_each_segmenter_overfits_a_tiny_batch(arch):
    images, labels = _square_batch()
    cfg = SegConfig(arch=arch, **TINY[arch], max_steps=80, batch_size=2, lr=5e-3, val_checks=1)
    before = dice(predict(build_segmenter(cfg, 2).eval(), images) == 1, labels == 1)
    model, _ = fit_segmenter(images, labels, 2, cfg, seed=0)
    after = dice(predict(model, images) == 1, labels == 1)
    assert after > 0.8 and after > before + 0.2, (arch, before, after)


def test_paper_sizes():
    # U-Net 31M (unchanged default), DeepLabV3-R50 about 39M and R50-ViT-B TransUNet about 105M (paper, Table 5)
    assert num_params(build_segmenter(SegConfig(), 4)) == pytest.approx(31.1e6, rel=0.01)
    assert num_params(build_segmenter(SegConfig(arch="deeplabv3"), 4)) == pytest.approx(39.6e6, rel=0.02)
    assert num_params(build_segmenter(SegConfig(arch="transunet"), 4)) == pytest.approx(102e6, rel=0.04)


@pytest.mark.parametrize("arch", ["unet", "deeplabv3", "transunet"])
def test_features_and_feature_perturbation(arch):
    torch.manual_seed(0)
    cfg = SegConfig(arch=arch, **TINY[arch])
    model = build_segmenter(cfg, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with capture_features(model, arch) as feats:
        y = model(x)
    assert y.shape == (2, 3, 32, 32) and feats[0].shape[0] == 2 and feats[0].ndim == 2
    with perturb_features(model, arch):
        y_fp = model(x)
    assert not torch.allclose(y, y_fp)  # the perturbation reaches the output...
    assert torch.allclose(model(x), y)  # ...and is gone after the block
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
    proba, f = predict_with_features(model, arch, images, batch_size=2)
    assert proba.shape == (3, 3, 32, 32) and f.shape[0] == 3
    assert np.allclose(proba.sum(1), 1, atol=1e-5)


def test_config_rejects_bad_segmenter_fields():
    with pytest.raises(AugPaintError, match="seg.arch"):
        parse_config({"seg": {"arch": "segformer"}})
    with pytest.raises(AugPaintError, match="vit_heads"):
        parse_config({"seg": {"vit_hidden": 30, "vit_heads": 4}})


def test_paper_segmenter_size():
    n = sum(p.numel() for p in build_segmenter(SegConfig(), 4).parameters())
    assert 30e6 < n < 32e6  # the paper's 31M-parameter U-Net
