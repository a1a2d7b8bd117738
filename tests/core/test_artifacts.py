import numpy as np
import pytest

from augpaint_core.artifacts import (SliceDataset, atomic_dir, load_dataset, read_artifact_meta, save_dataset,
                                     write_artifact_meta)
from augpaint_core.errors import AugPaintError


def _ds(n=3):
    return SliceDataset(np.zeros((n, 8, 8, 3), np.uint8), np.zeros((n, 8, 8), np.uint8),
                        [{"case_id": f"c{i}", "split": "train"} for i in range(n)], ["A"])


def test_failed_stage_leaves_no_output(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            save_dataset(_ds(), tmp)
            raise RuntimeError("killed midway")
    assert list(tmp_path.iterdir()) == []


def test_roundtrip_and_checksum(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        save_dataset(_ds(), tmp)
        write_artifact_meta(tmp, kind="dataset", stage="t", config={"a": 1}, seed=0)
    assert load_dataset(out).images.shape == (3, 8, 8, 3)
    assert read_artifact_meta(out)["files"]["images.npy"]
    arr = np.load(out / "labels.npy")
    arr[0, 0, 0] = 1
    np.save(out / "labels.npy", arr)
    with pytest.raises(AugPaintError, match="checksum mismatch"):
        load_dataset(out)
    with pytest.raises(AugPaintError, match="expected a model artifact"):
        read_artifact_meta(out, kind="model")


def test_bad_shapes_are_rejected():
    with pytest.raises(AugPaintError, match="records"):
        SliceDataset(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((3, 8, 8), np.uint8), [{}, {}], ["A"])
