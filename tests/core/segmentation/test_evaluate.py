import json
import pytest

from augpaint_core.data.dataset import load_dataset


def test_report_compares_both_models_on_the_same_test_split(pipeline_artifacts):
    a = pipeline_artifacts
    m = json.loads((a["report"] / "metrics.json").read_text())
    md = (a["report"] / "report.md").read_text()
    ds = load_dataset(a["dataset"])
    test_cases = sorted({r["case_id"] for r in ds.records if r["split"] == "test"})
    assert m["test_cases"] == test_cases
    for name in ("baseline", "augpaint"):
        assert sorted(m[name]["per_case"]) == test_cases
        assert set(m[name]["per_class"]) == {"RV", "MYO", "LV"}
        for v in m[name]["per_class"].values():
            assert 0.0 <= v["dice"] <= 1.0 and v["hd95"] >= 0.0
        assert f"| {name} |" in md
    gain = 100 * (m["augpaint"]["mean"]["dice"] - m["baseline"]["mean"]["dice"])
    assert abs(gain - m["dice_gain_points"]) < 1e-9
    assert "HD95" in md and "Convention" in md


def test_regions_are_scored_like_class_unions(pipeline_artifacts, tmp_path):
    from augpaint_core.segmentation.evaluate import evaluate_model

    ds = load_dataset(pipeline_artifacts["dataset"])
    ds.regions = {"LV only": [3], "heart": [1, 2, 3]}
    r = evaluate_model(pipeline_artifacts["baseline"], ds)
    assert r["per_region"]["LV only"] == {k: r["per_class"]["LV"][k] for k in ("dice", "hd95")}
    assert set(r["per_region"]) == {"LV only", "heart"} and 0.0 <= r["per_region"]["heart"]["dice"] <= 1.0


def test_headline_mean_is_the_region_mean_when_the_dataset_has_regions(pipeline_artifacts):
    """Defect 2: BraTS reports WT/TC/ET; the classes are shown beside, not averaged into the headline."""
    import numpy as np

    from augpaint_core.segmentation.evaluate import evaluate_model

    ds = load_dataset(pipeline_artifacts["dataset"])
    plain = evaluate_model(pipeline_artifacts["baseline"], ds)
    assert plain["mean_over"] == "classes" and plain["mean"] == plain["class_mean"]
    ds.regions = {"LV only": [3], "heart": [1, 2, 3]}
    r = evaluate_model(pipeline_artifacts["baseline"], ds)
    assert r["mean_over"] == "regions"
    for k in ("dice", "hd95"):
        assert r["mean"][k] == np.mean([v[k] for v in r["per_region"].values()])
        assert r["class_mean"][k] == np.mean([v[k] for v in r["per_class"].values()]) == plain["mean"][k]
    assert r["mean"]["dice"] != r["class_mean"]["dice"]


def test_cases_recomputed_from_the_predictions_and_the_stacked_volume(pipeline_artifacts):
    """The report's numbers, recomputed independently per test case: Dice by counting, HD95 by brute force
    over surface voxels in mm (the phantom's NIfTI spacing)."""
    import numpy as np
    from scipy import ndimage

    from augpaint_core.segmentation.segmenters import load_segmenter
    from augpaint_core.segmentation.train_seg import predict

    a = pipeline_artifacts
    m = json.loads((a["report"] / "metrics.json").read_text())
    ds = load_dataset(a["dataset"])
    model, _ = load_segmenter(a["baseline"])
    assert m["hd95_unit"] == "mm"
    hd_checked = 0
    for case in m["test_cases"]:
        idx = sorted((i for i, r in enumerate(ds.records) if r["case_id"] == case),
                     key=lambda i: ds.records[i]["slice_index"])
        spacing = np.asarray(ds.records[idx[0]]["spacing_mm"])
        pred, gt = predict(model, ds.images[idx]), np.asarray(ds.labels[idx])
        assert pred.shape == gt.shape == (len(idx), 32, 32)  # slices stacked back into the volume
        report = m["baseline"]["per_case"][case]

        def surface_mm(x):
            edge = x & ~ndimage.binary_erosion(x, structure=ndimage.generate_binary_structure(3, 1))
            return np.argwhere(edge) * spacing

        for k, name in enumerate(ds.class_names, start=1):
            p, g = pred == k, gt == k
            dice = 1.0 if p.sum() + g.sum() == 0 else 2 * (p & g).sum() / (p.sum() + g.sum())
            assert report[name]["dice"] == pytest.approx(dice, abs=1e-12)
            if p.any() and g.any():
                sp, sg = surface_mm(p), surface_mm(g)
                d = np.sqrt(((sp[:, None] - sg[None]) ** 2).sum(-1))
                hd = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
                assert report[name]["hd95"] == pytest.approx(hd, rel=1e-9)
                hd_checked += 1
    assert hd_checked > 0
