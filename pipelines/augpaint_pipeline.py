"""The full AugPaint pipeline: seven stages wired together, the same definition locally and on a cluster.

``build_pipeline(cfg)`` applies the config's ``cluster`` section (GPU requests,
tolerations, secrets, retries, timeouts) and fans inpainting out over
``inpaint.num_shards`` GPU shards; ``augpaint_pipeline`` is built from the defaults.
"""
# No `from __future__ import annotations` here: kfp reads the pipeline's annotations as types.
import json
from typing import Optional

from kfp import dsl

from augpaint_core.config import AugPaintConfig
from components.configs import stage_configs
from components.evaluate import evaluate
from components.export import export_nnunet
from components.filter import filter_synthetic
from components.inpaint import inpaint, merge_inpaint_shards
from components.preprocess import preprocess
from components.tracking import close_tracking, start_tracking
from components.train_ae import train_ae
from components.train_ldm import train_ldm
from components.train_seg import train_seg_augpaint, train_seg_baseline
from pipelines.cluster import stage_task


def num_shards(cfg: AugPaintConfig) -> int:
    """Inpainting shards of this config (``inpaint.num_shards``; one GPU task each)."""
    return int(getattr(cfg.inpaint, "num_shards", 1))


def default_config_text(cfg: AugPaintConfig) -> str:
    """The config as one-line JSON (valid YAML): kfp's compiled header comment breaks on multi-line defaults."""
    return json.dumps(cfg.model_dump(mode="json"), separators=(",", ":"))


def build_pipeline(cfg: Optional[AugPaintConfig] = None):
    """The AugPaint pipeline function for this config's cluster settings.

    Args:
        cfg: config whose ``cluster`` section and ``inpaint.num_shards`` shape the tasks; its YAML is the
            default of the ``config_yaml`` parameter.
    """
    cfg = cfg or AugPaintConfig()
    cluster, shards, default_yaml = cfg.cluster, num_shards(cfg), default_config_text(cfg)

    @dsl.pipeline(name="augpaint", description="AugPaint: inpainting augmentation for few-label segmentation; "
                                                "trains AE+LDM, inpaints, filters, trains and evaluates U-Nets.")
    def augpaint_pipeline(config_yaml: str = default_yaml, tracking_uri: str = "", experiment: str = "augpaint",
                          input_dir: str = "", data_version: str = "builtin", kfp_ui_url: str = "",
                          export_nnunet_as: str = ""):
        """AugPaint end to end.

        Args:
            config_yaml: the full AugPaint config as YAML text (a preset from configs/, e.g. demo.yaml or paper.yaml).
            tracking_uri: MLflow tracking URI; empty uses $MLFLOW_TRACKING_URI (from the augpaint-mlflow secret on a
                cluster) or sqlite:///mlflow.db; 'none' disables.
            experiment: MLflow experiment name for the parent run.
            input_dir: raw dataset folder or s3:// prefix (nnU-Net v2, MSD, ACDC, Synapse or ISIC 2018 layout,
                auto-detected unless data.format says otherwise); empty uses data.path, else the built-in phantom.
            data_version: a label for the input data; change it when the data changes so cached steps rerun
                (preprocess and training are cached per data version, evaluation never).
            kfp_ui_url: KFP UI base URL, used to link the MLflow run back to this pipeline run.
            export_nnunet_as: empty (default) skips it; a name like Dataset500_AugPaint ends the run with an
                nnU-Net v2 raw dataset of the labeled + kept synthetic slices under that name.
        """
        # The exit task may not depend on other tasks, so it finds the parent run by its KFP run-id tag.
        closer = close_tracking(tracking_uri=tracking_uri, experiment=experiment,
                                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        stage_task(closer, cluster, "close-tracking", cache=False)
        with dsl.ExitHandler(closer):
            start = start_tracking(tracking_uri=tracking_uri, experiment=experiment,
                                   kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                   kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, config_yaml=config_yaml,
                                   kfp_ui_url=kfp_ui_url)
            stage_task(start, cluster, "start-tracking", cache=False)
            # Cached tasks get only their own config sections and no per-run value (no MLflow parent id: they
            # find the parent by the run key), so a rerun, or a change to seg.lr, reuses AE, LDM and inpainting.
            split = stage_task(stage_configs(config_yaml=config_yaml), cluster, "stage-configs", cache=False)
            split.after(start)  # the parent run exists before any stage looks for it (.after is not in cache keys)
            sec = split.outputs

            def common(stage: str) -> dict:
                return dict(config_yaml=sec[stage], tracking_uri=tracking_uri)

            pre = stage_task(preprocess(input_dir=input_dir, data_version=data_version, **common("preprocess")),
                             cluster, "preprocess")
            ds = pre.outputs["dataset"]
            ae = stage_task(train_ae(dataset=ds, **common("train_ae")), cluster, "train-ae", gpu=True, retry=True)
            ldm = stage_task(train_ldm(dataset=ds, ae=ae.outputs["ae"], **common("train_ldm")), cluster, "train-ldm",
                             gpu=True, retry=True)
            if shards > 1:
                with dsl.ParallelFor(list(range(shards)), parallelism=cluster.shard_parallelism) as shard:
                    part = stage_task(inpaint(dataset=ds, ae=ae.outputs["ae"], ldm=ldm.outputs["ldm"], shard=shard,
                                              num_shards=shards, **common("inpaint")), cluster, "inpaint", gpu=True,
                                      retry=True)
                merged = stage_task(merge_inpaint_shards(config_yaml=sec["merge_shards"],
                                                         shards=dsl.Collected(part.outputs["synthetic"])),
                                    cluster, "merge-shards")
                synthetic = merged.outputs["synthetic"]
            else:
                syn = stage_task(inpaint(dataset=ds, ae=ae.outputs["ae"], ldm=ldm.outputs["ldm"], **common("inpaint")),
                                 cluster, "inpaint", gpu=True, retry=True)
                synthetic = syn.outputs["synthetic"]
            flt = stage_task(filter_synthetic(dataset=ds, synthetic=synthetic, **common("filter")), cluster, "filter",
                             gpu=True, retry=True)
            # The baseline needs only the dataset, so it trains in parallel with the generative branch.
            base = stage_task(train_seg_baseline(dataset=ds, **common("train_seg")), cluster, "train-seg", gpu=True,
                              retry=True)
            aug = stage_task(train_seg_augpaint(dataset=ds, filtered=flt.outputs["filtered"], **common("train_seg")),
                             cluster, "train-seg", gpu=True, retry=True)
            # Never cached, so it may take the whole config and the parent id (it logs the final numbers there).
            stage_task(evaluate(dataset=ds, baseline=base.outputs["segmenter"], augpaint=aug.outputs["segmenter"],
                                synthetic=synthetic, filtered=flt.outputs["filtered"], config_yaml=config_yaml,
                                tracking_uri=tracking_uri, parent_run_id=start.output),
                       cluster, "evaluate", gpu=True, cache=False)
            with dsl.If(export_nnunet_as != "", name="export-nnunet-enabled"):
                stage_task(export_nnunet(dataset=ds, filtered=flt.outputs["filtered"], nnunet_name=export_nnunet_as,
                                         config_yaml=config_yaml, tracking_uri=tracking_uri,
                                         parent_run_id=start.output), cluster, "export", cache=False)

    return augpaint_pipeline


augpaint_pipeline = build_pipeline()
