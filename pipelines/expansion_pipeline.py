"""Recurring dataset expansion: new cases in MinIO -> inpaint the new labeled ones -> publish a dataset version
-> retrain and evaluate the segmenter -> promote it in the MLflow registry only if it is better.

Scheduled with ``augpaint schedule --cron "0 0 3 * * 1" ...`` (max_concurrency 1: one writer per versions root).
"""
# No `from __future__ import annotations` here: kfp reads the pipeline's annotations as types.
from typing import Optional

from kfp import dsl

from augpaint_core.config import AugPaintConfig
from components.expansion import (expansion_ae, expansion_ldm, prepare_dataset, promote_segmenter,
                                  publish_dataset_version, scan_incoming, select_new_cases)
from components.filter import filter_synthetic
from components.inpaint import inpaint, merge_inpaint_shards
from components.tracking import close_tracking, start_tracking
from components.train_seg import train_seg_augpaint
from pipelines.augpaint_pipeline import default_config_text, num_shards
from pipelines.cluster import stage_task


def build_pipeline(cfg: Optional[AugPaintConfig] = None):
    """The expansion pipeline function for this config's cluster settings (see augpaint_pipeline.build_pipeline)."""
    cfg = cfg or AugPaintConfig()
    cluster, shards, default_yaml = cfg.cluster, num_shards(cfg), default_config_text(cfg)

    @dsl.pipeline(name="augpaint-expansion",
                  description="Recurring AugPaint dataset expansion: inpaint newly arrived labeled cases, publish a "
                              "new dataset version to MinIO, retrain the segmenter, promote it if it is better.")
    def expansion_pipeline(incoming_uri: str, versions_uri: str, config_yaml: str = default_yaml,
                           retrain: bool = False, model_prefix: str = "augpaint", tracking_uri: str = "",
                           experiment: str = "augpaint-expansion", kfp_ui_url: str = ""):
        """One expansion round.

        Args:
            incoming_uri: s3:// prefix where new labeled and unlabeled cases arrive (any supported raw layout,
                e.g. nnU-Net v2 imagesTr/labelsTr); it is read whole, and its fingerprint is the data version.
            versions_uri: s3:// prefix of the published dataset versions (v000001/, v000002/, ... each with a
                VERSION.json manifest written last).
            config_yaml: the AugPaint config as YAML text (default: the preset this pipeline was compiled with).
            retrain: retrain the AE and LDM instead of reusing the ones registered as <prefix>-ae@current and
                <prefix>-ldm@current in MLflow.
            model_prefix: MLflow registered model name prefix (<prefix>-ae, <prefix>-ldm, <prefix>-seg).
            tracking_uri: MLflow tracking server; empty uses $MLFLOW_TRACKING_URI from the augpaint-mlflow secret.
            experiment: MLflow experiment of the parent run.
            kfp_ui_url: KFP UI base URL, used to link the MLflow run back to this pipeline run.
        """
        closer = close_tracking(tracking_uri=tracking_uri, experiment=experiment,
                                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        stage_task(closer, cluster, "close-tracking", cache=False)
        with dsl.ExitHandler(closer):
            start = stage_task(start_tracking(tracking_uri=tracking_uri, experiment=experiment,
                                              kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                              kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                              config_yaml=config_yaml, kfp_ui_url=kfp_ui_url),
                               cluster, "start-tracking", cache=False)
            common = dict(config_yaml=config_yaml, tracking_uri=tracking_uri, parent_run_id=start.output)
            scan = stage_task(scan_incoming(incoming_uri=incoming_uri, versions_uri=versions_uri), cluster, "scan",
                              cache=False)
            parent = scan.outputs["parent_version"]
            prep = stage_task(prepare_dataset(incoming_uri=incoming_uri, versions_uri=versions_uri,
                                              parent_version=parent, data_version=scan.outputs["fingerprint"],
                                              **common), cluster, "preprocess")
            ds = prep.outputs["dataset"]
            # Registry reads are never cached: a newer registered model must be picked up.
            ae = stage_task(expansion_ae(dataset=ds, model_prefix=model_prefix, retrain=retrain, **common), cluster,
                            "train-ae", gpu=True, retry=True, cache=False)
            ldm = stage_task(expansion_ldm(dataset=ds, ae=ae.outputs["ae"], model_prefix=model_prefix,
                                           retrain=retrain, ae_trained=ae.outputs["Output"], **common), cluster,
                             "train-ldm", gpu=True, retry=True, cache=False)
            sel = stage_task(select_new_cases(dataset=ds, versions_uri=versions_uri, parent_version=parent,
                                              **common), cluster, "select", cache=False)
            with dsl.If(sel.outputs["Output"] > 0, name="new-labeled-cases"):
                gen = dict(dataset=sel.outputs["selected"], ae=ae.outputs["ae"], ldm=ldm.outputs["ldm"], **common)
                if shards > 1:
                    with dsl.ParallelFor(list(range(shards)), parallelism=cluster.shard_parallelism) as shard:
                        part = stage_task(inpaint(shard=shard, num_shards=shards, **gen), cluster, "inpaint",
                                          gpu=True, retry=True)
                    synthetic = stage_task(merge_inpaint_shards(config_yaml=config_yaml,
                                                                shards=dsl.Collected(part.outputs["synthetic"])),
                                           cluster, "merge-shards").outputs["synthetic"]
                else:
                    synthetic = stage_task(inpaint(**gen), cluster, "inpaint", gpu=True,
                                           retry=True).outputs["synthetic"]
                flt = stage_task(filter_synthetic(dataset=ds, synthetic=synthetic, **common), cluster, "filter",
                                 gpu=True, retry=True)
                pub = stage_task(publish_dataset_version(dataset=ds, selected=sel.outputs["selected"],
                                                         filtered=flt.outputs["filtered"], versions_uri=versions_uri,
                                                         parent_version=parent, incoming_uri=incoming_uri, **common),
                                 cluster, "publish", cache=False)
                seg = stage_task(train_seg_augpaint(dataset=pub.outputs["real"], filtered=pub.outputs["synthetic"],
                                                    **common), cluster, "train-seg", gpu=True, retry=True)
                stage_task(promote_segmenter(dataset=pub.outputs["real"], candidate=seg.outputs["segmenter"],
                                             model_prefix=model_prefix, **common), cluster, "evaluate", gpu=True,
                           cache=False)

    return expansion_pipeline


expansion_pipeline = build_pipeline()
