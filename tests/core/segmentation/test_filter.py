import json

import numpy as np
import pytest

from augpaint_core.infra.artifacts import read_artifact_meta
from augpaint_core.data.dataset import load_dataset
from augpaint_core.segmentation.filter import confidence_scores, top_fraction


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


def test_top_fraction_per_source_keeps_every_source():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    sources = np.array([0, 0, 0, 0, 5, 5])
    assert top_fraction(scores, 0.5).tolist() == [0, 1, 2]  # the whole pool: source 5 is lost
    assert top_fraction(scores, 0.5, sources).tolist() == [0, 1, 4]  # each source its best half, best first
    assert top_fraction(scores[[0, 4, 5]], 0.5, sources[[0, 4, 5]]).tolist() == [0, 1]  # ceil per source


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


def test_background_structure_and_selection_rules():
    from augpaint_core.segmentation.filter import background_fraction, select

    labels = np.zeros((2, 16, 16), np.uint8)
    labels[:, 4:8, 4:8] = 1  # kept box: rows/cols 4..7
    proba = np.zeros((2, 2, 16, 16))
    proba[:, 0] = 1.0
    proba[:, :, 4:8, 4:8] = [[[0.0]], [[1.0]]]  # the labeled organ is found in both
    proba[1, :, 12:14, 12:14] = [[[0.1]], [[0.9]]]  # sample 1: a second organ generated in the background
    bg = background_fraction(proba, labels)
    assert bg[0] == 0.0 and bg[1] == pytest.approx(4 / 256)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    rejected = np.array([False, True, False, False])
    # the top half is {0, 1}; 1 is rejected and not replaced by a worse sample
    assert select(scores, 0.5, rejected).tolist() == [0]
    assert select(scores, 1.0, rejected).tolist() == [0, 2, 3]


def test_mahalanobis_ranks_outliers_last():
    from augpaint_core.segmentation.filter import mahalanobis

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 5))
    q = np.stack([np.zeros(5), np.full(5, 4.0)])
    d = mahalanobis(ref, q, shrinkage=0.0)
    assert d[0] < 1.0 and d[1] > 7.0  # about sqrt(5 * 16) = 8.9 for the outlier
    inside = mahalanobis(ref, ref)
    assert np.quantile(inside, 0.5) < d[1]


def test_filter_reuses_a_scorer_and_rejects_by_rule(pipeline_artifacts, tmp_path):
    from augpaint_core.segmentation.filter import filter_synthetic

    a = pipeline_artifacts
    cfg = a["cfg"].model_copy(deep=True)
    first = json.loads((a["filtered"] / "scores.json").read_text())
    thr = min(t["background_fraction"] for t in first)  # the least-background sample(s) pass, the rest not
    cfg.filter.reject_background = True
    cfg.filter.background_max_fraction = thr
    cfg.filter.keep_fraction = 1.0
    syn = load_dataset(a["synthetic"])
    filter_synthetic(cfg, a["dataset"], a["synthetic"], tmp_path / "f", scorer=a["filtered"] / "scorer")
    table = json.loads((tmp_path / "f" / "scores.json").read_text())
    assert [t["score"] for t in table] == [t["score"] for t in first]  # same scorer, same scores
    assert len(table) == len(syn.records)
    for t in table:
        assert t["kept"] == (t["background_fraction"] <= thr)
        assert ("background_structure" in t["rejected"]) == (t["background_fraction"] > thr)
    assert len(load_dataset(tmp_path / "f").records) == sum(t["kept"] for t in table)
    q = json.loads((tmp_path / "f" / "quality.json").read_text())
    assert q["num_kept"] == sum(t["kept"] for t in table)
    assert q["rejected"]["background_structure"] == sum(t["background_fraction"] > thr for t in table)


def test_per_source_filter_keeps_the_best_half_of_each_source(pipeline_artifacts, tmp_path):
    from augpaint_core.segmentation.filter import filter_synthetic

    a = pipeline_artifacts
    cfg = a["cfg"].model_copy(deep=True)
    cfg.filter.per_source = True
    filter_synthetic(cfg, a["dataset"], a["synthetic"], tmp_path / "f", scorer=a["filtered"] / "scorer")
    table = json.loads((tmp_path / "f" / "scores.json").read_text())
    by_source: dict = {}
    for t in table:
        by_source.setdefault(t["source_index"], []).append(t)
    assert len(by_source) > 1
    for rows in by_source.values():
        kept = [t for t in rows if t["kept"]]
        assert len(kept) == int(np.ceil(0.5 * len(rows)))
        assert min(t["score"] for t in kept) >= max((t["score"] for t in rows if not t["kept"]), default=0)
    flt = load_dataset(tmp_path / "f")
    assert {r["provenance"]["source_index"] for r in flt.records} == set(by_source)
    assert read_artifact_meta(tmp_path / "f")["config"]["filter"]["per_source"] is True


def test_filter_stage_writes_quality_report(pipeline_artifacts):
    a = pipeline_artifacts
    q = json.loads((a["filtered"] / "quality.json").read_text())
    table = json.loads((a["filtered"] / "scores.json").read_text())
    assert q["num_samples"] == len(table) and q["acceptance_rate"] == pytest.approx(
        sum(t["kept"] for t in table) / len(table))
    for k in ("fd_all", "fd_kept", "msssim_within_source", "msssim_to_source", "nn_distance_mean",
              "nn_is_source_fraction"):
        assert q[k] is not None and np.isfinite(q[k]) and q[k] >= 0, k
    assert {"score", "background_fraction", "ood_score", "rejected", "source_index"} <= set(table[0])
    assert read_artifact_meta(a["filtered"])["quality"] == q
