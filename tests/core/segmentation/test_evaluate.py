import json

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
