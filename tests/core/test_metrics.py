import numpy as np
import pytest
import torch

from augpaint_core.metrics import case_metrics, dice, hd95


def test_dice_hand_computed():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:5] = True   # 20 px
    b[2:4, 0:5] = True   # 10 px, all inside a
    assert dice(a, b) == pytest.approx(2 * 10 / 30)
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0


def test_hd95_hand_computed():
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[5, 5] = True
    b[5, 9] = True
    assert hd95(a, b) == pytest.approx(4.0)
    assert hd95(a, b, spacing=(1.0, 2.0)) == pytest.approx(8.0)
    assert hd95(a, a) == 0.0


def test_empty_conventions():
    z = np.zeros((6, 8), bool)
    x = z.copy()
    x[2, 2] = True
    assert dice(z, z) == 1.0 and hd95(z, z) == 0.0
    assert dice(z, x) == 0.0 and hd95(z, x) == pytest.approx(10.0)  # diagonal of 6x8
    assert hd95(x, z) == pytest.approx(10.0)


def test_matches_monai_on_random_masks():
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    rng = np.random.default_rng(0)
    for _ in range(5):
        from scipy import ndimage

        p = ndimage.binary_opening(rng.random((24, 24, 6)) > 0.5)
        g = ndimage.binary_opening(rng.random((24, 24, 6)) > 0.5)
        pt = torch.from_numpy(np.stack([~p, p]))[None].float()
        gt = torch.from_numpy(np.stack([~g, g]))[None].float()
        md = DiceMetric(include_background=False)(pt, gt).item()
        mh = HausdorffDistanceMetric(include_background=False, percentile=95)(pt, gt).item()
        assert dice(p, g) == pytest.approx(md, abs=1e-5)
        assert hd95(p, g) == pytest.approx(mh, abs=1e-4)


def test_case_metrics_per_class():
    gt = np.zeros((8, 8), np.uint8)
    gt[1:3, 1:3] = 1
    gt[5:7, 5:7] = 2
    pred = gt.copy()
    pred[5:7, 5:7] = 0
    m = case_metrics(pred, gt, 3)
    assert m[1]["dice"] == 1.0 and m[1]["hd95"] == 0.0
    assert m[2]["dice"] == 0.0 and m[2]["hd95"] == pytest.approx(np.hypot(8, 8))
