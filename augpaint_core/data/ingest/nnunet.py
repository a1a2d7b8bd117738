"""nnU-Net v2 raw format: ``dataset.json`` + ``imagesTr/{case}_{XXXX}{ending}`` + ``labelsTr/{case}{ending}``.

Channel names and labels come from ``dataset.json``; a channel named ``CT`` gets
the CT window, every other one percentile clipping. NIfTI (``.nii.gz``,
``.nii``) and PNG endings are read; a PNG may hold RGB (nnU-Net's natural-image
convention: one ``_0000.png`` file, channel_names R, G, B). Images in
``imagesTs/`` (no labels) are the official test images: unlabeled training data only with
``data.official_test_images``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ...errors import AugPaintError
from .common import (OFFICIAL_TEST, Case, Problem, Source, read_image_2d, read_mask_2d, read_volume_case,
                     visible)

ENDINGS = (".nii.gz", ".nii", ".png")


def read_dataset_json(root: Path) -> dict:
    dj = root / "dataset.json"
    if not dj.is_file():
        raise AugPaintError(f"{dj}: missing (an nnU-Net v2 raw dataset needs dataset.json)")
    try:
        meta = json.loads(dj.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AugPaintError(f"{dj}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise AugPaintError(f"{dj}: expected a JSON object")
    return meta


def class_names_from(labels: dict, where: str) -> list[str]:
    """nnU-Net ``labels`` ({name: value}) -> class names for values 1..K, which must be consecutive."""
    if not isinstance(labels, dict) or not labels:
        raise AugPaintError(f"{where}: 'labels' must map names to integer values")
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise AugPaintError(f"{where}: region-based labels ({labels}) are not supported; list each integer label "
                            f"value with its own name")
    try:
        fg = sorted((int(v), k) for k, v in labels.items() if int(v) != 0)
    except (TypeError, ValueError):
        raise AugPaintError(f"{where}: label values must be integers, got {labels}") from None
    if [v for v, _ in fg] != list(range(1, len(fg) + 1)):
        raise AugPaintError(f"{where}: labels must be 0..K consecutive, got {labels}")
    return [k for _, k in fg]


def scan(root: Path, channels: list[str] | None = None) -> Source:
    """Find the cases of an nnU-Net v2 raw folder."""
    meta = read_dataset_json(root)
    where = str(root / "dataset.json")
    if "channel_names" not in meta or "labels" not in meta:
        raise AugPaintError(f"{where}: needs 'channel_names' and 'labels' (nnU-Net v2); an MSD dataset.json has "
                            f"'modality' instead, use --format msd")
    if not isinstance(meta["channel_names"], dict):
        raise AugPaintError(f"{where}: 'channel_names' must map channel numbers to names, e.g. {{\"0\": \"T2\"}}, "
                            f"got a {type(meta['channel_names']).__name__}")
    try:
        names = {int(k): str(v) for k, v in meta["channel_names"].items()}
    except ValueError:
        raise AugPaintError(f"{where}: 'channel_names' keys must be channel numbers (\"0\", \"1\", ...), got "
                            f"{list(meta['channel_names'])}") from None
    if not names or any(k < 0 for k in names):
        raise AugPaintError(f"{where}: 'channel_names' must list channels 0, 1, ...")
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in ENDINGS:
        raise AugPaintError(f"{where}: file_ending {ending!r} not supported (one of {', '.join(ENDINGS)})")
    class_names = class_names_from(meta["labels"], where)
    png = ending == ".png"
    keep = _pick_channels(names, channels, where, png)
    pat = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    problems: list[Problem] = []

    def cases_in(folder: Path) -> dict[str, dict[int, Path]]:
        found: dict[str, dict[int, Path]] = {}
        for p in visible(folder.glob(f"*{ending}")) if folder.is_dir() else []:
            m = pat.match(p.name)
            if m:
                found.setdefault(m.group(1), {})[int(m.group(2))] = p
        return found

    if not (root / "imagesTr").is_dir():
        raise AugPaintError(f"{root / 'imagesTr'}: missing (nnU-Net v2 raw layout)")
    if not (root / "labelsTr").is_dir():
        raise AugPaintError(f"{root / 'labelsTr'}: missing; the dataset has no labels")
    labels = {p.name[: -len(ending)]: p for p in visible((root / "labelsTr").glob(f"*{ending}"))}
    if not labels:
        raise AugPaintError(f"{root / 'labelsTr'}: no label files ending in {ending}")
    train = cases_in(root / "imagesTr")
    cases: list[Case] = []
    for cid in sorted(set(labels) | set(train)):
        files = train.get(cid, {})
        need = [0] if png else sorted(names)
        missing = [i for i in need if i not in files]
        if missing:
            f = root / "imagesTr" / f"{cid}_{missing[0]:04d}{ending}"
            problems.append(Problem(str(f), cid, f"{f}: image channel {missing[0]} "
                                                   f"({names.get(missing[0], '?')}) is missing"))
            continue
        if cid not in labels:
            # imagesTr is labeled data by definition (unlabeled cases live in imagesTs): a lost label file is an
            # error, never a silent switch to unlabeled data.
            f = root / "labelsTr" / f"{cid}{ending}"
            problems.append(Problem(str(f), cid, f"{f}: label file missing for training case {cid} (its image is "
                                                 f"in imagesTr; unlabeled cases belong in imagesTs)"))
            continue
        cases.append(Case(cid, cid, tuple(str(files[i]) for i in sorted(files)), str(labels[cid])))
    for cid, files in sorted(cases_in(root / "imagesTs").items()):
        if all(i in files for i in ([0] if png else names)):
            cases.append(Case(f"ts_{cid}", f"ts_{cid}", tuple(str(files[i]) for i in sorted(files)), None,
                              params=OFFICIAL_TEST))
    allowed = sorted({int(v) for v in meta["labels"].values()})
    return Source("nnunet", str(meta.get("name", root.name)), str(root), class_names, cases, problems=problems,
                  reader={"png": png, "channels": keep, "modalities": [names[i] for i in keep] if not png else [],
                          "allowed": allowed, "allowed_desc": f"{where} labels"})


def _pick_channels(names: dict[int, str], wanted: list[str] | None, where: str, png: bool) -> list[int]:
    if png:
        return []
    if wanted is None:
        return sorted(names)[:3]
    lower = {v.lower(): k for k, v in names.items()}
    missing = [w for w in wanted if w.lower() not in lower]
    if missing:
        raise AugPaintError(f"data.channels: {missing} not in {where} channel_names {list(names.values())}")
    return [lower[w.lower()] for w in wanted]


def read(case: Case, reader: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    allowed = set(reader["allowed"])
    if not reader["png"]:
        return read_volume_case(case, reader["modalities"], reader["channels"], reader, size, allowed, None,
                                reader["allowed_desc"])
    parts, shape = [], None
    for f in case.images:  # several gray PNGs, or one RGB PNG
        img, hw = read_image_2d(f, size)
        if shape is not None and hw != shape:
            raise AugPaintError(f"{f}: size {hw} differs from channel 0's {shape}")
        shape = hw
        parts.append(img)
    img = parts[0] if len(parts) == 1 else np.stack([p[..., 0] for p in parts[:3]] +
                                                    [parts[0][..., 0]] * (3 - min(3, len(parts))), -1)
    if case.label is None:
        return img, np.zeros(img.shape[:3], np.uint8)
    return img, read_mask_2d(case.label, shape, size, allowed, None, reader["allowed_desc"])
