"""Dice and HD95 with the conventions of shared/DESIGN.md section 8.

- Dice per class per case (3D volume, or 2D image), then the mean over cases.
- HD95: 95th percentile of surface distances in each direction, then the max
  (the MONAI/DeepMind convention), in pixels unless a spacing is given (mm: the source spacing).
- Both masks empty: Dice 1, HD95 0. Exactly one empty: Dice 0, HD95 = the
  image diagonal.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

CONVENTION = ("Dice and HD95 per class per case (3D volume), then mean over cases. HD95 = max of the two "
              "directed 95th-percentile surface distances (MONAI convention), in mm with the source spacing "
              "(NIfTI header, after the resize) when every case has one, else in pixels (hd95_unit says which). "
              "Both empty: Dice 1, HD95 0; one empty: Dice 0, HD95 = volume diagonal. With evaluation regions "
              "(BraTS WT/TC/ET) the mean is over the regions.")


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = pred.astype(bool), gt.astype(bool)
    s = pred.sum() + gt.sum()
    if s == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, gt).sum() / s)


def _edges(m: np.ndarray) -> np.ndarray:
    return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(m.ndim, 1))


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance between two binary masks."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    spacing = tuple(spacing) if spacing is not None else (1.0,) * pred.ndim
    if not pred.any() and not gt.any():
        return 0.0
    if not pred.any() or not gt.any():
        return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing))))
    ep, eg = _edges(pred), _edges(gt)
    d_to_g = ndimage.distance_transform_edt(~eg, sampling=spacing)
    d_to_p = ndimage.distance_transform_edt(~ep, sampling=spacing)
    return float(max(np.percentile(d_to_g[ep], 95), np.percentile(d_to_p[eg], 95)))


def case_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing: Sequence[float] | None = None
                 ) -> dict[int, dict[str, float]]:
    """Per-class Dice and HD95 for one case (labels 1..num_classes-1)."""
    return {c: {"dice": dice(pred == c, gt == c), "hd95": hd95(pred == c, gt == c, spacing)}
            for c in range(1, num_classes)}


def region_metrics(pred: np.ndarray, gt: np.ndarray, regions: dict[str, list[int]],
                   spacing: Sequence[float] | None = None) -> dict[str, dict[str, float]]:
    """Dice and HD95 of class unions for one case, e.g. BraTS WT = {1,2,3}, TC = {2,3}, ET = {3}."""
    out = {}
    for name, classes in regions.items():
        p, g = np.isin(pred, classes), np.isin(gt, classes)
        out[name] = {"dice": dice(p, g), "hd95": hd95(p, g, spacing)}
    return out
