"""The experiment harness end to end on the tiny config: tables, figures and one MLflow run per variant."""
import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from augpaint_core.cli import main
from augpaint_core.errors import AugPaintError
from augpaint_core.experiment import run_experiment, summarize
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


def test_paired_gain_ci_is_the_t_interval():
    from augpaint_core.experiment import paired_ci95

    lo, hi = paired_ci95([1.0, 3.0])  # mean 2, sd 1.414, n 2: half width t(0.975, 1) * sd / sqrt(2) = 12.706
    assert lo == pytest.approx(2 - 12.7062, abs=1e-3) and hi == pytest.approx(2 + 12.7062, abs=1e-3)
    assert paired_ci95([5.0]) == (None, None)
    s = summarize([{"variant": v, "split": sp, "labeled": 1, "mean_dice": d, "mean_hd95": 1.0}
                   for v, sp, d in [("baseline", 0, 0.2), ("baseline", 1, 0.4), ("augpaint", 0, 0.21),
                                    ("augpaint", 1, 0.43)]], ["baseline", "augpaint"], [1])
    g = s["gaps"][0]
    assert g["ci95_low"] < g["gap_mean"] < g["ci95_high"]
    from augpaint_core.experiment import markdown

    assert f"[{g['ci95_low']:+.2f}, {g['ci95_high']:+.2f}]" in markdown(s, ["baseline", "augpaint"], [1], "t")


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
