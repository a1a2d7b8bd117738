from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(config_yaml: str, dataset: Input[Dataset], baseline: Input[Model], augpaint: Input[Model],
             report: Output[Artifact], summary: Output[Markdown], metrics: Output[Metrics],
             tracking_uri: str = "", parent_run_id: str = ""):
    """Stage 7: Dice/HD95 per class on the test split, baseline vs AugPaint (Markdown shows in the KFP UI)."""
    import json
    import shutil

    from augpaint_core.stages import run_stage_or_exit

    out = run_stage_or_exit("evaluate", config_yaml, report.path, tracking_uri=tracking_uri,
                            parent_run_id=parent_run_id, dataset=dataset.path, baseline=baseline.path,
                            augpaint=augpaint.path)
    shutil.copyfile(out / "report.md", summary.path)
    result = json.loads((out / "metrics.json").read_text())
    for name in ("baseline", "augpaint"):
        metrics.log_metric(f"{name}_mean_dice", result[name]["mean"]["dice"])
        metrics.log_metric(f"{name}_mean_hd95", result[name]["mean"]["hd95"])
    metrics.log_metric("dice_gain_points", result["dice_gain_points"])
