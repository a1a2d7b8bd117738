"""The exit handler's KFP final state -> MLflow run status mapping (issue 16, break 3), on a real MLflow store."""
from __future__ import annotations

import pytest
from kfp.dsl import PipelineTaskFinalStatus

from augpaint_core.infra.tracking import start_parent_run
from components.tracking import close_tracking

# What the KFP backend (MLMD), kfp.local and Argo report, and what the parent run must end as.
CASES = {"COMPLETE": "FINISHED", "SUCCEEDED": "FINISHED", "CACHED": "FINISHED", "FAILED": "FAILED",
         "CANCELED": "KILLED", "CANCELLED": "KILLED", "SYSTEM_ERROR": "FAILED"}


def _status(state: str) -> PipelineTaskFinalStatus:
    return PipelineTaskFinalStatus(state=state, pipeline_job_resource_name="", pipeline_task_name="exit",
                                   error_code=None, error_message=None)


def test_final_states_close_the_parent_run_with_the_right_status(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for state in CASES:
        start_parent_run(uri, "states", f"run-{state}", tags={"kfp.pipeline_run_id": f"kfp-{state}"})
        close_tracking.python_func(tracking_uri=uri, experiment="states", kfp_run_id=f"kfp-{state}",
                                   status=_status(state))
    c = MlflowClient(uri)
    runs = {r.data.tags["kfp.pipeline_run_id"]: r for r in
            c.search_runs([c.get_experiment_by_name("states").experiment_id])}
    got = {state: runs[f"kfp-{state}"].info.status for state in CASES}
    assert got == CASES
    # Every state is kept verbatim, so an unknown one can be told from a real failure.
    assert {s: runs[f"kfp-{s}"].data.tags["kfp.final_state"] for s in CASES} == {s: s for s in CASES}
    err = capsys.readouterr().err
    assert "'SYSTEM_ERROR' has no MLflow equivalent" in err and "'COMPLETE'" not in err


@pytest.mark.parametrize("state", [" Complete "])
def test_final_state_case_and_spaces_do_not_matter(tmp_path, state):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = start_parent_run(uri, "states", "r", tags={"kfp.pipeline_run_id": "k"})
    close_tracking.python_func(tracking_uri=uri, experiment="states", kfp_run_id="k", status=_status(state))
    assert MlflowClient(uri).get_run(run).info.status == "FINISHED"
