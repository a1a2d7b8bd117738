"""The CLI: stages from the shell, one-line errors, no half-written outputs."""
import yaml

from augpaint_core.cli import main
from augpaint_core.data.phantom import write_phantom
from tests.conftest import tiny_dict


def _cfg(tmp_path, **changes):
    d = tiny_dict()
    for k, v in changes.items():
        sec, field = k.split("__")
        d[sec][field] = v
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    return err


def test_stage_from_the_shell(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    assert main(["preprocess", "--config", str(cfg), "--out", str(tmp_path / "ds"), "--tracking-uri", "none"]) == 0
    assert (tmp_path / "ds" / "artifact.json").is_file()
    # an existing output is not overwritten silently
    assert main(["preprocess", "--config", str(cfg), "--out", str(tmp_path / "ds"), "--tracking-uri", "none"]) == 2
    assert "already exists" in _one_line_error(capsys)


def test_negative_step_count(tmp_path, capsys):
    cfg = _cfg(tmp_path, inpaint__num_inference_steps=-3)
    assert main(["preprocess", "--config", str(cfg), "--out", str(tmp_path / "o"), "--tracking-uri", "none"]) == 2
    err = _one_line_error(capsys)
    assert "inpaint.num_inference_steps" in err and str(cfg) in err
    assert not (tmp_path / "o").exists()


def test_dataset_without_labels(tmp_path, capsys):
    import shutil

    raw = write_phantom(tmp_path / "raw", seed=0, num_cases=6, slices=3, size=32)
    shutil.rmtree(raw / "labelsTr")
    cfg = _cfg(tmp_path)
    rc = main(["preprocess", "--config", str(cfg), "--in", str(raw), "--out", str(tmp_path / "o"),
               "--tracking-uri", "none"])
    assert rc == 2
    assert "labelsTr" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_missing_input_artifact(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    rc = main(["train-ae", "--config", str(cfg), "--in", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
               "--tracking-uri", "none"])
    assert rc == 2
    assert "nope" in _one_line_error(capsys)


def test_incomplete_artifact_is_refused(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "images.npy").write_bytes(b"x")
    rc = main(["train-ae", "--config", str(cfg), "--in", str(tmp_path / "half"), "--out", str(tmp_path / "o"),
               "--tracking-uri", "none"])
    assert rc == 2
    assert "not a complete dataset artifact" in _one_line_error(capsys)


def test_rand_aug_and_filter_with_a_reused_scorer_from_the_shell(tmp_path, pipeline_artifacts):
    cfg = _cfg(tmp_path)
    a = pipeline_artifacts
    ds = str(a["dataset"])
    assert main(["rand-aug", "--config", str(cfg), "--in", ds, "--out", str(tmp_path / "ra"),
                 "--tracking-uri", "none"]) == 0
    assert main(["filter", "--config", str(cfg), "--in", ds, "--synthetic", str(tmp_path / "ra"), "--scorer",
                 str(a["filtered"] / "scorer"), "--out", str(tmp_path / "flt"), "--tracking-uri", "none"]) == 0
    from augpaint_core.infra.artifacts import read_artifact_meta

    meta = read_artifact_meta(tmp_path / "flt")
    assert meta["inputs"]["scorer"] and meta["num_in"] == 2 * meta["num_kept"]
