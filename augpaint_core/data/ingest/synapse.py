"""Synapse multi-organ CT (BTCV): ``img/imgNNNN.nii.gz`` + ``label/labelNNNN.nii.gz``.

Of the 13 organs the paper keeps 1 spleen, 2 right kidney, 3 left kidney and
6 liver, remapped to classes 1..4; the other organs become background. CT
intensities use the window [-125, 275] HU (``data.ct_window``). Images under a
``Testing/img`` folder (no labels) are the official test images: unlabeled data only with
``data.official_test_images``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import AugPaintError
from .common import OFFICIAL_TEST, Case, Problem, Source, find_dirs, read_volume_case, visible

ORGANS = {0: "background", 1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "esophagus",
          6: "liver", 7: "stomach", 8: "aorta", 9: "inferior vena cava", 10: "portal and splenic vein",
          11: "pancreas", 12: "right adrenal gland", 13: "left adrenal gland"}
KEEP = {1: 1, 2: 2, 3: 3, 6: 4}
CLASSES = [ORGANS[k] for k in KEEP]
IMG = re.compile(r"^img(\d+)\.nii(\.gz)?$")


def image_dirs(root: Path) -> list[Path]:
    return [d for d in find_dirs(root, "img") if any(IMG.match(p.name) for p in d.iterdir())]


def scan(root: Path, channels: list[str] | None = None) -> Source:
    """Pair ``imgNNNN`` with ``labelNNNN`` in every ``img``/``label`` folder pair below ``root``."""
    dirs = image_dirs(root)
    if not dirs:
        raise AugPaintError(f"{root}: no Synapse img/imgNNNN.nii.gz files found")
    cases, problems, seen = [], [], set()
    for d in dirs:
        labdir = d.parent / "label"
        for p in visible(d.iterdir()):
            m = IMG.match(p.name)
            if not m:
                continue
            num = m.group(1)
            cid = f"img{num}"
            if cid in seen:
                problems.append(Problem(str(p), cid, f"{p}: case {cid} appears in two img folders"))
                continue
            seen.add(cid)
            lab = next((q for q in (labdir / f"label{num}.nii.gz", labdir / f"label{num}.nii") if q.is_file()), None)
            if lab is None and labdir.is_dir():  # a label folder beside it: this image's label was lost
                f = labdir / f"label{num}.nii.gz"
                problems.append(Problem(str(f), cid, f"{f}: label file missing for {p.name} (its folder has labels)"))
                continue
            official = lab is None and "Testing" in d.parts  # BTCV's unlabeled Testing/img
            cases.append(Case(cid, cid, (str(p),), str(lab) if lab else None,
                              params=OFFICIAL_TEST if official else ()))
    if not any(c.label for c in cases):
        raise AugPaintError(f"{root}: no label/labelNNNN.nii.gz beside any img folder; the dataset has no labels")
    return Source("synapse", "Synapse", str(root), list(CLASSES), cases, problems=problems,
                  reader={"allowed": sorted(ORGANS)})


def read(case: Case, reader: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    return read_volume_case(case, ["CT"], [0], reader, size, set(reader["allowed"]), KEEP,
                            "the BTCV organ labels")
