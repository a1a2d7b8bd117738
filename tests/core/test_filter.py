import json

import numpy as np

from augpaint_core.artifacts import read_artifact_meta
from augpaint_core.dataset import load_dataset
from augpaint_core.filter import confidence_scores, top_fraction


def test_confidence_is_mean_true_class_probability_inside_labels():
    proba = np.zeros((2, 3, 2, 2))
    proba[:, 0] = 1.0  # background everywhere...
    labels = np.array([[[0, 1], [2, 0]], [[0, 0], [0, 0]]])
    proba[0, :, 0, 1] = [0.2, 0.8, 0.0]  # class 1 pixel: 0.8
    proba[0, :, 1, 0] = [0.6, 0.0, 0.4]  # class 2 pixel: 0.4
    s = confidence_scores(proba, labels)
    assert np.allclose(s, [0.6, 0.0])


def test_top_fraction_keeps_exactly_the_best_in_order():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3, 0.7])
    assert top_fraction(scores, 0.5).tolist() == [1, 3, 5]
    assert top_fraction(scores, 1.0).tolist() == [1, 3, 5, 2, 4, 0]
    assert len(top_fraction(scores[:5], 0.5)) == 3  # ceil


def test_filter_stage_records_scores_and_keeps_top_half(pipeline_artifacts):
    a = pipeline_artifacts
    syn = load_dataset(a["synthetic"])
    flt = load_dataset(a["filtered"])
    table = json.loads((a["filtered"] / "scores.json").read_text())
    assert len(table) == len(syn.records)
    assert len(flt.records) == int(np.ceil(0.5 * len(syn.records)))
    kept = {t["index"] for t in table if t["kept"]}
    assert kept == {r["provenance"]["synthetic_index"] for r in flt.records}
    worst_kept = min(t["score"] for t in table if t["kept"])
    assert all(t["score"] <= worst_kept for t in table if not t["kept"])
    for img, r in zip(flt.images, flt.records):
        assert np.array_equal(img, syn.images[r["provenance"]["synthetic_index"]])
    assert read_artifact_meta(a["filtered"])["num_kept"] == len(flt.records)
