import logging

import numpy as np
import pytest

from augpaint_core.infra.artifacts import read_artifact_meta
from augpaint_core.data.dataset import load_dataset
from augpaint_core.errors import AugPaintError
from augpaint_core.generative.inpaint import inpaint
from augpaint_core.generative.masks import box_mask


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
    from augpaint_core.infra.artifacts import write_artifact_meta
    from augpaint_core.data.dataset import SliceDataset, save_dataset

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


# ---- issue 5: exact, complete, reproducible ----------------------------------------------------------------

def _cfg(a, **inpaint):
    cfg = a["cfg"].model_copy(deep=True)
    for k, v in inpaint.items():
        setattr(cfg.inpaint, k, v)
    return cfg


def test_outputs_identical_for_batch_size_1_and_8(pipeline_artifacts, tmp_path):
    a = pipeline_artifacts
    one = load_dataset(inpaint(_cfg(a, batch_size=1), a["dataset"], a["ae"], a["ldm"], tmp_path / "b1"))
    eight = load_dataset(inpaint(_cfg(a, batch_size=8), a["dataset"], a["ae"], a["ldm"], tmp_path / "b8"))
    three = load_dataset(inpaint(_cfg(a, batch_size=3), a["dataset"], a["ae"], a["ldm"], tmp_path / "b3"))
    assert len(one.records) >= 4
    assert np.array_equal(one.images, eight.images)  # bit for bit, not approximately
    assert np.array_equal(three.images, eight.images)
    assert [r["provenance"]["seed"] for r in one.records] == [r["provenance"]["seed"] for r in eight.records]


def test_three_shards_merge_to_the_single_run(pipeline_artifacts, tmp_path):
    from augpaint_core.generative.inpaint import merge_shards

    a = pipeline_artifacts
    cfg = _cfg(a, batch_size=2, samples_per_pair=3)
    whole = load_dataset(inpaint(cfg, a["dataset"], a["ae"], a["ldm"], tmp_path / "whole"))
    parts = [inpaint(cfg, a["dataset"], a["ae"], a["ldm"], tmp_path / f"s{i}", shard=i, num_shards=3)
             for i in range(3)]
    sizes = [len(load_dataset(p).records) for p in parts]
    assert all(n > 0 for n in sizes) and sum(sizes) == len(whole.records)
    merged = load_dataset(merge_shards(cfg, [parts[2], parts[0], parts[1]], tmp_path / "merged"))
    assert np.array_equal(merged.images, whole.images)
    assert np.array_equal(merged.labels, whole.labels)
    assert merged.records == whole.records
    with pytest.raises(AugPaintError, match=r"missing \[1\]"):
        merge_shards(cfg, [parts[0], parts[2]], tmp_path / "gap")
    other = inpaint(_cfg(a, batch_size=2, samples_per_pair=3, eta=0.5), a["dataset"], a["ae"], a["ldm"], tmp_path / "o1", shard=1,
                    num_shards=3)
    with pytest.raises(AugPaintError, match="another inpaint run"):
        merge_shards(cfg, [parts[0], other, parts[2]], tmp_path / "mixed")
    assert not (tmp_path / "gap").exists() and not (tmp_path / "mixed").exists()
    with pytest.raises(AugPaintError, match="outside 0..2"):
        inpaint(cfg, a["dataset"], a["ae"], a["ldm"], tmp_path / "bad", shard=3, num_shards=3)


def test_shards_are_whole_batches():
    from augpaint_core.generative.inpaint import shard_items

    assert [shard_items(10, 4, i, 2) for i in range(2)] == [(0, 4), (4, 10)]
    assert [shard_items(4, 2, i, 3) for i in range(3)] == [(0, 0), (0, 2), (2, 4)]  # more shards than batches


def test_flipped_samples_carry_flipped_labels_matching_the_kept_pixels(pipeline_artifacts, tmp_path):
    from augpaint_core.generative.inpaint import apply_flip

    a = pipeline_artifacts
    cfg = _cfg(a, mask_flip=True, samples_per_pair=4)
    ds = load_dataset(a["dataset"])
    syn = load_dataset(inpaint(cfg, a["dataset"], a["ae"], a["ldm"], tmp_path / "f"))
    flips = [r["provenance"]["flip"] for r in syn.records]
    assert {"h", "v"} <= set(flips)
    for img, lab, rec in zip(syn.images, syn.labels, syn.records):
        src, f = rec["provenance"]["source_index"], rec["provenance"]["flip"]
        want_lab = apply_flip(ds.labels[src], f)
        assert np.array_equal(lab, want_lab)
        m = box_mask(lab)
        assert np.array_equal(img[m], apply_flip(ds.images[src], f)[m])
        if f != "none" and not np.array_equal(want_lab, ds.labels[src]):
            assert not np.array_equal(lab, ds.labels[src])


def test_label_shape_mask_and_margin(pipeline_artifacts, tmp_path):
    from augpaint_core.generative.inpaint import label_mask

    lab = np.zeros((16, 16), np.uint8)
    lab[5, 5] = 1
    lab[10, 13] = 1   # one class, two far-apart pixels: its box spans rows 4..11, cols 4..15
    m = label_mask(lab, 4)
    assert m.sum() == 32 and m[4:8, 4:8].all() and m[8:12, 12:16].all() and not m[4:8, 12:16].any()
    assert box_mask(lab, 4).sum() == 8 * 12 and box_mask(lab, 4)[m].all()
    assert label_mask(lab, 4, margin=2)[3, 3] and not label_mask(lab, 4)[3, 3]
    a = pipeline_artifacts
    ds = load_dataset(a["dataset"])
    syn = load_dataset(inpaint(_cfg(a, mask="label"), a["dataset"], a["ae"], a["ldm"], tmp_path / "l"))
    for img, lab, rec in zip(syn.images, syn.labels, syn.records):
        src = rec["provenance"]["source_index"]
        km = label_mask(lab)
        assert km[lab > 0].all() and rec["provenance"]["mask"] == "label"
        assert np.array_equal(img[km], ds.images[src][km])


@pytest.mark.parametrize("sampler", ["dpmsolver++", "unipc"])
def test_fast_solvers_keep_the_box_exactly(pipeline_artifacts, tmp_path, sampler):
    a = pipeline_artifacts
    ds = load_dataset(a["dataset"])
    ddim = load_dataset(a["synthetic"])
    syn = load_dataset(inpaint(_cfg(a, sampler=sampler), a["dataset"], a["ae"], a["ldm"], tmp_path / "s"))
    assert {r["provenance"]["sampler"] for r in syn.records} == {sampler}
    for img, lab, rec in zip(syn.images, syn.labels, syn.records):
        m = box_mask(lab)
        assert np.array_equal(img[m], ds.images[rec["provenance"]["source_index"]][m])
    assert not np.array_equal(syn.images, ddim.images)  # a different solver: different pixels outside the box


def test_fixed_known_noise_differs_from_fresh(pipeline_artifacts, tmp_path):
    a = pipeline_artifacts
    fixed = load_dataset(inpaint(_cfg(a, known_noise="fixed"), a["dataset"], a["ae"], a["ldm"], tmp_path / "x"))
    fresh = load_dataset(a["synthetic"])
    assert not np.array_equal(fixed.images, fresh.images)
    assert {r["provenance"]["known_noise"] for r in fixed.records} == {"fixed"}


def test_match_noise_changes_only_generated_pixels(pipeline_artifacts, tmp_path):
    a = pipeline_artifacts
    noisy = load_dataset(inpaint(_cfg(a, match_noise=True), a["dataset"], a["ae"], a["ldm"], tmp_path / "n"))
    plain, ds = load_dataset(a["synthetic"]), load_dataset(a["dataset"])
    sds = [r["provenance"]["match_noise_sd"] for r in noisy.records]
    assert all(sd is not None and sd >= 0 for sd in sds) and max(sds) > 0
    assert {r["provenance"]["match_noise_sd"] for r in plain.records} == {None}
    for img, lab, rec in zip(noisy.images, noisy.labels, noisy.records):
        m = box_mask(lab)
        assert np.array_equal(img[m], ds.images[rec["provenance"]["source_index"]][m])  # labels stay exact
    assert not np.array_equal(noisy.images, plain.images)


def test_repaint_baseline_runs_on_a_pixel_model(pipeline_artifacts, tmp_path):
    from augpaint_core.generative.sampling import repaint_calls
    from augpaint_core.generative.train_ldm import train_pixel

    assert repaint_calls(50, 10, 5) == 210      # the paper's comparison point
    assert repaint_calls(250, 10, 10) == 2410   # RePaint's default
    a = pipeline_artifacts
    cfg = _cfg(a, sampler="repaint", num_inference_steps=6, repaint_jump_length=2, repaint_resample=2)
    cfg.pixel.block_channels, cfg.pixel.attention = [8, 16], [False, True]
    cfg.pixel.layers_per_block = 1
    pix = train_pixel(cfg, a["dataset"], tmp_path / "pix")
    assert read_artifact_meta(pix)["space"] == "pixel"
    ds = load_dataset(a["dataset"])
    syn = load_dataset(inpaint(cfg, a["dataset"], None, pix, tmp_path / "r"))
    assert len(syn.records) > 0 and {r["provenance"]["sampler"] for r in syn.records} == {"repaint"}
    for img, lab, rec in zip(syn.images, syn.labels, syn.records):
        m = box_mask(lab)
        src = ds.images[rec["provenance"]["source_index"]]
        assert np.array_equal(img[m], src[m]) and not np.array_equal(img[~m], src[~m])
    with pytest.raises(AugPaintError, match="pixel-space model"):
        inpaint(cfg, a["dataset"], a["ae"], a["ldm"], tmp_path / "bad1")
    with pytest.raises(AugPaintError, match="needs inpaint.sampler repaint"):
        inpaint(a["cfg"], a["dataset"], a["ae"], pix, tmp_path / "bad2")


def test_cli_shards_and_merge(pipeline_artifacts, tmp_path, capsys):
    from augpaint_core.cli import main

    a = pipeline_artifacts
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(a["cfg"].to_yaml())
    common = ["--config", str(cfg_file), "--tracking-uri", "none", "--set", "inpaint.batch_size=2"]
    for i in range(2):
        assert main(["inpaint", *common, "--in", str(a["dataset"]), "--ae", str(a["ae"]), "--ldm", str(a["ldm"]),
                     "--out", str(tmp_path / f"s{i}"), "--shard", str(i), "--num-shards", "2"]) == 0
    assert main(["merge-shards", *common, "--in", str(tmp_path / "s0"), "--in", str(tmp_path / "s1"),
                 "--out", str(tmp_path / "m")]) == 0
    merged = load_dataset(tmp_path / "m")
    assert np.array_equal(merged.images, load_dataset(a["synthetic"]).images)
    assert main(["merge-shards", *common, "--in", str(tmp_path / "s1"), "--out", str(tmp_path / "m2")]) == 2
    assert "missing [0]" in capsys.readouterr().err
    assert main(["inpaint", *common, "--in", str(a["dataset"]), "--ldm", str(a["ldm"]),
                 "--out", str(tmp_path / "noae")]) == 2
    assert "needs the autoencoder (--ae)" in capsys.readouterr().err


def test_runtime_settings_fail_clearly_on_cpu(pipeline_artifacts, tmp_path):
    import torch

    from augpaint_core.config import parse_config
    from tests.conftest import tiny_dict

    a = pipeline_artifacts
    if not torch.cuda.is_available():
        with pytest.raises(AugPaintError, match="bf16 needs a GPU"):
            inpaint(_cfg(a, precision="bf16"), a["dataset"], a["ae"], a["ldm"], tmp_path / "x")
        with pytest.raises(AugPaintError, match="no CUDA GPU is visible"):
            inpaint(_cfg(a, device="cuda"), a["dataset"], a["ae"], a["ldm"], tmp_path / "y")
        assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    d = tiny_dict()
    d["inpaint"].update(sampler="repaint", num_inference_steps=10, repaint_jump_length=10)
    with pytest.raises(AugPaintError, match="repaint_jump_length 10 must be smaller"):
        parse_config(d, "t")
    d["inpaint"].update(sampler="heun")
    with pytest.raises(AugPaintError, match="inpaint.sampler"):
        parse_config(d, "t")


def _box_fractions(ds) -> dict[int, float]:
    return {int(i): float(box_mask(ds.labels[i]).mean()) for i in ds.where(split="train", labeled=True)
            if ds.labels[i].any()}


def test_big_box_sources_skip_label_or_keep(pipeline_artifacts, tmp_path, caplog):
    from augpaint_core.generative.inpaint import label_mask

    a = pipeline_artifacts
    ds = load_dataset(a["dataset"])
    frac = _box_fractions(ds)
    assert max(frac.values()) <= a["cfg"].inpaint.big_box_fraction  # the default leaves the phantom's boxes alone
    cut = float(np.median(list(frac.values())))
    big = {s for s, f in frac.items() if f > cut}
    assert 0 < len(big) < len(frac)
    with caplog.at_level(logging.WARNING):
        out = inpaint(_cfg(a, big_box="skip", big_box_fraction=cut), a["dataset"], a["ae"], a["ldm"], tmp_path / "s")
    assert "big_box" in caplog.text
    syn, meta = load_dataset(out), read_artifact_meta(out)
    assert {r["provenance"]["source_index"] for r in syn.records} == set(frac) - big
    assert meta["big_box"] == {"policy": "skip", "fraction": cut, "sources": len(big), "skipped": len(big)}
    syn = load_dataset(inpaint(_cfg(a, big_box="label", big_box_fraction=cut), a["dataset"], a["ae"], a["ldm"],
                               tmp_path / "l"))
    assert {r["provenance"]["source_index"] for r in syn.records} == set(frac)
    for img, lab, rec in zip(syn.images, syn.labels, syn.records):
        p = rec["provenance"]
        src = p["source_index"]
        assert p["kept_region"] == ("label_big_box" if src in big else "box") and p["big_box"] == "label"
        km = label_mask(lab) if src in big else box_mask(lab)
        assert np.array_equal(img[km], ds.images[src][km])
    syn = load_dataset(inpaint(_cfg(a, big_box="keep", big_box_fraction=cut), a["dataset"], a["ae"], a["ldm"],
                               tmp_path / "k"))
    assert {r["provenance"]["kept_region"] for r in syn.records} == {"box"}
    with pytest.raises(AugPaintError, match="inpaint.big_box"):
        inpaint(_cfg(a, big_box="skip", big_box_fraction=0.001), a["dataset"], a["ae"], a["ldm"], tmp_path / "n")
    assert not (tmp_path / "n").exists()
