"""The paper's comparison (``augpaint experiment``) as a KFP pipeline: every split, labeled count and variant
unrolled at compile time into tasks that run in parallel where the data allows.

Per split s (seed + s): preprocess once with the largest labeled count, relabel to every k (the labeled cases of
a smaller k are a prefix of the seeded order), train the AE and the LDMs (unconditional, and conditional for
cond AugPaint) in parallel on the smallest k's dataset (the same images for every k). Per k: the pools
(inpaint, cond inpaint, rand-aug) in parallel; the first pool's filter trains the scorer, the others reuse it;
per variant train-seg, then evaluate-one. One summarize task writes Table 1. The tasks and their order mirror
``augpaint_core.experiment.run_split``, so the in-process harness and this pipeline give the same table for
the same seeds. No ParallelFor: older backends lack nested ParallelFor with nested Collected.
"""
# No `from __future__ import annotations` here: kfp reads the pipeline's annotations as types.
from typing import List, Optional

from kfp import dsl

from augpaint_core.config import AugPaintConfig
from augpaint_core.errors import AugPaintError
from augpaint_core.experiment import DEFAULT_VARIANTS, VARIANTS
from components.experiment import (evaluate_one, exp_filter, exp_inpaint, exp_preprocess, exp_train_ae,
                                   exp_train_ldm, exp_train_seg, rand_aug, relabel, summarize_experiment)
from components.tracking import close_tracking, start_tracking
from pipelines.augpaint_pipeline import default_config_text
from pipelines.cluster import stage_task

POOL_ORDER = ("augpaint", "cond", "randaug", "augpaint_strict")  # run_split's order: the first trains the scorer


def check_options(splits: int, labeled: List[int], variants: List[str]) -> None:
    """Fail with one line on bad experiment options."""
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise AugPaintError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    wired = [v for v, (_, pool, _) in VARIANTS.items() if pool is None or pool in POOL_ORDER]
    unwired = [v for v in variants if v not in wired]
    if unwired:  # the evidence controls run in process only (augpaint experiment without --kfp)
        raise AugPaintError(f"variant(s) {', '.join(unwired)}: not in the experiment pipeline, only in "
                            f"`augpaint experiment` without --kfp; the pipeline runs {', '.join(wired)}")
    if splits < 1 or not labeled or min(labeled) < 1:
        raise AugPaintError(f"--splits {splits} and --labeled {labeled}: need at least one split and counts >= 1")


def build_pipeline(cfg: Optional[AugPaintConfig] = None, *, splits: int = 3, labeled: Optional[List[int]] = None,
                   variants: Optional[List[str]] = None):
    """The experiment pipeline function for these splits, labeled counts and variants.

    Args:
        cfg: config whose ``cluster`` section shapes the tasks; its YAML is the ``config_yaml`` default.
        splits: independent splits (seeds seed .. seed + splits - 1).
        labeled: labeled case counts (default ``[cfg.data.num_labeled]``).
        variants: ``augpaint_core.experiment.VARIANTS`` keys (default baseline, randaug, augpaint, cond_augpaint).
    """
    cfg = cfg or AugPaintConfig()
    labeled = sorted(set(labeled or [cfg.data.num_labeled]))
    variants = list(variants or DEFAULT_VARIANTS)
    check_options(splits, labeled, variants)
    cluster, default_yaml = cfg.cluster, default_config_text(cfg)
    pools = {VARIANTS[v][1] for v in variants} - {None}

    @dsl.pipeline(name="augpaint-experiment",
                  description="The paper's comparison: baseline and augmentation variants over splits and labeled "
                              "counts; Table 1 with the 95% CI of the paired gain.")
    def experiment_pipeline(config_yaml: str = default_yaml, tracking_uri: str = "",
                            experiment: str = "augpaint-experiment", input_dir: str = "",
                            data_version: str = "builtin", kfp_ui_url: str = ""):
        """AugPaint experiment (Table 1 layout).

        Args:
            config_yaml: the base AugPaint config as YAML text; each task applies its own overrides.
            tracking_uri: MLflow tracking URI; empty uses $MLFLOW_TRACKING_URI or sqlite:///mlflow.db; 'none'
                disables.
            experiment: MLflow experiment name for the parent run.
            input_dir: raw dataset folder or s3:// prefix; empty uses data.path, else the built-in phantom.
            data_version: a label for the input data (feeds the cache key of preprocess).
            kfp_ui_url: KFP UI base URL, used to link the MLflow run back to this pipeline run.
        """
        closer = close_tracking(tracking_uri=tracking_uri, experiment=experiment,
                                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        stage_task(closer, cluster, "close-tracking", cache=False)
        with dsl.ExitHandler(closer):
            start = start_tracking(tracking_uri=tracking_uri, experiment=experiment,
                                   kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                   kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, config_yaml=config_yaml,
                                   kfp_ui_url=kfp_ui_url)
            stage_task(start, cluster, "start-tracking", cache=False)
            common = dict(config_yaml=config_yaml, tracking_uri=tracking_uri, parent_run_id=start.output)
            records = []
            for s in range(splits):
                split_tags = {"augpaint.split": str(s)}

                def over(k: int, *more: str) -> List[str]:
                    return [f"split={s}", f"data.num_labeled={k}", *more]

                def tags(k: int, variant: str = "") -> dict:
                    return {**split_tags, "augpaint.labeled": str(k),
                            **({"augpaint.variant": variant} if variant else {})}

                pre = stage_task(exp_preprocess(overrides=over(max(labeled)), tags=split_tags, input_dir=input_dir,
                                                data_version=data_version, **common), cluster, "preprocess")
                pre.set_display_name(f"s{s} preprocess")
                data = {}
                for k in labeled:
                    rel = stage_task(relabel(overrides=over(k), tags=tags(k), dataset=pre.outputs["dataset"],
                                             **common), cluster, "relabel")
                    rel.set_display_name(f"s{s} k{k} relabel")
                    data[k] = rel.outputs["relabeled"]
                k0 = labeled[0]  # AE and LDMs see S^l + S^u: the same images for every k (run_split uses the first)
                gen = {}
                if pools & {"augpaint", "augpaint_strict", "cond"}:
                    ae = stage_task(exp_train_ae(overrides=over(k0), tags=split_tags, dataset=data[k0], **common),
                                    cluster, "train-ae", gpu=True, retry=True)
                    ae.set_display_name(f"s{s} train-ae")
                    gen["ae"] = ae.outputs["ae"]
                for name, extra in (("ldm", ()), ("ldm_cond", ("ldm.conditional=true",))):
                    if (name == "ldm" and pools & {"augpaint", "augpaint_strict"}) or (name == "ldm_cond" and
                                                                                      "cond" in pools):
                        t = stage_task(exp_train_ldm(overrides=over(k0, *extra), tags=split_tags, dataset=data[k0],
                                                     ae=gen["ae"], run_name=name.replace("_", "-").replace(
                                                         "ldm", "train-ldm"), **common),
                                       cluster, "train-ldm", gpu=True, retry=True)
                        t.set_display_name(f"s{s} {name.replace('_', '-').replace('ldm', 'train-ldm')}")
                        gen[name] = t.outputs["ldm"]
                for k in labeled:
                    filtered, scorer = {}, None
                    syn = {}
                    for pool in POOL_ORDER:
                        if pool not in pools:
                            continue
                        src = "augpaint" if pool == "augpaint_strict" else pool
                        if src not in syn:
                            if src == "randaug":
                                t = rand_aug(overrides=over(k), tags=tags(k), dataset=data[k], **common)
                                stage_task(t, cluster, "rand-aug")
                            else:
                                t = stage_task(exp_inpaint(overrides=over(k), tags=tags(k), dataset=data[k],
                                                           ae=gen["ae"], ldm=gen["ldm_cond" if src == "cond" else "ldm"],
                                                           run_name=f"inpaint-{src}", **common),
                                               cluster, "inpaint", gpu=True, retry=True)
                            t.set_display_name(f"s{s} k{k} {'rand-aug' if src == 'randaug' else 'inpaint-' + src}")
                            syn[src] = t.outputs["synthetic"]
                        rules = ("filter.reject_background=true", "filter.ood_reject=true") \
                            if pool == "augpaint_strict" else ()
                        f = stage_task(exp_filter(overrides=over(k, *rules), tags=tags(k), dataset=data[k],
                                                  synthetic=syn[src], run_name=f"filter-{pool}",
                                                  **({"scorer": scorer} if scorer is not None else {}), **common),
                                       cluster, "filter", gpu=True, retry=True)
                        f.set_display_name(f"s{s} k{k} filter-{pool}")
                        scorer = scorer if scorer is not None else f.outputs["filtered"]
                        filtered[pool] = f.outputs["filtered"]
                    for v in variants:
                        _, pool, semi = VARIANTS[v]
                        o = over(k, f"seg.semi_supervised={'unimatch' if semi else 'none'}")
                        pool_in = {"filtered": filtered[pool]} if pool else {}
                        seg = stage_task(exp_train_seg(overrides=o, tags=tags(k, v), dataset=data[k], variant=v,
                                                       **pool_in, **common), cluster, "train-seg", gpu=True,
                                         retry=True)
                        seg.set_display_name(f"s{s} k{k} train-seg-{v}")
                        ev = stage_task(evaluate_one(overrides=o, tags=tags(k, v), dataset=data[k],
                                                     segmenter=seg.outputs["segmenter"], variant=v, split=s,
                                                     labeled=k, **pool_in, **common), cluster, "evaluate",
                                        gpu=True)
                        ev.set_display_name(f"s{s} k{k} evaluate-{v}")
                        records.append(ev.outputs["Output"])
            summ = stage_task(summarize_experiment(config_yaml=config_yaml, records=records, variants=variants,
                                                   labeled=labeled, splits=splits, tracking_uri=tracking_uri,
                                                   parent_run_id=start.output), cluster, "summarize", cache=False)
            summ.set_display_name("summarize")

    return experiment_pipeline
