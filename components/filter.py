from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def filter_synthetic(config_yaml: str, dataset: Input[Dataset], synthetic: Input[Dataset],
                     filtered: Output[Dataset], tracking_uri: str = "", parent_run_id: str = ""):
    """Stage 5: score synthetic pairs with a segmenter trained on the labeled data; keep the top fraction."""
    from augpaint_core.stages import run_stage_or_exit

    run_stage_or_exit("filter", config_yaml, filtered.path, tracking_uri=tracking_uri,
                      parent_run_id=parent_run_id, dataset=dataset.path, synthetic=synthetic.path)
