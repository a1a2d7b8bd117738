"""Ingestion adapters: one per raw format, and format detection.

=========  ==============================================================
format     layout
=========  ==============================================================
nnunet     ``dataset.json`` (channel_names, labels, file_ending), imagesTr/, labelsTr/
msd        ``dataset.json`` (modality, labels, training), 4D imagesTr/ (BraTS)
acdc       ``patientNNN/Info.cfg`` + ED/ES frames and ``_gt`` labels
synapse    ``img/imgNNNN.nii.gz`` + ``label/labelNNNN.nii.gz`` (BTCV)
isic       ``*Training_Input/ISIC_*.jpg`` + ``*Training_GroundTruth`` + official validation
=========  ==============================================================
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType

import numpy as np

from ...errors import AugPaintError
from . import acdc, isic, msd, nnunet, synapse
from .common import MAX_DEPTH, Case, Problem, Source, find_dirs, slice_spacing

ADAPTERS: dict[str, ModuleType] = {"nnunet": nnunet, "msd": msd, "acdc": acdc, "synapse": synapse, "isic": isic}

__all__ = ["ADAPTERS", "Case", "Problem", "Source", "detect_format", "scan", "read_case", "slice_spacing"]


def _candidates(root: Path) -> list[tuple[str, Path]]:
    """Every (format, folder) below ``root`` whose marker files are present."""
    out: list[tuple[str, Path]] = []
    for d in find_dirs(root, "*"):
        dj = d / "dataset.json"
        if dj.is_file():
            try:
                meta = json.loads(dj.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise AugPaintError(f"{dj}: not valid JSON ({err})") from None
            if isinstance(meta, dict) and "channel_names" in meta:
                out.append(("nnunet", d))
            elif isinstance(meta, dict) and "modality" in meta:
                out.append(("msd", d))
            else:
                raise AugPaintError(f"{dj}: neither nnU-Net v2 ('channel_names') nor MSD ('modality') dataset.json")
    if not out:  # the folder that holds all of a format's markers
        for fmt, dirs in (("acdc", [d.parent for d in acdc.patient_dirs(root)]),
                          ("synapse", [d.parent.parent for d in synapse.image_dirs(root)]),
                          ("isic", [d.parent for d in find_dirs(root, "*Training_Input")])):
            if dirs:
                out.append((fmt, Path(os.path.commonpath(dirs)) if len(dirs) > 1 else dirs[0]))
    return out


def detect_format(root: str | Path) -> tuple[str, Path]:
    """Which adapter reads ``root``, and the folder it should read.

    Args:
        root: the folder given with ``--in``; markers are searched up to 3 levels down.

    Returns:
        (format, dataset folder).
    """
    root = Path(root)
    if not root.is_dir():
        raise AugPaintError(f"{root}: input folder not found")
    if not any(root.iterdir()):
        raise AugPaintError(f"{root}: the input folder is empty")
    found = _candidates(root)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise AugPaintError(f"{root}: several datasets found ({', '.join(f'{f} at {p}' for f, p in found)}); "
                            f"point --in at one of them or pass --format")
    nn_like = [d for d in find_dirs(root, "imagesTr")]
    if nn_like:
        dj = nn_like[0].parent / "dataset.json"
        raise AugPaintError(f"{dj}: missing (an nnU-Net v2 or MSD dataset needs dataset.json beside imagesTr/)")
    raise AugPaintError(f"{root}: no known dataset layout found within {MAX_DEPTH} levels (nnU-Net v2 dataset.json, "
                        f"MSD dataset.json, ACDC patientNNN/Info.cfg, Synapse img/label folders, ISIC2018 "
                        f"*Training_Input)")


def scan(root: str | Path, fmt: str = "auto", channels: list[str] | None = None) -> Source:
    """Find the cases of a raw dataset without reading image data.

    Args:
        root: raw dataset folder.
        fmt: an adapter name, or ``auto``.
        channels: channel names to keep (``data.channels``).
    """
    root = Path(root)
    if fmt == "auto":
        fmt, root = detect_format(root)
    elif fmt not in ADAPTERS:
        raise AugPaintError(f"data.format: unknown format {fmt!r}; choose auto or one of {', '.join(ADAPTERS)}")
    elif not root.is_dir():
        raise AugPaintError(f"{root}: input folder not found")
    elif not any(root.iterdir()):
        raise AugPaintError(f"{root}: the input folder is empty")
    else:  # the format is given; still find its folder below the one given (Task01_BrainTumour/ in a download)
        found = [p for f, p in _candidates(root) if f == fmt]
        if len(found) == 1:
            root = found[0]
    return ADAPTERS[fmt].scan(root, channels)


def read_case(fmt: str, case: Case, reader: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one case into slices (runs in worker processes).

    Returns:
        images (S, size, size, 3) uint8, labels (S, size, size) uint8 with classes 0..K.
    """
    return ADAPTERS[fmt].read(case, reader, size)
