import numpy as np
import pytest
import torch

from augpaint_core.segmentation.metrics import case_metrics, dice, hd95


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


def _monai_with_convention(p: np.ndarray, g: np.ndarray) -> tuple[float, float, float]:
    """MONAI's Dice (ignore_empty=False) and HD95, and the raw HD95 before the empty-mask convention."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    pt = torch.from_numpy(np.stack([~p, p]))[None].float()
    gt = torch.from_numpy(np.stack([~g, g]))[None].float()
    md = DiceMetric(include_background=False, ignore_empty=False)(pt, gt).item()
    raw = HausdorffDistanceMetric(include_background=False, percentile=95)(pt, gt).item()
    if not p.any() and not g.any():
        mh = 0.0
    elif not p.any() or not g.any():
        mh = float(np.sqrt(sum(n * n for n in p.shape)))
    else:
        mh = raw
    return md, mh, raw


HAND_BUILT = {
    "overlap": ((slice(2, 6), slice(2, 7)), (slice(3, 8), slice(4, 9))),
    "disjoint": ((slice(0, 2), slice(0, 2)), (slice(9, 12), slice(10, 14))),
    "nested": ((slice(4, 6), slice(4, 6)), (slice(2, 9), slice(2, 9))),
    "pred_empty": (None, (slice(3, 5), slice(3, 5))),
    "gt_empty": ((slice(3, 5), slice(3, 5)), None),
    "both_empty": (None, None),
}


@pytest.mark.parametrize("case", sorted(HAND_BUILT))
def test_hand_built_masks_match_monai_with_the_empty_convention(case):
    ps, gs = HAND_BUILT[case]
    p = np.zeros((12, 16), bool)
    g = np.zeros((12, 16), bool)
    if ps:
        p[ps] = True
    if gs:
        g[gs] = True
    md, mh, raw = _monai_with_convention(p, g)
    assert dice(p, g) == pytest.approx(md, abs=1e-6)
    assert hd95(p, g) == pytest.approx(mh, abs=1e-4)
    # MONAI leaves HD95 undefined (nan) exactly where DESIGN.md section 8 fixes a value
    assert np.isnan(raw) == (not p.any() or not g.any())
    if case == "both_empty":
        assert (dice(p, g), hd95(p, g)) == (1.0, 0.0)
    if case in ("pred_empty", "gt_empty"):
        assert dice(p, g) == 0.0 and hd95(p, g) == pytest.approx(20.0)  # diagonal of 12x16


def test_per_volume_metrics_match_monai_per_class():
    from monai.metrics import DiceMetric, HausdorffDistanceMetric
    from scipy import ndimage

    rng = np.random.default_rng(1)
    gt = np.zeros((4, 20, 20), np.uint8)
    gt[1:3, 4:10, 4:10] = 1
    gt[0:4, 12:18, 12:16] = 2
    pred = gt.copy()
    pred[1, 6:12, 5:10] = 1
    pred[:, 12:14] = np.where(rng.random((4, 2, 20)) > 0.5, 2, pred[:, 12:14])
    pred = np.where(ndimage.binary_opening(pred == 2), 2, np.where(pred == 2, 0, pred)).astype(np.uint8)
    m = case_metrics(pred, gt, 4)  # class 3 is absent from both: Dice 1, HD95 0
    onehot = lambda a: torch.from_numpy(np.stack([a == c for c in range(4)]))[None].float()  # noqa: E731
    md = DiceMetric(include_background=False, ignore_empty=False, reduction="none")(onehot(pred), onehot(gt))[0]
    mh = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(onehot(pred),
                                                                                            onehot(gt))[0]
    for c in (1, 2):
        assert m[c]["dice"] == pytest.approx(md[c - 1].item(), abs=1e-6)
        assert m[c]["hd95"] == pytest.approx(mh[c - 1].item(), abs=1e-4)
    assert m[3] == {"dice": 1.0, "hd95": 0.0} and md[2].item() == 1.0


def test_brats_regions_are_class_unions():
    from augpaint_core.segmentation.metrics import region_metrics

    regions = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    gt = np.zeros((10, 10), np.uint8)
    gt[2:8, 2:8] = 1  # edema
    gt[3:7, 3:7] = 2  # non-enhancing core
    gt[4:6, 4:6] = 3  # enhancing
    pred = gt.copy()
    pred[4:6, 4:6] = 2  # ET missed (called core): WT and TC are still perfect
    r = region_metrics(pred, gt, regions)
    assert r["WT"] == {"dice": 1.0, "hd95": 0.0} and r["TC"] == {"dice": 1.0, "hd95": 0.0}
    assert r["ET"]["dice"] == 0.0 and r["ET"]["hd95"] == pytest.approx(np.hypot(10, 10))
