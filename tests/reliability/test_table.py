"""Issue 14: every bad input and fault of the review, one table row per item (item 5 is the manifests').

Each row fails on the code before the fix (see the README's Reliability section for the before/after counts).
A row ends in a one-line error naming the file or field (exit 2), a documented skip, or a correct result; rows
that hand the CLI something it must not delete check the tree is unchanged afterwards.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import (cli, cli_subprocess, copy_art, edit_manifest, expect_error, expect_ok, reseal,
                       tree_digest)

NONE = ["--tracking-uri", "none"]


@pytest.fixture
def a(pipeline_artifacts, tiny_yaml, tmp_path):
    """The session's artifacts plus the config file; tests copy what they break."""
    return {**pipeline_artifacts, "yaml": tiny_yaml, "tmp": tmp_path}


def stage(a, name: str, *args) -> list[str]:
    return [name, "--config", a["yaml"], *NONE, *args]


# --------------------------------------------------------------------------------------------- 1 spool bundles

def _bundle(root: Path, records: list, files: dict[str, bytes] | None = None, raw: bytes | None = None) -> Path:
    b = root / "00000000000000000001-abcdef12"
    (b / "files").mkdir(parents=True)
    for rel, data in (files or {}).items():
        (b / rel).parent.mkdir(parents=True, exist_ok=True)
        (b / rel).write_bytes(data)
    (b / "records.jsonl").write_bytes(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in records)
                                      .encode())
    return b


@pytest.mark.parametrize("name", ["absolute", "dotdot", "corrupt"])
def test_item01_spool_bundle_is_untrusted(a, name):
    tmp = a["tmp"]
    victim = tmp / "victim" / "written-by-bundle.txt"
    victim.parent.mkdir()
    create = {"run": "offline-1", "op": "create", "experiment": "augpaint", "name": "x", "tags": {}, "parent": ""}
    rel = {"absolute": str(victim), "dotdot": "../../victim/written-by-bundle.txt", "corrupt": "files/x"}[name]
    b = _bundle(tmp / "spool", [create, {"run": "offline-1", "op": "artifact", "file": rel, "folder": None}],
                files={"files/x": b"attacker content"}, raw=b"\x00not json\xff" if name == "corrupt" else None)
    (b / rel if name == "dotdot" else victim).parent.mkdir(parents=True, exist_ok=True)
    if name == "dotdot":  # the source the traversal would read is where a real bundle folder could point
        (tmp / "spool" / "victim").mkdir(exist_ok=True)
    res = cli(["sync-tracking", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--spool", tmp / "spool"])
    expect_ok(res)
    assert not victim.exists(), "a bundle record wrote outside its folder"
    assert ("leaves its folder" if name != "corrupt" else "corrupt spool bundle") in res.err
    assert (b / "synced.json").is_file() and (b / "records.jsonl").is_file()  # marked, never deleted


# --------------------------------------------------------------------------------------------- 2 manifest paths

@pytest.mark.parametrize("path", ["absolute", "../other/shards/images-00000.npy", "../../../../../../etc/passwd"])
def test_item02_manifest_shard_paths_stay_inside(a, path):
    tmp = a["tmp"]
    ds = copy_art(a["dataset"], tmp / "ds")
    other = copy_art(a["dataset"], tmp / "other")
    rel = str(other / "shards" / "images-00000.npy") if path == "absolute" else path

    def point(m):
        m["shards"][0]["images"] = rel
        if not rel.endswith("passwd"):  # a matching hash, as an attacker would write
            from augpaint_core.infra.artifacts import sha256_file

            m["shards"][0]["images_sha256"] = sha256_file(other / "shards" / "images-00000.npy")

    edit_manifest(ds, point)
    meta = json.loads((ds / "artifact.json").read_text())  # make artifact.json agree, too
    meta["files"][rel] = json.loads((ds / "manifest.json").read_text())["shards"][0]["images_sha256"]
    meta["content_sha256"] = hashlib.sha256(json.dumps(meta["files"], sort_keys=True).encode()).hexdigest()
    (ds / "artifact.json").write_text(json.dumps(meta))
    res = cli(stage(a, "train-seg", "--in", ds, "--out", tmp / "seg"))
    expect_error(res, "manifest.json", "leaves its folder")
    assert not (tmp / "seg").exists()


# --------------------------------------------------------------------------------------------- 3 integrity

def test_item03_edited_manifest_is_refused(a):
    tmp = a["tmp"]
    ds = copy_art(a["dataset"], tmp / "ds")

    def leak(m):  # a test patient becomes labeled training data
        for r in m["records"]:
            if r["split"] == "test":
                r["split"], r["labeled"] = "train", True

    edit_manifest(ds, leak, seal=False)
    expect_error(cli(stage(a, "train-seg", "--in", ds, "--out", tmp / "seg")), f"{ds}/manifest.json", "sha256")


def test_item03_ldm_with_another_ae_is_refused(a):
    tmp = a["tmp"]
    ae2 = tmp / "ae2"
    expect_ok(cli(stage(a, "train-ae", "--in", a["dataset"], "--out", ae2, "--set", "seed=1")))
    res = cli(stage(a, "inpaint", "--in", a["dataset"], "--ae", ae2, "--ldm", a["ldm"], "--out", tmp / "syn"))
    expect_error(res, str(ae2), "not the autoencoder")
    assert not (tmp / "syn").exists()


def test_item03_segmenter_without_artifact_json_is_refused(a):
    tmp = a["tmp"]
    seg = copy_art(a["baseline"], tmp / "seg")
    (seg / "artifact.json").unlink()
    res = cli(stage(a, "evaluate", "--in", a["dataset"], "--baseline", seg, "--augpaint", a["augpaint"],
                    "--out", tmp / "rep"))
    expect_error(res, str(seg), "artifact.json")


# --------------------------------------------------------------------------------------------- 4 secrets

def test_item04_tracking_uri_password_is_never_printed(a):
    tmp = a["tmp"]
    res = cli(["evaluate", "--config", a["yaml"], "--tracking-uri", "http://alice:s3cretPW@127.0.0.1:9",
               "--in", a["dataset"], "--baseline", a["baseline"], "--augpaint", a["augpaint"], "--out", tmp / "rep"],
              env={"AUGPAINT_MLFLOW_SPOOL": str(tmp / "spool"), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    expect_ok(res)  # MLflow down: the stage finishes and spools its records
    assert "s3cretPW" not in res.err + res.out
    assert "s3cretPW" not in "".join(p.read_text(errors="ignore") for p in (tmp / "spool").rglob("*") if p.is_file())


def test_item04_runs_host_password_is_never_printed(a):
    res = cli(["runs", "--host", "http://alice:s3cretPW@127.0.0.1:9"])
    line = expect_error(res, "KFP API at http://***@127.0.0.1:9")
    assert "s3cretPW" not in res.err + res.out, line


# --------------------------------------------------------------------------------------------- 6 anonymous S3

def test_item06_anonymous_s3_needs_an_explicit_opt_in(a):
    env = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
           "AUGPAINT_S3_ANONYMOUS": None, "AUGPAINT_S3_ENDPOINT": "http://127.0.0.1:9", "AUGPAINT_S3_RETRIES": "1"}
    res = cli(stage(a, "train-seg", "--in", "s3://bucket/ds", "--out", a["tmp"] / "seg"), env=env)
    expect_error(res, "s3://bucket/ds", "AUGPAINT_S3_ANONYMOUS=1")
    res = cli(stage(a, "train-seg", "--in", "s3://bucket/ds", "--out", a["tmp"] / "seg"),
              env={**env, "AUGPAINT_S3_ANONYMOUS": "1"})
    line = expect_error(res, "s3://bucket/ds")  # asked for: it goes to the (closed) endpoint
    assert "AUGPAINT_S3_ANONYMOUS" not in line and "127.0.0.1:9" in line


# --------------------------------------------------------------------------------------------- 7 --force

@pytest.mark.parametrize("case", ["out_is_raw", "out_contains_raw", "out_is_dataset", "out_not_ours", "other_stage"])
def test_item07_force_never_deletes_what_it_must_not(a, raw_nnunet, case):
    tmp = a["tmp"]
    raw = copy_art(raw_nnunet, tmp / "par" / "raw")
    (tmp / "par" / "unrelated.txt").write_text("keep me")
    ds = copy_art(a["dataset"], tmp / "ds")
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.tex").write_text("keep me")
    ldm = copy_art(a["ldm"], tmp / "ldm")
    args = {"out_is_raw": ["preprocess", "--in", raw, "--out", raw],
            "out_contains_raw": ["preprocess", "--in", raw, "--out", tmp / "par"],
            "out_is_dataset": ["train-ae", "--in", ds, "--out", ds],
            "out_not_ours": ["train-ae", "--in", ds, "--out", tmp / "mine"],
            "other_stage": ["train-ae", "--in", ds, "--out", ldm]}[case]
    before = tree_digest(tmp)
    res = cli([args[0], "--config", a["yaml"], *NONE, *args[1:], "--force"])
    expect_error(res, "--force" if case in ("out_not_ours", "other_stage") else "input")
    assert tree_digest(tmp) == before, "a refused --force changed files"


# --------------------------------------------------------------------------------------------- 8 concurrent runs

def test_item08_two_runs_into_one_new_out(a):
    from augpaint_core.errors import AugPaintError
    from augpaint_core.infra.artifacts import atomic_dir, write_artifact_meta

    out = a["tmp"] / "out"
    with pytest.raises(AugPaintError, match=f"^{out}: another run wrote this output"):
        with atomic_dir(out) as run1:
            (run1 / "who").write_text("run 1")
            with atomic_dir(out) as run2:  # starts while run 1 works, finishes first
                (run2 / "who").write_text("run 2")
                write_artifact_meta(run2, kind="report", stage="x", config=None, seed=0)
            write_artifact_meta(run1, kind="report", stage="x", config=None, seed=0)
    assert (out / "who").read_text() == "run 2"  # the finished output is kept, not replaced
    assert [p.name for p in a["tmp"].iterdir()] == ["out"]  # no partial left


# --------------------------------------------------------------------------------------------- 9 stale partials

def test_item09_stale_partials_of_killed_runs_are_cleaned(a):
    tmp = a["tmp"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp / f".ds.partial-{dead.pid}-123"
    (stale / "shards").mkdir(parents=True)
    other = tmp / f".other.partial-{dead.pid}-123"  # another output's: not ours to delete
    other.mkdir()
    live = tmp / f".ds.partial-{os.getpid()}-1"  # a live process's: still working
    live.mkdir()
    expect_ok(cli(["preprocess", "--config", a["yaml"], *NONE, "--out", tmp / "ds"]))
    assert not stale.exists() and other.is_dir() and live.is_dir()


# --------------------------------------------------------------------------------------------- 10-12 preprocess

def _set_image(raw: Path, fn, case: int = 1) -> Path:
    import nibabel as nib

    f = sorted((raw / "imagesTr").glob("*_0000.nii.gz"))[case]
    img = nib.load(str(f))
    data = np.asarray(img.dataobj).astype(np.float32)
    data = fn(data)
    nib.save(nib.Nifti1Image(data, img.affine), str(f))
    return f


@pytest.mark.parametrize("case", ["one_nan", "all_nan", "inf", "nan_skip", "all_zero"])
def test_item10_nan_inf_and_blank_images(a, raw_nnunet, case):
    raw = copy_art(raw_nnunet, a["tmp"] / "raw")

    def one_nan(d):
        d.flat[::7] = np.nan
        return d

    fn = {"one_nan": one_nan, "all_nan": lambda d: d * np.nan, "inf": lambda d: np.where(d > d.mean(), np.inf, d),
          "nan_skip": one_nan, "all_zero": lambda d: d * 0}[case]
    f = _set_image(raw, fn)
    args = ["preprocess", "--config", a["yaml"], *NONE, "--in", raw, "--out", a["tmp"] / "ds"]
    if case == "nan_skip":
        res = cli(args + ["--on-error", "skip"])
        expect_ok(res)
        rep = json.loads((a["tmp"] / "ds" / "preprocess_report.json").read_text())
        assert [s["file"] for s in rep["skipped"]] == [str(f)] or str(f) in rep["skipped"][0]["error"]
        assert str(f) in res.out
    else:
        expect_error(res := cli(args), str(f), "blank" if case == "all_zero" else "NaN or infinite")
        assert "RuntimeWarning" not in res.err


@pytest.mark.parametrize("skip", [False, True])
def test_item11_deleted_label_file_is_not_unlabeled_data(a, raw_nnunet, skip):
    raw = copy_art(raw_nnunet, a["tmp"] / "raw")
    lab = sorted((raw / "labelsTr").glob("*.nii.gz"))[2]
    lab.unlink()
    res = cli(["preprocess", "--config", a["yaml"], *NONE, "--in", raw, "--out", a["tmp"] / "ds"]
              + (["--on-error", "skip"] if skip else []))
    if not skip:
        expect_error(res, str(lab), "label file missing")
        return
    expect_ok(res)
    rep = json.loads((a["tmp"] / "ds" / "preprocess_report.json").read_text())
    assert [s["file"] for s in rep["skipped"]] == [str(lab)]
    cid = lab.name[:-len(".nii.gz")]
    m = json.loads((a["tmp"] / "ds" / "manifest.json").read_text())
    assert not [r for r in m["records"] if r["case_id"] == cid]


def test_item12_non_utf8_file_names_stop_at_preprocess(a, raw_nnunet):
    raw = copy_art(raw_nnunet, a["tmp"] / "raw")
    img = sorted((raw / "imagesTr").glob("*_0000.nii.gz"))[1]
    cid = img.name[:-len("_0000.nii.gz")]
    bad = os.fsencode(cid) + b"\xff"
    for ch in sorted((raw / "imagesTr").glob(f"{cid}_*.nii.gz")):  # every channel of the case
        os.rename(os.fsencode(ch), os.fsencode(ch.parent) + b"/" + bad + os.fsencode(ch.name[len(cid):]))
    os.rename(os.fsencode(raw / "labelsTr" / f"{cid}.nii.gz"), os.fsencode(raw / "labelsTr") + b"/" + bad + b".nii.gz")
    res = cli(["preprocess", "--config", a["yaml"], *NONE, "--in", raw, "--out", a["tmp"] / "ds"])
    expect_error(res, "not valid UTF-8", f"{cid}\\xff")


# --------------------------------------------------------------------------------------------- 13-15 sizes, seed

def test_item13_image_size_must_fit_the_ldm(a):
    res = cli(stage(a, "train-ldm", "--in", a["dataset"], "--ae", a["ae"], "--out", a["tmp"] / "l",
                    "--set", "data.image_size=100"))
    expect_error(res, "data.image_size 100", "multiple of 32")


@pytest.mark.parametrize("seed", ["99999999999999999999", "-1"])
def test_item14_seed_is_bounded_at_load_time(a, seed):
    res = cli(stage(a, "train-ae", "--in", a["dataset"], "--out", a["tmp"] / "ae", "--set", f"seed={seed}"))
    expect_error(res, "seed:")


def test_item15_size_mismatches_are_refused(a):
    tmp = a["tmp"]
    ds64 = tmp / "ds64"
    expect_ok(cli(["preprocess", "--config", a["yaml"], *NONE, "--out", ds64, "--set", "data.image_size=64"]))
    res = cli(stage(a, "evaluate", "--in", ds64, "--baseline", a["baseline"], "--augpaint", a["augpaint"],
                    "--out", tmp / "rep", "--set", "data.image_size=64"))
    expect_error(res, str(a["baseline"]), "32 px", "64 px")
    res = cli(stage(a, "inpaint", "--in", a["dataset"], "--ae", a["ae"], "--ldm", a["ldm"], "--out", tmp / "s",
                    "--set", "data.image_size=128"))
    expect_error(res, "data.image_size", "128", "32 px")
    assert not (tmp / "rep").exists() and not (tmp / "s").exists()


# --------------------------------------------------------------------------------------------- 16-18 bad files

@pytest.mark.parametrize("value", [["T2"], {"zero": "T2"}])
def test_item16_dataset_json_channel_names(a, raw_nnunet, value):
    raw = copy_art(raw_nnunet, a["tmp"] / "raw")
    dj = json.loads((raw / "dataset.json").read_text())
    dj["channel_names"] = value
    (raw / "dataset.json").write_text(json.dumps(dj))
    res = cli(["preprocess", "--config", a["yaml"], *NONE, "--in", raw, "--out", a["tmp"] / "ds"])
    expect_error(res, f"{raw}/dataset.json", "channel_names")


@pytest.mark.parametrize("case", ["deep", "binary", "latin1", "set_syntax", "set_tag"])
def test_item17_config_parsing(a, case):
    f = a["tmp"] / "c.yaml"
    extra = []
    if case == "deep":
        f.write_text("seed: " + "[" * 50000 + "]" * 50000 + "\n")
    elif case == "binary":
        f.write_bytes(bytes(range(256)) * 8)
    elif case == "latin1":
        f.write_bytes("name: d\xe9mo\n".encode("latin-1"))
    else:
        shutil.copy(a["yaml"], f)
        extra = ["--set", "seed=[1," if case == "set_syntax" else "seed=!!python/object/apply:os.system ['true']"]
    res = cli(["train-ae", "--config", f, *NONE, "--in", a["dataset"], "--out", a["tmp"] / "ae", *extra])
    expect_error(res, "--set" if case.startswith("set") else str(f))


@pytest.mark.parametrize("case", ["artifact_not_json", "no_shards", "image_size_str"])
def test_item18_corrupt_dataset_metadata(a, case):
    ds = copy_art(a["dataset"], a["tmp"] / "ds")
    if case == "artifact_not_json":
        (ds / "artifact.json").write_text("{not json")
        names = (f"{ds}/artifact.json",)
    elif case == "no_shards":
        edit_manifest(ds, lambda m: m.pop("shards"))
        names = (f"{ds}/manifest.json", "shards")
    else:
        edit_manifest(ds, lambda m: m.update(image_size="32"))
        names = (f"{ds}/manifest.json", "image_size")
    expect_error(cli(stage(a, "train-ae", "--in", ds, "--out", a["tmp"] / "ae")), *names)


# --------------------------------------------------------------------------------------------- 19-20 models

@pytest.mark.parametrize("case", ["ae_truncated", "ae_random", "ae_config_missing", "ldm_config_corrupt"])
def test_item19_corrupt_generative_models(a, case):
    tmp = a["tmp"]
    ae, ldm = copy_art(a["ae"], tmp / "ae"), copy_art(a["ldm"], tmp / "ldm")
    st = ae / "vqmodel" / "diffusion_pytorch_model.safetensors"
    if case == "ae_truncated":
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
        name = st.parent
    elif case == "ae_random":
        st.write_bytes(np.random.default_rng(0).bytes(st.stat().st_size))
        name = st.parent
    elif case == "ae_config_missing":
        (ae / "vqmodel" / "config.json").unlink()
        name = ae / "vqmodel" / "config.json"
    else:
        (ldm / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel", "sample_size": ')
        name = ldm / "unet"
    reseal(ae)
    reseal(ldm)
    if case.startswith("ldm"):
        args = stage(a, "inpaint", "--in", a["dataset"], "--ae", a["ae"], "--ldm", ldm, "--out", tmp / "s")
    else:
        args = stage(a, "train-ldm", "--in", a["dataset"], "--ae", ae, "--out", tmp / "l")
    expect_error(cli(args), str(name))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/augpaint-evil-pickle-ran",))


@pytest.mark.parametrize("case", ["other_arch", "other_features", "json_missing", "pt_truncated", "pt_pickle"])
def test_item20_corrupt_or_foreign_segmenters(a, case):
    import torch

    tmp = a["tmp"]
    seg = copy_art(a["baseline"], tmp / "seg")
    info = json.loads((seg / "segmenter.json").read_text())
    name = seg / "segmenter.pt"
    if case == "other_arch":
        info["seg_config"]["arch"] = "deeplabv3"
        info["seg_config"]["resnet_width"] = 8
        (seg / "segmenter.json").write_text(json.dumps(info))
    elif case == "other_features":
        info["seg_config"]["features"] = [8, 8, 8, 16, 16, 8]
        (seg / "segmenter.json").write_text(json.dumps(info))
    elif case == "json_missing":
        (seg / "segmenter.json").unlink()
        name = seg / "segmenter.json"
    elif case == "pt_truncated":
        pt = seg / "segmenter.pt"
        pt.write_bytes(pt.read_bytes()[:1000])
    else:
        torch.save({"x": _Evil()}, seg / "segmenter.pt")
    reseal(seg)
    res = cli(stage(a, "evaluate", "--in", a["dataset"], "--baseline", seg, "--augpaint", a["augpaint"],
                    "--out", tmp / "rep"))
    expect_error(res, str(name))
    assert not Path("/tmp/augpaint-evil-pickle-ran").exists()


# --------------------------------------------------------------------------------------------- 21-23

def test_item21_filter_with_a_real_dataset_as_synthetic(a):
    res = cli(stage(a, "filter", "--in", a["dataset"], "--synthetic", a["dataset"], "--out", a["tmp"] / "f"))
    expect_error(res, str(a["dataset"]), "source_index")


def test_item22_corrupt_newest_checkpoint_falls_back(a):
    tmp = a["tmp"]
    ck = tmp / "ck"
    common = ["--set", "training.checkpoint_every=1", "--set", "training.keep_checkpoints=2",
              "--set", f"training.checkpoint_dir={ck}"]
    expect_ok(cli(stage(a, "train-ae", "--in", a["dataset"], "--out", tmp / "ae1", *common)))
    steps = sorted(ck.iterdir())
    assert [p.name for p in steps] == ["step-00000001", "step-00000002"]  # none at the last step
    (steps[-1] / "artifact.json").write_text("{corrupt")
    res = cli(stage(a, "train-ae", "--in", a["dataset"], "--out", tmp / "ae2", *common, "--set", "ae.max_steps=4"))
    expect_ok(res)
    assert "falling back to the previous checkpoint" in res.err and "resumed from" in res.err
    for p in sorted(ck.iterdir()):
        (p / "artifact.json").write_text("{corrupt")
    res = cli(stage(a, "train-ae", "--in", a["dataset"], "--out", tmp / "ae3", *common, "--set", "ae.max_steps=5"))
    expect_error(res, "artifact.json", "no older checkpoint")


def test_item23_disk_full_is_one_line(a, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a 64 KiB tmpfs (a real full disk)")
    try:
        res = cli(["preprocess", "--config", a["yaml"], *NONE, "--out", mnt / "ds"])
        line = expect_error(res, str(mnt), "no space left", "free")
        assert list(mnt.iterdir()) == [], line  # nothing half-written left behind
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_real_subprocess_matches_the_fork(a):
    """The forked runner is faithful: the real entry point gives the same one line for a bad --set."""
    args = ["train-ae", "--config", a["yaml"], *NONE, "--in", a["dataset"], "--out", a["tmp"] / "ae",
            "--set", "seed=[1,"]
    real, forked = cli_subprocess(args), cli(args)
    assert real.outcome == forked.outcome == "error" and real.error_lines == forked.error_lines
