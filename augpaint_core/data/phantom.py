"""Built-in cardiac-MRI-like phantom, written in nnU-Net v2 raw format.

Each "patient" is a short-axis stack: a textured body with lungs, a spine and
bright fat blobs (distractors), and three labeled structures that shrink from
base to apex: 1 RV (a crescent), 2 MYO (a dark ring) and 3 LV (a bright pool).
Position, size, orientation, intensities, texture and noise vary per patient, so
a segmenter that saw one or two patients does not generalise for free.

With ``vessels`` > 0 each patient also gets up to that many great-vessel cross-sections
(aorta, pulmonary artery): bright blood pools with a dark wall, like the LV and its
myocardium, at patient-specific places outside the heart, labeled background. In the
original phantom nearly all patient-to-patient variation sits inside the labeled
structures; these hard negatives vary in the background, as real anatomy does.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

CLASS_NAMES = ["RV", "MYO", "LV"]
SPACING = (1.5, 1.5, 8.0)  # in-plane mm, slice thickness mm: slicing axis is z (coarsest)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    return n / (n.std() + 1e-8)


def make_patient(seed: int, case: int, size: int = 96, slices: int = 10, vessels: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One phantom volume.

    Args:
        seed: dataset seed.
        case: patient index; (seed, case) fixes everything.
        size: in-plane size in pixels.
        slices: number of short-axis slices.
        vessels: at most this many great vessels per patient (0: the original phantom, unchanged).

    Returns:
        image (size, size, slices) float32 in MRI-like units, label (size, size, slices) uint8.
    """
    rng = np.random.default_rng([seed, case])
    s = size / 96.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((size, size, slices), np.float32)
    lab = np.zeros((size, size, slices), np.uint8)

    # Patient-level appearance.
    body_c = np.array([size / 2, size / 2]) + rng.uniform(-6, 6, 2) * s
    body_r = np.array([rng.uniform(36, 44), rng.uniform(40, 46)]) * s
    body_int = rng.uniform(0.25, 0.5)
    tex_sigma = rng.uniform(1.0, 4.0) * s
    tex_amp = rng.uniform(0.04, 0.14)
    noise_sd = rng.uniform(0.02, 0.06)
    gain = rng.uniform(400, 1200)
    lv_int, rv_int = rng.uniform(0.65, 0.95), rng.uniform(0.55, 0.9)
    myo_int = rng.uniform(0.08, 0.22)
    heart_c = body_c + rng.uniform(-10, 10, 2) * s
    rv_angle = rng.uniform(0.6, 1.6) * np.pi  # RV side varies
    lv_r0 = rng.uniform(7, 11) * s
    myo_w = rng.uniform(2.5, 4.5) * s
    ecc = rng.uniform(0.8, 1.2)
    n_blobs = rng.integers(1, 4)
    blobs = [(body_c + rng.uniform(-28, 28, 2) * s, rng.uniform(3, 7) * s, rng.uniform(0.6, 0.95))
             for _ in range(n_blobs)]
    lung_dx = rng.uniform(18, 24) * s
    bias = _smooth_noise(rng, size, 20 * s) * rng.uniform(0.05, 0.2)
    first, last = int(rng.integers(0, 2)), slices - int(rng.integers(1, 3))  # slices with heart
    # Vessels draw from their own stream, so vessels=0 leaves every other draw (and the volume) as before.
    vrng = np.random.default_rng([seed, case, 1])
    vessel_list = []
    for _ in range(int(vrng.integers(1, vessels + 1)) if vessels else 0):
        ang, dist = vrng.uniform(0, 2 * np.pi), vrng.uniform(1.9, 2.6) * (lv_r0 + myo_w)
        r = vrng.uniform(0.45, 0.8) * lv_r0
        z0, z1 = int(vrng.integers(0, max(1, slices // 2))), int(vrng.integers(slices // 2, slices + 1))
        vessel_list.append((heart_c + dist * np.array([np.sin(ang), np.cos(ang)]), r, vrng.uniform(0.6, 0.95),
                            vrng.uniform(1.0, 1.6) * s, z0, z1))

    for z in range(slices):
        body = ((yy - body_c[0]) / body_r[0]) ** 2 + ((xx - body_c[1]) / body_r[1]) ** 2 <= 1
        sl = np.where(body, body_int, 0.02).astype(np.float32)
        sl += body * tex_amp * _smooth_noise(rng, size, tex_sigma)
        for side in (-1, 1):  # dark lungs
            lc = body_c + np.array([-4 * s, side * lung_dx])
            lung = ((yy - lc[0]) / (20 * s)) ** 2 + ((xx - lc[1]) / (11 * s)) ** 2 <= 1
            sl[lung & body] = 0.05
        spine = (yy - (body_c[0] + 30 * s)) ** 2 + (xx - body_c[1]) ** 2 <= (5 * s) ** 2
        sl[spine] = 0.8
        for c, r, v in blobs:  # bright fat: looks like blood pool
            sl[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r * r] = v
        for c, r, v, wall, z0, z1 in vessel_list:  # great vessels: a blood pool in a dark wall, not labeled
            if z0 <= z < z1:
                d2 = (yy - c[0]) ** 2 + (xx - c[1]) ** 2
                sl[(d2 <= (r + wall) ** 2) & body] = myo_int
                sl[(d2 <= r * r) & body] = v
        if first <= z < last:
            frac = (z - first) / max(1, last - first)
            lv_r = lv_r0 * (1.0 - 0.55 * frac)
            c = heart_c + np.array([frac * 3 * s, 0])
            d = np.sqrt(((yy - c[0]) * ecc) ** 2 + ((xx - c[1]) / ecc) ** 2)
            lv = d <= lv_r
            myo = (d > lv_r) & (d <= lv_r + myo_w)
            rc = c + (lv_r + myo_w) * 0.9 * np.array([np.sin(rv_angle), np.cos(rv_angle)])
            rv_r = (lv_r + myo_w) * rng.uniform(1.0, 1.25)
            rv = (np.sqrt((yy - rc[0]) ** 2 + (xx - rc[1]) ** 2) <= rv_r) & (d > lv_r + myo_w + 1.0 * s)
            if frac > 0.7:  # the RV ends before the apex
                rv[:] = False
            sl[rv], sl[myo], sl[lv] = rv_int, myo_int, lv_int
            lab[..., z][rv], lab[..., z][myo], lab[..., z][lv] = 1, 2, 3
        sl = ndimage.gaussian_filter(sl, 0.7) * (1 + bias)
        sl += rng.standard_normal(sl.shape) * noise_sd
        img[..., z] = np.clip(sl, 0, None) * gain
    return img, lab


def write_phantom(out: str | Path, *, seed: int, num_cases: int, slices: int, size: int, vessels: int = 0) -> Path:
    """Write a phantom dataset in nnU-Net v2 raw format (NIfTI, one channel 'MRI').

    Args:
        out: folder to create (imagesTr/, labelsTr/, dataset.json).
        seed: dataset seed.
        num_cases: number of patients.
        slices: slices per patient.
        size: in-plane pixels.
        vessels: great vessels per patient, at most (see the module docstring).
    """
    out = Path(out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = np.diag([*SPACING, 1.0])
    for case in range(num_cases):
        img, lab = make_patient(seed, case, size, slices, vessels)
        name = f"phantom_{case:03d}"
        nib.save(nib.Nifti1Image(img, affine), out / "imagesTr" / f"{name}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), out / "labelsTr" / f"{name}.nii.gz")
    (out / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, **{n: i + 1 for i, n in enumerate(CLASS_NAMES)}},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
        "name": "AugPaintPhantom",
        "phantom_seed": seed,
    }, indent=1))
    return out
