"""relabel: one preprocessed dataset serves every labeled count, equal to preprocessing with that count."""
import numpy as np
import pytest

from augpaint_core.config import parse_config
from augpaint_core.data.dataset import load_dataset
from augpaint_core.data.preprocess import preprocess
from augpaint_core.data.relabel import labeled_patients, relabel
from augpaint_core.errors import AugPaintError
from tests.conftest import tiny_dict


def _cfg(k: int):
    d = tiny_dict()
    d["data"]["num_labeled"] = k
    return parse_config(d, "tiny")


def test_relabel_equals_preprocessing_with_fewer_labels(tmp_path):
    preprocess(_cfg(3), tmp_path / "k3")
    preprocess(_cfg(1), tmp_path / "k1")
    relabel(_cfg(1), tmp_path / "k3", tmp_path / "r1")
    a, b = load_dataset(tmp_path / "k1"), load_dataset(tmp_path / "r1")
    assert a.records == b.records
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
    assert np.array_equal(np.asarray(a.labels), np.asarray(b.labels))
    big = load_dataset(tmp_path / "k3")
    assert labeled_patients(b) == labeled_patients(big)[:1] and len(labeled_patients(big)) == 3
    # the patients that lost their labels really have none stored
    lost = [i for i, r in enumerate(b.records) if r["split"] == "train" and not r["labeled"]
            and r["patient_id"] in labeled_patients(big)]
    assert lost and not np.asarray(b.labels[lost]).any()


def test_relabel_asks_for_more_than_there_is(tmp_path):
    preprocess(_cfg(1), tmp_path / "k1")
    with pytest.raises(AugPaintError, match="data.num_labeled: 2 labeled cases requested"):
        relabel(_cfg(2), tmp_path / "k1", tmp_path / "r2")
    assert not (tmp_path / "r2").exists()
