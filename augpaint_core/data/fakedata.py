"""Tiny, format-faithful fake datasets for the raw formats that preprocess ingests.

No real data goes in the repository: tests and benchmarks call
:func:`write_fake_dataset` to get a folder that looks like the real download
(folder layout, file names, ndim, dtypes, orientations, spacings, label values,
junk files) but holds small synthetic content: a smooth body-like blob with
noise and a few labeled structures. Every labeled volume has foreground in
several, never all, slices of its slicing axis. Everything is deterministic:
case ``i`` of a dataset with seed ``s`` draws from ``np.random.default_rng([s, i])``.

Formats and the folder returned (what a user passes to ``augpaint preprocess --in``):

- ``acdc``: ``root/ACDC/database`` (``training/patientNNN``, ``testing/patientNNN``).
- ``msd_brats``: ``root/Task01_BrainTumour`` (Medical Segmentation Decathlon Task01).
- ``synapse``: ``root/RawData`` (BTCV abdomen, ``Training/img``, ``Training/label``, ``Testing/img``).
- ``isic``: ``root`` itself (holds the four ISIC2018 Task 1 folders).
- ``nnunet``: ``root/Dataset042_Fake`` (nnU-Net v2 raw, NIfTI, one file per channel).
- ``nnunet_png``: ``root/Dataset043_FakePNG`` (nnU-Net v2 raw, NaturalImage2DIO RGB PNG).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import AugPaintError

__all__ = [
    "FORMATS",
    "write_fake_dataset",
    "write_acdc",
    "write_msd_brats",
    "write_synapse",
    "write_isic",
    "write_nnunet",
    "write_nnunet_png",
]

FORMATS = ("acdc", "msd_brats", "synapse", "isic", "nnunet", "nnunet_png")

# Dataset-level draws (ids) use this as the second seed word; case indices never reach it.
_DATASET_STREAM = 2**32 - 1

ACDC_GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
BRATS_MODALITIES = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
BRATS_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
BTCV_LABELS = {
    1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "esophagus", 6: "liver",
    7: "stomach", 8: "aorta", 9: "inferior vena cava", 10: "portal vein and splenic vein", 11: "pancreas",
    12: "right adrenal gland", 13: "left adrenal gland",
}


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


def _rng(seed: int, case: int) -> np.random.Generator:
    return np.random.default_rng([seed, case])


def _check_common(num_cases: int, shape: tuple[int, ...] | None, ndims: tuple[int, ...], fmt: str) -> None:
    if int(num_cases) < 1:
        raise AugPaintError(f"fakedata {fmt}: num_cases must be >= 1, got {num_cases}")
    if shape is not None:
        if len(shape) not in ndims or any(int(s) < 1 for s in shape):
            raise AugPaintError(f"fakedata {fmt}: shape must have {' or '.join(map(str, ndims))} positive "
                                f"sizes, got {tuple(shape)}")


class _Grid:
    """Open (broadcastable) normalised coordinates of a 3D volume, in [-1, 1] per axis."""

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = tuple(int(s) for s in shape)
        axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) if n > 1 else np.zeros(1, np.float32)
                for n in self.shape]
        self.x = axes[0].reshape(-1, 1, 1)
        self.y = axes[1].reshape(1, -1, 1)
        self.z = axes[2].reshape(1, 1, -1)
        # One voxel in normalised units: radii are clamped to it so small structures never vanish.
        self.step = tuple(2.0 / (n - 1) if n > 1 else 2.0 for n in self.shape)

    def ellipsoid(self, center: tuple[float, float, float], radii: tuple[float, float, float],
                  angle: float = 0.0) -> np.ndarray:
        """Squared normalised distance to an ellipsoid rotated by `angle` in the x-y plane (<= 1 inside)."""
        rx, ry, rz = (max(float(r), s) for r, s in zip(radii, self.step))
        dx, dy = self.x - float(center[0]), self.y - float(center[1])
        if angle:
            c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
            dx, dy = dx * c + dy * s, dy * c - dx * s
        return (dx / rx) ** 2 + (dy / ry) ** 2 + ((self.z - float(center[2])) / rz) ** 2

    def crop(self, center: tuple[float, float, float], half: tuple[float, float, float],
             ) -> tuple[tuple[slice, slice, slice], _Grid]:
        """Index box around `center` +- `half` (normalised units) and the grid restricted to it."""
        sl = []
        for c, h, n, st in zip(center, half, self.shape, self.step):
            lo = int(np.floor((float(c) - float(h) + 1) / st)) - 1
            hi = int(np.ceil((float(c) + float(h) + 1) / st)) + 2
            sl.append(slice(min(max(lo, 0), n), min(max(hi, 0), n)))
        sub = object.__new__(_Grid)
        sub.x, sub.y, sub.z = self.x[sl[0]], self.y[:, sl[1]], self.z[..., sl[2]]
        sub.shape = (sub.x.shape[0], sub.y.shape[1], sub.z.shape[2])
        sub.step = self.step
        return tuple(sl), sub

    def smooth_field(self, rng: np.random.Generator, terms: int = 3, max_freq: float = 3.0) -> np.ndarray:
        """Cheap smooth random field (sum of separable cosines), roughly unit amplitude."""
        out = np.zeros((1, 1, 1), np.float32)
        for _ in range(terms):
            f = rng.uniform(0.5, max_freq, 3) * np.pi
            p = rng.uniform(0, 2 * np.pi, 3)
            out = out + (np.cos(self.x * np.float32(f[0]) + np.float32(p[0]))
                         * np.cos(self.y * np.float32(f[1]) + np.float32(p[1]))
                         * np.cos(self.z * np.float32(f[2]) + np.float32(p[2])))
        return out * np.float32(1.0 / np.sqrt(terms))


def _slab(nz: int) -> tuple[int, int]:
    """First and last slice (inclusive) that may hold foreground: at least one empty slice at each end."""
    margin = max(1, int(round(0.12 * nz)))
    lo, hi = margin, nz - 1 - margin
    return (lo, hi) if hi >= lo else (0, nz - 1)


def _affine(spacing: tuple[float, float, float], signs: tuple[int, int, int], shape: tuple[int, ...],
            origin_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Diagonal affine with per-axis flips, the volume centre near the world origin."""
    lin = np.diag([s * d for s, d in zip(signs, spacing)]).astype(np.float64)
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = -lin @ ((np.asarray(shape[:3], np.float64) - 1) / 2) + np.asarray(origin_shift)
    return aff


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine)
    # Scanner-derived files carry qform and sform code 1 (scanner anatomical), and mm units.
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec" if data.ndim == 4 else "unknown")
    nib.save(img, str(path))


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=4) + "\n")


def _apple_double(name: str) -> bytes:
    """A macOS AppleDouble resource file (``._name``) as found in tarballs made on a Mac: not NIfTI."""
    head = (b"\x00\x05\x16\x07" + b"\x00\x02\x00\x00" + b"Mac OS X        " + (2).to_bytes(2, "big")
            + (9).to_bytes(4, "big") + (50).to_bytes(4, "big") + (3760).to_bytes(4, "big")
            + (2).to_bytes(4, "big") + (3810).to_bytes(4, "big") + (286).to_bytes(4, "big"))
    body = b"\x00" * 32 + b"ATTR" + b"\x00" * 28 + b"com.apple.quarantine\x00" + b"0083;5b0f1c2e;Safari;" \
        + name.encode() + b"\x00"
    return (head + body).ljust(4096, b"\x00")


# ----------------------------------------------------------------------------------------------
# ACDC (cardiac cine MRI)
# ----------------------------------------------------------------------------------------------

_ACDC_INPLANE = ((48, 40), (40, 48), (44, 36), (48, 44), (40, 44), (44, 48))
_ACDC_XY_SPACING = (1.5625, 1.3672, 1.40625, 1.71875, 1.875)
_ACDC_CITATION = """# MANDATORY CITATION

Any use of the ACDC dataset must cite:

O. Bernard, A. Lalande, C. Zotti, F. Cervenansky, et al. "Deep Learning Techniques for Automatic MRI Cardiac
Multi-structures Segmentation and Diagnosis: Is the Problem Solved?" IEEE Transactions on Medical Imaging,
vol. 37, no. 11, pp. 2514-2525, Nov. 2018, doi: 10.1109/TMI.2018.2837502.

(Fake file written by augpaint_core.fakedata; it contains no real patient data.)
"""


def _acdc_patient(seed: int, case: int, shape: tuple[int, ...] | None, nb_frames: int | None) -> dict[str, Any]:
    """Geometry, metadata and the 4D cine (x, y, z, t) int16 plus ED/ES ground truth of one patient."""
    rng = _rng(seed, case)
    if shape is None:
        nx, ny = _ACDC_INPLANE[int(rng.integers(len(_ACDC_INPLANE)))]
        nz = int(rng.integers(6, 11))
    else:
        nx, ny, nz = (int(s) for s in shape[:3])
    nf = int(nb_frames) if nb_frames is not None else (int(shape[3]) if shape is not None and len(shape) == 4
                                                        else int(rng.integers(4, 7)))
    if nf < 2:
        raise AugPaintError(f"fakedata acdc: NbFrame must be >= 2 (ED and ES differ), got {nf}")
    ed = 1 if (rng.random() < 0.85 or nf < 3) else 2
    es = int(rng.integers(ed + 1, nf + 1))
    group = ACDC_GROUPS[int(rng.integers(len(ACDC_GROUPS)))]
    height = round(float(rng.uniform(150, 195)), 1)
    weight = round(float(rng.uniform(50, 110)), 1)
    spacing = (float(rng.choice(_ACDC_XY_SPACING)),) * 2 + (float(rng.choice([10.0, 10.0, 10.0, 5.0])),)

    # Pixel coordinates scaled so circles stay circles on non-square grids.
    half = min(nx, ny) / 2.0
    X = ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2) / half).reshape(-1, 1, 1)
    Y = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2) / half).reshape(1, -1, 1)
    lo, hi = _slab(nz)
    k = np.arange(nz, dtype=np.float32).reshape(1, 1, -1)
    frac = np.clip((k - lo) / max(1, hi - lo), 0, 1)  # base (0) to apex (1)
    in_heart = (k >= lo) & (k <= hi)

    body_c = rng.uniform(-0.08, 0.08, 2)
    body_r = rng.uniform(0.8, 0.95, 2)
    heart_c = body_c + rng.uniform(-0.15, 0.15, 2)
    lv_r0 = float(rng.uniform(0.18, 0.24)) * (1.25 if group == "DCM" else 1.0)
    myo_w0 = float(rng.uniform(0.09, 0.13)) * (1.5 if group == "HCM" else 1.0)
    rv_scale = float(rng.uniform(1.0, 1.2)) * (1.3 if group == "RV" else 1.0)
    contraction = {"NOR": 0.35, "HCM": 0.4, "RV": 0.3, "MINF": 0.15, "DCM": 0.1}[group]
    rv_angle = float(rng.uniform(0.7, 1.3) * np.pi)
    ecc = float(rng.uniform(0.85, 1.15))
    gain = float(rng.uniform(500, 900))
    body_int, lung_int, myo_int = float(rng.uniform(0.25, 0.4)), 0.04, float(rng.uniform(0.12, 0.2))
    lv_int, rv_int = float(rng.uniform(0.75, 0.95)), float(rng.uniform(0.65, 0.9))
    noise_sd = float(rng.uniform(0.015, 0.035))
    lung_dx = float(rng.uniform(0.4, 0.5))

    body = ((X - body_c[0]) / body_r[0]) ** 2 + ((Y - body_c[1]) / body_r[1]) ** 2 <= 1
    lungs = np.zeros_like(body)
    for side in (-1, 1):
        lungs |= ((X - body_c[0] - side * lung_dx) / 0.3) ** 2 + ((Y - body_c[1] + 0.1) / 0.45) ** 2 <= 1
    texture = 1 + 0.08 * _Grid((nx, ny, nz)).smooth_field(rng, terms=3, max_freq=4.0)
    static = np.where(body, body_int, 0.01).astype(np.float32) * texture
    static = np.where(lungs & body & ~(np.hypot(X - heart_c[0], Y - heart_c[1]) < 0.45), lung_int, static)

    d_lv = np.sqrt(((X - heart_c[0]) * ecc) ** 2 + ((Y - heart_c[1]) / ecc) ** 2)
    taper = 1.0 - 0.55 * frac
    frames, labels = [], {}
    for f in range(1, nf + 1):
        # Cyclic phase: 0 at ED, 1 at ES, back towards 0 at the end of the cycle.
        pos = (f - ed) % nf
        to_es = (es - ed) % nf
        phase = 0.5 * (1 - np.cos(np.pi * pos / to_es)) if pos <= to_es else \
            0.5 * (1 + np.cos(np.pi * (pos - to_es) / (nf - to_es)))
        lv_r = lv_r0 * (1 - contraction * phase) * taper
        myo_w = myo_w0 * (1 + 0.4 * contraction * phase) * (1 - 0.3 * frac)
        outer = lv_r + myo_w
        rcx = heart_c[0] + outer * 0.9 * np.cos(rv_angle)
        rcy = heart_c[1] + outer * 0.9 * np.sin(rv_angle)
        rv_r = outer * rv_scale * (1 - 0.3 * contraction * phase)
        lv = (d_lv <= lv_r) & in_heart
        myo = (d_lv > lv_r) & (d_lv <= outer) & in_heart
        rv = (np.hypot(X - rcx, Y - rcy) <= rv_r) & (d_lv > outer + 0.04) & in_heart & (frac <= 0.75)
        vol = np.where(rv, rv_int, np.where(myo, myo_int, np.where(lv, lv_int, static)))
        vol = ndimage.gaussian_filter(vol.astype(np.float32), (0.6, 0.6, 0))
        vol = vol + rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(noise_sd)
        frames.append(np.clip(vol * gain, 0, 32767).round().astype(np.int16))
        if f in (ed, es):
            lab = np.zeros((nx, ny, nz), np.uint8)
            lab[rv], lab[myo], lab[lv] = 1, 2, 3
            labels[f] = lab
    return {"shape": (nx, ny, nz), "nf": nf, "ed": ed, "es": es, "group": group, "height": height,
            "weight": weight, "spacing": spacing, "cine": np.stack(frames, axis=-1), "gt": labels}


def write_acdc(root: str | Path, *, num_cases: int = 8, seed: int = 0, shape: tuple[int, ...] | None = None,
               num_test: int | None = None, nb_frames: int | None = None) -> Path:
    """Write a fake ACDC download (cardiac cine MRI, RV/MYO/LV at ED and ES).

    Args:
        root: parent folder; the dataset goes to ``root/ACDC/database``.
        num_cases: number of patients (``patient001`` ...); about 3/4 go to ``training/``, the rest,
            numbered on, to ``testing/``.
        seed: dataset seed.
        shape: ``(x, y, z)`` or ``(x, y, z, NbFrame)`` for every patient; default varies per patient
            (non-square in-plane 36-48 px, 6-10 slices, 4-6 frames).
        num_test: patients in ``testing/``; default ``num_cases - round(0.75 * num_cases)``, >= 1 when
            ``num_cases >= 2``.
        nb_frames: frames per cine (NbFrame) for every patient; overrides ``shape[3]``.

    Returns:
        ``root/ACDC/database``.
    """
    _check_common(num_cases, shape, (3, 4), "acdc")
    n = int(num_cases)
    n_test = int(num_test) if num_test is not None else n - max(1, min(n - 1, round(0.75 * n)))
    if not 0 <= n_test < n:
        raise AugPaintError(f"fakedata acdc: num_test must be in [0, {n - 1}], got {num_test}")
    db = Path(root) / "ACDC" / "database"
    for i in range(n):
        split = "training" if i < n - n_test else "testing"
        name = f"patient{i + 1:03d}"
        pdir = db / split / name
        pdir.mkdir(parents=True, exist_ok=True)
        p = _acdc_patient(seed, i, shape, nb_frames)
        (pdir / "Info.cfg").write_text(
            f"ED: {p['ed']}\nES: {p['es']}\nGroup: {p['group']}\nHeight: {p['height']}\n"
            f"NbFrame: {p['nf']}\nWeight: {p['weight']}\n")
        (pdir / "MANDATORY_CITATION.md").write_text(_ACDC_CITATION)
        # Short-axis stacks from the scanner are not RAS: a flipped first axis (LAS) makes reorientation matter.
        aff = _affine(p["spacing"], (-1, 1, 1), p["shape"], origin_shift=(10.0, -40.0, 25.0))
        _save_nifti(p["cine"], aff, pdir / f"{name}_4d.nii.gz")
        for fr in (p["ed"], p["es"]):
            _save_nifti(np.ascontiguousarray(p["cine"][..., fr - 1]), aff, pdir / f"{name}_frame{fr:02d}.nii.gz")
            _save_nifti(p["gt"][fr], aff, pdir / f"{name}_frame{fr:02d}_gt.nii.gz")
    return db


# ----------------------------------------------------------------------------------------------
# MSD Task01 BrainTumour (BraTS 2016/2017)
# ----------------------------------------------------------------------------------------------

# Per-modality intensities of (brain, CSF, edema, enhancing rim, necrotic/non-enhancing core).
_BRATS_CONTRAST = {
    "FLAIR": (300.0, 80.0, 650.0, 450.0, 250.0),
    "T1w": (500.0, 150.0, 380.0, 420.0, 250.0),
    "t1gd": (500.0, 150.0, 420.0, 1100.0, 200.0),
    "T2w": (350.0, 1200.0, 800.0, 600.0, 1000.0),
}


def _brats_case(seed: int, case: int, shape3: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One skull-stripped 4-channel brain with a nested tumour: image (x, y, z, 4) float32, label uint8."""
    rng = _rng(seed, case)
    g = _Grid(shape3)
    brain_r = (float(rng.uniform(0.72, 0.8)), float(rng.uniform(0.8, 0.88)), float(rng.uniform(0.72, 0.8)))
    tex = g.smooth_field(rng, terms=3, max_freq=5.0)
    brain = g.ellipsoid((0.0, float(rng.uniform(-0.04, 0.04)), 0.0), brain_r) + np.float32(0.04) * tex <= 1
    lab = np.zeros(shape3, np.uint8)
    csf = np.zeros(shape3, bool)
    for side in (-1, 1):  # lateral ventricles
        sl, sub = g.crop((side * 0.1, 0.0, 0.05), (0.26, 0.26, 0.15))
        csf[sl] |= sub.ellipsoid((side * 0.1, 0.0, 0.05), (0.06, 0.25, 0.14), angle=side * 0.2) <= 1

    # Tumour in one hemisphere, within the brain and away from the first and last slices. Only its
    # bounding box is computed: full-volume passes dominate the cost at BraTS size.
    side = 1 if rng.random() < 0.5 else -1
    c = (side * float(rng.uniform(0.2, 0.35)), float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.2, 0.2)))
    r_ed = float(rng.uniform(0.22, 0.3))
    r_core = r_ed * float(rng.uniform(0.55, 0.7))
    r_nec = r_core * float(rng.uniform(0.45, 0.6))
    # |irregular| <= sqrt(2), so the edema edge stays within sqrt(1 + 0.25 * sqrt(2)) ~ 1.16 radii.
    sl, sub = g.crop(c, (1.2 * r_ed, 1.3 * r_ed, 1.2 * r_ed))
    irregular = sub.smooth_field(rng, terms=2, max_freq=6.0)
    in_brain = brain[sl]
    edema = (sub.ellipsoid(c, (r_ed, r_ed * 1.1, r_ed)) + np.float32(0.25) * irregular <= 1) & in_brain
    core = (sub.ellipsoid(c, (r_core, r_core, r_core)) + np.float32(0.15) * irregular <= 1) & in_brain
    nec = sub.ellipsoid(c, (r_nec, r_nec, r_nec)) <= 1
    box = lab[sl]
    box[edema] = 1
    box[core] = 3
    box[nec & core] = 2
    z_lo, z_hi = _slab(shape3[2])
    lab[..., :z_lo] = 0
    lab[..., z_hi + 1:] = 0

    # Fortran order: each channel is contiguous and nibabel writes it without a transposed copy.
    img = np.empty((*shape3, 4), np.float32, order="F")
    shading = (1 + np.float32(0.1) * tex) * brain  # also zeroes everything outside the brain
    csf_idx = np.flatnonzero(csf & (lab == 0))
    # One noise draw shared by the channels at different offsets: a quarter of the cost, same look.
    n = lab.size
    noise = rng.standard_normal(n + 3 * 7919, dtype=np.float32)
    for ch, name in enumerate(BRATS_MODALITIES.values()):
        base, v_csf, v_ed, v_enh, v_nec = (v * float(rng.uniform(0.85, 1.15)) for v in _BRATS_CONTRAST[name])
        vol = noise[ch * 7919:ch * 7919 + n].reshape(shape3) * np.float32(0.04 * base)
        vol += np.float32(base)
        # Labels and ventricles only live in small regions: add their contrast there, not over the volume.
        vol[sl] += np.array([0.0, v_ed - base, v_nec - base, v_enh - base], np.float32)[box]
        vol.ravel()[csf_idx] += np.float32(v_csf - base)
        vol *= shading
        # Real MSD BraTS stores integer-valued float32 with exact zeros outside the skull-stripped brain.
        np.rint(vol, out=vol)
        img[..., ch] = vol
    return img, lab


def write_msd_brats(root: str | Path, *, num_cases: int = 8, seed: int = 0, shape: tuple[int, ...] | None = None,
                    num_test: int = 2, apple_double: int = 2) -> Path:
    """Write a fake Medical Segmentation Decathlon Task01_BrainTumour.

    Args:
        root: parent folder; the task goes to ``root/Task01_BrainTumour``.
        num_cases: labeled training cases ``BRATS_001`` ... in ``imagesTr``/``labelsTr``.
        seed: dataset seed.
        shape: ``(x, y, z, 4)`` or ``(x, y, z)``; default ``(40, 40, 12, 4)`` (real: 240x240x155x4).
        num_test: unlabeled cases in ``imagesTs`` (numbered after the training cases).
        apple_double: how many cases get macOS ``._BRATS_NNN.nii.gz`` junk files next to them, as in the
            real tarball (not NIfTI; adapters must skip them).

    Returns:
        ``root/Task01_BrainTumour``.
    """
    _check_common(num_cases, shape, (3, 4), "msd_brats")
    if shape is not None and len(shape) == 4 and int(shape[3]) != 4:
        raise AugPaintError(f"fakedata msd_brats: BraTS has 4 modalities, shape[3] must be 4, got {shape[3]}")
    shape3 = tuple(int(s) for s in (shape or (40, 40, 12))[:3])
    task = Path(root) / "Task01_BrainTumour"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True, exist_ok=True)
    n, n_test = int(num_cases), int(num_test)
    # BraTS files come from ITK (LPS); 1 mm isotropic.
    aff = _affine((1.0, 1.0, 1.0), (-1, -1, 1), shape3)
    training = []
    for i in range(n):
        name = f"BRATS_{i + 1:03d}.nii.gz"
        img, lab = _brats_case(seed, i, shape3)
        _save_nifti(img, aff, task / "imagesTr" / name)
        _save_nifti(lab, aff, task / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        if i < apple_double:
            for sub in ("imagesTr", "labelsTr"):
                (task / sub / f"._{name}").write_bytes(_apple_double(name))
    test = []
    for j in range(n_test):
        name = f"BRATS_{n + j + 1:03d}.nii.gz"
        img, _ = _brats_case(seed, n + j, shape3)
        _save_nifti(img, aff, task / "imagesTs" / name)
        test.append(f"./imagesTs/{name}")
        if j == 0 and apple_double > 0:
            (task / "imagesTs" / f"._{name}").write_bytes(_apple_double(name))
    _write_json(task / "dataset.json", {
        "name": "BRATS",
        "description": "Gliomas segmentation tumour and oedema in on brain images",
        "reference": "https://www.med.upenn.edu/sbia/brats2017.html",
        "licence": "CC-BY-SA 4.0",
        "release": "2.0 04/05/2018",
        "tensorImageSize": "4D",
        "modality": dict(BRATS_MODALITIES),
        "labels": dict(BRATS_LABELS),
        "numTraining": n,
        "numTest": n_test,
        "training": training,
        "test": test,
    })
    return task


# ----------------------------------------------------------------------------------------------
# Synapse multi-organ (BTCV abdomen CT)
# ----------------------------------------------------------------------------------------------

# Array axes under the LPS affine: x grows to the patient's left, y to posterior, z to superior.
# (label, centre x, centre y, radius x, radius y, slab fraction from, to, HU, in-plane angle, probability)
_BTCV_ORGANS = (
    (6, -0.42, -0.05, 0.38, 0.48, 0.35, 1.00, 60.0, 0.3, 1.0),  # liver, patient's right, upper abdomen
    (1, 0.60, 0.30, 0.14, 0.22, 0.45, 0.95, 50.0, -0.5, 1.0),  # spleen, left posterior
    (7, 0.35, -0.28, 0.24, 0.18, 0.50, 1.00, 25.0, 0.4, 1.0),  # stomach, left anterior
    (2, -0.40, 0.42, 0.13, 0.17, 0.00, 0.60, 160.0, -0.3, 1.0),  # right kidney
    (3, 0.40, 0.42, 0.13, 0.17, 0.05, 0.65, 160.0, 0.3, 1.0),  # left kidney
    (11, 0.12, 0.12, 0.32, 0.07, 0.35, 0.60, 45.0, -0.25, 1.0),  # pancreas
    (4, -0.30, -0.38, 0.08, 0.10, 0.35, 0.55, 10.0, 0.0, 0.8),  # gallbladder (absent after cholecystectomy)
    (10, -0.10, 0.10, 0.05, 0.05, 0.45, 0.65, 150.0, 0.0, 0.9),  # portal / splenic vein
    (8, 0.08, 0.32, 0.06, 0.06, 0.00, 1.00, 200.0, 0.0, 1.0),  # aorta
    (9, -0.14, 0.28, 0.07, 0.06, 0.00, 0.90, 130.0, 0.0, 1.0),  # inferior vena cava
    (5, 0.05, 0.22, 0.04, 0.04, 0.85, 1.00, 40.0, 0.0, 0.9),  # esophagus, above the hiatus
    (12, -0.26, 0.33, 0.05, 0.04, 0.60, 0.75, 30.0, 0.0, 0.8),  # right adrenal
    (13, 0.26, 0.33, 0.05, 0.04, 0.60, 0.75, 30.0, 0.0, 0.8),  # left adrenal
)


def _synapse_case(seed: int, case: int, shape: tuple[int, ...] | None,
                  ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One abdominal CT: image int16 HU, label uint8 (BTCV 0..13), spacing."""
    rng = _rng(seed, case)
    if shape is None:
        nxy = int(rng.choice([44, 48]))
        shape3 = (nxy, nxy, int(rng.integers(8, 11)))
    else:
        shape3 = tuple(int(s) for s in shape)
    sxy = round(float(rng.uniform(0.6, 0.95)), 4)
    spacing = (sxy, sxy, float(rng.choice([2.5, 3.0, 3.0, 5.0])))
    g = _Grid(shape3)
    nz = shape3[2]
    z_lo, z_hi = _slab(nz)
    # Slab fraction per slice: 0 at the lowest labeled slice, 1 at the highest.
    wz = ((np.arange(nz, dtype=np.float32) - z_lo + 0.5) / max(1, z_hi - z_lo + 1)).reshape(1, 1, -1)
    wz_step = 1.0 / max(1, z_hi - z_lo + 1)

    body_r = (float(rng.uniform(0.86, 0.95)), float(rng.uniform(0.66, 0.76)))
    body_d = (g.x / body_r[0]) ** 2 + (g.y / body_r[1]) ** 2 + 0 * g.z
    body = body_d <= 1
    fat_layer = body & (body_d > float(rng.uniform(0.7, 0.8)))
    hu = np.where(body, np.float32(45), np.float32(-1000))
    hu = np.where(fat_layer, -100.0, hu)
    upper = wz > 0.8  # lung bases in the top slices
    for side in (-1, 1):
        lung = ((g.x - side * 0.5) / 0.3) ** 2 + ((g.y - 0.25) / 0.35) ** 2 <= 1
        hu = np.where(lung & upper & body & ~fat_layer, -850.0, hu)
    lab = np.zeros(shape3, np.uint8)
    jit = 0.03
    for (lv, cx, cy, rx, ry, z0, z1, val, ang, prob) in _BTCV_ORGANS:
        present = rng.random() < prob
        dx, dy = rng.normal(0, jit, 2)
        scale = float(rng.uniform(0.85, 1.15))
        if not present:
            continue
        zc, rz = (z0 + z1) / 2, max((z1 - z0) / 2, wz_step)
        ux, uy = g.x - float(cx + dx), g.y - float(cy + dy)
        ca, sa = np.float32(np.cos(ang)), np.float32(np.sin(ang))
        rxv, ryv = max(rx * scale, g.step[0]), max(ry * scale, g.step[1])
        d = ((ux * ca + uy * sa) / rxv) ** 2 + ((uy * ca - ux * sa) / ryv) ** 2 + ((wz - zc) / rz) ** 2
        organ = (d <= 1) & body
        lab[organ] = lv
        hu = np.where(organ, val * float(rng.uniform(0.85, 1.15)), hu)
    spine_d = (g.x / 0.13) ** 2 + ((g.y - 0.55) / 0.12) ** 2 + 0 * g.z
    hu = np.where(spine_d <= 1, np.where(spine_d > 0.55, 700.0, 350.0), hu)
    lab[..., :z_lo] = 0
    lab[..., z_hi + 1:] = 0
    hu = hu * (1 + 0.03 * g.smooth_field(rng, terms=2, max_freq=4.0))
    hu = hu + rng.standard_normal(shape3, dtype=np.float32) * np.float32(rng.uniform(8, 15))
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), lab, spacing


def _synapse_train_ids(n: int) -> list[int]:
    """Real BTCV training ids are 1-10 then 21-40; continue past 40 for larger fakes."""
    return [i + 1 if i < 10 else i + 11 for i in range(n)]


def write_synapse(root: str | Path, *, num_cases: int = 8, seed: int = 0, shape: tuple[int, ...] | None = None,
                  num_test: int = 2) -> Path:
    """Write a fake Synapse multi-organ (BTCV abdomen) RawData folder.

    Args:
        root: parent folder; the dataset goes to ``root/RawData``.
        num_cases: labeled training CTs ``Training/img/imgNNNN.nii.gz`` (ids 1-10, then 21, 22, ...) with
            ``Training/label/labelNNNN.nii.gz`` (uint8, :data:`BTCV_LABELS`).
        seed: dataset seed.
        shape: ``(x, y, z)`` for every case; default square 44-48 px in-plane, 8-10 slices.
        num_test: unlabeled CTs ``Testing/img/imgNNNN.nii.gz`` (ids from 61, like the real test set).

    Returns:
        ``root/RawData``.
    """
    _check_common(num_cases, shape, (3,), "synapse")
    raw = Path(root) / "RawData"
    for sub in ("Training/img", "Training/label", "Testing/img"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    train_ids = _synapse_train_ids(int(num_cases))
    first_test = max(61, train_ids[-1] + 1)
    cases = [(i, "Training", cid) for i, cid in enumerate(train_ids)]
    cases += [(len(train_ids) + j, "Testing", first_test + j) for j in range(int(num_test))]
    for idx, split, cid in cases:
        img, lab, spacing = _synapse_case(seed, idx, shape)
        # Real BTCV headers have a negative-diagonal (LPS-like) affine.
        aff = _affine(spacing, (-1, -1, 1), img.shape, origin_shift=(0.0, 0.0, -150.0))
        _save_nifti(img, aff, raw / split / "img" / f"img{cid:04d}.nii.gz")
        if split == "Training":
            _save_nifti(lab, aff, raw / split / "label" / f"label{cid:04d}.nii.gz")
    return raw


# ----------------------------------------------------------------------------------------------
# 2D RGB lesions (ISIC 2018 Task 1, nnU-Net natural-image PNG)
# ----------------------------------------------------------------------------------------------


def _lesion_image(rng: np.random.Generator, hw: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """A dermoscopy-like RGB image (h, w, 3) uint8 and its one-blob lesion mask (h, w) bool."""
    if hw is None:
        h, w = int(rng.integers(48, 65)), int(rng.integers(60, 81))
        if rng.random() < 0.25:
            h, w = w, h
        if h == w:
            w += 4
    else:
        h, w = int(hw[0]), int(hw[1])
    yy = np.arange(h, dtype=np.float32).reshape(-1, 1)
    xx = np.arange(w, dtype=np.float32).reshape(1, -1)
    s = min(h, w) / 2.0
    cy, cx = h / 2 + float(rng.uniform(-0.2, 0.2)) * s, w / 2 + float(rng.uniform(-0.2, 0.2)) * s
    r0 = max(3.0, float(rng.uniform(0.3, 0.55)) * s)
    ang = float(rng.uniform(0, np.pi))
    stretch = float(rng.uniform(0.75, 1.0))
    dy, dx = yy - cy, xx - cx
    u = dx * np.float32(np.cos(ang)) + dy * np.float32(np.sin(ang))
    v = dy * np.float32(np.cos(ang)) - dx * np.float32(np.sin(ang))
    rad = np.sqrt(u ** 2 + (v / stretch) ** 2)
    theta = np.arctan2(v, u)
    border = np.ones_like(theta)
    for k in range(2, 6):  # irregular border
        border += np.float32(rng.uniform(0, 0.08)) * np.cos(k * theta + np.float32(rng.uniform(0, 2 * np.pi)))
    inside = rad / (r0 * border)
    mask = inside <= 1
    mask[int(round(min(max(cy, 0), h - 1))), int(round(min(max(cx, 0), w - 1)))] = True

    skin = np.array([rng.uniform(190, 235), rng.uniform(140, 185), rng.uniform(120, 165)], np.float32)
    lesion = np.array([rng.uniform(90, 160), rng.uniform(50, 100), rng.uniform(35, 80)], np.float32)
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)
    core = np.clip(1 - inside, 0, 1)[..., None]  # darker towards the centre
    rgb = skin * (1 - alpha[..., None]) + (lesion * (1 - 0.3 * core)) * alpha[..., None]
    rgb = rgb + ndimage.gaussian_filter(rng.standard_normal((h, w, 3)).astype(np.float32), (2, 2, 0)) * 12
    if rng.random() < 0.4:  # dermatoscope vignette: dark corners
        rr = np.sqrt(((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2)
        rgb = rgb * np.clip(1.6 - rr, 0.05, 1)[..., None]
    rgb = rgb + rng.standard_normal((h, w, 3)).astype(np.float32) * 3
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), mask


_ISIC_ATTRIBUTION = ("Fake images written by augpaint_core.fakedata for tests; no real lesion images.\n"
                     "Real ISIC 2018 data: ISIC Archive, https://challenge.isic-archive.com (Codella et al. 2018, "
                     "Tschandl et al. 2018).\n")
_ISIC_LICENSE = ("Creative Commons Attribution-NonCommercial 4.0 International (CC BY-NC 4.0)\n"
                 "https://creativecommons.org/licenses/by-nc/4.0/\n")


def write_isic(root: str | Path, *, num_cases: int = 8, seed: int = 0, shape: tuple[int, ...] | None = None,
               num_val: int | None = None) -> Path:
    """Write fake ISIC 2018 Task 1 folders (dermoscopy JPEGs and 0/255 lesion masks).

    Args:
        root: folder to hold ``ISIC2018_Task1-2_Training_Input``, ``ISIC2018_Task1_Training_GroundTruth``,
            ``ISIC2018_Task1-2_Validation_Input`` and ``ISIC2018_Task1_Validation_GroundTruth``.
        num_cases: training images.
        seed: dataset seed.
        shape: ``(height, width)`` for every image; default varies per image (non-square, 48-80 px).
        num_val: validation images (other ids); default ``max(2, round(num_cases / 4))``.

    Returns:
        ``root`` itself.
    """
    _check_common(num_cases, shape, (2,), "isic")
    root = Path(root)
    n = int(num_cases)
    n_val = int(num_val) if num_val is not None else max(2, round(n / 4))
    ids = _rng(seed, _DATASET_STREAM).choice(max(16073, 4 * (n + n_val)), n + n_val, replace=False)
    splits = [("Training", sorted(int(i) for i in ids[:n]), 0), ("Validation", sorted(int(i) for i in ids[n:]), n)]
    for split, split_ids, offset in splits:
        inp = root / f"ISIC2018_Task1-2_{split}_Input"
        gt = root / f"ISIC2018_Task1_{split}_GroundTruth"
        for d in (inp, gt):
            d.mkdir(parents=True, exist_ok=True)
            (d / "ATTRIBUTION.txt").write_text(_ISIC_ATTRIBUTION + "".join(
                f"ISIC_{i:07d}: Anonymous\n" for i in split_ids))
            (d / "LICENSE.txt").write_text(_ISIC_LICENSE)
        for k, iid in enumerate(split_ids):
            rgb, mask = _lesion_image(_rng(seed, offset + k), shape)
            Image.fromarray(rgb, "RGB").save(inp / f"ISIC_{iid:07d}.jpg", quality=92)
            Image.fromarray(mask.astype(np.uint8) * 255, "L").save(gt / f"ISIC_{iid:07d}_segmentation.png")
    return root


def write_nnunet_png(root: str | Path, *, num_cases: int = 8, seed: int = 0, shape: tuple[int, ...] | None = None,
                     num_test: int = 1) -> Path:
    """Write a fake 2D natural-image nnU-Net v2 raw dataset (NaturalImage2DIO: one RGB PNG per case).

    Args:
        root: parent folder; the dataset goes to ``root/Dataset043_FakePNG``.
        num_cases: training cases ``fake_001`` ...: ``imagesTr/{case}_0000.png`` (RGB, the three channels
            in one file) and ``labelsTr/{case}.png`` (mode L, values 0/1).
        seed: dataset seed.
        shape: ``(height, width)`` for every case; default varies per case.
        num_test: unlabeled cases in ``imagesTs`` (numbered after the training cases).

    Returns:
        ``root/Dataset043_FakePNG``.
    """
    _check_common(num_cases, shape, (2,), "nnunet_png")
    ds = Path(root) / "Dataset043_FakePNG"
    n = int(num_cases)
    for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if num_test else ()):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n + int(num_test)):
        case = f"fake_{i + 1:03d}"
        rgb, mask = _lesion_image(_rng(seed, i), shape)
        split = "Tr" if i < n else "Ts"
        Image.fromarray(rgb, "RGB").save(ds / f"images{split}" / f"{case}_0000.png")
        if i < n:
            Image.fromarray(mask.astype(np.uint8), "L").save(ds / "labelsTr" / f"{case}.png")
    _write_json(ds / "dataset.json", {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": n,
        "file_ending": ".png",
        "name": "FakePNG",
    })
    return ds


# ----------------------------------------------------------------------------------------------
# nnU-Net v2 raw (NIfTI, multi-channel)
# ----------------------------------------------------------------------------------------------


def _nnunet_case(seed: int, case: int, shape: tuple[int, ...] | None, n_channels: int,
                 label_values: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """One prostate-like multi-channel volume: per-channel float32 images and a uint8 label."""
    rng = _rng(seed, case)
    shape3 = tuple(int(s) for s in shape) if shape is not None else (48, 40, 8 + int(rng.integers(-1, 2)))
    g = _Grid(shape3)
    body = g.ellipsoid((0.0, 0.0, 0.0), (float(rng.uniform(0.85, 0.95)), float(rng.uniform(0.8, 0.9)), 10.0)) <= 1
    c = (float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.05, 0.1)), float(rng.uniform(-0.1, 0.1)))
    lab = np.zeros(shape3, np.uint8)
    k = len(label_values)
    # Each later class is smaller and shifted anteriorly, so with PZ/TZ the PZ becomes a posterior crescent.
    for j, value in enumerate(label_values):
        shrink = 1 - 0.5 * j / max(1, k)
        r = (0.38 * shrink * float(rng.uniform(0.9, 1.1)), 0.3 * shrink * float(rng.uniform(0.9, 1.1)),
             0.6 * shrink)
        cj = (c[0], c[1] - 0.12 * j, c[2])
        lab[g.ellipsoid(cj, r, angle=float(rng.uniform(-0.2, 0.2))) <= 1] = value
    z_lo, z_hi = _slab(shape3[2])
    lab[..., :z_lo] = 0
    lab[..., z_hi + 1:] = 0
    tex = g.smooth_field(rng, terms=3, max_freq=4.0)
    images = []
    for _ in range(n_channels):
        base = float(rng.uniform(200, 400))
        vol = np.where(body, base, 0.05 * base).astype(np.float32)
        for value in label_values:
            vol = np.where(lab == value, base * float(rng.uniform(0.4, 1.8)), vol)
        vol = vol * (1 + 0.1 * tex) + rng.standard_normal(shape3, dtype=np.float32) * np.float32(0.04 * base)
        images.append(np.maximum(vol, 0).astype(np.float32))
    return images, lab


def write_nnunet(root: str | Path, *, num_cases: int = 8, seed: int = 0, shape: tuple[int, ...] | None = None,
                 num_test: int = 1, channel_names: dict[str, str] | None = None,
                 labels: dict[str, int] | None = None) -> Path:
    """Write a fake nnU-Net v2 raw dataset (NIfTI, one 3D file per channel, prostate-like by default).

    Args:
        root: parent folder; the dataset goes to ``root/Dataset042_Fake``.
        num_cases: training cases ``fake_001`` ...: ``imagesTr/{case}_{XXXX}.nii.gz``, ``labelsTr/{case}.nii.gz``.
        seed: dataset seed.
        shape: ``(x, y, z)`` for every case; default ``(48, 40, 7-9)``. Spacing is (0.6, 0.6, 3.6) mm.
        num_test: unlabeled cases in ``imagesTs`` (numbered after the training cases).
        channel_names: ``dataset.json`` channel_names; default ``{"0": "T2", "1": "ADC"}``.
        labels: ``dataset.json`` labels (name -> int, with background 0); default
            ``{"background": 0, "PZ": 1, "TZ": 2}``.

    Returns:
        ``root/Dataset042_Fake``.
    """
    _check_common(num_cases, shape, (3,), "nnunet")
    channel_names = dict(channel_names or {"0": "T2", "1": "ADC"})
    labels = dict(labels or {"background": 0, "PZ": 1, "TZ": 2})
    if sorted(int(k) for k in channel_names) != list(range(len(channel_names))):
        raise AugPaintError(f"fakedata nnunet: channel_names keys must be '0'..'{len(channel_names) - 1}', "
                            f"got {sorted(channel_names)}")
    values = sorted(int(v) for v in labels.values())
    if values[:1] != [0] or any(v > 255 for v in values):
        raise AugPaintError(f"fakedata nnunet: labels need background 0 and uint8 values, got {labels}")
    fg = [v for v in values if v != 0]
    ds = Path(root) / "Dataset042_Fake"
    n = int(num_cases)
    for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if num_test else ()):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    spacing = (0.6, 0.6, 3.6)
    for i in range(n + int(num_test)):
        case = f"fake_{i + 1:03d}"
        images, lab = _nnunet_case(seed, i, shape, len(channel_names), fg)
        aff = _affine(spacing, (-1, -1, 1), lab.shape)
        split = "Tr" if i < n else "Ts"
        for ch, vol in enumerate(images):
            _save_nifti(vol, aff, ds / f"images{split}" / f"{case}_{ch:04d}.nii.gz")
        if i < n:
            _save_nifti(lab, aff, ds / "labelsTr" / f"{case}.nii.gz")
    _write_json(ds / "dataset.json", {
        "channel_names": channel_names,
        "labels": labels,
        "numTraining": n,
        "file_ending": ".nii.gz",
        "name": "Fake",
    })
    return ds


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------

_WRITERS = {
    "acdc": write_acdc,
    "msd_brats": write_msd_brats,
    "synapse": write_synapse,
    "isic": write_isic,
    "nnunet": write_nnunet,
    "nnunet_png": write_nnunet_png,
}


def write_fake_dataset(fmt: str, root: str | Path, *, num_cases: int = 8, seed: int = 0,
                       shape: tuple[int, ...] | None = None, **kw: Any) -> Path:
    """Write a fake dataset of format `fmt` under `root`.

    Args:
        fmt: one of :data:`FORMATS`.
        root: parent folder (created if missing).
        num_cases: labeled training cases (ISIC: training images).
        seed: dataset seed; case ``i`` uses ``np.random.default_rng([seed, i])``.
        shape: overrides the volume/image shape (see the per-format writer).
        kw: format-specific options (e.g. ``num_test``, ``channel_names``, ``labels``).

    Returns:
        The folder a user would pass to ``augpaint preprocess --in``.

    Raises:
        AugPaintError: unknown `fmt`, or bad `num_cases`/`shape`.
    """
    writer = _WRITERS.get(fmt)
    if writer is None:
        raise AugPaintError(f"fakedata: unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return writer(root, num_cases=num_cases, seed=seed, shape=shape, **kw)
