from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export_nnunet(config_yaml: str, dataset: Input[Dataset], filtered: Input[Dataset], nnunet_name: str,
                  nnunet: Output[Dataset], tracking_uri: str = "", parent_run_id: str = ""):
    """Optional last step: the labeled + kept synthetic slices as an nnU-Net v2 raw dataset.

    The artifact holds one folder, ``nnunet_name`` (DatasetNNN_Name): point ``nnUNet_raw`` at the artifact.
    """
    import os

    from augpaint_core.stages import run_stage_or_exit

    run_stage_or_exit("export", config_yaml, os.path.join(nnunet.path, nnunet_name), tracking_uri=tracking_uri,
                      parent_run_id=parent_run_id, dataset=dataset.path, synthetic=filtered.path)
