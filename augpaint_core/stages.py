"""The stage registry: one entry point shared by the CLI and the KFP components.

``run_stage`` opens the stage's nested MLflow run, logs the flattened config and
calls the stage function. ``run_stage_or_exit`` turns an ``AugPaintError`` into
one line on stderr and exit code 2 (no traceback), for shells and KFP pods.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .config import AugPaintConfig, config_from_yaml_text
from .errors import AugPaintError
from .infra.tracking import stage_run

# Stage name -> "module:function". Imported on first use, so a KFP task imports only its own stage
# (diffusers and MONAI take about 10 s to import on 2 cores).
STAGES: dict[str, str] = {
    "preprocess": "data.preprocess:preprocess",
    "train-ae": "generative.train_ae:train_ae",
    "train-ldm": "generative.train_ldm:train_ldm",
    "train-pixel": "generative.train_ldm:train_pixel",
    "inpaint": "generative.inpaint:inpaint",
    "merge-shards": "generative.inpaint:merge_shards",
    "rand-aug": "segmentation.augment:rand_aug",
    "filter": "segmentation.filter:filter_synthetic",
    "train-seg": "segmentation.train_seg:train_seg",
    "evaluate": "segmentation.evaluate:evaluate",
    "export": "data.export:export_stage",
}


def stage_function(stage: str) -> Callable[..., Path]:
    """The function behind a stage name."""
    if stage not in STAGES:
        raise AugPaintError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    module, name = STAGES[stage].split(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


def run_stage(stage: str, cfg: AugPaintConfig, out: str | Path, *, tracking_uri: str | None = None,
              parent_run_id: str = "", force: bool = False, run_name: str | None = None, **inputs: Any) -> Path:
    """Run one stage with tracking.

    Args:
        stage: a key of ``STAGES``.
        cfg: validated config.
        out: output artifact folder.
        tracking_uri: MLflow URI; ``none`` disables tracking.
        parent_run_id: the pipeline's parent MLflow run.
        force: replace an existing output.
        run_name: MLflow run name (defaults to the stage name).
        inputs: the stage function's input paths (``dataset=...``, ``ae_path=...``).
    """
    fn = stage_function(stage)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if int(os.environ.get("RANK", "0")) != 0:
        tracking_uri = "none"  # under `accelerate launch` only rank 0 logs (and writes the artifact)
    with stage_run(tracking_uri, parent_run_id, run_name or stage, cfg.flat()) as tracker:
        return fn(cfg, out=out, force=force, tracker=tracker, **inputs)


def run_stage_or_exit(stage: str, config_yaml: str, out: str, *, tracking_uri: str = "", parent_run_id: str = "",
                      run_name: str | None = None, **inputs: Any) -> Path:
    """Component entry point: the config arrives as YAML text; errors become one line and exit 2."""
    try:
        cfg = config_from_yaml_text(config_yaml)
        return run_stage(stage, cfg, out, tracking_uri=tracking_uri, parent_run_id=parent_run_id,
                         force=True, run_name=run_name, **inputs)
    except AugPaintError as err:
        print(f"augpaint {stage}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
