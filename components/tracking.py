"""MLflow parent run: opened by the first task, closed by the exit handler."""
from kfp import dsl

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def start_tracking(tracking_uri: str, experiment: str, kfp_run_id: str, kfp_run_name: str, config_yaml: str,
                   kfp_ui_url: str = "") -> str:
    """Create the pipeline's parent MLflow run and return its id (tagged like KFP's MLflow plugin)."""
    import os
    import sys

    from augpaint_core.config import config_from_yaml_text
    from augpaint_core.errors import AugPaintError
    from augpaint_core.infra.tracking import start_parent_run

    if tracking_uri == "none":
        return ""
    url = f"{kfp_ui_url.rstrip('/')}/#/runs/details/{kfp_run_id}" if kfp_ui_url else ""
    try:
        params = config_from_yaml_text(config_yaml).flat()
        return start_parent_run(tracking_uri, experiment, kfp_run_name,
                                tags={"kfp.pipeline_run_id": kfp_run_id, "kfp.pipeline_run_url": url,
                                      # stages find this parent by the key (not by an input: that would
                                      # defeat KFP's cache); on a cluster the key is the pod's run-id label
                                      "augpaint.run_key": os.environ.get("AUGPAINT_RUN_KEY") or kfp_run_id},
                                params=params, offline_ok=True)  # server down: spool, the pipeline goes on
    except AugPaintError as err:
        print(f"augpaint start-tracking: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def close_tracking(tracking_uri: str, experiment: str, kfp_run_id: str, status: dsl.PipelineTaskFinalStatus):
    """Exit handler: replay spooled records, then close this pipeline run's parent MLflow run with its final state.

    The KFP backend reports the final state from MLMD (``COMPLETE``); kfp.local says ``SUCCEEDED``.
    A state MLflow has no name for is closed as FAILED and kept verbatim in the ``kfp.final_state`` tag.
    """
    import sys

    from augpaint_core.errors import AugPaintError
    from augpaint_core.infra.tracking import close_parent_runs

    # The mapping lives inside the function: KFP ships only the function's source to the pod.
    states = {"COMPLETE": "FINISHED", "SUCCEEDED": "FINISHED", "CACHED": "FINISHED", "FAILED": "FAILED",
              "CANCELED": "KILLED", "CANCELLED": "KILLED"}
    raw = str(status.state or "").strip().upper()
    if tracking_uri == "none":
        return
    mlflow_status = states.get(raw)
    if mlflow_status is None:
        print(f"augpaint close-tracking: KFP final state {raw or '(empty)'!r} has no MLflow equivalent; "
              "closing the run as FAILED, the state is in tag kfp.final_state", file=sys.stderr)
        mlflow_status = "FAILED"
    try:
        close_parent_runs(tracking_uri, experiment, kfp_run_id, mlflow_status, offline_ok=True,
                          tags={"kfp.final_state": raw})
    except AugPaintError as err:  # e.g. HTTP 403: an access problem, not an outage (nothing was spooled)
        print(f"augpaint close-tracking: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
