from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_seg_baseline(config_yaml: str, dataset: Input[Dataset], segmenter: Output[Model],
                       tracking_uri: str = "", parent_run_id: str = ""):
    """Stage 6 (baseline): U-Net on the labeled slices only."""
    from augpaint_core.stages import run_stage_or_exit

    run_stage_or_exit("train-seg", config_yaml, segmenter.path, tracking_uri=tracking_uri,
                      parent_run_id=parent_run_id, run_name="train-seg-baseline", dataset=dataset.path,
                      name="baseline")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_seg_augpaint(config_yaml: str, dataset: Input[Dataset], filtered: Input[Dataset],
                       segmenter: Output[Model], tracking_uri: str = "", parent_run_id: str = ""):
    """Stage 6 (AugPaint): the same U-Net on labeled + filtered synthetic slices."""
    from augpaint_core.stages import run_stage_or_exit

    run_stage_or_exit("train-seg", config_yaml, segmenter.path, tracking_uri=tracking_uri,
                      parent_run_id=parent_run_id, run_name="train-seg-augpaint", dataset=dataset.path,
                      synthetic=filtered.path, name="augpaint")
