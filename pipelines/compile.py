"""``augpaint compile``: write the pipeline YAML to upload in the KFP UI."""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path


def compile_pipeline(out: str | Path, image: str | None = None) -> Path:
    """Compile the AugPaint pipeline.

    Args:
        out: YAML file to write.
        image: component base image; sets $AUGPAINT_IMAGE before the components are defined.
    """
    saved = os.environ.get("AUGPAINT_IMAGE")
    try:
        if image:
            os.environ["AUGPAINT_IMAGE"] = image
            _forget_components()  # components read the image when they are defined
        from kfp import compiler

        pipeline = importlib.import_module("pipelines.augpaint_pipeline").augpaint_pipeline
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(pipeline, str(out))
        return out
    finally:
        if image:
            if saved is None:
                os.environ.pop("AUGPAINT_IMAGE", None)
            else:
                os.environ["AUGPAINT_IMAGE"] = saved
            _forget_components()


def _forget_components() -> None:
    for mod in [m for m in sys.modules if m == "components" or m.startswith(("components.", "pipelines.augpaint"))]:
        del sys.modules[mod]
