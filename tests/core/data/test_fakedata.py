"""The fake raw datasets reproduce each real format's layout, names, shapes, dtypes and label values."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from augpaint_core.errors import AugPaintError
from augpaint_core.data.fakedata import FORMATS, write_fake_dataset


def _nii(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _slices_with_fg(lab: np.ndarray) -> int:
    return int(sum(lab[..., z].any() for z in range(lab.shape[-1])))


def _cfg(path: Path) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in path.read_text().splitlines() if line)


def test_acdc_layout_info_and_frames(tmp_path):
    root = write_fake_dataset("acdc", tmp_path, num_cases=8, seed=0)
    assert root == tmp_path / "ACDC" / "database"
    assert _names(root / "training") == {f"patient{i:03d}" for i in range(1, 7)}
    assert _names(root / "testing") == {"patient007", "patient008"}
    groups, es_frames = set(), set()
    for pdir in sorted((root / "training").iterdir()) + sorted((root / "testing").iterdir()):
        name = pdir.name
        cfg = _cfg(pdir / "Info.cfg")
        assert list(cfg) == ["ED", "ES", "Group", "Height", "NbFrame", "Weight"]
        ed, es, nf = int(cfg["ED"]), int(cfg["ES"]), int(cfg["NbFrame"])
        assert 1 <= ed < es <= nf
        assert cfg["Group"] in {"NOR", "MINF", "DCM", "HCM", "RV"}
        float(cfg["Height"]), float(cfg["Weight"])
        groups.add(cfg["Group"])
        es_frames.add(es)
        assert _names(pdir) == {"Info.cfg", "MANDATORY_CITATION.md", f"{name}_4d.nii.gz",
                                f"{name}_frame{ed:02d}.nii.gz", f"{name}_frame{ed:02d}_gt.nii.gz",
                                f"{name}_frame{es:02d}.nii.gz", f"{name}_frame{es:02d}_gt.nii.gz"}
        cine, cine_img = _nii(pdir / f"{name}_4d.nii.gz")
        assert cine.ndim == 4 and cine.shape[3] == nf and cine.dtype == np.int16
        assert cine.shape[0] != cine.shape[1]  # real short-axis stacks are not square
        for fr in (ed, es):
            img, img_nii = _nii(pdir / f"{name}_frame{fr:02d}.nii.gz")
            gt, gt_nii = _nii(pdir / f"{name}_frame{fr:02d}_gt.nii.gz")
            assert img.dtype == np.int16 and gt.dtype == np.uint8
            assert img.shape == gt.shape == cine.shape[:3]
            np.testing.assert_array_equal(img, cine[..., fr - 1])  # frame files are cuts of the cine
            assert set(np.unique(gt)) == {0, 1, 2, 3}
            assert 0 <= img.min() and 200 < img.max() < 2000
            assert 2 <= _slices_with_fg(gt) < gt.shape[2]
            np.testing.assert_allclose(gt_nii.affine, img_nii.affine)
            np.testing.assert_allclose(cine_img.affine, img_nii.affine)
        zooms = np.array(img_nii.header.get_zooms())
        assert zooms[2] == zooms.max() and zooms[2] >= 5.0  # slice thickness is the coarsest
        np.testing.assert_allclose(np.abs(np.diag(img_nii.affine)[:3]), zooms, rtol=1e-5)
        assert nib.aff2axcodes(img_nii.affine) != ("R", "A", "S")
    assert len(groups) > 1 and len(es_frames) > 1  # patients differ


def test_acdc_ed_es_differ_and_lv_shrinks_at_es(tmp_path):
    root = write_fake_dataset("acdc", tmp_path, num_cases=1, seed=5, nb_frames=6)
    pdir = root / "training" / "patient001"
    cfg = _cfg(pdir / "Info.cfg")
    assert cfg["NbFrame"] == "6"
    ed, es = int(cfg["ED"]), int(cfg["ES"])
    lv_ed = (_nii(pdir / f"patient001_frame{ed:02d}_gt.nii.gz")[0] == 3).sum()
    lv_es = (_nii(pdir / f"patient001_frame{es:02d}_gt.nii.gz")[0] == 3).sum()
    assert lv_es < lv_ed


def test_msd_brats_layout_json_shapes_and_junk(tmp_path):
    root = write_fake_dataset("msd_brats", tmp_path, num_cases=3, seed=0)
    assert root == tmp_path / "Task01_BrainTumour"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["name"] == "BRATS" and meta["tensorImageSize"] == "4D"
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["labels"] == {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                              "3": "enhancing tumour"}
    assert meta["numTraining"] == 3 and meta["numTest"] == 2
    assert meta["training"] == [{"image": f"./imagesTr/BRATS_00{i}.nii.gz", "label": f"./labelsTr/BRATS_00{i}.nii.gz"}
                                for i in (1, 2, 3)]
    assert meta["test"] == ["./imagesTs/BRATS_004.nii.gz", "./imagesTs/BRATS_005.nii.gz"]
    real = {f"BRATS_00{i}.nii.gz" for i in (1, 2, 3)}
    assert _names(root / "imagesTr") == real | {"._BRATS_001.nii.gz", "._BRATS_002.nii.gz"}
    assert _names(root / "labelsTr") == real | {"._BRATS_001.nii.gz", "._BRATS_002.nii.gz"}
    assert {"BRATS_004.nii.gz", "BRATS_005.nii.gz"} <= _names(root / "imagesTs")
    junk = root / "imagesTr" / "._BRATS_001.nii.gz"
    assert junk.read_bytes()[:4] == b"\x00\x05\x16\x07"  # AppleDouble magic, not gzip
    with pytest.raises(Exception):
        nib.load(str(junk)).get_fdata()

    seen: set[int] = set()
    for name in sorted(real):
        img, img_nii = _nii(root / "imagesTr" / name)
        lab, lab_nii = _nii(root / "labelsTr" / name)
        assert img.shape == (40, 40, 12, 4) and img.dtype == np.float32
        assert lab.shape == (40, 40, 12) and lab.dtype == np.uint8
        assert set(np.unique(lab)) <= {0, 1, 2, 3}
        seen |= set(np.unique(lab).tolist())
        assert 2 <= _slices_with_fg(lab) < lab.shape[2]
        np.testing.assert_allclose(img_nii.header.get_zooms()[:3], (1.0, 1.0, 1.0))
        np.testing.assert_allclose(lab_nii.affine, img_nii.affine)
        assert img[lab == 0].min() == 0.0  # skull-stripped: zeros outside the brain
        # Channels differ: FLAIR shows the edema bright, T1gd the enhancing rim.
        flair, t1gd = img[..., 0], img[..., 2]
        assert flair[lab == 1].mean() > flair[(lab == 0) & (flair > 0)].mean() * 1.5
        assert t1gd[lab == 3].mean() > t1gd[lab == 1].mean() * 1.5
        # Nested tumour: the enhancing and necrotic core sits inside the edema.
        for z in range(lab.shape[2]):
            if (lab[..., z] >= 2).any():
                assert (lab[..., z] == 1).any()
    assert seen == {0, 1, 2, 3}
    test_img, _ = _nii(root / "imagesTs" / "BRATS_004.nii.gz")
    assert test_img.shape == (40, 40, 12, 4)
    assert not (root / "labelsTr" / "BRATS_004.nii.gz").exists()


def test_synapse_layout_hu_and_labels(tmp_path):
    root = write_fake_dataset("synapse", tmp_path, num_cases=12, seed=0)
    assert root == tmp_path / "RawData"
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 21, 22]
    assert _names(root / "Training" / "img") == {f"img{i:04d}.nii.gz" for i in ids}
    assert _names(root / "Training" / "label") == {f"label{i:04d}.nii.gz" for i in ids}
    assert _names(root / "Testing" / "img") == {"img0061.nii.gz", "img0062.nii.gz"}
    assert not (root / "Testing" / "label").exists()
    spacings = set()
    for i in ids[:4] + ids[-2:]:
        img, img_nii = _nii(root / "Training" / "img" / f"img{i:04d}.nii.gz")
        lab, lab_nii = _nii(root / "Training" / "label" / f"label{i:04d}.nii.gz")
        assert img.dtype == np.int16 and lab.dtype == np.uint8 and img.shape == lab.shape and img.ndim == 3
        labels = set(np.unique(lab).tolist())
        assert labels <= set(range(14))
        assert {1, 2, 3, 6} <= labels and len(labels - {0, 1, 2, 3, 6}) >= 2
        assert 2 <= _slices_with_fg(lab) < lab.shape[2]
        assert img.min() == -1024 and img.max() > 400  # air and bone
        assert img[lab == 6].mean() > img[lab == 0].mean()  # liver brighter than air/fat average
        assert img[lab == 2].mean() > img[lab == 6].mean()  # contrast-enhanced kidney brighter than liver
        assert np.all(np.diag(img_nii.affine)[:2] < 0)  # LPS-like negative diagonal
        np.testing.assert_allclose(lab_nii.affine, img_nii.affine)
        zooms = img_nii.header.get_zooms()
        assert zooms[2] == max(zooms)
        spacings.add(tuple(float(z) for z in zooms))
    assert len(spacings) > 1  # spacing varies per case
    test_img, _ = _nii(root / "Testing" / "img" / "img0061.nii.gz")
    assert test_img.dtype == np.int16 and test_img.ndim == 3


def test_isic_layout_and_masks(tmp_path):
    root = write_fake_dataset("isic", tmp_path, num_cases=6, seed=0)
    assert root == tmp_path
    folders = {"ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth",
               "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"}
    assert _names(root) == folders
    for f in folders:
        assert {"ATTRIBUTION.txt", "LICENSE.txt"} <= _names(root / f)
    ids = {}
    for split, n in (("Training", 6), ("Validation", 2)):
        inputs = sorted((root / f"ISIC2018_Task1-2_{split}_Input").glob("*.jpg"))
        assert len(inputs) == n
        masks = sorted((root / f"ISIC2018_Task1_{split}_GroundTruth").glob("*.png"))
        assert [m.name for m in masks] == [p.stem + "_segmentation.png" for p in inputs]
        ids[split] = {p.stem for p in inputs}
        sizes = set()
        for p, m in zip(inputs, masks):
            assert len(p.stem) == len("ISIC_0000000") and p.stem[:5] == "ISIC_" and p.stem[5:].isdigit()
            im, mk = Image.open(p), Image.open(m)
            assert im.format == "JPEG" and im.mode == "RGB" and mk.format == "PNG" and mk.mode == "L"
            assert im.size == mk.size and im.size[0] != im.size[1]
            sizes.add(im.size)
            a = np.asarray(mk)
            assert set(np.unique(a).tolist()) == {0, 255}
            rgb = np.asarray(im).astype(np.float32)
            assert rgb[a == 255].mean() < rgb[a == 0].mean()  # the lesion is darker than the skin
        if split == "Training":
            assert len(sizes) > 1
    assert not ids["Training"] & ids["Validation"]


def test_nnunet_layout_and_custom_channels(tmp_path):
    root = write_fake_dataset("nnunet", tmp_path, num_cases=3, seed=0)
    assert root == tmp_path / "Dataset042_Fake"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta == {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "PZ": 1, "TZ": 2},
                    "numTraining": 3, "file_ending": ".nii.gz", "name": "Fake"}
    cases = ["fake_001", "fake_002", "fake_003"]
    assert _names(root / "imagesTr") == {f"{c}_{ch:04d}.nii.gz" for c in cases for ch in (0, 1)}
    assert _names(root / "labelsTr") == {f"{c}.nii.gz" for c in cases}
    assert _names(root / "imagesTs") == {"fake_004_0000.nii.gz", "fake_004_0001.nii.gz"}
    for c in cases:
        lab, lab_nii = _nii(root / "labelsTr" / f"{c}.nii.gz")
        assert lab.dtype == np.uint8 and lab.ndim == 3 and set(np.unique(lab).tolist()) == {0, 1, 2}
        assert 2 <= _slices_with_fg(lab) < lab.shape[2]
        np.testing.assert_allclose(lab_nii.header.get_zooms(), (0.6, 0.6, 3.6), rtol=1e-6)
        for ch in (0, 1):
            img, img_nii = _nii(root / "imagesTr" / f"{c}_{ch:04d}.nii.gz")
            assert img.shape == lab.shape and img.dtype == np.float32
            np.testing.assert_allclose(img_nii.affine, lab_nii.affine)

    other = write_fake_dataset("nnunet", tmp_path / "other", num_cases=1, num_test=0, shape=(20, 24, 6),
                               channel_names={"0": "CT"}, labels={"background": 0, "a": 1, "b": 2, "c": 3})
    meta = json.loads((other / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["labels"]["c"] == 3
    assert _names(other / "imagesTr") == {"fake_001_0000.nii.gz"}
    assert not (other / "imagesTs").exists()
    lab, _ = _nii(other / "labelsTr" / "fake_001.nii.gz")
    assert lab.shape == (20, 24, 6) and set(np.unique(lab).tolist()) == {0, 1, 2, 3}


def test_nnunet_png_layout_and_labels(tmp_path):
    root = write_fake_dataset("nnunet_png", tmp_path, num_cases=4, seed=0)
    assert root == tmp_path / "Dataset043_FakePNG"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert meta["labels"] == {"background": 0, "lesion": 1}
    assert meta["numTraining"] == 4 and meta["file_ending"] == ".png"
    cases = [f"fake_{i:03d}" for i in range(1, 5)]
    assert _names(root / "imagesTr") == {f"{c}_0000.png" for c in cases}  # one RGB file, not one per channel
    assert _names(root / "labelsTr") == {f"{c}.png" for c in cases}
    assert _names(root / "imagesTs") == {"fake_005_0000.png"}
    for c in cases:
        im, lb = Image.open(root / "imagesTr" / f"{c}_0000.png"), Image.open(root / "labelsTr" / f"{c}.png")
        assert im.mode == "RGB" and lb.mode == "L" and im.size == lb.size
        assert set(np.unique(np.asarray(lb)).tolist()) == {0, 1}


def _arrays(root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name.startswith("._") or not p.is_file():
            continue
        if p.name.endswith(".nii.gz"):
            out[str(p.relative_to(root))] = np.asanyarray(nib.load(str(p)).dataobj).tobytes()
        elif p.suffix in (".png", ".jpg"):
            out[str(p.relative_to(root))] = np.asarray(Image.open(p)).tobytes()
        else:
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_deterministic_from_seed(tmp_path, fmt):
    kw = {"num_cases": 2}
    a = _arrays(write_fake_dataset(fmt, tmp_path / "a", seed=7, **kw))
    b = _arrays(write_fake_dataset(fmt, tmp_path / "b", seed=7, **kw))
    c = _arrays(write_fake_dataset(fmt, tmp_path / "c", seed=8, **kw))
    assert a and a == b
    images = [k for k in a if k.endswith((".nii.gz", ".png", ".jpg"))]
    assert images and any(k not in c or a[k] != c[k] for k in images)


def test_shape_override_brats_size_and_errors(tmp_path):
    root = write_fake_dataset("msd_brats", tmp_path, num_cases=1, num_test=0, shape=(24, 20, 16, 4))
    img, _ = _nii(root / "imagesTr" / "BRATS_001.nii.gz")
    assert img.shape == (24, 20, 16, 4)
    root = write_fake_dataset("isic", tmp_path / "isic", num_cases=2, shape=(30, 50))
    for p in (root / "ISIC2018_Task1-2_Training_Input").glob("*.jpg"):
        assert Image.open(p).size == (50, 30)
    with pytest.raises(AugPaintError, match="msd_brats"):
        write_fake_dataset("msd_brats", tmp_path, shape=(24, 20, 16, 3))
    with pytest.raises(AugPaintError, match="num_cases"):
        write_fake_dataset("synapse", tmp_path, num_cases=0)


def test_unknown_format_names_the_valid_ones(tmp_path):
    with pytest.raises(AugPaintError) as err:
        write_fake_dataset("brats2021", tmp_path)
    for fmt in FORMATS:
        assert fmt in str(err.value)
    assert not any(tmp_path.iterdir())
