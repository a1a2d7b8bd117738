"""Preprocess: nnU-Net v2 raw folder (or the built-in phantom) -> 2D slice dataset.

Volumes are reoriented to RAS, sliced along the axis with the coarsest spacing,
normalised per channel (CT window or MRI percentile clipping), resized to
``image_size`` (bilinear images, nearest labels) and made 3-channel. Splits are
by patient; ``num_labeled`` training patients keep their labels, the rest of the
training split becomes unlabeled.
"""
from __future__ import annotations

import json
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from .artifacts import SliceDataset, atomic_dir, save_dataset, write_artifact_meta
from .config import AugPaintConfig
from .errors import AugPaintError
from .phantom import write_phantom

CT_WINDOW = (-125.0, 275.0)


def _load_nifti(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
        img = nib.as_closest_canonical(img)
        img.get_fdata(dtype=np.float32)  # force a full read: truncated gzip fails here, not later
        return img
    except AugPaintError:
        raise
    except Exception as err:  # nibabel raises many types for corrupt files
        raise AugPaintError(f"{path}: cannot read NIfTI ({type(err).__name__}: {err})") from None


def _normalise(vol: np.ndarray, channel_name: str) -> np.ndarray:
    """Map intensities to [0, 1]: CT window for CT, 0.5-99.5 percentile clipping otherwise."""
    if channel_name.strip().upper() == "CT":
        lo, hi = CT_WINDOW
    else:
        lo, hi = np.percentile(vol, [0.5, 99.5])
    if hi <= lo:
        return np.zeros_like(vol, dtype=np.float32)
    return np.clip((vol - lo) / (hi - lo), 0, 1).astype(np.float32)


def _resize(slices: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(N, C, H, W) -> (N, C, size, size)."""
    t = torch.from_numpy(np.ascontiguousarray(slices))
    if mode == "nearest":
        return F.interpolate(t.float(), size=(size, size), mode="nearest-exact").numpy()
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True).numpy()


def read_nnunet_case(root: Path, case: str, meta: dict, label_path: Path | None, size: int
                     ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Read one case to slices.

    Returns:
        images (S, size, size, 3) uint8, labels (S, size, size) uint8, has_label.
    """
    ending = meta.get("file_ending", ".nii.gz")
    channels = meta["channel_names"]
    vols, ref = [], None
    for idx in sorted(channels, key=int):
        p = root / "imagesTr" / f"{case}_{int(idx):04d}{ending}"
        if not p.is_file():
            raise AugPaintError(f"{p}: image channel {idx} ({channels[idx]}) is missing")
        img = _load_nifti(p)
        data = img.get_fdata(dtype=np.float32)
        if data.ndim != 3:
            raise AugPaintError(f"{p}: expected a 3D volume, got shape {data.shape}")
        if ref is None:
            ref = img
        elif data.shape != ref.shape or not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise AugPaintError(f"{p}: shape/affine differ from channel 0 ({data.shape} vs {ref.shape})")
        vols.append(_normalise(data, channels[idx]))
    assert ref is not None
    if label_path is not None:
        limg = _load_nifti(label_path)
        lab = np.asarray(limg.dataobj)
        if lab.ndim != 3:
            raise AugPaintError(f"{label_path}: expected a 3D label volume, got shape {lab.shape}")
        if lab.shape != ref.shape:
            raise AugPaintError(f"{label_path}: label shape {lab.shape} differs from image shape {ref.shape}")
        if not np.allclose(limg.affine, ref.affine, atol=1e-3):
            raise AugPaintError(f"{label_path}: label affine differs from the image's")
        allowed = {int(v) for v in meta["labels"].values()}
        found = {int(v) for v in np.unique(lab)}
        if not np.allclose(lab, np.round(lab)) or not found <= allowed:
            raise AugPaintError(f"{label_path}: label values {sorted(found - allowed)} not in dataset.json labels "
                                f"{sorted(allowed)}")
        if found <= {0}:
            raise AugPaintError(f"{label_path}: label has no foreground")
        lab = lab.astype(np.uint8)
    else:
        lab = np.zeros(ref.shape, np.uint8)
    # Slice along the coarsest axis (after reorientation to RAS).
    axis = int(np.argmax(ref.header.get_zooms()[:3]))
    img = np.stack(vols, 0)  # (C, X, Y, Z)
    img = np.moveaxis(img, axis + 1, 0)  # (S, C, a, b)
    lab = np.moveaxis(lab, axis, 0)[:, None]  # (S, 1, a, b)
    img = _resize(img, size, "bilinear")
    lab = _resize(lab, size, "nearest")[:, 0].astype(np.uint8)
    c = img.shape[1]
    if c == 1:
        img = np.repeat(img, 3, 1)
    elif c == 2:
        img = np.concatenate([img, img[:, :1]], 1)
    else:
        img = img[:, :3]
    img = np.clip(np.round(img * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return img, lab, label_path is not None


def split_cases(labeled_cases: list[str], fractions: tuple[float, float, float], num_labeled: int, seed: int
                ) -> dict[str, tuple[str, bool]]:
    """Patient-level split.

    Returns:
        case -> (split, keeps_label). Exactly ``num_labeled`` train cases keep their label.
    """
    cases = sorted(labeled_cases)
    rng = np.random.default_rng([seed, zlib.crc32(b"split")])
    order = [cases[i] for i in rng.permutation(len(cases))]
    total = sum(fractions)
    n = len(order)
    n_val = max(1, int(round(n * fractions[1] / total)))
    n_test = max(1, int(round(n * fractions[2] / total)))
    n_train = n - n_val - n_test
    if n_train < num_labeled:
        raise AugPaintError(f"data.num_labeled: {num_labeled} labeled cases requested but the training split has "
                            f"only {max(n_train, 0)} of {n} cases")
    out = {}
    for i, c in enumerate(order):
        if i < n_train:
            out[c] = ("train", i < num_labeled)
        elif i < n_train + n_val:
            out[c] = ("val", True)
        else:
            out[c] = ("test", True)
    return out


def build_dataset(root: str | Path, cfg: AugPaintConfig) -> SliceDataset:
    """Read an nnU-Net v2 raw folder into a split slice dataset.

    Args:
        root: folder with ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        cfg: the config (``data`` section and ``seed`` are used).
    """
    root = Path(root)
    if not root.is_dir():
        raise AugPaintError(f"{root}: dataset folder not found")
    dj = root / "dataset.json"
    if not dj.is_file():
        raise AugPaintError(f"{dj}: missing (an nnU-Net v2 raw dataset needs dataset.json)")
    try:
        meta = json.loads(dj.read_text())
        channels, labels = meta["channel_names"], meta["labels"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise AugPaintError(f"{dj}: invalid dataset.json ({type(err).__name__}: {err})") from None
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii"):
        raise AugPaintError(f"{dj}: file_ending {ending!r} is not supported yet (NIfTI only)")
    if not (root / "labelsTr").is_dir():
        raise AugPaintError(f"{root / 'labelsTr'}: missing; the dataset has no labels")
    label_files = {p.name[: -len(ending)]: p for p in sorted((root / "labelsTr").glob(f"*{ending}"))}
    if not label_files:
        raise AugPaintError(f"{root / 'labelsTr'}: no label files ending in {ending}")
    image_cases = {p.name[: -len(ending) - 5] for p in (root / "imagesTr").glob(f"*_0000{ending}")}
    if not image_cases:
        raise AugPaintError(f"{root / 'imagesTr'}: no images named CASE_0000{ending}")
    missing = sorted(set(label_files) - image_cases)
    if missing:
        raise AugPaintError(f"{label_files[missing[0]]}: label without image {missing[0]}_0000{ending}")
    fg = sorted((k, int(v)) for k, v in labels.items() if int(v) != 0)
    class_names = [k for k, _ in sorted(fg, key=lambda kv: kv[1])]
    if [v for _, v in sorted(fg, key=lambda kv: kv[1])] != list(range(1, len(fg) + 1)):
        raise AugPaintError(f"{dj}: labels must be 0..K consecutive, got {labels}")

    assignment = split_cases(list(label_files), cfg.data.split, cfg.data.num_labeled, cfg.seed)
    for c in sorted(image_cases - set(label_files)):  # images without labels: extra unlabeled data
        assignment[c] = ("train", False)
    images, labs, records = [], [], []
    for case in sorted(assignment):
        split, keep = assignment[case]
        img, lab, has_label = read_nnunet_case(root, case, meta, label_files.get(case), cfg.data.image_size)
        if not keep:
            lab = np.zeros_like(lab)  # hide the labels of S^u
        for s in range(img.shape[0]):
            records.append({"case_id": case, "slice_index": s, "split": split,
                            "labeled": bool(keep and has_label), "source": "real",
                            "provenance": {"dataset": meta.get("name", root.name)}})
        images.append(img)
        labs.append(lab)
    return SliceDataset(np.concatenate(images), np.concatenate(labs), records, class_names)


def preprocess(cfg: AugPaintConfig, out: str | Path, input_dir: str | Path | None = None, *,
               force: bool = False, tracker=None) -> Path:
    """Stage 1: build the slice dataset artifact.

    Args:
        cfg: config; ``data.source`` picks the phantom or an nnU-Net folder.
        out: output artifact folder.
        input_dir: nnU-Net folder; overrides ``data.path``.
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    out = Path(out)
    with atomic_dir(out, force=force) as tmp:
        if input_dir is None and cfg.data.source == "phantom":
            with tempfile.TemporaryDirectory() as raw:
                p = cfg.data.phantom
                write_phantom(raw, seed=cfg.seed, num_cases=p.num_cases, slices=p.slices_per_case, size=p.size)
                ds = build_dataset(raw, cfg)
            source = "phantom"
        else:
            src = input_dir or cfg.data.path
            ds = build_dataset(src, cfg)
            source = str(src)
        save_dataset(ds, tmp)
        counts = {f"{s}_{'labeled' if l else 'unlabeled'}": int(sum(r["split"] == s and r["labeled"] == l
                                                                    for r in ds.records))
                  for s in ("train", "val", "test") for l in (True, False)}
        cases = {s: sorted({r["case_id"] for r in ds.records if r["split"] == s}) for s in ("train", "val", "test")}
        labeled_cases = sorted({r["case_id"] for r in ds.records if r["labeled"] and r["split"] == "train"})
        write_artifact_meta(tmp, kind="dataset", stage="preprocess", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, extra={"source": source, "slice_counts": counts, "cases": cases,
                                                  "labeled_cases": labeled_cases, "class_names": ds.class_names})
        if tracker:
            tracker.log_metrics({f"slices_{k}": v for k, v in counts.items()})
    return out
