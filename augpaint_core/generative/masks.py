"""Random keep-masks for training the conditional LDM without labels.

At inference the kept region is the union of the labels' bounding boxes, so
training mixes what that looks like (1 to 3 boxes) with irregular brush
strokes (LaMa-style), which teach the model arbitrary borders. True = known
pixels (kept), False = to be generated. Masks are aligned to the AE grid, as the
inference box masks are.
"""
from __future__ import annotations

import numpy as np

AE_FACTOR = 4  # the VQ-f4 autoencoder's downsampling; kept regions are whole latent cells

MIN_KEEP, MAX_KEEP = 0.03, 0.7  # kept fraction: labels cover a few to most percent of a slice


def random_boxes(size: int, rng: np.random.Generator) -> np.ndarray:
    m = np.zeros((size, size), bool)
    for _ in range(rng.integers(1, 4)):
        h, w = (rng.uniform(0.1, 0.5, 2) * size).astype(int) + 1
        y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        m[y:y + h, x:x + w] = True
    return m


def random_strokes(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    m = np.zeros((size, size), bool)
    for _ in range(rng.integers(1, 5)):
        y, x = rng.uniform(0, size, 2)
        width = rng.uniform(0.03, 0.1) * size
        for _ in range(rng.integers(2, 7)):
            angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.35) * size
            ny, nx = np.clip(y + length * np.sin(angle), 0, size - 1), np.clip(x + length * np.cos(angle), 0, size - 1)
            # Distance of every pixel to the segment (y, x) -> (ny, nx).
            dy, dx = ny - y, nx - x
            t = np.clip(((yy - y) * dy + (xx - x) * dx) / max(dy * dy + dx * dx, 1e-9), 0, 1)
            m |= (yy - (y + t * dy)) ** 2 + (xx - (x + t * dx)) ** 2 <= (width / 2) ** 2
            y, x = ny, nx
    return m


def to_grid(m: np.ndarray, factor: int) -> np.ndarray:
    """Grow a mask outward to whole ``factor`` x ``factor`` cells (the latent grid)."""
    s = m.shape[0] // factor
    cells = m[:s * factor, :s * factor].reshape(s, factor, s, factor).any(axis=(1, 3))
    return np.repeat(np.repeat(cells, factor, 0), factor, 1)


def random_keep_mask(size: int, rng: np.random.Generator, factor: int = 4) -> np.ndarray:
    """One (size, size) bool keep-mask: boxes or strokes, kept fraction within [MIN_KEEP, MAX_KEEP].

    Args:
        size: image size (divisible by ``factor``).
        rng: the generator (callers seed it per item, so masks do not depend on batching).
        factor: AE downsampling; the mask is made of whole latent cells.
    """
    for _ in range(100):
        m = to_grid(random_boxes(size, rng) if rng.random() < 0.5 else random_strokes(size, rng), factor)
        if MIN_KEEP <= m.mean() <= MAX_KEEP:
            return m
    raise RuntimeError("random_keep_mask: no valid mask in 100 draws")  # unreachable for size >= 16


def keep_masks(n: int, size: int, seed: int, factor: int = 4) -> np.ndarray:
    """(n, size, size) keep-masks, mask i from ``default_rng([seed, i])``."""
    return np.stack([random_keep_mask(size, np.random.default_rng([seed, i]), factor) for i in range(n)])


def _round_to_grid(mask: np.ndarray, factor: int) -> np.ndarray:
    """Grow a mask to whole factor x factor cells (any kept pixel keeps its cell)."""
    h, w = mask.shape
    cells = mask.reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))
    return np.repeat(np.repeat(cells, factor, 0), factor, 1)


def box_mask(label: np.ndarray, factor: int = AE_FACTOR, margin: int = 0) -> np.ndarray:
    """Union of per-class bounding boxes, edges rounded outward to multiples of ``factor``.

    Args:
        label: (H, W) integer label map.
        factor: the AE's downsampling factor, so the box maps exactly onto the latent grid.
        margin: extra pixels around every box before rounding.

    Returns:
        (H, W) bool mask, True = kept (known) pixels.
    """
    h, w = label.shape
    mask = np.zeros((h, w), bool)
    for c in np.unique(label):
        if c == 0:
            continue
        ys, xs = np.nonzero(label == c)
        y0, y1 = max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)
        x0, x1 = max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)
        y0, x0 = (y0 // factor) * factor, (x0 // factor) * factor
        y1, x1 = min(h, -(-y1 // factor) * factor), min(w, -(-x1 // factor) * factor)
        mask[y0:y1, x0:x1] = True
    return mask


def label_mask(label: np.ndarray, factor: int = AE_FACTOR, margin: int = 0) -> np.ndarray:
    """The label shape (all foreground pixels), grown by ``margin`` pixels, rounded outward to the latent grid.

    Args:
        label: (H, W) integer label map.
        factor: the AE's downsampling factor.
        margin: dilation in pixels (square neighbourhood) before rounding.
    """
    fg = label > 0
    if margin and fg.any():
        from scipy.ndimage import binary_dilation

        fg = binary_dilation(fg, np.ones((2 * margin + 1, 2 * margin + 1), bool))
    return _round_to_grid(fg, factor)
