import pytest

from augpaint_core.infra.artifacts import atomic_dir, read_artifact_meta, write_artifact_meta
from augpaint_core.errors import AugPaintError


def test_failed_stage_leaves_no_output(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "weights.bin").write_bytes(b"half")
            raise RuntimeError("killed midway")
    assert list(tmp_path.iterdir()) == []


def test_stage_without_metadata_is_an_error(tmp_path):
    with pytest.raises(AugPaintError, match="wrote no artifact.json"):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "x").write_text("1")
    assert list(tmp_path.iterdir()) == []


def test_meta_records_files_and_kind(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("a")
        write_artifact_meta(tmp, kind="dataset", stage="t", config={"a": 1}, seed=3)
    meta = read_artifact_meta(out, kind="dataset")
    assert meta["seed"] == 3 and set(meta["files"]) == {"a.txt"} and "torch" in meta["versions"]
    with pytest.raises(AugPaintError, match="expected a model artifact"):
        read_artifact_meta(out, kind="model")
    with pytest.raises(AugPaintError, match="already exists"):
        with atomic_dir(out):
            pass
