from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_ae(config_yaml: str, dataset: Input[Dataset], ae: Output[Model], tracking_uri: str = "",
             parent_run_id: str = ""):
    """Stage 2: VQ-regularised f=4 autoencoder on all training images."""
    from augpaint_core.stages import run_stage_or_exit

    run_stage_or_exit("train-ae", config_yaml, ae.path, tracking_uri=tracking_uri, parent_run_id=parent_run_id,
                      dataset=dataset.path)
