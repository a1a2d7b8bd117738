"""The whole pipeline through kfp.local's SubprocessRunner with a tiny config and MLflow on sqlite."""
from augpaint_core.config import parse_config
from tests.conftest import tiny_dict


def test_full_pipeline_locally(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from pipelines.local import run_local

    monkeypatch.chdir(tmp_path)  # components run with this working folder
    cfg = parse_config(tiny_dict(), "tiny")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_local(cfg, tmp_path / "run", uri, quiet=True)
    lines = [line.split("]", 1)[1].split() for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    n = len(lines)
    assert [line[0] for line in lines] == [f"{i}/{n}" for i in range(1, n + 1)]
    assert lines[-1][1:3] == ["export-nnunet", "skipped"]  # off by default: it ends the progress, not a gap
    for name in ("baseline", "augpaint"):
        assert 0.0 <= result[name]["mean"]["dice"] <= 1.0
    assert result["baseline"]["per_case"].keys() == result["augpaint"]["per_case"].keys()
    root = tmp_path / "run" / "pipeline_root"
    page = (tmp_path / "run" / result["report_dir"] / "report.html").read_text()
    assert "<h2>Inpainting</h2>" in page and "<h2>Generator quality</h2>" in page  # synthetic/filtered wired in
    assert list(root.glob("*/evaluate/page")) and "Executing task" in open(result["log"]).read()
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


def test_stage_lines_summarise_kfp_output_and_keep_the_rest_in_the_log(tmp_path):
    import io

    from pipelines.local import StageLog

    term, log = io.StringIO(), io.StringIO()
    sink = StageLog(log, term, total=2)
    kfp_out = ("\x1b[36m'preprocess'\x1b[0m", "'train-ae'")
    sink.write(f"07:00:00.000 - INFO - Executing task {kfp_out[0]}\n    {{executor input json}}\n")
    sink.write(f"07:00:01.000 - INFO - Task {kfp_out[0]} finished with status \x1b[32mSUCCESS\x1b[0m\n")
    sink.write(f"Executing task {kfp_out[1]}\nTraceback: boom\nTask {kfp_out[1]} finished with status FAILURE\n")
    lines = term.getvalue().splitlines()
    assert len(lines) == 2 and "executor input" not in term.getvalue()
    assert lines[0].split("]", 1)[1].split()[:3] == ["1/2", "preprocess", "ok"] and lines[0].startswith("[#####")
    assert lines[1].split("]", 1)[1].split()[:3] == ["2/2", "train-ae", "FAILED"] and sink.failed == "train-ae"
    assert "{executor input json}" in log.getvalue() and "Traceback: boom" in sink.lines


def test_tasks_that_never_ran_end_the_progress_as_skipped():
    import io

    from pipelines.local import StageLog

    term = io.StringIO()
    sink = StageLog(io.StringIO(), term, total=3, names={"preprocess": "preprocess", "export-nnunet": "export",
                                                         "evaluate": "evaluate"})
    for task in ("preprocess", "evaluate"):
        sink.write(f"Executing task '{task}'\nTask '{task}' finished with status SUCCESS\n")
    sink.finish_skipped()
    lines = term.getvalue().splitlines()
    assert [line.split("]", 1)[1].split()[:3] for line in lines] == [
        ["1/3", "preprocess", "ok"], ["2/3", "evaluate", "ok"], ["3/3", "export", "skipped"]]
    assert lines[-1].startswith("[##########]")


def test_a_log_handler_kfp_leaves_behind_does_not_outlive_the_run(tmp_path):
    """Two kfp.local tasks in parallel threads can restore each other's root handlers in the wrong order, leaving
    a handler on the first run's sink; the next run's log records then fail on its closed file."""
    import logging

    from kfp.local.logging_utils import local_logger_context

    from pipelines.local import stage_lines

    root = logging.getLogger()
    before = root.handlers[:]
    with stage_lines(tmp_path / "first.log", total=1):
        a, b = local_logger_context(), local_logger_context()
        a.__enter__(), b.__enter__()  # task A starts, then task B (B saves A's handler as "original")
        a.__exit__(None, None, None), b.__exit__(None, None, None)  # A ends first, then B restores A's handler
    assert root.handlers == before
    with stage_lines(tmp_path / "second.log", total=1) as sink:
        logging.warning("Skipping task evaluate: upstream task(s) failed.")
    assert "Logging error" not in (tmp_path / "second.log").read_text()
    assert not any("Logging error" in line for line in sink.lines)


def test_failing_stage_fails_the_run_and_closes_mlflow(tmp_path, monkeypatch, capsys):
    import pytest
    from mlflow.tracking import MlflowClient

    from augpaint_core.errors import AugPaintError
    from pipelines.local import run_local

    monkeypatch.chdir(tmp_path)
    d = tiny_dict()
    d["data"]["path"] = str(tmp_path / "missing")
    cfg = parse_config(d, "tiny")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(AugPaintError, match="pipeline failed in stage preprocess") as err:
        run_local(cfg, tmp_path / "run", uri, quiet=True)
    log = tmp_path / "run" / "pipeline.log"
    assert f"full log: {log}" in str(err.value) and "Executing task" in log.read_text()
    shown = capsys.readouterr().out
    assert "preprocess" in shown and "FAILED" in shown and "missing" in shown  # the stage's own error line
    assert "executorInput" not in shown and "executor_input" not in shown
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("augpaint").experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FAILED"
    assert not list((tmp_path / "run" / "pipeline_root").glob("*/preprocess/*/artifact.json"))
