"""ISIC 2018 Task 1: ``ISIC_NNNNNNN.jpg`` inputs and ``ISIC_NNNNNNN_segmentation.png`` masks (0/255).

Training images come from ``*Training_Input`` with masks in
``*Training_GroundTruth``; the official validation set (``*Validation_Input`` /
``*Validation_GroundTruth``) is the test set, as in the paper. ``*Test_Input``
images (no public masks) are unlabeled data only with ``data.official_test_images``. Each image is its own case.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import AugPaintError
from .common import OFFICIAL_TEST, Case, Source, find_dirs, read_image_2d, read_mask_2d, visible

IMAGE = re.compile(r"^(ISIC_\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


def _pairs(inputs: Path, truth: Path | None, fixed_split: str | None) -> list[Case]:
    out = []
    for p in visible(inputs.iterdir()):
        m = IMAGE.match(p.name)
        if not m:
            continue  # ATTRIBUTION.txt, LICENSE.txt, superpixel files
        mask = truth / f"{m.group(1)}_segmentation.png" if truth else None
        has = mask is not None and mask.is_file()
        out.append(Case(m.group(1), m.group(1), (str(p),), str(mask) if has else None,
                        fixed_split=fixed_split if has else None))
    return out


def scan(root: Path, channels: list[str] | None = None) -> Source:
    """Find the training, official validation (test) and unlabeled test images."""
    def one(pattern: str) -> Path | None:
        found = find_dirs(root, pattern)
        if len(found) > 1:
            raise AugPaintError(f"{root}: several {pattern} folders: {', '.join(map(str, found))}")
        return found[0] if found else None

    tr_in, tr_gt = one("*Training_Input"), one("*Training_GroundTruth")
    va_in, va_gt = one("*Validation_Input"), one("*Validation_GroundTruth")
    te_in = one("*Test_Input")
    if tr_in is None or tr_gt is None:
        raise AugPaintError(f"{root}: needs ISIC2018_Task1-2_Training_Input and ISIC2018_Task1_Training_GroundTruth")
    if va_in is None or va_gt is None:
        raise AugPaintError(f"{root}: needs the official validation set (ISIC2018_Task1-2_Validation_Input and "
                            f"ISIC2018_Task1_Validation_GroundTruth); it is the test set")
    cases = _pairs(tr_in, tr_gt, None) + _pairs(va_in, va_gt, "test")
    if te_in is not None:
        cases += [Case(f"ts_{c.case_id}", f"ts_{c.case_id}", c.images, None, params=OFFICIAL_TEST)
                  for c in _pairs(te_in, None, None)]
    if not any(c.label and c.fixed_split is None for c in cases):
        raise AugPaintError(f"{tr_gt}: no ISIC_NNNNNNN_segmentation.png masks for the training images")
    return Source("isic", "ISIC2018", str(root), ["lesion"], cases, reader={})


def read(case: Case, reader: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    img, hw = read_image_2d(case.images[0], size)
    if case.label is None:
        return img, np.zeros(img.shape[:3], np.uint8)
    return img, read_mask_2d(case.label, hw, size, {0, 255}, {255: 1}, "ISIC mask values")
