import numpy as np
import torch

from augpaint_core.segmentation.augment import cutmix_box, rand_aug_dataset, random_transform, strong_view, weak_flip
from augpaint_core.data.dataset import SliceDataset


def _square():
    img = np.full((32, 32, 3), 20, np.uint8)
    lab = np.zeros((32, 32), np.uint8)
    lab[6:14, 18:28] = 2
    img[lab == 2] = 220
    return img, lab


def test_random_transform_moves_image_and_label_together():
    img, lab = _square()
    for seed in range(8):
        x, y, p = random_transform(img, lab, np.random.default_rng(seed))
        assert x.shape == img.shape and x.dtype == np.uint8 and y.dtype == lab.dtype
        assert set(np.unique(y)) <= {0, 2}
        bright = x.mean(-1) > 110
        agree = (bright == (y == 2)).mean()
        assert agree > 0.95, (seed, p, agree)  # the label still covers the (moved) square
    draws = [random_transform(img, lab, np.random.default_rng(s))[2] for s in range(30)]
    assert {d["flip"] for d in draws} == {"none", "h", "v"}
    assert max(abs(d["rotation"]) for d in draws) > 5 and len({round(d["scale"], 3) for d in draws}) > 5


def test_rand_aug_pool_has_copies_per_anchor_with_provenance():
    img, lab = _square()
    images = np.stack([img, img, img])
    labels = np.stack([lab, np.zeros_like(lab), lab])
    recs = [{"case_id": "a", "slice_index": i, "split": "train", "labeled": i < 2, "source": "real",
             "provenance": {}} for i in range(3)]
    ds = SliceDataset(images, labels, recs, ["x", "y"])
    pool = rand_aug_dataset(ds, copies=3, seed=0)
    assert len(pool.records) == 3  # only slice 0: labeled and with foreground
    assert [r["provenance"]["source_index"] for r in pool.records] == [0, 0, 0]
    assert [r["provenance"]["sample_index"] for r in pool.records] == [0, 1, 2]
    assert all(r["provenance"]["sampler"] == "randaug" for r in pool.records)
    again = rand_aug_dataset(ds, copies=3, seed=0)
    assert np.array_equal(pool.images, again.images)  # seeded


def test_unimatch_views():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    w = weak_flip(x, gen)
    assert all(torch.equal(w[i], x[i]) or torch.equal(w[i], x[i].flip(-1)) for i in range(6))
    s = strong_view(x, gen)
    assert s.shape == x.shape and s.min() >= -1 and s.max() <= 1 and not torch.allclose(s, x)
    boxes = [cutmix_box(16, 16, gen, p=1.0) for _ in range(10)]
    assert all(b.any() and not b.all() for b in boxes)
    assert not cutmix_box(16, 16, gen, p=0.0).any()
