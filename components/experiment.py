"""Components of the experiment pipeline (the paper's comparison): the stages with a config override input.

Every component takes the run's ``config_yaml`` plus ``overrides`` (``key=value`` strings set at compile time:
``split=N`` for the split's seed, ``data.num_labeled``, ``ldm.conditional``, ``seg.semi_supervised``, filter
rules) and MLflow ``tags`` (``augpaint.variant``, ``augpaint.split``, ``augpaint.labeled``). All work is in
``augpaint_core.experiment.run_pipeline_stage``.
"""
from typing import Dict, List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def exp_preprocess(config_yaml: str, overrides: List[str], tags: Dict[str, str], dataset: Output[Dataset],
                   tracking_uri: str = "", parent_run_id: str = "", input_dir: str = "", data_version: str = ""):
    """Preprocess once per split, with the largest labeled count (``data_version`` only feeds the cache key)."""
    from augpaint_core.experiment import run_pipeline_stage

    run_pipeline_stage("preprocess", config_yaml, overrides, dataset.path, tags=tags, tracking_uri=tracking_uri,
                       parent_run_id=parent_run_id, input_dir=input_dir or None)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def relabel(config_yaml: str, overrides: List[str], tags: Dict[str, str], dataset: Input[Dataset],
            relabeled: Output[Dataset], tracking_uri: str = "", parent_run_id: str = ""):
    """Keep the first ``data.num_labeled`` labeled patients of the seeded order (one preprocessing for every k)."""
    from augpaint_core.experiment import run_pipeline_stage

    run_pipeline_stage("relabel", config_yaml, overrides, relabeled.path, tags=tags, tracking_uri=tracking_uri,
                       parent_run_id=parent_run_id, dataset=dataset.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def exp_train_ae(config_yaml: str, overrides: List[str], tags: Dict[str, str], dataset: Input[Dataset],
                 ae: Output[Model], tracking_uri: str = "", parent_run_id: str = ""):
    """The split's autoencoder (all training images; shared by every labeled count and variant)."""
    from augpaint_core.experiment import run_pipeline_stage

    run_pipeline_stage("train-ae", config_yaml, overrides, ae.path, tags=tags, tracking_uri=tracking_uri,
                       parent_run_id=parent_run_id, dataset=dataset.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def exp_train_ldm(config_yaml: str, overrides: List[str], tags: Dict[str, str], dataset: Input[Dataset],
                  ae: Input[Model], ldm: Output[Model], tracking_uri: str = "", parent_run_id: str = "",
                  run_name: str = "train-ldm"):
    """The split's LDM: unconditional, or conditional with the override ``ldm.conditional=true``."""
    from augpaint_core.experiment import run_pipeline_stage

    run_pipeline_stage("train-ldm", config_yaml, overrides, ldm.path, tags=tags, tracking_uri=tracking_uri,
                       parent_run_id=parent_run_id, run_name=run_name, dataset=dataset.path, ae_path=ae.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def exp_inpaint(config_yaml: str, overrides: List[str], tags: Dict[str, str], dataset: Input[Dataset],
                ae: Input[Model], ldm: Input[Model], synthetic: Output[Dataset], tracking_uri: str = "",
                parent_run_id: str = "", run_name: str = "inpaint"):
    """An inpainting pool (AugPaint with the unconditional LDM, cond AugPaint with the conditional one)."""
    from augpaint_core.experiment import run_pipeline_stage

    run_pipeline_stage("inpaint", config_yaml, overrides, synthetic.path, tags=tags, tracking_uri=tracking_uri,
                       parent_run_id=parent_run_id, run_name=run_name, dataset=dataset.path, ae_path=ae.path,
                       ldm_path=ldm.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def rand_aug(config_yaml: str, overrides: List[str], tags: Dict[str, str], dataset: Input[Dataset],
             synthetic: Output[Dataset], tracking_uri: str = "", parent_run_id: str = ""):
    """The Rand Aug baseline's pool: random flip/rotation/scaling/intensity copies of the labeled slices."""
    from augpaint_core.experiment import run_pipeline_stage

    run_pipeline_stage("rand-aug", config_yaml, overrides, synthetic.path, tags=tags, tracking_uri=tracking_uri,
                       parent_run_id=parent_run_id, dataset=dataset.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def exp_filter(config_yaml: str, overrides: List[str], tags: Dict[str, str], dataset: Input[Dataset],
               synthetic: Input[Dataset], filtered: Output[Dataset], scorer: Input[Dataset] = None,
               tracking_uri: str = "", parent_run_id: str = "", run_name: str = "filter"):
    """Filter a pool; ``scorer`` (another filter's output) reuses its trained scorer instead of training one."""
    import os

    from augpaint_core.experiment import run_pipeline_stage

    reuse = {"scorer": os.path.join(scorer.path, "scorer")} if scorer is not None else {}
    run_pipeline_stage("filter", config_yaml, overrides, filtered.path, tags=tags, tracking_uri=tracking_uri,
                       parent_run_id=parent_run_id, run_name=run_name, dataset=dataset.path,
                       synthetic=synthetic.path, **reuse)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def exp_train_seg(config_yaml: str, overrides: List[str], tags: Dict[str, str], dataset: Input[Dataset],
                  segmenter: Output[Model], variant: str, filtered: Input[Dataset] = None, tracking_uri: str = "",
                  parent_run_id: str = ""):
    """One variant's U-Net: labeled slices (+ its filtered pool; + UniMatch with ``seg.semi_supervised``)."""
    from augpaint_core.experiment import run_pipeline_stage

    pool = {"synthetic": filtered.path} if filtered is not None else {}
    run_pipeline_stage("train-seg", config_yaml, overrides, segmenter.path, tags=tags, tracking_uri=tracking_uri,
                       parent_run_id=parent_run_id, run_name=f"train-seg-{variant}", dataset=dataset.path,
                       name=variant, **pool)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_one(config_yaml: str, overrides: List[str], tags: Dict[str, str], dataset: Input[Dataset],
                 segmenter: Input[Model], variant: str, split: int, labeled: int, record: Output[Artifact],
                 metrics: Output[Metrics], filtered: Input[Dataset] = None, tracking_uri: str = "",
                 parent_run_id: str = "") -> str:
    """Evaluate one variant on the test split; returns its result record for summarize (``b64:`` + base64 of
    the JSON: kfp.local splices list items into JSON text unescaped, so quotes would break the list)."""
    import base64
    import json
    import os

    from augpaint_core.experiment import run_pipeline_stage

    pool = {"filtered": filtered.path} if filtered is not None else {}
    run_pipeline_stage("evaluate-one", config_yaml, overrides, record.path, tags=tags, tracking_uri=tracking_uri,
                       parent_run_id=parent_run_id, run_name=f"{variant} split{split} k{labeled}",
                       dataset=dataset.path, segmenter=segmenter.path, variant=variant, split=split,
                       labeled=labeled, **pool)
    with open(os.path.join(record.path, "record.json")) as f:
        rec = json.load(f)
    metrics.log_metric("mean_dice", rec["mean_dice"])
    metrics.log_metric("mean_hd95", rec["mean_hd95"])
    return "b64:" + base64.b64encode(json.dumps(rec).encode()).decode("ascii")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def summarize_experiment(config_yaml: str, records: List[str], variants: List[str], labeled: List[int], splits: int,
                         report: Output[Artifact], table: Output[Markdown], chart: Output[HTML],
                         metrics: Output[Metrics], tracking_uri: str = "", parent_run_id: str = ""):
    """Table 1 (Markdown with the 95% CI of the paired gain), CSV, bar chart (HTML) and per-variant Metrics."""
    import json
    import os
    import shutil

    from augpaint_core.experiment import run_pipeline_stage

    run_pipeline_stage("summarize", config_yaml, [], report.path, tags={}, tracking_uri=tracking_uri,
                       parent_run_id=parent_run_id, records=list(records), variants=list(variants),
                       labeled=[int(k) for k in labeled], splits=int(splits))
    shutil.copyfile(os.path.join(report.path, "table.md"), table.path)
    shutil.copyfile(os.path.join(report.path, "chart.html"), chart.path)
    with open(os.path.join(report.path, "results.json")) as f:
        summary = json.load(f)["summary"]
    for r in summary["rows"]:
        metrics.log_metric(f"{r['variant']}_k{r['labeled']}_dice", r["dice_mean"])
        metrics.log_metric(f"{r['variant']}_k{r['labeled']}_hd95", r["hd95_mean"])
    for g in summary["gaps"]:
        metrics.log_metric(f"gain_{g['variant']}_k{g['labeled']}", g["gap_mean"])
