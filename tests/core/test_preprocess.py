import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from augpaint_core.artifacts import load_dataset, read_artifact_meta
from augpaint_core.errors import AugPaintError
from augpaint_core.phantom import write_phantom
from augpaint_core.preprocess import build_dataset, preprocess


@pytest.fixture
def raw(tmp_path) -> Path:
    return write_phantom(tmp_path / "raw", seed=0, num_cases=8, slices=4, size=48)


def test_preprocess_phantom(tiny_cfg, tmp_path):
    out = preprocess(tiny_cfg, tmp_path / "ds")
    ds = load_dataset(out)
    assert ds.images.shape[1:] == (32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.class_names == ["RV", "MYO", "LV"]
    # Patient-level split: no case in two splits.
    splits = {}
    for r in ds.records:
        splits.setdefault(r["case_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert {next(iter(s)) for s in splits.values()} == {"train", "val", "test"}
    # Exactly k labeled training cases; unlabeled labels are hidden.
    labeled = {r["case_id"] for r in ds.records if r["labeled"] and r["split"] == "train"}
    assert len(labeled) == tiny_cfg.data.num_labeled
    unl = ds.where(split="train", labeled=False)
    assert len(unl) > 0 and not ds.labels[unl].any()
    meta = read_artifact_meta(out, kind="dataset")
    assert meta["config"]["seed"] == 0 and "torch" in meta["versions"] and meta["files"]


def test_same_seed_same_dataset_other_seed_other_split(tiny_cfg, tmp_path):
    a = read_artifact_meta(preprocess(tiny_cfg, tmp_path / "a"))["content_sha256"]
    b = read_artifact_meta(preprocess(tiny_cfg, tmp_path / "b"))["content_sha256"]
    cfg2 = tiny_cfg.model_copy(deep=True)
    cfg2.seed = 5
    c = read_artifact_meta(preprocess(cfg2, tmp_path / "c"))["content_sha256"]
    assert a == b != c


def test_num_labeled_larger_than_train_split(tiny_cfg, raw):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.data.num_labeled = 50
    with pytest.raises(AugPaintError, match="data.num_labeled"):
        build_dataset(raw, cfg)


def test_flipped_affine_gives_same_slices(tiny_cfg, raw):
    ref = build_dataset(raw, tiny_cfg)
    for p in list((raw / "imagesTr").glob("*.nii.gz")) + list((raw / "labelsTr").glob("*.nii.gz")):
        img = nib.load(p)
        data = np.asarray(img.dataobj)[::-1]  # flip the first axis and say so in the affine
        aff = img.affine.copy()
        aff[:, 3] = aff[:, 3] + aff[:, 0] * (data.shape[0] - 1)
        aff[:, 0] = -aff[:, 0]
        nib.save(nib.Nifti1Image(data, aff), p)
    flipped = build_dataset(raw, tiny_cfg)
    assert np.array_equal(ref.images, flipped.images) and np.array_equal(ref.labels, flipped.labels)


def _expect_clean_error(tiny_cfg, raw, tmp_path, match):
    out = tmp_path / "out"
    with pytest.raises(AugPaintError, match=match) as e:
        preprocess(tiny_cfg, out, raw)
    assert "\n" not in str(e.value)
    assert not out.exists()  # nothing that looks like a finished artifact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]
    return str(e.value)


def test_dataset_without_labels(tiny_cfg, raw, tmp_path):
    import shutil

    shutil.rmtree(raw / "labelsTr")
    msg = _expect_clean_error(tiny_cfg, raw, tmp_path, "labelsTr")
    assert "no labels" in msg


def test_label_shape_differs_from_image(tiny_cfg, raw, tmp_path):
    p = raw / "labelsTr" / "phantom_003.nii.gz"
    img = nib.load(p)
    nib.save(nib.Nifti1Image(np.zeros((40, 48, 4), np.uint8) + 1, img.affine), p)
    msg = _expect_clean_error(tiny_cfg, raw, tmp_path, "phantom_003.nii.gz")
    assert "shape" in msg


def test_label_without_foreground(tiny_cfg, raw, tmp_path):
    p = raw / "labelsTr" / "phantom_005.nii.gz"
    img = nib.load(p)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), p)
    msg = _expect_clean_error(tiny_cfg, raw, tmp_path, "phantom_005.nii.gz")
    assert "no foreground" in msg


def test_label_values_not_in_dataset_json(tiny_cfg, raw, tmp_path):
    p = raw / "labelsTr" / "phantom_002.nii.gz"
    img = nib.load(p)
    lab = np.asarray(img.dataobj).copy()
    lab[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(lab, img.affine), p)
    _expect_clean_error(tiny_cfg, raw, tmp_path, r"phantom_002.nii.gz.*\[9\]")


def test_truncated_nifti(tiny_cfg, raw, tmp_path):
    p = raw / "imagesTr" / "phantom_004_0000.nii.gz"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _expect_clean_error(tiny_cfg, raw, tmp_path, "phantom_004_0000.nii.gz")


def test_missing_dataset_json(tiny_cfg, raw, tmp_path):
    (raw / "dataset.json").unlink()
    _expect_clean_error(tiny_cfg, raw, tmp_path, "dataset.json")


def test_images_without_labels_become_unlabeled(tiny_cfg, raw):
    src = raw / "imagesTr" / "phantom_000_0000.nii.gz"
    (raw / "imagesTr" / "extra_000_0000.nii.gz").write_bytes(src.read_bytes())
    ds = build_dataset(raw, tiny_cfg)
    recs = [r for r in ds.records if r["case_id"] == "extra_000"]
    assert recs and all(r["split"] == "train" and not r["labeled"] for r in recs)
