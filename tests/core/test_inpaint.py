import logging

import numpy as np
import pytest
import torch

from augpaint_core.artifacts import read_artifact_meta
from augpaint_core.dataset import load_dataset
from augpaint_core.errors import AugPaintError
from augpaint_core.inpaint import augpaint_sample, box_mask, inpaint
from augpaint_core.models import load_ldm, load_vqmodel, to_tensor


def test_box_mask_is_union_of_class_boxes_rounded_to_latent_grid():
    lab = np.zeros((16, 16), np.uint8)
    lab[5:7, 5:6] = 1      # box rows 5..6, cols 5 -> rounded to rows 4..7, cols 4..7
    lab[9, 13] = 2         # single pixel -> rows 8..11, cols 12..15
    m = box_mask(lab, 4)
    expect = np.zeros((16, 16), bool)
    expect[4:8, 4:8] = True
    expect[8:12, 12:16] = True
    assert np.array_equal(m, expect)
    assert m[lab > 0].all()  # no labeled pixel outside the kept region
    assert not box_mask(np.zeros((8, 8), np.uint8)).any()
    # a margin grows the box before rounding
    assert box_mask(lab, 4, margin=2)[1, 1] and not box_mask(lab, 4, margin=1)[1, 1]


def test_every_output_keeps_the_box_pixels_exactly(pipeline_artifacts):
    ds = load_dataset(pipeline_artifacts["dataset"])
    syn = load_dataset(pipeline_artifacts["synthetic"])
    cfg = pipeline_artifacts["cfg"]
    assert len(syn.records) > 0
    n_src = {r["provenance"]["source_index"] for r in syn.records}
    assert len(syn.records) == len(n_src) * cfg.inpaint.samples_per_pair
    for img, lab, rec in zip(syn.images, syn.labels, syn.records):
        src = rec["provenance"]["source_index"]
        assert np.array_equal(lab, ds.labels[src])  # label is the original
        m = box_mask(lab)
        assert np.array_equal(img[m], ds.images[src][m])  # bit-exact kept region
        assert rec["source"] == "synthetic" and rec["labeled"]
    # Outside the boxes the samples are new: not a copy of the source image.
    diffs = [np.abs(img.astype(int) - ds.images[r["provenance"]["source_index"]]).mean()
             for img, r in zip(syn.images, syn.records)]
    assert min(diffs) > 0


def test_same_seed_identical_other_seed_different_background(pipeline_artifacts, tmp_path):
    a = pipeline_artifacts
    cfg = a["cfg"]
    again = load_dataset(inpaint(cfg, a["dataset"], a["ae"], a["ldm"], tmp_path / "again"))
    first = load_dataset(a["synthetic"])
    assert np.array_equal(again.images, first.images)
    cfg2 = cfg.model_copy(deep=True)
    cfg2.seed = 123
    other = load_dataset(inpaint(cfg2, a["dataset"], a["ae"], a["ldm"], tmp_path / "other"))
    assert len(other.records) == len(first.records)
    for x, y, lab in zip(first.images, other.images, first.labels):
        m = box_mask(lab)
        assert np.array_equal(x[m], y[m])
        assert not np.array_equal(x[~m], y[~m])


def test_samples_do_not_depend_on_batch(pipeline_artifacts):
    a = pipeline_artifacts
    ds = load_dataset(a["dataset"])
    ae, (unet, sched) = load_vqmodel(a["ae"]), load_ldm(a["ldm"])
    idx = [i for i in ds.where(split="train", labeled=True) if ds.labels[i].any()][:3]
    x = to_tensor(ds.images[idx])
    m = torch.from_numpy(np.stack([box_mask(ds.labels[i]) for i in idx])[:, None].astype(np.float32))
    assert len(idx) >= 2
    seeds = [11, 12, 13][: len(idx)]
    full = augpaint_sample(unet, ae, sched.config, x, m, seeds, steps=3)
    one = torch.cat([augpaint_sample(unet, ae, sched.config, x[i:i + 1], m[i:i + 1], seeds[i:i + 1], steps=3)
                     for i in range(len(idx))])
    assert torch.allclose(full, one, atol=1e-4)


def test_empty_labels_are_skipped_with_a_warning(pipeline_artifacts, tmp_path, caplog):
    a = pipeline_artifacts
    with caplog.at_level(logging.WARNING):
        out = inpaint(a["cfg"], a["dataset"], a["ae"], a["ldm"], tmp_path / "s")
    meta = read_artifact_meta(out)
    ds = load_dataset(a["dataset"])
    n_empty = sum(1 for i in ds.where(split="train", labeled=True) if not ds.labels[i].any())
    assert n_empty > 0  # the tiny phantom has labeled slices above/below the heart
    assert meta["skipped_empty"] == n_empty
    assert "no foreground" in caplog.text


def test_no_foreground_anywhere_is_a_clear_error(pipeline_artifacts, tmp_path):
    from augpaint_core.artifacts import write_artifact_meta
    from augpaint_core.dataset import SliceDataset, save_dataset

    a = pipeline_artifacts
    src = load_dataset(a["dataset"])
    ds = SliceDataset(np.asarray(src.images), np.zeros(src.labels.shape, np.uint8), src.records, src.class_names)
    d = tmp_path / "empty"
    d.mkdir()
    save_dataset(ds, d)
    write_artifact_meta(d, kind="dataset", stage="test", config=None, seed=0)
    with pytest.raises(AugPaintError, match="no labeled training slice has foreground"):
        inpaint(a["cfg"], d, a["ae"], a["ldm"], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_ldm_ae_mismatch_is_rejected(pipeline_artifacts, tmp_path):
    a = pipeline_artifacts
    with pytest.raises(AugPaintError, match="not an LDM artifact"):
        inpaint(a["cfg"], a["dataset"], a["ae"], a["ae"], tmp_path / "o")
