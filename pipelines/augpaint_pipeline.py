"""The full AugPaint pipeline: seven stages wired together, the same definition locally and on a cluster."""
from kfp import dsl

from components.evaluate import evaluate
from components.filter import filter_synthetic
from components.inpaint import inpaint
from components.preprocess import preprocess
from components.tracking import close_tracking, start_tracking
from components.train_ae import train_ae
from components.train_ldm import train_ldm
from components.train_seg import train_seg_augpaint, train_seg_baseline


@dsl.pipeline(name="augpaint", description="AugPaint: inpainting augmentation for few-label segmentation; "
                                            "trains AE+LDM, inpaints, filters, trains and evaluates U-Nets.")
def augpaint_pipeline(config_yaml: str, tracking_uri: str = "", experiment: str = "augpaint",
                      input_dir: str = "", data_version: str = "builtin", kfp_ui_url: str = ""):
    """AugPaint end to end.

    Args:
        config_yaml: the full AugPaint config as YAML text (a preset from configs/, e.g. demo.yaml or paper.yaml).
        tracking_uri: MLflow tracking URI; empty uses $MLFLOW_TRACKING_URI or sqlite:///mlflow.db; 'none' disables.
        experiment: MLflow experiment name for the parent run.
        input_dir: raw dataset folder or s3:// prefix (nnU-Net v2, MSD, ACDC, Synapse or ISIC 2018 layout,
            auto-detected unless data.format says otherwise); empty uses data.path, else the built-in phantom.
        data_version: a label for the input data; change it when the data changes so cached steps rerun.
        kfp_ui_url: KFP UI base URL, used to link the MLflow run back to this pipeline run.
    """
    # The exit task may not depend on other tasks, so it finds the parent run by its KFP run-id tag.
    closer = close_tracking(tracking_uri=tracking_uri, experiment=experiment,
                            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    closer.set_caching_options(False)
    with dsl.ExitHandler(closer):
        start = start_tracking(tracking_uri=tracking_uri, experiment=experiment,
                               kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                               kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, config_yaml=config_yaml,
                               kfp_ui_url=kfp_ui_url)
        start.set_caching_options(False)
        common = dict(config_yaml=config_yaml, tracking_uri=tracking_uri, parent_run_id=start.output)
        pre = preprocess(input_dir=input_dir, data_version=data_version, **common)
        ds = pre.outputs["dataset"]
        ae = train_ae(dataset=ds, **common)
        ldm = train_ldm(dataset=ds, ae=ae.outputs["ae"], **common)
        syn = inpaint(dataset=ds, ae=ae.outputs["ae"], ldm=ldm.outputs["ldm"], **common)
        flt = filter_synthetic(dataset=ds, synthetic=syn.outputs["synthetic"], **common)
        # The baseline needs only the dataset, so it trains in parallel with the generative branch.
        base = train_seg_baseline(dataset=ds, **common)
        aug = train_seg_augpaint(dataset=ds, filtered=flt.outputs["filtered"], **common)
        ev = evaluate(dataset=ds, baseline=base.outputs["segmenter"], augpaint=aug.outputs["segmenter"], **common)
        ev.set_caching_options(False)
