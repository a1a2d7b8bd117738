from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_ldm(config_yaml: str, dataset: Input[Dataset], ae: Input[Model], ldm: Output[Model],
              tracking_uri: str = "", parent_run_id: str = ""):
    """Stage 3: unconditional latent diffusion U-Net in the AE's latent space."""
    from augpaint_core.stages import run_stage_or_exit

    run_stage_or_exit("train-ldm", config_yaml, ldm.path, tracking_uri=tracking_uri, parent_run_id=parent_run_id,
                      dataset=dataset.path, ae_path=ae.path)
