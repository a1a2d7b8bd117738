from kfp import dsl
from kfp.dsl import Dataset, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess(config_yaml: str, dataset: Output[Dataset], tracking_uri: str = "", parent_run_id: str = "",
               input_dir: str = "", data_version: str = ""):
    """Stage 1: raw data (phantom, nnU-Net v2, MSD, ACDC, Synapse, ISIC 2018) -> sharded 2D slice dataset.

    ``data_version`` only feeds KFP's cache key, so new raw data is not served from cache.
    """
    from augpaint_core.stages import run_stage_or_exit

    run_stage_or_exit("preprocess", config_yaml, dataset.path, tracking_uri=tracking_uri,
                      parent_run_id=parent_run_id, input_dir=input_dir or None)
