from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def inpaint(config_yaml: str, dataset: Input[Dataset], ae: Input[Model], ldm: Input[Model],
            synthetic: Output[Dataset], tracking_uri: str = "", parent_run_id: str = "", shard: int = 0,
            num_shards: int = 1):
    """Stage 4: AugPaint (Algorithm 1) - N synthetic images per labeled slice, labels kept exact.

    With ``num_shards`` > 1 this task makes only shard ``shard``'s items (one GPU per shard);
    ``merge_inpaint_shards`` joins them.
    """
    from augpaint_core.stages import run_stage_or_exit

    sharding = {"shard": int(shard), "num_shards": int(num_shards)} if int(num_shards) > 1 else {}
    run_stage_or_exit("inpaint", config_yaml, synthetic.path, tracking_uri=tracking_uri,
                      parent_run_id=parent_run_id, run_name=f"inpaint-shard-{int(shard)}" if sharding else None,
                      dataset=dataset.path, ae_path=ae.path, ldm_path=ldm.path, **sharding)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def merge_inpaint_shards(config_yaml: str, shards: Input[List[Dataset]], synthetic: Output[Dataset]):
    """Stage 4 (fan-in): merge the shards' synthetic datasets, in shard order, into one artifact."""
    from augpaint_core.stages import run_stage_or_exit

    # ParallelFor collects in completion order; the metadata's shard index restores the order.
    run_stage_or_exit("merge-shards", config_yaml, synthetic.path, tracking_uri="none",
                      shard_dirs=[s.path for s in shards])
