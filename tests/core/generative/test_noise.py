"""Noise matching: generated pixels get the source's fine-scale noise; kept pixels never change."""
import numpy as np
from scipy import ndimage

from augpaint_core.generative.noise import _residual, match_noise, robust_std


def _scan(rng, noise_sd: float) -> np.ndarray:
    yy, xx = np.mgrid[0:64, 0:64]
    base = 80 + 60 * (((yy - 32) ** 2 + (xx - 30) ** 2) < 400)  # a disc: structure, not noise
    x = ndimage.gaussian_filter(base.astype(float), 1.5) + rng.standard_normal((64, 64)) * noise_sd
    return np.repeat(np.clip(np.rint(x), 0, 255).astype(np.uint8)[..., None], 3, -1)


def test_generated_pixels_get_the_sources_noise_level():
    rng = np.random.default_rng(0)
    source, smooth = _scan(rng, 8.0), _scan(rng, 0.0)
    keep = np.zeros((64, 64), bool)
    keep[20:36, 20:36] = True
    out, sd = match_noise(smooth, source, keep, seed=3)
    assert 6.0 < sd < 10.0  # the source's 8 grey levels, give or take the estimator and rounding
    level = lambda img: robust_std(_residual(img[..., 0].astype(float))[~keep])  # noqa: E731
    assert level(smooth) < 0.5 * level(source)  # the test can fail: the input is clean
    assert abs(level(out) - level(source)) < 0.15 * level(source)
    assert np.array_equal(out[keep], smooth[keep])  # the kept region is never touched
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])  # grey stays grey
    again, _ = match_noise(smooth, source, keep, seed=3)
    other, _ = match_noise(smooth, source, keep, seed=4)
    assert np.array_equal(again, out) and not np.array_equal(other, out)


def test_an_already_noisy_sample_is_left_alone():
    rng = np.random.default_rng(1)
    source, noisy = _scan(rng, 4.0), _scan(rng, 12.0)
    keep = np.zeros((64, 64), bool)
    out, sd = match_noise(noisy, source, keep, seed=0)
    assert sd == 0.0 and np.array_equal(out, noisy)
