"""Medical Segmentation Decathlon: ``dataset.json`` with ``modality`` + 4D ``imagesTr`` + ``labelsTr``.

Built for Task01_BrainTumour (BraTS): images are (x, y, z, 4) with channels
FLAIR/T1w/T1gd/T2w; the FLAIR channel is used by default (``data.channels``
picks others). Labels 1 edema, 2 non-enhancing tumour, 3 enhancing tumour;
evaluation regions WT = {1,2,3}, TC = {2,3}, ET = {3}. Other MSD tasks work the
same way (3D images, their own labels). The file lists of ``dataset.json`` are
used, so the ``._*`` AppleDouble files in the official tarballs are never read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import AugPaintError
from .common import OFFICIAL_TEST, Case, Problem, Source, read_volume_case
from .nnunet import read_dataset_json

BRATS_REGIONS = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}


def _is_brats(meta: dict) -> bool:
    name = str(meta.get("name", "")).upper()
    mods = [str(v).upper() for v in meta.get("modality", {}).values()]
    return "BRATS" in name or ("FLAIR" in mods and len(mods) == 4)


def scan(root: Path, channels: list[str] | None = None) -> Source:
    """Find the training (labeled) and test (unlabeled) cases listed in ``dataset.json``."""
    meta = read_dataset_json(root)
    where = root / "dataset.json"
    try:
        modality = {int(k): str(v) for k, v in meta["modality"].items()}
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
        training = meta["training"]
    except (KeyError, ValueError, AttributeError, TypeError) as err:
        raise AugPaintError(f"{where}: an MSD dataset.json needs 'modality', 'labels' and 'training' "
                            f"({type(err).__name__}: {err})") from None
    if sorted(labels) != list(range(len(labels))):
        raise AugPaintError(f"{where}: labels must be 0..K consecutive, got {sorted(labels)}")
    brats = _is_brats(meta)
    if channels is None:
        names = ["FLAIR"] if brats else [modality[k] for k in sorted(modality)][:3]
    else:
        names = channels
    upper = {v.upper(): k for k, v in modality.items()}
    missing = [n for n in names if n.upper() not in upper]
    if missing:
        raise AugPaintError(f"data.channels: {missing} not in {where} modality {list(modality.values())}")
    index = [upper[n.upper()] for n in names]

    cases, problems = [], []

    def resolve(rel: str) -> Path:
        return (root / rel).resolve() if not Path(rel).is_absolute() else Path(rel)

    for entry in training:
        try:
            img, lab = resolve(entry["image"]), resolve(entry["label"])
        except (KeyError, TypeError):
            raise AugPaintError(f"{where}: training entries need 'image' and 'label', got {entry!r}") from None
        cid = img.name.split(".")[0]
        missing_f = [p for p in (img, lab) if not p.is_file()]
        if missing_f:
            problems.append(Problem(str(missing_f[0]), cid, f"{missing_f[0]}: listed in dataset.json but missing"))
            continue
        cases.append(Case(cid, cid, (str(img),), str(lab)))
    for rel in meta.get("test", []):
        img = resolve(rel if isinstance(rel, str) else rel.get("image", ""))
        if img.is_file():
            cid = f"ts_{img.name.split('.')[0]}"
            cases.append(Case(cid, cid, (str(img),), None, params=OFFICIAL_TEST))
    if not training:
        raise AugPaintError(f"{where}: the 'training' list is empty")
    return Source("msd", str(meta.get("name", root.name)), str(root),
                  [labels[k] for k in sorted(labels) if k != 0], cases,
                  regions=dict(BRATS_REGIONS) if brats else {}, problems=problems,
                  reader={"channels": index, "modalities": [modality[i] for i in index],
                          "allowed": sorted(labels), "allowed_desc": f"{where} labels"})


def read(case: Case, reader: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    return read_volume_case(case, reader["modalities"], reader["channels"], reader, size, set(reader["allowed"]),
                            None, reader["allowed_desc"])
