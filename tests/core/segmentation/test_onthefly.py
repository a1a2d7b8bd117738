"""On-the-fly batch augmentation: labels move with the image, draws are seeded by (seed, step), identity when off."""
import numpy as np
import pytest
import torch

from augpaint_core.config import AugmentConfig, parse_config
from augpaint_core.errors import AugPaintError
from augpaint_core.segmentation.onthefly import augment_batch
from tests.conftest import tiny_dict

ALL = dict(enabled=True, p_rotation=1.0, p_scale=1.0, p_flip=0.5, elastic=True, p_elastic=1.0, p_noise=1.0,
           p_blur=1.0, p_brightness=1.0, p_contrast=1.0, p_gamma=1.0)


def _batch(n: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose foreground is exactly the labeled square (value +1 on -1), so they can be compared."""
    y = torch.zeros(n, 1, size, size, dtype=torch.int64)
    for i in range(n):
        j = i % 8  # an off-centre rectangle, so every mirroring changes it
        y[i, 0, 4 + j:14 + j, 6:20 + j] = 1 + i % 2
    x = torch.where(y > 0, 1.0, -1.0).repeat(1, 3, 1, 1)
    return x, y


def test_disabled_is_the_identity():
    x, y = _batch()
    xa, ya = augment_batch(x, y, AugmentConfig(), seed=0, step=3)
    assert xa is x and ya is y


def test_label_moves_with_the_image_and_stays_integer():
    x, y = _batch()
    cfg = AugmentConfig(enabled=True, p_rotation=1.0, p_scale=1.0, p_flip=0.5, elastic=True, p_elastic=1.0,
                        p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_gamma=0)
    xa, ya = augment_batch(x, y, cfg, seed=1, step=0)
    assert ya.dtype == torch.int64 and ya.shape == y.shape
    assert set(ya.unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(ya, y)  # geometry changed
    fg_img, fg_lab = xa[:, 0] > 0, ya[:, 0] > 0
    # bilinear image vs nearest label: they agree except along the edges
    agree = (fg_img == fg_lab).float().mean().item()
    assert agree > 0.97
    for i in range(len(x)):  # a label value stays with its own image
        assert set(ya[i].unique().tolist()) <= {0, 1 + i % 2}


def test_seeded_by_seed_and_step():
    x, y = _batch()
    cfg = AugmentConfig(**ALL)
    a = augment_batch(x, y, cfg, seed=0, step=5)
    b = augment_batch(x, y, cfg, seed=0, step=5)
    c = augment_batch(x, y, cfg, seed=0, step=6)
    d = augment_batch(x, y, cfg, seed=1, step=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])


def test_intensity_transforms_change_pixels_not_labels():
    x, y = _batch()
    x = x * 0.5  # mid-range values so gamma/brightness/contrast have room
    cfg = AugmentConfig(enabled=True, p_rotation=0, p_scale=0, p_flip=0, p_noise=1.0, p_blur=1.0,
                        p_brightness=1.0, p_contrast=1.0, p_gamma=1.0)
    xa, ya = augment_batch(x, y, cfg, seed=2, step=0)
    assert torch.equal(ya, y)
    assert xa.shape == x.shape and xa.min() >= -1 and xa.max() <= 1
    assert (xa - x).abs().mean() > 0.01


def test_3d_label_shape_and_flip_probability():
    x, y = _batch(n=64)
    cfg = AugmentConfig(enabled=True, p_rotation=0, p_scale=0, p_flip=0.5, p_noise=0, p_blur=0, p_brightness=0,
                        p_contrast=0, p_gamma=0)
    _, ya = augment_batch(x, y[:, 0], cfg, seed=0, step=0)
    assert ya.shape == y[:, 0].shape
    flipped = sum(not torch.equal(ya[i], y[i, 0]) for i in range(len(y)))
    assert 32 <= flipped <= 60  # each axis mirrors with p=0.5: about 3/4 of the images change


def test_config_rejects_reversed_ranges():
    d = tiny_dict()
    d["seg"]["augment"] = {"enabled": True, "gamma": [1.5, 0.7]}
    with pytest.raises(AugPaintError, match="seg.augment"):
        parse_config(d, "t")


def test_training_with_augmentation_differs_and_repeats():
    from augpaint_core.segmentation.train_seg import fit_segmenter

    cfg = parse_config(tiny_dict(), "t").seg
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    labs = (rng.random((4, 32, 32)) > 0.7).astype(np.uint8)
    aug = cfg.model_copy(deep=True)
    aug.augment = AugmentConfig(**ALL)

    def weights(c):
        m, _ = fit_segmenter(imgs, labs, 2, c, seed=0, max_steps=2)
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    w_aug = weights(aug)
    assert torch.equal(w_aug, weights(aug))
    assert not torch.equal(w_aug, weights(cfg))
