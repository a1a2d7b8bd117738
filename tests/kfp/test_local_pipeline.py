"""The whole pipeline through kfp.local's SubprocessRunner with a tiny config and MLflow on sqlite."""
from augpaint_core.config import parse_config
from tests.conftest import tiny_dict


def test_full_pipeline_locally(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.local import run_local

    monkeypatch.chdir(tmp_path)  # components run with this working folder
    cfg = parse_config(tiny_dict(), "tiny")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_local(cfg, tmp_path / "run", uri, quiet=True)
    for name in ("baseline", "augpaint"):
        assert 0.0 <= result[name]["mean"]["dice"] <= 1.0
    assert result["baseline"]["per_case"].keys() == result["augpaint"]["per_case"].keys()
    root = tmp_path / "run" / "pipeline_root"
    for stage in ("preprocess", "train-ae", "train-ldm", "inpaint", "filter-synthetic", "train-seg-baseline",
                  "train-seg-augpaint", "evaluate"):
        assert list(root.glob(f"*/{stage}/*/artifact.json")), stage
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("augpaint").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags.get("kfp.pipeline_run_id")
    assert parents[0].data.params["inpaint.samples_per_pair"] == "2"  # the config, flattened
    assert "dice_gain_points" in parents[0].data.metrics
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert {"preprocess", "train-ae", "train-ldm", "inpaint", "filter", "train-seg-baseline",
            "train-seg-augpaint", "evaluate"} <= children
    ev = next(r for r in runs if r.info.run_name == "evaluate")
    assert "augpaint_mean_dice" in ev.data.metrics and "baseline_mean_dice" in ev.data.metrics
    inp = next(r for r in runs if r.info.run_name == "inpaint")
    assert "inpaint_grid.png" in [a.path for a in c.list_artifacts(inp.info.run_id)]


def test_failing_stage_fails_the_run_and_closes_mlflow(tmp_path, monkeypatch):
    import pytest
    from mlflow.tracking import MlflowClient

    from augpaint_core.errors import AugPaintError
    from pipelines.local import run_local

    monkeypatch.chdir(tmp_path)
    d = tiny_dict()
    d["data"]["path"] = str(tmp_path / "missing")
    cfg = parse_config(d, "tiny")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(AugPaintError, match="pipeline failed"):
        run_local(cfg, tmp_path / "run", uri, quiet=True)
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("augpaint").experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FAILED"
    assert not list((tmp_path / "run" / "pipeline_root").glob("*/preprocess/*/artifact.json"))
