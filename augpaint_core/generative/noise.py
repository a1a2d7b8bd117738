"""Noise matching: give the generated pixels the fine-scale noise of the scan they were inpainted into.

A small f=4 autoencoder decodes smooth images, while real scans carry acquisition noise. Pasted together,
the labeled box is noisy and everything the generator drew is clean, so a segmenter can learn "noisy means
labeled" and mark noisy background in real test scans. Adding white noise to the generated pixels until
their fine-scale residual matches the source's removes that cue; the kept pixels are never touched.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

_SIGMA = 1.0  # the residual x - G_sigma * x keeps the finest scales, where acquisition noise lives


def _residual(x: np.ndarray) -> np.ndarray:
    return x - ndimage.gaussian_filter(x, _SIGMA)


def _white_gain() -> float:
    """Std of the residual of unit white noise (the filter's noise gain), from an impulse response."""
    d = np.zeros((33, 33))
    d[16, 16] = 1.0
    return float(np.sqrt((_residual(d) ** 2).sum()))


_GAIN = _white_gain()


def robust_std(x: np.ndarray) -> float:
    """Std estimated from the median absolute deviation (edges of real structures barely move it)."""
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if x.size else 0.0


def match_noise(generated: np.ndarray, source: np.ndarray, keep: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """Add white noise to the generated pixels (outside ``keep``) so their residual std matches the source's.

    Args:
        generated: (H,W,C) uint8, the decoded sample.
        source: (H,W,C) uint8, the real slice it was inpainted from; its pixels outside ``keep`` set the target.
        keep: (H,W) bool, the kept region (left unchanged).
        seed: the item's seed (the noise is reproducible).

    Returns:
        the new (H,W,C) uint8 image and the noise std added, in grey levels (0 when the sample is already
        as noisy as the source).
    """
    out_region = ~keep
    if not out_region.any():
        return generated, 0.0
    src = np.stack([robust_std(_residual(source[..., c].astype(np.float64))[out_region])
                    for c in range(source.shape[-1])])
    gen = np.stack([robust_std(_residual(generated[..., c].astype(np.float64))[out_region])
                    for c in range(generated.shape[-1])])
    # Channels of a grey scan stacked to RGB are identical: one noise field keeps them identical.
    grey = all(np.array_equal(source[..., 0], source[..., c]) for c in range(1, source.shape[-1]))
    sd = np.sqrt(np.maximum(src ** 2 - gen ** 2, 0.0)) / _GAIN
    rng = np.random.default_rng([seed, 0x6E6F])  # not the sampler's stream for this seed
    if grey:
        noise = np.repeat(rng.standard_normal(generated.shape[:2])[..., None] * sd.mean(), generated.shape[-1], -1)
    else:
        noise = rng.standard_normal(generated.shape) * sd
    noisy = np.clip(np.rint(generated.astype(np.float64) + noise), 0, 255).astype(np.uint8)
    return np.where(keep[..., None], generated, noisy), float(sd.mean())
