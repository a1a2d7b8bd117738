"""Kept-region masks: random training masks of the conditional LDM, and the inference box and label masks."""
import numpy as np

from augpaint_core.generative.masks import box_mask, keep_masks, label_mask, random_boxes, random_strokes


def test_masks_are_valid_and_deterministic():
    m = keep_masks(32, 64, seed=3)
    assert m.shape == (32, 64, 64) and m.dtype == bool
    frac = m.mean(axis=(1, 2))
    assert (frac >= 0.03).all() and (frac <= 0.7).all()
    cells = m.reshape(32, 16, 4, 16, 4)
    assert (cells.all(axis=(2, 4)) == cells.any(axis=(2, 4))).all()  # whole 4x4 latent cells
    assert np.array_equal(m, keep_masks(32, 64, seed=3)) and not np.array_equal(m, keep_masks(32, 64, seed=4))
    rng = np.random.default_rng(0)
    boxes, strokes = random_boxes(64, rng), random_strokes(64, rng)
    assert boxes.any() and strokes.any()
    # Boxes are unions of rectangles: every row segment of a single box is contiguous; strokes are not boxes.
    ys, xs = np.nonzero(strokes)
    assert strokes.sum() < (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)


def test_box_mask_is_the_union_of_class_boxes_on_the_latent_grid():
    label = np.zeros((32, 32), np.uint8)
    label[5:9, 6:11] = 1   # box rows 5-8, cols 6-10 -> grid rows 4-11, cols 4-11
    label[20:22, 25:27] = 2
    m = box_mask(label, factor=4)
    assert m[4:12, 4:12].all() and m[20:24, 24:28].all()
    assert m.sum() == 64 + 16
    assert not box_mask(np.zeros((32, 32), np.uint8)).any()
    # A margin grows the box before rounding: 2 px around rows 5-8 reach row 3 -> grid row 0.
    assert box_mask(label, factor=4, margin=2)[0:4, 4:12].all()


def test_label_mask_keeps_the_shape_not_the_box():
    label = np.zeros((32, 32), np.uint8)
    label[0:4, 0:4] = 1
    label[28:32, 28:32] = 1  # two far corners: the box would cover everything between them
    m = label_mask(label, factor=4)
    assert m.sum() == 32 and not m[12:20, 12:20].any()
    assert box_mask(label, factor=4).all()

