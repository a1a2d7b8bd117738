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
    if image:
        os.environ["AUGPAINT_IMAGE"] = image
        for mod in [m for m in sys.modules if m == "components" or m.startswith(("components.", "pipelines.augpaint"))]:
            del sys.modules[mod]  # components read the image at definition time
    from kfp import compiler

    pipeline = importlib.import_module("pipelines.augpaint_pipeline").augpaint_pipeline
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out))
    return out
