from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def inpaint(config_yaml: str, dataset: Input[Dataset], ae: Input[Model], ldm: Input[Model],
            synthetic: Output[Dataset], tracking_uri: str = "", parent_run_id: str = ""):
    """Stage 4: AugPaint (Algorithm 1) - N synthetic images per labeled slice, labels kept exact."""
    from augpaint_core.stages import run_stage_or_exit

    run_stage_or_exit("inpaint", config_yaml, synthetic.path, tracking_uri=tracking_uri,
                      parent_run_id=parent_run_id, dataset=dataset.path, ae_path=ae.path, ldm_path=ldm.path)
