"""``augpaint compile``: write the pipeline YAML to upload in the KFP UI."""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from augpaint_core.config import AugPaintConfig
from augpaint_core.errors import AugPaintError

# pipeline name -> module holding its build_pipeline(cfg)
PIPELINES = {"augpaint": "pipelines.augpaint_pipeline", "expansion": "pipelines.expansion_pipeline",
             "experiment": "pipelines.experiment_pipeline"}


def build(name: str, cfg: AugPaintConfig | None = None, **options):
    """The pipeline function ``name`` built for ``cfg`` (kfp-kubernetes settings from ``cfg.cluster``).

    ``options`` go to the experiment pipeline (``splits``, ``labeled``, ``variants``).
    """
    if name not in PIPELINES:
        raise AugPaintError(f"unknown pipeline {name!r}; choose from {', '.join(PIPELINES)}")
    return importlib.import_module(PIPELINES[name]).build_pipeline(cfg, **options)


def compile_pipeline(out: str | Path, image: str | None = None, cfg: AugPaintConfig | None = None,
                     pipeline: str = "augpaint", **options) -> Path:
    """Compile a pipeline to the YAML the KFP UI uploads.

    Args:
        out: YAML file to write.
        image: component base image; sets $AUGPAINT_IMAGE before the components are defined.
        cfg: config whose ``cluster`` section (GPU, tolerations, secrets, retries, timeouts) and
            ``inpaint.num_shards`` shape the tasks; default: the schema defaults.
        pipeline: ``augpaint`` (the full pipeline), ``expansion`` (recurring dataset expansion) or
            ``experiment`` (the paper's comparison).
        options: experiment pipeline options (``splits``, ``labeled``, ``variants``).
    """
    saved = os.environ.get("AUGPAINT_IMAGE")
    try:
        if image:
            os.environ["AUGPAINT_IMAGE"] = image
            _forget_components()  # components read the image when they are defined
        from kfp import compiler

        func = build(pipeline, cfg, **options)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(func, str(out))
        return out
    finally:
        if image:
            if saved is None:
                os.environ.pop("AUGPAINT_IMAGE", None)
            else:
                os.environ["AUGPAINT_IMAGE"] = saved
            _forget_components()


def _forget_components() -> None:
    for mod in [m for m in sys.modules if m == "components" or m.startswith(("components.", "pipelines.augpaint",
                                                                              "pipelines.expansion",
                                                                              "pipelines.experiment"))]:
        del sys.modules[mod]
