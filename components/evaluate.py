from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(config_yaml: str, dataset: Input[Dataset], baseline: Input[Model], augpaint: Input[Model],
             report: Output[Artifact], summary: Output[Markdown], metrics: Output[Metrics], page: Output[HTML],
             tracking_uri: str = "", parent_run_id: str = "", synthetic: Input[Dataset] = None,
             filtered: Input[Dataset] = None):
    """Stage 7: Dice/HD95 per class on the test split, baseline vs AugPaint.

    The KFP UI shows the Markdown table and ``report.html`` (inpainting grid and segmentation overlays, from the
    optional synthetic and filtered sets).
    """
    import json
    import shutil

    from augpaint_core.stages import run_stage_or_exit

    out = run_stage_or_exit("evaluate", config_yaml, report.path, tracking_uri=tracking_uri,
                            parent_run_id=parent_run_id, dataset=dataset.path, baseline=baseline.path,
                            augpaint=augpaint.path, synthetic=synthetic.path if synthetic else None,
                            filtered=filtered.path if filtered else None)
    shutil.copyfile(out / "report.md", summary.path)
    shutil.copyfile(out / "report.html", page.path)
    result = json.loads((out / "metrics.json").read_text())
    for name in ("baseline", "augpaint"):
        metrics.log_metric(f"{name}_mean_dice", result[name]["mean"]["dice"])
        metrics.log_metric(f"{name}_mean_hd95", result[name]["mean"]["hd95"])
    metrics.log_metric("dice_gain_points", result["dice_gain_points"])
