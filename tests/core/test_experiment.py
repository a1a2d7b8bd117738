"""The experiment harness end to end on the tiny config: tables, figures and one MLflow run per variant."""
import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from augpaint_core.cli import main
from augpaint_core.errors import AugPaintError
from augpaint_core.experiment import markdown, run_experiment, summarize
from tests.conftest import tiny_dict

VARIANTS = ["baseline", "randaug", "augpaint", "cond_augpaint"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from augpaint_core.config import parse_config

    d = tmp_path_factory.mktemp("exp")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    cfg = parse_config(tiny_dict(), "tiny")
    out = run_experiment(cfg, d / "out", splits=2, labeled=[1], variants=VARIANTS, tracking_uri=uri)
    return out, uri, cfg


def test_harness_writes_the_table_files(experiment):
    out, _, _ = experiment
    res = json.loads((out / "results.json").read_text())
    assert len(res["results"]) == 2 * len(VARIANTS)
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == VARIANTS
    md = (out / "table.md").read_text()
    for r in rows:  # every CSV row is the mean +- std of its per-split results, and appears in the Markdown
        per = [100 * x["mean_dice"] for x in res["results"] if x["variant"] == r["variant"]]
        assert float(r["dice_mean"]) == pytest.approx(np.mean(per), abs=1e-3)
        assert float(r["dice_std"]) == pytest.approx(np.std(per), abs=1e-3)
        assert int(r["n_splits"]) == 2
        assert f"{np.mean(per):.2f} ± {np.std(per):.2f}" in md
    gap = [g for g in res["summary"]["gaps"] if g["variant"] == "augpaint"][0]
    base = {x["split"]: x["mean_dice"] for x in res["results"] if x["variant"] == "baseline"}
    aug = {x["split"]: x["mean_dice"] for x in res["results"] if x["variant"] == "augpaint"}
    assert gap["per_split"] == pytest.approx([100 * (aug[s] - base[s]) for s in (0, 1)])
    assert "AugPaint - U-Net" in md and "| 1 case |" in md
    bar = Image.open(out / "bar.png")
    assert bar.size[0] > 100 and bar.size[1] > 100
    ov = Image.open(out / "overlays" / "split0_k1.png")
    assert ov.size[0] == (2 + len(VARIANTS)) * 96  # image, ground truth, one column per variant
    for r in res["results"]:  # the synthetic pools carry their quality report
        if r["variant"] != "baseline":
            assert 0 < r["quality"]["acceptance_rate"] <= 1 and r["num_synthetic_kept"] > 0


def test_each_variant_is_an_mlflow_run_for_the_compare_view(experiment):
    from mlflow.tracking import MlflowClient

    out, uri, cfg = experiment
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("augpaint.kind") == "experiment"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    seen = {(r.data.tags["augpaint.variant"], r.data.tags["augpaint.split"], r.data.tags["augpaint.labeled"])
            for r in children}
    assert seen == {(v, str(s), "1") for v in VARIANTS for s in (0, 1)}
    res = json.loads((out / "results.json").read_text())["results"]
    for r in children:
        mine = [x for x in res if x["variant"] == r.data.tags["augpaint.variant"]
                and str(x["split"]) == r.data.tags["augpaint.split"]][0]
        assert r.data.metrics["mean_dice"] == pytest.approx(mine["mean_dice"])
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"table.md", "table.csv", "bar.png", "overlays"} <= arts


def test_finished_experiment_is_not_overwritten(experiment):
    out, _, cfg = experiment
    with pytest.raises(AugPaintError, match="already finished"):
        run_experiment(cfg, out, splits=2, labeled=[1], variants=VARIANTS, tracking_uri="none")


def test_summary_pairs_gaps_by_split():
    res = [{"variant": v, "split": s, "labeled": 1, "mean_dice": d, "mean_hd95": 1.0}
           for v, s, d in [("baseline", 0, 0.2), ("baseline", 1, 0.4), ("augpaint", 1, 0.5), ("augpaint", 0, 0.1)]]
    s = summarize(res, ["baseline", "augpaint"], [1])
    g = s["gaps"][0]
    assert g["per_split"] == pytest.approx([-10.0, 10.0]) and g["gap_mean"] == pytest.approx(0.0)
    assert g["gap_std"] == pytest.approx(10.0)


def test_cli_rejects_bad_experiment_arguments(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_dict()))
    base = ["experiment", "--config", str(cfg), "--out", str(tmp_path / "o"), "--tracking-uri", "none"]
    assert main(base + ["--variants", "baseline,segformer"]) == 2
    err = capsys.readouterr().err.strip()
    assert "segformer" in err and "\n" not in err
    assert main(base + ["--labeled", "1,x"]) == 2
    assert "--labeled" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_paired_gain_ci_needs_two_splits_and_shows_in_the_table():
    from augpaint_core.experiment import markdown

    rows = [("baseline", 0, 0.2), ("baseline", 1, 0.4), ("augpaint", 0, 0.21), ("augpaint", 1, 0.43)]
    s = summarize([{"variant": v, "split": sp, "labeled": 1, "mean_dice": d, "mean_hd95": 1.0} for v, sp, d in rows],
                  ["baseline", "augpaint"], [1])
    g = s["gaps"][0]
    assert g["ci95_low"] <= g["gap_mean"] <= g["ci95_high"] and g["ci95_low"] < g["ci95_high"]
    assert f"[{g['ci95_low']:+.2f}, {g['ci95_high']:+.2f}]" in markdown(s, ["baseline", "augpaint"], [1], "t")
    one = summarize([{"variant": v, "split": sp, "labeled": 1, "mean_dice": d, "mean_hd95": 1.0}
                     for v, sp, d in rows if sp == 0], ["baseline", "augpaint"], [1])
    assert one["gaps"][0]["ci95_low"] is None and "[CI n/a]" in markdown(one, ["baseline", "augpaint"], [1], "t")


def test_pipeline_config_applies_the_task_overrides(tiny_cfg):
    from augpaint_core.experiment import pipeline_config

    c = pipeline_config(tiny_cfg.to_yaml(), ["split=2", "data.num_labeled=3", "ldm.conditional=true"])
    assert (c.seed, c.data.num_labeled, c.ldm.conditional) == (tiny_cfg.seed + 2, 3, True)
    with pytest.raises(AugPaintError, match="num_labeled"):
        pipeline_config(tiny_cfg.to_yaml(), ["data.num_labeled=zero"])


@pytest.mark.parametrize("split_seed", [None, 7])
def test_three_splits_give_three_patient_partitions(split_seed):
    """Defect 9: with data.split_seed set, the splits used to share one patient partition."""
    from augpaint_core.config import parse_config
    from augpaint_core.data.preprocess import split_patients
    from augpaint_core.experiment import split_config

    d = tiny_dict()
    d["data"]["split_seed"] = split_seed
    cfg = parse_config(d, "tiny")
    patients = [f"p{i:02d}" for i in range(20)]
    parts = []
    for split in range(3):
        c = split_config(cfg, split)
        seed = c.seed if c.data.split_seed is None else c.data.split_seed  # as preprocess chooses it
        assignment, _ = split_patients(patients, c.data.split, seed)
        parts.append(tuple(sorted(assignment.items())))
    assert len(set(parts)) == 3


# ---------------------------------------------------------------------------------------------
# issue 17: augmentation variants, controls and paired statistics

from augpaint_core.experiment import bootstrap_ci, error_split, paired_gain  # noqa: E402

NEW_VARIANTS = ["baseline", "baseline_aug", "augpaint", "augpaint_aug", "oracle_paste", "augpaint_random50",
                "augpaint_bottom50", "augpaint_all"]


@pytest.fixture(scope="module")
def controls(tmp_path_factory):
    from augpaint_core.config import parse_config

    d = tmp_path_factory.mktemp("exp17")
    cfg = parse_config(tiny_dict(), "tiny")
    out = run_experiment(cfg, d / "out", splits=1, labeled=[1], variants=NEW_VARIANTS, tracking_uri="none")
    return out, cfg


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    x = [4.0, 6.0, 5.0, 7.0, 3.0]
    lo, hi = bootstrap_ci(x, seed=1)
    assert (lo, hi) == bootstrap_ci(x, seed=1)
    assert lo < np.mean(x) < hi and lo > 0  # consistently positive differences exclude 0
    lo, hi = bootstrap_ci([-3.0, 2.0, -1.0, 3.0, -2.0], seed=1)
    assert lo < 0 < hi
    assert bootstrap_ci([5.0, 5.0, 5.0]) == (5.0, 5.0)


def test_paired_gain_pairs_by_split_against_its_reference():
    res = [{"variant": v, "split": s, "labeled": 1, "mean_dice": d, "mean_hd95": 1.0,
            "per_case_dice": {"a": d, "b": d + 0.1}}
           for v, s, d in [("baseline_aug", 0, 0.5), ("baseline_aug", 1, 0.3), ("augpaint_aug", 1, 0.4),
                           ("augpaint_aug", 0, 0.6), ("baseline", 0, 0.0), ("baseline", 1, 0.0)]]
    g = paired_gain(res, "augpaint_aug", "baseline_aug", 1)
    assert g["per_split"] == pytest.approx([10.0, 10.0]) and g["ci95"] == pytest.approx([10.0, 10.0])
    assert g["num_case_pairs"] == 4 and g["ci95_cases"] == pytest.approx([10.0, 10.0])
    s = summarize(res, ["baseline", "baseline_aug", "augpaint_aug"], [1])
    refs = {(x["variant"], x["reference"]) for x in s["gaps"]}
    assert refs == {("baseline_aug", "baseline"), ("augpaint_aug", "baseline"), ("augpaint_aug", "baseline_aug")}
    md = markdown(s, ["baseline", "baseline_aug", "augpaint_aug"], [1], "t")
    assert "| AugPaint + aug - U-Net + aug | +10.00 ± 0.00 [+10.00, +10.00] (+10.0, +10.0) |" in md


def test_error_split_counts_false_positives_outside_the_boxes():
    gt = np.zeros((2, 8, 8), np.uint8)
    gt[0, 2:4, 2:4] = 1  # box rows/cols 0..3 after rounding to the 4-px grid
    pred = gt.copy()
    pred[0, 6, 6] = 1  # a false positive outside the box
    pred[0, 2, 2] = 0  # a miss inside it
    pred[0, 0, 0] = 1  # a false positive inside the (rounded) box
    pred[1, 1, 1] = 2  # a slice without foreground: any prediction is outside every box
    e = error_split(pred, gt)
    assert e["fp_outside_boxes"] == 2 and e["errors_inside_boxes"] == 2 and e["errors_total"] == 4
    assert e["outside_fraction"] == pytest.approx(0.5) and e["slices_with_fp_outside"] == 2


def test_augmentation_variants_and_controls_end_to_end(controls):
    from augpaint_core.data.dataset import load_dataset
    from augpaint_core.infra.artifacts import read_artifact_meta

    out, cfg = controls
    res = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert set(res) == set(NEW_VARIANTS)
    for v in NEW_VARIANTS:  # on-the-fly augmentation only where the variant asks for it
        meta = read_artifact_meta(res[v]["paths"]["segmenter"])
        assert meta["config"]["seg"]["augment"]["enabled"] == (v in ("baseline_aug", "augpaint_aug"))
        e = res[v]["errors"]
        assert e["errors_total"] == e["fp_outside_boxes"] + e["errors_inside_boxes"]
        assert set(res[v]["per_case_dice"]) and len(res[v]["per_case_dice"]) == res[v]["num_test_cases"]
    f = {v: res[v]["filter"] for v in NEW_VARIANTS if v.startswith(("augpaint", "oracle"))}
    n = f["augpaint"]["num_in"]
    assert f["augpaint_all"]["num_kept"] == n and f["augpaint_all"]["selection"] == "all"
    half = int(np.ceil(cfg.filter.keep_fraction * n))
    for v in ("augpaint", "augpaint_random50", "augpaint_bottom50"):
        assert f[v]["num_kept"] == half and 1 <= f[v]["distinct_sources_kept"] <= f[v]["distinct_sources_pool"]
    assert f["augpaint_all"]["distinct_sources_kept"] == f["augpaint"]["distinct_sources_pool"]
    work = out / "work" / "split0" / "k1"
    scores = {r["index"]: r["score"] for r in json.loads((work / "flt_augpaint" / "scores.json").read_text())}
    top = [r["provenance"]["synthetic_index"] for r in load_dataset(work / "flt_augpaint").records]
    bottom = [r["provenance"]["synthetic_index"] for r in load_dataset(work / "flt_augpaint_bottom").records]
    assert min(scores[i] for i in top) >= max(scores[i] for i in bottom) or set(top) == set(bottom)
    assert sorted(bottom) == sorted(sorted(scores, key=lambda i: (scores[i], i))[:half])
    oracle = load_dataset(work / "syn_oracle").records
    assert {r["provenance"]["sampler"] for r in oracle} == {"oracle_paste"}
    assert all(isinstance(r["provenance"]["background_foreground_px"], int) for r in oracle)  # chosen with truth
    truth = load_dataset(work / "dataset_truth")
    labeled_truth = {r["patient_id"] for r in truth.records if r["split"] == "train" and r["labeled"]}
    assert len(labeled_truth) > 1  # every training patient (the run has 1 labeled), for the oracle only
    md = (out / "table.md").read_text()
    assert "AugPaint + aug - U-Net + aug" in md and "Oracle paste - U-Net" in md and "95% bootstrap CI" in md


def test_equal_size_fd_scales_with_the_shift():
    from augpaint_core.experiment import equal_size_fd

    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 4))
    same = equal_size_fd(real, rng.normal(size=(50, 4)), seed=0)
    far = equal_size_fd(real, rng.normal(loc=3.0, size=(50, 4)), seed=0)
    assert same["n"] == far["n"] == 50
    assert far["fd_synthetic"] > 10 * same["fd_real_real"]  # a 3-sigma shift in 4 dims: FD about 36
    assert same["fd_synthetic"] < 3 * same["fd_real_real"] + 0.5
    with pytest.raises(AugPaintError, match="equal_size_fd"):
        equal_size_fd(real[:3], real[:1])
