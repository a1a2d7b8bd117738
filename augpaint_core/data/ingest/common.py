"""Shared pieces of the ingestion adapters: the case/source records and volume -> slices.

Every adapter turns a raw folder into a :class:`Source` (a list of :class:`Case`
plus class names) without reading image data, and reads one case at a time into
uint8 slices with :func:`volume_to_slices` or its 2D equivalent. Reading happens
in worker processes, so everything here is picklable plain data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from ...errors import AugPaintError

OFFICIAL_TEST = (("official_test", True),)  # Case.params of a dataset's official unlabeled test images
MAX_DEPTH = 4  # how deep format detection and adapters look below the given folder (ACDC/database/training/patientNNN)


@dataclass(frozen=True)
class Case:
    """One volume (or 2D image) and its label.

    Args:
        case_id: unique id of this volume, e.g. ``patient001_ED``.
        patient_id: the split unit; all cases of a patient share a split.
        images: image files (one per channel file, or one file).
        label: label file, or None for unlabeled data.
        fixed_split: a split set by the dataset (ISIC's official validation set is ``test``).
        params: adapter-specific settings for the reader, as sorted (key, value) pairs.
    """

    case_id: str
    patient_id: str
    images: tuple[str, ...]
    label: str | None
    fixed_split: str | None = None
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)


@dataclass
class Problem:
    """A file that cannot be used, found while scanning or reading."""

    file: str
    case_id: str
    error: str


@dataclass
class Source:
    """What an adapter found in a raw folder.

    Args:
        format: adapter name.
        name: dataset name (for provenance).
        root: the folder the cases were found in.
        class_names: foreground classes; label value k is ``class_names[k-1]`` after mapping.
        cases: every usable case, labeled and unlabeled.
        regions: evaluation regions as unions of classes (BraTS WT/TC/ET).
        problems: files found broken while scanning (handled by ``data.on_error``).
        reader: options every case's reader needs (modalities, label map, windows).
    """

    format: str
    name: str
    root: str
    class_names: list[str]
    cases: list[Case]
    regions: dict[str, list[int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    reader: dict[str, Any] = field(default_factory=dict)


def visible(paths: list[Path] | Any) -> list[Path]:
    """Drop hidden files, e.g. the ``._BRATS_001.nii.gz`` AppleDouble files in the MSD tarballs."""
    return sorted(p for p in paths if not p.name.startswith("."))


def find_dirs(root: Path, pattern: str, depth: int = MAX_DEPTH) -> list[Path]:
    """Folders named like ``pattern`` at most ``depth`` levels below ``root`` (root included)."""
    out = [root] if root.match(pattern) else []
    frontier = [root]
    for _ in range(depth):
        nxt = []
        for d in frontier:
            try:
                kids = visible([k for k in d.iterdir() if k.is_dir()])
            except OSError:
                continue
            out += [k for k in kids if k.match(pattern)]
            nxt += kids
        frontier = nxt
    return out


# ----------------------------------------------------------------------------------------------
# NIfTI reading


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file completely (a truncated gzip fails here, not later).

    Returns:
        data (as stored, any dtype), affine.
    """
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        return data, img.affine
    except Exception as err:  # nibabel and gzip raise many types for corrupt files
        raise AugPaintError(f"{path}: cannot read NIfTI ({type(err).__name__}: {err})") from None


def to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient the first three axes to RAS, so a flipped or permuted affine gives the same array.

    Returns:
        data, voxel sizes (mm) of the reoriented axes.
    """
    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(data, ornt)
    zooms = np.empty(3)
    zooms[ornt[:, 0].astype(int)] = nib.affines.voxel_sizes(affine)[:3]
    return out, zooms


def check_same_grid(ref_shape: tuple, ref_affine: np.ndarray, shape: tuple, affine: np.ndarray, path: str,
                    what: str) -> None:
    if tuple(shape[:3]) != tuple(ref_shape[:3]):
        raise AugPaintError(f"{path}: {what} shape {tuple(shape)} differs from the image's {tuple(ref_shape)}")
    # 1e-3 mm / rad: exporters round differently, real mismatches are far larger.
    if not np.allclose(affine, ref_affine, atol=1e-3):
        raise AugPaintError(f"{path}: {what} affine differs from the image's (different orientation, spacing or "
                            f"origin)")


def as_label(data: np.ndarray, path: str) -> np.ndarray:
    """A 3D integer label volume; a trailing singleton axis is dropped."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise AugPaintError(f"{path}: expected a 3D label volume, got shape {tuple(data.shape)}")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.array_equal(data, np.round(data)):
            raise AugPaintError(f"{path}: label values must be integers")
    return data.astype(np.int32)


def map_labels(lab: np.ndarray, allowed: set[int], mapping: dict[int, int] | None, path: str,
               allowed_desc: str) -> np.ndarray:
    """Check the raw label values, then map them to 0..K (unlisted allowed values -> background).

    A label without foreground is valid (a healthy control, a slab outside the organ, a volume
    without tumour; nnU-Net accepts them): it is used for training, scoring and evaluation and only
    cannot be an AugPaint source. Only malformed labels are rejected.
    """
    found = {int(v) for v in np.unique(lab)}
    bad = sorted(found - allowed)
    if bad:
        raise AugPaintError(f"{path}: label values {bad} not in {allowed_desc} {sorted(allowed)}")
    if mapping is not None:
        lut = np.zeros(max(allowed) + 1, np.uint8)
        for src, dst in mapping.items():
            lut[src] = dst
        lab = lut[lab]
    return lab.astype(np.uint8)


def normalise(vol: np.ndarray, modality: str, ct_window: tuple[float, float],
              percentiles: tuple[float, float]) -> np.ndarray:
    """Map intensities to [0, 1]: a window for CT, percentile clipping for MRI and the rest."""
    vol = vol.astype(np.float32, copy=False)
    if modality.strip().upper() == "CT":
        lo, hi = ct_window
    else:
        lo, hi = np.percentile(vol, list(percentiles))
    if hi <= lo:
        return np.zeros_like(vol, dtype=np.float32)
    return np.clip((vol - lo) / (hi - lo), 0, 1).astype(np.float32)


def slicing_axis(zooms: np.ndarray) -> int:
    """The axis with the coarsest spacing; on a tie (isotropic BraTS) the last, i.e. axial after RAS."""
    z = np.round(np.asarray(zooms, float), 3)
    return max(range(3), key=lambda i: (z[i], i))


def resize(slices: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(N, C, H, W) -> (N, C, size, size); bilinear with antialiasing, or nearest for labels."""
    t = torch.from_numpy(np.ascontiguousarray(slices))
    if mode == "nearest":
        return F.interpolate(t.float(), size=(size, size), mode="nearest-exact").numpy()
    return F.interpolate(t.float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True).numpy()


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> (N, H, W, 3) uint8; 1 channel is repeated, 2 get a third."""
    c = img.shape[1]
    if c == 1:
        img = np.repeat(img, 3, 1)
    elif c == 2:
        img = np.concatenate([img, img[:, :1]], 1)
    elif c > 3:
        img = img[:, :3]
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def volume_to_slices(channels: list[np.ndarray], label: np.ndarray | None, zooms: np.ndarray, size: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Canonical volumes -> 2D slices along the coarsest axis.

    Args:
        channels: normalised (X, Y, Z) float volumes in [0, 1], 1 to 3 of them.
        label: (X, Y, Z) uint8 in 0..K, or None (unlabeled: all-zero labels).
        zooms: voxel sizes of the canonical axes.
        size: output H = W.

    Returns:
        images (S, size, size, 3) uint8, labels (S, size, size) uint8.
    """
    axis = slicing_axis(zooms)
    img = np.moveaxis(np.stack(channels, 0), axis + 1, 1)  # (C, S, a, b)
    img = resize(np.ascontiguousarray(img.transpose(1, 0, 2, 3)), size, "bilinear")
    if label is None:
        lab = np.zeros((img.shape[0], size, size), np.uint8)
    else:
        lab = resize(np.moveaxis(label, axis, 0)[:, None].astype(np.float32), size, "nearest")[:, 0]
        lab = lab.astype(np.uint8)
    return to_rgb_uint8(img), lab


def check_intensities(data: np.ndarray, path: str | Path) -> None:
    """Refuse NaN/Inf voxels and blank (all-zero) images: they would become black slices that keep their labels."""
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise AugPaintError(f"{path}: {bad} of {data.size} voxels are NaN or infinite")
    if not np.any(data):
        raise AugPaintError(f"{path}: image is blank (every voxel is 0)")


def slice_spacing(case: Case, size: int) -> list[float] | None:
    """Voxel spacing (mm) of the case's slices stacked back into a volume: (through-plane, row, column).

    Read from the first image's NIfTI header (no voxel data) and taken after the resize to ``size``,
    in the axis order :func:`volume_to_slices` produces. None for 2D files (PNG, JPEG) and for a
    header that cannot be read (reading the case reports that).

    Args:
        case: the case.
        size: the slices' H = W.
    """
    path = case.images[0]
    if not path.endswith((".nii", ".nii.gz")):
        return None
    try:
        img = nib.load(path)
        shape, aff = img.shape[:3], img.affine
    except Exception:  # noqa: BLE001 - the reader names the broken file
        return None
    if len(shape) < 3:
        return None
    ornt = nib.orientations.io_orientation(aff)
    zooms, cshape = np.empty(3), np.empty(3)
    zooms[ornt[:, 0].astype(int)] = nib.affines.voxel_sizes(aff)[:3]
    cshape[ornt[:, 0].astype(int)] = shape
    axis = slicing_axis(zooms)
    a, b = (i for i in range(3) if i != axis)
    return [float(zooms[axis]), float(zooms[a] * cshape[a] / size), float(zooms[b] * cshape[b] / size)]


def read_volume_case(case: Case, modalities: list[str], channel_index: list[int], reader: dict,
                     size: int, allowed: set[int], mapping: dict[int, int] | None, allowed_desc: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI case whose channels are separate 3D files or the last axis of one 4D file.

    Args:
        case: the case; ``case.images`` are 3D files, or one 4D file with channels last.
        modalities: modality of each kept channel (``CT`` gets the window).
        channel_index: for a 4D file, the channels to keep; for 3D files, indices into ``case.images``.
        reader: the source's reader options (``ct_window``, ``mri_percentiles``).
        size: output size.
        allowed: raw label values that may occur.
        mapping: raw -> class value map (None: identity).
        allowed_desc: where ``allowed`` comes from, for error messages.
    """
    vols, ref_shape, ref_aff, zooms = [], None, None, None
    files = [case.images[0]] * len(channel_index) if len(case.images) == 1 else [case.images[i] for i in channel_index]
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k, (path, mod) in enumerate(zip(files, modalities)):
        if path not in cache:
            cache = {path: load_nifti(path)}  # keep one file in memory at a time
        data, aff = cache[path]
        if len(case.images) == 1 and data.ndim == 4:
            if channel_index[k] >= data.shape[3]:
                raise AugPaintError(f"{path}: has {data.shape[3]} channels, channel {channel_index[k]} requested")
            data = data[..., channel_index[k]]
        elif data.ndim != 3:
            raise AugPaintError(f"{path}: expected a 3D volume (or 4D with channels last), got shape {data.shape}")
        if ref_shape is None:
            ref_shape, ref_aff = data.shape, aff
        else:
            check_same_grid(ref_shape, ref_aff, data.shape, aff, path, "channel")
        check_intensities(data, path)
        canon, zooms = to_canonical(data, aff)
        vols.append(normalise(canon, mod, tuple(reader["ct_window"]), tuple(reader["mri_percentiles"])))
    del cache
    lab = None
    if case.label is not None:
        ldata, laff = load_nifti(case.label)
        ldata = as_label(ldata, case.label)
        check_same_grid(ref_shape, ref_aff, ldata.shape, laff, case.label, "label")
        lab = map_labels(to_canonical(ldata, laff)[0], allowed, mapping, case.label, allowed_desc)
    return volume_to_slices(vols, lab, zooms, size)


def read_image_2d(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A 2D image file (JPEG/PNG) -> (1, size, size, 3) uint8 and its original (H, W).

    Gray images are repeated to 3 channels; JPEG decoding is asked to downscale
    early, which makes 6000 px dermoscopy images cheap.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            orig = (im.height, im.width)
            if im.format == "JPEG":
                im.draft("RGB", (2 * size, 2 * size))  # only ever reduces by powers of 2, never below 2x size
            im = im.convert("RGB")
            im.load()
    except Exception as err:  # PIL raises many types for truncated or corrupt files
        raise AugPaintError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
    arr = np.asarray(im, np.float32).transpose(2, 0, 1)[None] / 255.0
    if not arr.any():
        raise AugPaintError(f"{path}: image is blank (every pixel is 0)")
    return to_rgb_uint8(resize(arr, size, "bilinear")), orig


def read_mask_2d(path: str, shape: tuple[int, int], size: int, allowed: set[int], mapping: dict[int, int] | None,
                 allowed_desc: str) -> np.ndarray:
    """A 2D label image -> (1, size, size) uint8 classes; it must match the image's size."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except Exception as err:
        raise AugPaintError(f"{path}: cannot read mask ({type(err).__name__}: {err})") from None
    if arr.ndim == 3:
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, arr.shape[2])):
            raise AugPaintError(f"{path}: mask has {arr.shape[2]} differing channels; expected a single-channel mask")
        arr = arr[..., 0]
    if arr.shape != tuple(shape):
        raise AugPaintError(f"{path}: mask shape {arr.shape} differs from the image's {tuple(shape)}")
    lab = map_labels(arr.astype(np.int32), allowed, mapping, path, allowed_desc)
    return resize(lab[None, None].astype(np.float32), size, "nearest")[:, 0].astype(np.uint8)
