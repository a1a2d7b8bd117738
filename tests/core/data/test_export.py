"""nnU-Net v2 export: layout, round trip through our own nnunet ingest, an honest split, and nnU-Net's own check."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from augpaint_core.cli import main
from augpaint_core.config import DataConfig
from augpaint_core.data.dataset import load_dataset, save_dataset
from augpaint_core.data.export import export_nnunet
from augpaint_core.data.ingest import read_case, scan
from augpaint_core.errors import AugPaintError
from augpaint_core.infra.artifacts import write_artifact_meta

REAL = re.compile(r"^(?P<case>.+)_z(?P<slice>\d{3})$")
SYN = re.compile(r"^syn_(?P<case>.+)_z(?P<slice>\d{3})_n(?P<sample>\d{2})$")


@pytest.fixture(scope="module")
def exported(pipeline_artifacts, tmp_path_factory) -> Path:
    a = pipeline_artifacts
    return export_nnunet(a["dataset"], tmp_path_factory.mktemp("nnunet_raw") / "Dataset500_Tiny",
                         synthetic=a["filtered"])


def _ids(folder: Path, suffix: str) -> list[str]:
    return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))


def test_layout_counts_and_dataset_json(exported, pipeline_artifacts):
    ds, flt = load_dataset(pipeline_artifacts["dataset"]), load_dataset(pipeline_artifacts["filtered"])
    meta = json.loads((exported / "dataset.json").read_text())
    n_real = len(ds.where(split="train", labeled=True))
    assert meta["numTraining"] == n_real + len(flt.records)
    assert meta["file_ending"] == ".png"
    assert meta["labels"] == {"background": 0, **{c: k + 1 for k, c in enumerate(ds.class_names)}}
    assert meta["channel_names"] == {"0": "image"}  # the phantom is gray: one channel, not three copies
    assert np.asarray(Image.open(next((exported / "imagesTr").glob("syn_*")))).ndim == 2
    tr = _ids(exported / "imagesTr", "_0000.png")
    assert tr == _ids(exported / "labelsTr", ".png") and len(tr) == meta["numTraining"]
    assert sum(bool(SYN.match(i)) for i in tr) == len(flt.records)
    ts = _ids(exported / "imagesTs", "_0000.png")
    assert ts == _ids(exported / "labelsTs", ".png") and len(ts) == len(ds.where(split="test"))
    art = json.loads((exported / "artifact.json").read_text())
    assert art["inputs"]["dataset"]["content_sha256"] == json.loads(
        (pipeline_artifacts["dataset"] / "artifact.json").read_text())["content_sha256"]
    assert art["counts"]["training_synthetic"] == len(flt.records)
    # every synthetic case's seed and sampler are in the side file, keyed by the case name
    side = {c["id"]: c for c in json.loads((exported / "augpaint_cases.json").read_text())}
    for r in flt.records:
        p = r["provenance"]
        c = side[f"syn_{p['source_case']}_z{p['source_slice']:03d}_n{p['sample_index']:02d}"]
        assert (c["seed"], c["sampler"], c["source_case"]) == (p["seed"], p["sampler"], p["source_case"])
    assert not list(exported.parent.glob(".*partial*"))


def test_round_trip_through_our_nnunet_ingest(exported, pipeline_artifacts):
    ds, flt = load_dataset(pipeline_artifacts["dataset"]), load_dataset(pipeline_artifacts["filtered"])
    real = {(r["case_id"], r["slice_index"]): i for i, r in enumerate(ds.records)}
    syn = {(r["provenance"]["source_case"], r["provenance"]["source_slice"], r["provenance"]["sample_index"]): i
           for i, r in enumerate(flt.records)}
    src = scan(exported, "nnunet")
    assert src.format == "nnunet" and src.class_names == ds.class_names
    d = DataConfig()
    reader = {**src.reader, "ct_window": list(d.ct_window), "mri_percentiles": list(d.mri_percentiles)}
    size = ds.images.shape[1]
    checked = {"real": 0, "syn": 0, "test": 0}
    for case in src.cases:
        name = case.case_id.removeprefix("ts_")
        # Slices without foreground come back too: an empty label is valid labeled data.
        img, lab = read_case("nnunet", case, reader, size)
        if m := SYN.match(name):
            i = syn[(m["case"], int(m["slice"]), int(m["sample"]))]
            # gray data: a synthetic slice is stored as its channel mean, exact where its channels agree
            mean = np.rint(flt.images[i].astype(np.float32).mean(-1)).astype(np.uint8)
            want_img, want_lab, kind = np.repeat(mean[..., None], 3, -1), flt.labels[i], "syn"
            agree = (flt.images[i] == flt.images[i][..., :1]).all(-1)
            assert agree[flt.labels[i] > 0].all()  # the pasted labeled box is gray
            np.testing.assert_array_equal(img[0][agree], flt.images[i][agree])
        else:
            m = REAL.match(name)
            i = real[(m["case"], int(m["slice"]))]
            want_img, want_lab = ds.images[i], ds.labels[i]
            kind = "test" if case.label is None else "real"
            if kind == "test":  # imagesTs has no labels for nnU-Net; ours are kept apart in labelsTs
                lab = np.asarray(Image.open(exported / "labelsTs" / f"{name}.png"))[None]
                assert ds.records[i]["split"] == "test"
        np.testing.assert_array_equal(img[0], want_img)
        np.testing.assert_array_equal(lab[0], want_lab)
        checked[kind] += 1
    train = ds.where(split="train", labeled=True)
    assert checked["real"] == len(train) and checked["real"] > 0
    assert checked["syn"] == len(flt.records) and checked["test"] == len(ds.where(split="test"))


def test_split_is_honest(exported, pipeline_artifacts):
    ds = load_dataset(pipeline_artifacts["dataset"])
    patient = {r["case_id"]: r["patient_id"] for r in ds.records}
    test_patients = {r["patient_id"] for r in ds.records if r["split"] == "test"}
    labeled_train = {(r["case_id"], r["slice_index"]) for r in ds.records if r["split"] == "train" and r["labeled"]}
    assert test_patients
    for name in _ids(exported / "imagesTr", "_0000.png"):
        m = SYN.match(name) or REAL.match(name)
        assert patient[m["case"]] not in test_patients, name
        assert (m["case"], int(m["slice"])) in labeled_train, name  # also: every synthetic source is labeled train
    for name in _ids(exported / "imagesTs", "_0000.png"):
        assert patient[REAL.match(name)["case"]] in test_patients
    folds = json.loads((exported / "splits_final.json").read_text()) if (exported / "splits_final.json").exists() \
        else []
    for f in folds:  # nnU-Net's own folds never split a patient (or a synthetic child from its source)
        assert not {patient[(SYN.match(i) or REAL.match(i))["case"]] for i in f["train"]} & \
            {patient[(SYN.match(i) or REAL.match(i))["case"]] for i in f["val"]}


def _tampered_synthetic(pipeline_artifacts, folder: Path, source_index: int) -> Path:
    """A copy of the filtered set whose first sample claims to come from ``source_index`` of the dataset."""
    ds = load_dataset(pipeline_artifacts["dataset"])
    flt = load_dataset(pipeline_artifacts["filtered"])
    src = ds.records[source_index]
    flt.records[0]["provenance"] = {**flt.records[0]["provenance"], "source_index": source_index,
                                    "source_case": src["case_id"], "source_slice": src["slice_index"]}
    folder.mkdir()
    save_dataset(flt, folder)
    write_artifact_meta(folder, kind="dataset", stage="filter", config=None, seed=0,
                        inputs={"dataset": pipeline_artifacts["dataset"]})
    return folder


def test_synthetic_from_a_test_patient_is_refused(pipeline_artifacts, tmp_path):
    ds = load_dataset(pipeline_artifacts["dataset"])
    bad = _tampered_synthetic(pipeline_artifacts, tmp_path / "bad", int(ds.where(split="test")[0]))
    with pytest.raises(AugPaintError, match="test split"):
        export_nnunet(pipeline_artifacts["dataset"], tmp_path / "Dataset501_Bad", synthetic=bad)
    assert not (tmp_path / "Dataset501_Bad").exists()
    # the same samples pointing at a labeled training slice are fine: the check is not a blanket refusal
    good = _tampered_synthetic(pipeline_artifacts, tmp_path / "good", int(ds.where(split="train", labeled=True)[0]))
    assert export_nnunet(pipeline_artifacts["dataset"], tmp_path / "Dataset502_Good", synthetic=good).is_dir()


def test_synthetic_from_another_dataset_is_refused(pipeline_artifacts, tmp_path):
    other = tmp_path / "other"
    ds = load_dataset(pipeline_artifacts["dataset"])
    ds.images[0] = 255 - ds.images[0]  # another dataset: different content, same records
    other.mkdir()
    save_dataset(ds, other)
    write_artifact_meta(other, kind="dataset", stage="preprocess", config=None, seed=0)
    with pytest.raises(AugPaintError, match="another dataset"):
        export_nnunet(other, tmp_path / "Dataset503_X", synthetic=pipeline_artifacts["filtered"])


def test_cli_refuses_existing_out_and_bad_name(pipeline_artifacts, tmp_path, capsys):
    a = pipeline_artifacts
    out = tmp_path / "Dataset504_Cli"
    assert main(["export", "--format", "nnunet", "--in", str(a["dataset"]), "--synthetic", str(a["filtered"]),
                 "--out", str(out)]) == 0
    assert "training cases" in capsys.readouterr().out
    before = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert main(["export", "--in", str(a["dataset"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--force" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == before  # untouched
    assert main(["export", "--in", str(a["dataset"]), "--out", str(out), "--force"]) == 0  # without synthetic now
    assert not list((out / "imagesTr").glob("syn_*"))
    assert main(["export", "--in", str(a["dataset"]), "--out", str(tmp_path / "my_export")]) == 2
    assert "DatasetNNN_Name" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*partial*"))


NNUNET_CHECK = """
import sys
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
for folder in sys.argv[1:]:
    print("=== CHECK", folder)
    try:
        verify_dataset_integrity(folder, num_processes=1)
        print("=== PASSED")
    except Exception as err:  # nnU-Net reports with assert / RuntimeError
        print("=== FAILED", type(err).__name__, err)
"""


@pytest.fixture(scope="module")
def nnunet_verdicts(exported, tmp_path_factory) -> dict[str, str]:
    """nnU-Net's integrity check on the export and on a copy with a label value outside dataset.json, in one
    process (importing nnunetv2 is most of the cost): folder name -> that check's output."""
    import shutil

    tmp = tmp_path_factory.mktemp("nnunet_check")
    bad = tmp / "raw" / "Dataset599_BadLabel"
    shutil.copytree(exported, bad)
    first = sorted((bad / "labelsTr").glob("*.png"))[0]
    lab = np.asarray(Image.open(first)).copy()
    lab[0, 0] = 9
    Image.fromarray(lab).save(first)
    # nnunetv2 reads these at import time; a subprocess keeps them out of this test process
    env = {**os.environ, "nnUNet_raw": str(tmp / "raw"), "nnUNet_preprocessed": str(tmp / "pre"),
           "nnUNet_results": str(tmp / "res"), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}  # the pool workers' messages must land in their check's section
    res = subprocess.run([sys.executable, "-c", NNUNET_CHECK, str(exported), str(bad)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    parts = res.stdout.split("=== CHECK ")[1:]
    assert len(parts) == 2, res.stdout + res.stderr
    return {Path(p.splitlines()[0].strip()).name: p for p in parts}


def test_nnunet_accepts_the_export(exported, nnunet_verdicts):
    out = nnunet_verdicts[exported.name]
    assert "=== PASSED" in out and "verify_dataset_integrity Done" in out and "Error" not in out, out


def test_nnunet_check_can_fail(nnunet_verdicts):
    """The same check on a copy with a bad label value fails: the test above can fail too."""
    out = nnunet_verdicts["Dataset599_BadLabel"]
    assert "=== FAILED" in out and "Unexpected labels" in out, out


def _rgb_dataset(folder: Path) -> Path:
    """Four patients, RGB slices: p0 labeled train, p1 unlabeled train, p2 val, p3 test."""
    from augpaint_core.data.dataset import SliceDataset

    rng = np.random.default_rng(0)
    plan = [("p0", "train", True), ("p0", "train", True), ("p1", "train", False), ("p2", "val", True),
            ("p3", "test", True)]
    images = rng.integers(0, 256, (len(plan), 16, 16, 3), dtype=np.uint8)
    labels = np.zeros((len(plan), 16, 16), np.uint8)
    labels[:, 4:9, 5:10] = 1
    labels[:, 10:12, 2:6] = 2
    labels[2] = 0  # unlabeled: no labels stored
    recs = [{"case_id": f"{p}_a", "patient_id": p, "slice_index": k, "split": sp, "labeled": lab, "source": "real",
             "provenance": {}} for k, (p, sp, lab) in enumerate(plan)]
    folder.mkdir()
    save_dataset(SliceDataset(images, labels, recs, ["a", "b"]), folder)
    write_artifact_meta(folder, kind="dataset", stage="preprocess", config=None, seed=0)
    return folder


def test_rgb_data_and_validation_slices(tmp_path):
    ds_path = _rgb_dataset(tmp_path / "ds")
    ds = load_dataset(ds_path)
    out = export_nnunet(ds_path, tmp_path / "raw" / "Dataset506_Rgb")
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert _ids(out / "imagesTr", "_0000.png") == ["p0_a_z000", "p0_a_z001"]  # no val, no unlabeled slice
    assert _ids(out / "imagesTs", "_0000.png") == ["p3_a_z004"]
    for name, i in (("p0_a_z001", 1),):
        np.testing.assert_array_equal(np.asarray(Image.open(out / "imagesTr" / f"{name}_0000.png")), ds.images[i])
        np.testing.assert_array_equal(np.asarray(Image.open(out / "labelsTr" / f"{name}.png")), ds.labels[i])
    assert not (out / "splits_final.json").exists()  # one training patient: no patient-grouped folds
    out = export_nnunet(ds_path, tmp_path / "raw" / "Dataset507_Val", include_val=True)
    assert _ids(out / "imagesTr", "_0000.png") == ["p0_a_z000", "p0_a_z001", "p2_a_z003"]
    folds = json.loads((out / "splits_final.json").read_text())
    assert [f["val"] for f in folds] == [["p0_a_z000", "p0_a_z001"], ["p2_a_z003"]]
