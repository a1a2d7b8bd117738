"""Classical augmentation: the paper's "Rand Aug" baseline and UniMatch's weak/strong perturbations.

Rand Aug: every labeled anchor slice gets ``copies`` randomly transformed copies (flips, rotation, scaling,
intensity), then the same filter as AugPaint keeps the top half. Geometry is applied with one affine grid to the
image (bilinear) and the label (nearest), so labels stay exact up to resampling.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..infra.artifacts import atomic_dir, write_artifact_meta
from ..config import AugPaintConfig
from ..data.dataset import SliceDataset, load_dataset, save_dataset
from ..errors import AugPaintError
from ..runtime import to_tensor, to_uint8


def _affine(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def random_transform(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, *,
                     max_rotation: float = 20.0, scale: tuple[float, float] = (0.85, 1.15)
                     ) -> tuple[np.ndarray, np.ndarray, dict]:
    """One random flip/rotate/scale/intensity transform of an (H,W,3) uint8 image and its (H,W) label.

    Args:
        image: (H, W, 3) uint8.
        label: (H, W) integer labels.
        rng: random source.
        max_rotation: degrees, uniform in [-max, max].
        scale: zoom range.

    Returns:
        the transformed image and label, and the drawn parameters.
    """
    flip = ["none", "h", "v"][int(rng.integers(0, 3))]
    angle = float(rng.uniform(-max_rotation, max_rotation))
    zoom = float(rng.uniform(*scale))
    gamma = float(np.exp(rng.uniform(-0.3, 0.3)))
    contrast, brightness = float(rng.uniform(0.85, 1.15)), float(rng.uniform(-0.1, 0.1))
    a = math.radians(angle)
    # affine_grid maps output to input coordinates: rotate by a and zoom by 1/zoom
    theta = torch.tensor([[[math.cos(a) / zoom, -math.sin(a) / zoom, 0.0],
                           [math.sin(a) / zoom, math.cos(a) / zoom, 0.0]]], dtype=torch.float32)
    if flip == "h":
        theta[0, 0, :2] *= -1
    elif flip == "v":
        theta[0, 1, :2] *= -1
    x = (to_tensor(image[None]) + 1) / 2  # [0, 1]
    x = _affine(x, theta, "bilinear").clamp(0, 1)
    x = ((x ** gamma - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
    y = _affine(torch.from_numpy(label[None, None].astype(np.float32)), theta, "nearest")
    params = {"flip": flip, "rotation": angle, "scale": zoom, "gamma": gamma, "contrast": contrast,
              "brightness": brightness}
    return to_uint8(x * 2 - 1)[0], y[0, 0].round().numpy().astype(label.dtype), params


def rand_aug_dataset(ds: SliceDataset, copies: int, seed: int) -> SliceDataset:
    """``copies`` random transforms of every labeled training slice with foreground (the Rand Aug pool).

    Records carry provenance like inpaint's: source_index, sample_index, seed, sampler "randaug", the flip and
    the other drawn parameters.
    """
    src = [int(i) for i in ds.where(split="train", labeled=True) if ds.labels[i].any()]
    if not src:
        raise AugPaintError("rand-aug: no labeled training slice has foreground")
    images, labels, records = [], [], []
    for s in src:
        for j in range(copies):
            item_seed = zlib.crc32(f"randaug:{seed}:{s}:{j}".encode()) & 0x7FFFFFFF
            x, y, params = random_transform(np.asarray(ds.images[s]), np.asarray(ds.labels[s]),
                                            np.random.default_rng(item_seed))
            r = ds.records[s]
            images.append(x)
            labels.append(y)
            records.append({"case_id": r["case_id"], "slice_index": r["slice_index"], "split": "train",
                            "labeled": True, "source": "synthetic",
                            "provenance": {"source_index": s, "sample_index": j, "seed": item_seed,
                                           "sampler": "randaug", "steps": 0, "conditional": False, **params}})
    return SliceDataset(np.stack(images), np.stack(labels), records, ds.class_names, ds.regions)


def rand_aug(cfg: AugPaintConfig, dataset: str | Path, out: str | Path, *, copies: int | None = None,
             force: bool = False, tracker=None) -> Path:
    """Stage: the Rand Aug baseline's pool (``inpaint.samples_per_pair`` copies per anchor, 5 in the paper).

    Args:
        cfg: config (``seed``; ``inpaint.samples_per_pair`` is the number of copies).
        dataset: real slice dataset artifact.
        out: output synthetic dataset (filter it like an inpainting output).
        copies: override the number of copies.
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    ds = load_dataset(dataset)
    n = copies or cfg.inpaint.samples_per_pair
    syn = rand_aug_dataset(ds, n, cfg.seed)
    with atomic_dir(out, force=force) as tmp:
        save_dataset(syn, tmp)
        write_artifact_meta(tmp, kind="dataset", stage="rand-aug", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"dataset": dataset},
                            extra={"num_samples": len(syn.records), "copies": n})
    if tracker:
        tracker.log_metrics({"randaug_samples": len(syn.records)})
    return Path(out)


# ----------------------------------------------------------------------------------------------
# UniMatch perturbations (tensors in [-1, 1], (B, 3, H, W))


def weak_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Weak view: a random horizontal flip per image."""
    flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device)  # CPU draws: the same stream on any device
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def strong_view(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Strong photometric view (intensity jitter, gamma, noise, blur); geometry unchanged so pseudo-labels align."""
    b = len(x)

    def u(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(b, generator=gen))[:, None, None, None].to(x.device)

    y = ((x + 1) / 2).clamp(0, 1)
    y = y ** torch.exp(u(-0.5, 0.5))
    y = (y - 0.5) * u(0.6, 1.4) + 0.5 + u(-0.2, 0.2)
    y = y + 0.05 * torch.randn(y.shape, generator=gen).to(x.device)
    blur = (torch.rand(b, generator=gen) < 0.5)[:, None, None, None].to(x.device)
    y = torch.where(blur, F.avg_pool2d(y, 3, 1, 1, count_include_pad=False), y)
    return (y.clamp(0, 1) * 2 - 1)


def cutmix_box(h: int, w: int, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """A (H, W) bool box covering a random 2-40% of the image (all False with probability 1-p)."""
    m = torch.zeros(h, w, dtype=torch.bool)
    if torch.rand(1, generator=gen).item() > p:
        return m
    area = (0.02 + 0.38 * torch.rand(1, generator=gen).item()) * h * w
    ratio = math.exp(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * torch.rand(1, generator=gen).item())
    bh, bw = min(h, int(math.sqrt(area / ratio))), min(w, int(math.sqrt(area * ratio)))
    y0 = int(torch.randint(0, h - bh + 1, (1,), generator=gen))
    x0 = int(torch.randint(0, w - bw + 1, (1,), generator=gen))
    m[y0:y0 + bh, x0:x0 + bw] = True
    return m
