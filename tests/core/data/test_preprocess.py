"""Preprocess end to end on format-faithful fakes: formats, splits, k, seeds, orientation, bad input."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from augpaint_core.infra.artifacts import read_artifact_meta
from augpaint_core.cli import main
from augpaint_core.config import parse_config
from augpaint_core.data.dataset import load_dataset
from augpaint_core.errors import AugPaintError
from augpaint_core.data.fakedata import write_fake_dataset
from augpaint_core.data.preprocess import preprocess, split_patients
from tests.conftest import tiny_dict

DETECTED = {"acdc": "acdc", "msd_brats": "msd", "synapse": "synapse", "isic": "isic", "nnunet": "nnunet",
            "nnunet_png": "nnunet"}


def cfg_with(*overrides: str):
    return parse_config(tiny_dict(), "tiny", ["data.split=[0.6,0.2,0.2]", *overrides])


def splits_of(ds) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in ds.records:
        out.setdefault(r["patient_id"], set()).add(r["split"])
    return out


def arrays(path):
    ds = load_dataset(path)
    return np.asarray(ds.images), np.asarray(ds.labels), ds.records


@pytest.mark.parametrize("fmt", sorted(DETECTED))
def test_cli_preprocess_auto_detects_each_format(fmt, tmp_path, capsys):
    raw = write_fake_dataset(fmt, tmp_path / "raw", num_cases=8, seed=1)
    cfgf = tmp_path / "c.yaml"
    cfgf.write_text(json.dumps(tiny_dict()))
    rc = main(["preprocess", "--config", str(cfgf), "--set", "data.split=[0.6,0.2,0.2]", "--format", "auto",
               "--in", str(tmp_path / "raw"), "--out", str(tmp_path / "ds"), "--tracking-uri", "none"])
    assert rc == 0, capsys.readouterr().err
    assert f"preprocess: {DETECTED[fmt]} " in capsys.readouterr().out
    ds = load_dataset(tmp_path / "ds")
    rep = json.loads((tmp_path / "ds" / "preprocess_report.json").read_text())
    # ACDC: the paper's patients are those under training/ (testing/ is left out).
    assert rep["format"] == DETECTED[fmt] and Path(rep["root"]) == (raw / "training" if fmt == "acdc" else raw)
    assert ds.images.shape[1:] == (32, 32, 3) and ds.images.dtype == np.uint8
    assert {r["split"] for r in ds.records} == {"train", "val", "test"}
    labels = np.asarray(ds.labels)
    assert set(np.unique(labels)) == set(range(len(ds.class_names) + 1))  # every class survives the resize
    assert all(len(s) == 1 for s in splits_of(ds).values())


def test_acdc_uses_info_cfg_frames_and_keeps_patients_together(tmp_path):
    raw = write_fake_dataset("acdc", tmp_path / "raw", num_cases=12, seed=0)
    ds = load_dataset(preprocess(cfg_with(), tmp_path / "ds", raw))
    info = (raw / "training" / "patient001" / "Info.cfg").read_text()
    ed = int(info.split("ED:")[1].split()[0])
    es = int(info.split("ES:")[1].split()[0])
    p1 = {r["case_id"]: r["provenance"] for r in ds.records if r["patient_id"] == "patient001"}
    assert p1["patient001_ED"]["files"] == [f"patient001_frame{ed:02d}.nii.gz"]
    assert p1["patient001_ES"]["label_file"] == f"patient001_frame{es:02d}_gt.nii.gz"
    training = {p.name for p in (raw / "training").iterdir()}
    assert {r["patient_id"] for r in ds.records} == training  # the paper's 100 training patients, not testing/
    assert ds.class_names == ["RV", "MYO", "LV"]


def test_isic_official_validation_is_the_test_split(tmp_path):
    raw = write_fake_dataset("isic", tmp_path / "raw", num_cases=10, seed=0)
    ds = load_dataset(preprocess(cfg_with("data.num_labeled=3"), tmp_path / "ds", raw))
    val_ids = {p.stem for p in (raw / "ISIC2018_Task1-2_Validation_Input").glob("ISIC_*.jpg")}
    test_ids = {r["case_id"] for r in ds.records if r["split"] == "test"}
    assert test_ids == val_ids and len(val_ids) >= 2
    train = [r for r in ds.records if r["split"] == "train"]
    assert sum(r["labeled"] for r in train) == 3 and len(train) + sum(r["split"] == "val" for r in ds.records) == 10
    assert set(np.unique(np.asarray(ds.labels))) == {0, 1}  # 255 -> class 1


def _write_synapse_case(root: Path, num: int, lab: np.ndarray, hu: float = 40.0) -> None:
    aff = np.diag([-1.0, -1.0, 3.0, 1.0])
    for sub, data in (("img", np.full(lab.shape, hu, np.int16)), ("label", lab.astype(np.uint8))):
        (root / "Training" / sub).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, aff), root / "Training" / sub / f"{sub}{num:04d}.nii.gz")


def test_synapse_keeps_four_organs_remapped(tmp_path):
    from augpaint_core.data.ingest import read_case, scan

    lab = np.zeros((16, 16, 4), np.uint8)
    lab[1:4, 1:4] = 1       # spleen
    lab[5:8, 1:4] = 2       # right kidney
    lab[9:12, 1:4] = 3      # left kidney
    lab[1:8, 6:14] = 6      # liver
    lab[10:14, 6:10] = 7    # stomach: not kept
    lab[10:14, 11:14] = 8   # aorta: not kept
    _write_synapse_case(tmp_path / "RawData", 1, lab)
    src = scan(tmp_path / "RawData")
    assert src.format == "synapse" and src.class_names == ["spleen", "right kidney", "left kidney", "liver"]
    src.reader.update(ct_window=[-125, 275], mri_percentiles=[0.5, 99.5])
    img, out = read_case(src.format, src.cases[0], src.reader, 16)
    # The affine flips x and y, so compare after undoing that (RAS canonical).
    want = lab[::-1, ::-1].transpose(2, 0, 1)
    assert np.array_equal(out == 4, want == 6) and np.array_equal(out == 1, want == 1)
    assert not out[(want == 7) | (want == 8)].any()
    assert img.shape == (4, 16, 16, 3) and int(img[0, 0, 0, 0]) == round(255 * (40 + 125) / 400)  # CT window


def test_brats_flair_channel_and_regions(tmp_path):
    raw = write_fake_dataset("msd_brats", tmp_path / "raw", num_cases=8, seed=0)
    ds = load_dataset(preprocess(cfg_with(), tmp_path / "ds", raw))
    assert ds.regions == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert ds.class_names == ["edema", "non-enhancing tumor", "enhancing tumour"]
    t2 = load_dataset(preprocess(cfg_with("data.channels=[T2w]"), tmp_path / "t2", raw))
    assert not np.array_equal(np.asarray(ds.images), np.asarray(t2.images))  # FLAIR by default, not channel 3
    assert not any("._" in f for r in ds.records for f in r["provenance"]["files"])
    first = next(r for r in ds.records if r["split"] == "test")
    assert first["provenance"]["files"][0].startswith("BRATS_")


def test_region_metrics_on_hand_masks():
    from augpaint_core.segmentation.metrics import region_metrics

    gt = np.zeros((1, 8, 8), np.uint8)
    gt[0, 1:7, 1:7] = 1
    gt[0, 2:6, 2:6] = 2
    gt[0, 3:5, 3:5] = 3
    pred = np.where(gt > 0, 1, 0)  # whole tumour right, core and enhancing missed
    m = region_metrics(pred, gt, {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]})
    assert m["WT"]["dice"] == 1.0 and m["TC"]["dice"] == 0.0 and m["ET"]["dice"] == 0.0


def test_no_patient_in_two_splits_and_seeds_give_independent_splits(tmp_path):
    raw = write_fake_dataset("acdc", tmp_path / "raw", num_cases=12, seed=0)
    tests = []
    for seed in (0, 1, 2):
        ds = load_dataset(preprocess(cfg_with(f"data.split_seed={seed}"), tmp_path / f"s{seed}", raw))
        sp = splits_of(ds)
        assert all(len(s) == 1 for s in sp.values()), "a patient appears in two splits"
        cases = {r["case_id"] for r in ds.records}
        assert all(c.split("_")[0] in sp for c in cases)
        tests.append(frozenset(p for p, s in sp.items() if s == {"test"}))
    assert len(set(tests)) > 1


def test_split_fractions():
    sp, order = split_patients([f"p{i:03d}" for i in range(100)], (0.7, 0.15, 0.15), seed=0)
    counts = {s: sum(v == s for v in sp.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 70, "val": 15, "test": 15} and len(order) == 70
    sp, _ = split_patients([f"p{i:03d}" for i in range(100)], (0.9, 0.05, 0.05), seed=0)
    assert sum(v == "test" for v in sp.values()) == 5
    sp, _ = split_patients([f"p{i:03d}" for i in range(30)], (2, 1, 1), seed=0)
    assert [sum(v == s for v in sp.values()) for s in ("train", "val", "test")] == [14, 8, 8]
    sp, _ = split_patients([f"p{i:03d}" for i in range(10)], (0.8, 0.2, 0.5), seed=0, fixed_test=True)
    assert sum(v == "test" for v in sp.values()) == 0 and sum(v == "val" for v in sp.values()) == 2


@pytest.mark.parametrize("k", [1, 2, 5])
def test_exactly_k_labeled_patients(k, tmp_path):
    raw = write_fake_dataset("acdc", tmp_path / "raw", num_cases=16, seed=0, shape=(20, 16, 4))
    out = preprocess(cfg_with(f"data.num_labeled={k}"), tmp_path / "ds", raw)
    ds = load_dataset(out)
    labeled = {r["patient_id"] for r in ds.records if r["split"] == "train" and r["labeled"]}
    assert len(labeled) == k
    unl = ds.where(split="train", labeled=False)
    assert len(unl) and not np.asarray(ds.labels[unl]).any()  # S^u labels are not stored
    assert set(read_artifact_meta(out)["labeled_cases"]) == labeled


def test_same_seed_same_dataset_other_seed_other_split(tmp_path):
    raw = write_fake_dataset("nnunet", tmp_path / "raw", num_cases=8, seed=0)
    a = arrays(preprocess(cfg_with(), tmp_path / "a", raw))
    b = arrays(preprocess(cfg_with(), tmp_path / "b", raw))
    c = arrays(preprocess(cfg_with("seed=5"), tmp_path / "c", raw))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert {r["patient_id"]: r["split"] for r in a[2]} != {r["patient_id"]: r["split"] for r in c[2]}


def test_parallel_workers_give_identical_output(tmp_path):
    raw = write_fake_dataset("msd_brats", tmp_path / "raw", num_cases=6, seed=0)
    one = arrays(preprocess(cfg_with("data.shard_size=7"), tmp_path / "one", raw, workers=1))
    two = arrays(preprocess(cfg_with("data.shard_size=7"), tmp_path / "two", raw, workers=2))
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1]) and one[2] == two[2]
    assert json.loads((tmp_path / "two" / "preprocess_report.json").read_text())["workers"] == 2


def _flip_x(path: Path) -> None:
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)[::-1]
    aff = img.affine.copy()
    aff[:, 3] = aff[:, 3] + aff[:, 0] * (data.shape[0] - 1)
    aff[:, 0] = -aff[:, 0]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), aff), path)


def _swap_xy(path: Path) -> None:
    img = nib.load(path)
    data = np.asanyarray(img.dataobj).swapaxes(0, 1)
    aff = img.affine.copy()
    aff[:, [0, 1]] = aff[:, [1, 0]]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), aff), path)


@pytest.mark.parametrize("change", [_flip_x, _swap_xy])
def test_reoriented_volumes_give_the_same_slices(change, tmp_path):
    raw = write_fake_dataset("acdc", tmp_path / "raw", num_cases=6, seed=0)
    ref = arrays(preprocess(cfg_with(), tmp_path / "ref", raw))
    for p in raw.rglob("*_frame*.nii.gz"):
        change(p)
    moved = arrays(preprocess(cfg_with(), tmp_path / "moved", raw))
    assert np.array_equal(ref[0], moved[0]) and np.array_equal(ref[1], moved[1])


# ----------------------------------------------------------------------------------------------
# Bad input: a clear one-line error naming the file, nothing that looks complete; or skip + report.


def _clean_error(cfg, raw, tmp_path, match) -> str:
    out = tmp_path / "out"
    with pytest.raises(AugPaintError, match=match) as e:
        preprocess(cfg, out, raw)
    assert "\n" not in str(e.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]
    return str(e.value)


def _skip_report(raw, tmp_path, bad: Path) -> dict:
    out = preprocess(cfg_with("data.on_error=skip"), tmp_path / "skipped", raw)
    rep = json.loads((out / "preprocess_report.json").read_text())
    assert [s["file"] for s in rep["skipped"]] == [str(bad)] and rep["cases_read"] > 0
    assert not any(bad.name in f for r in load_dataset(out).records
                   for f in r["provenance"]["files"] + [r["provenance"]["label_file"]])
    return rep


def _nnunet(tmp_path) -> Path:
    return write_fake_dataset("nnunet", tmp_path / "raw", num_cases=8, seed=0, num_test=0)


def test_truncated_nifti(tmp_path):
    raw = _nnunet(tmp_path)
    bad = raw / "labelsTr" / "fake_004.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    msg = _clean_error(cfg_with(), raw, tmp_path, "fake_004.nii.gz")
    assert "cannot read NIfTI" in msg and "on_error=skip" in msg
    _skip_report(raw, tmp_path, bad)


def test_corrupt_image_bytes(tmp_path):
    raw = _nnunet(tmp_path)
    bad = raw / "imagesTr" / "fake_002_0001.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    _clean_error(cfg_with(), raw, tmp_path, "fake_002_0001.nii.gz")


def test_label_shape_differs_from_image(tmp_path):
    raw = _nnunet(tmp_path)
    bad = raw / "labelsTr" / "fake_003.nii.gz"
    img = nib.load(bad)
    nib.save(nib.Nifti1Image(np.ones((5, 6, 4), np.uint8), img.affine), bad)
    assert "shape" in _clean_error(cfg_with(), raw, tmp_path, "fake_003.nii.gz")
    _skip_report(raw, tmp_path, bad)


def test_label_affine_differs_from_image(tmp_path):
    raw = _nnunet(tmp_path)
    bad = raw / "labelsTr" / "fake_005.nii.gz"
    img = nib.load(bad)
    aff = img.affine.copy()
    aff[:3, 3] += 12.0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), aff), bad)
    assert "affine" in _clean_error(cfg_with(), raw, tmp_path, "fake_005.nii.gz")


def test_label_values_not_in_dataset_json(tmp_path):
    raw = _nnunet(tmp_path)
    bad = raw / "labelsTr" / "fake_002.nii.gz"
    img = nib.load(bad)
    lab = np.asanyarray(img.dataobj).copy()
    lab[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(lab, img.affine), bad)
    _clean_error(cfg_with(), raw, tmp_path, r"fake_002.nii.gz: label values \[9\] not in .*dataset.json")
    _skip_report(raw, tmp_path, bad)


def test_4d_label(tmp_path):
    raw = _nnunet(tmp_path)
    bad = raw / "labelsTr" / "fake_001.nii.gz"
    img = nib.load(bad)
    lab = np.asanyarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.stack([lab, lab], -1), img.affine), bad)
    assert "3D label" in _clean_error(cfg_with(), raw, tmp_path, "fake_001.nii.gz")


def test_empty_label_is_valid_labeled_data(tmp_path):
    """A case without foreground (a healthy control) is labeled data in every split (defect 7)."""
    raw = _nnunet(tmp_path)
    ids = [f"fake_{i:03d}" for i in range(1, 9)]
    split, train = split_patients(ids, (0.6, 0.2, 0.2), 0)  # the split preprocess makes with seed 0
    empty = {s: next(c for c in ids if split[c] == s) for s in ("train", "val", "test")}
    for case in empty.values():
        f = raw / "labelsTr" / f"{case}.nii.gz"
        img = nib.load(f)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), f)
    out = preprocess(cfg_with(f"data.num_labeled={len(train)}"), tmp_path / "ds", raw)  # every train case labeled
    ds = load_dataset(out)
    rep = json.loads((out / "preprocess_report.json").read_text())
    assert rep["skipped"] == [] and rep["cases_read"] == 8
    for sp, case in empty.items():
        idx = [i for i, r in enumerate(ds.records) if r["case_id"] == case]
        assert idx and all(ds.records[i]["labeled"] and ds.records[i]["split"] == sp for i in idx)
        assert not np.asarray(ds.labels)[idx].any()


def test_missing_dataset_json(tmp_path):
    raw = _nnunet(tmp_path)
    (raw / "dataset.json").unlink()
    _clean_error(cfg_with(), raw, tmp_path, "dataset.json: missing")
    with pytest.raises(AugPaintError, match="dataset.json: missing"):
        preprocess(cfg_with("data.format=nnunet"), tmp_path / "o2", raw)


def test_empty_folder(tmp_path):
    (tmp_path / "raw").mkdir()
    assert "empty" in _clean_error(cfg_with(), tmp_path / "raw", tmp_path, "raw")
    with pytest.raises(AugPaintError, match="not found"):
        preprocess(cfg_with(), tmp_path / "o", tmp_path / "nowhere")


def test_isic_mask_with_bad_values_and_corrupt_jpeg(tmp_path):
    from PIL import Image

    raw = write_fake_dataset("isic", tmp_path / "raw", num_cases=8, seed=0)
    masks = sorted((raw / "ISIC2018_Task1_Training_GroundTruth").glob("*.png"))
    m = np.asarray(Image.open(masks[0])).copy()
    m[0, 0] = 128
    Image.fromarray(m).save(masks[0])
    assert "[128]" in _clean_error(cfg_with(), raw, tmp_path, masks[0].name)
    Image.fromarray(np.where(m == 128, 0, m).astype(np.uint8)).save(masks[0])
    jpg = sorted((raw / "ISIC2018_Task1-2_Training_Input").glob("*.jpg"))[1]
    jpg.write_bytes(jpg.read_bytes()[:100])
    _clean_error(cfg_with(), raw, tmp_path, jpg.name)


def test_too_many_skipped_for_k_is_an_error(tmp_path):
    raw = write_fake_dataset("nnunet", tmp_path / "raw", num_cases=5, seed=0, num_test=0)
    for p in sorted((raw / "labelsTr").glob("*.nii.gz"))[:4]:
        p.write_bytes(b"broken")
    with pytest.raises(AugPaintError, match="split is empty|num_labeled|too few"):
        preprocess(cfg_with("data.on_error=skip"), tmp_path / "o", raw)
    assert not (tmp_path / "o").exists()


def test_cli_skip_prints_the_skipped_files(tmp_path, capsys):
    raw = _nnunet(tmp_path)
    bad = raw / "labelsTr" / "fake_004.nii.gz"
    bad.write_bytes(b"not a nifti")
    cfgf = tmp_path / "c.yaml"
    cfgf.write_text(json.dumps(tiny_dict()))
    args = ["preprocess", "--config", str(cfgf), "--set", "data.split=[0.6,0.2,0.2]", "--in", str(raw),
            "--tracking-uri", "none"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fake_004.nii.gz" in err and "Traceback" not in err
    assert main(args + ["--out", str(tmp_path / "b"), "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 case(s)" in out and str(bad) in out


def test_raw_input_from_s3(s3_bucket, tmp_path):
    from augpaint_core.infra import storage

    raw = write_fake_dataset("synapse", tmp_path / "raw", num_cases=6, seed=0)
    storage.upload_dir(raw, f"s3://{s3_bucket}/raw/synapse")
    local = arrays(preprocess(cfg_with(), tmp_path / "local", raw))
    remote = arrays(preprocess(cfg_with(), tmp_path / "remote", f"s3://{s3_bucket}/raw/synapse"))
    assert np.array_equal(local[0], remote[0]) and np.array_equal(local[1], remote[1])


@pytest.mark.parametrize("fmt", ["msd_brats", "synapse", "isic", "nnunet"])
def test_official_test_images_are_generator_data_only_on_request(fmt, tmp_path):
    """Defect 6: imagesTs / MSD test / Synapse Testing / ISIC Test_Input stay out unless opted in."""
    raw = write_fake_dataset(fmt, tmp_path / "raw", num_cases=8, seed=1)
    if fmt == "isic":  # the fake has no Test_Input: two training images play the official test images
        import shutil

        tr = next(raw.rglob("*Training_Input"))
        te = tr.parent / tr.name.replace("Training", "Test")
        te.mkdir()
        for f in sorted(tr.glob("ISIC_*.jpg"))[:2]:
            shutil.copy(f, te / f.name)
    found = {}
    for opt in (False, True):
        out = preprocess(cfg_with(f"data.official_test_images={str(opt).lower()}"), tmp_path / f"ds{opt}", raw)
        rep = json.loads((out / "preprocess_report.json").read_text())
        recs = load_dataset(out).records
        official = {r["case_id"] for r in recs if r["provenance"].get("official_test")}
        assert rep["official_test_images"]["used"] is opt and rep["official_test_images"]["found"] > 0
        assert all(r["split"] == "train" and not r["labeled"] for r in recs if r["case_id"] in official)
        found[opt] = official
    assert found[False] == set() and len(found[True]) == json.loads(
        (tmp_path / "dsTrue" / "preprocess_report.json").read_text())["official_test_images"]["found"]


def test_paper_presets_leave_official_test_images_out():
    from augpaint_core.config import load_config
    from tests.conftest import REPO

    for name in ("paper", "acdc", "brats", "synapse", "isic", "demo"):
        assert load_config(REPO / "configs" / f"{name}.yaml").data.official_test_images is False
