"""Split the run's config into the sections each cached task depends on (KFP cache keys on input values)."""
from typing import NamedTuple

from kfp import dsl

from components import IMAGE


# The output type is spelled out in the signature: KFP runs the function's source alone, without this module.
@dsl.component(base_image=IMAGE, install_kfp_package=False)
def stage_configs(config_yaml: str) -> NamedTuple("StageConfigs", [("preprocess", str), ("train_ae", str),
                                                                    ("train_ldm", str), ("inpaint", str),
                                                                    ("merge_shards", str), ("filter", str),
                                                                    ("train_seg", str)]):
    """Validate the config once and hand each cached stage only its own sections (plus name and seed).

    A change to ``seg.lr`` then changes only the inputs of filter and train-seg, so preprocess, train-ae,
    train-ldm and inpaint are served from KFP's cache.
    """
    import sys
    from typing import NamedTuple

    from augpaint_core.config import config_from_yaml_text
    from augpaint_core.errors import AugPaintError
    from augpaint_core.stages import stage_config_text

    try:
        cfg = config_from_yaml_text(config_yaml)
    except AugPaintError as err:
        print(f"augpaint stage-configs: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    names = ("preprocess", "train_ae", "train_ldm", "inpaint", "merge_shards", "filter", "train_seg")
    out = NamedTuple("StageConfigs", [(n, str) for n in names])
    return out(*[stage_config_text(cfg, n.replace("_", "-")) for n in names])
