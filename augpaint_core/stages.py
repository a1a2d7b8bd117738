"""The stage registry: one entry point shared by the CLI and the KFP components.

``run_stage`` opens the stage's nested MLflow run, logs the flattened config and
calls the stage function. ``run_stage_or_exit`` turns an ``AugPaintError`` into
one line on stderr and exit code 2 (no traceback), for shells and KFP pods.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .augment import rand_aug
from .config import AugPaintConfig, config_from_yaml_text
from .errors import AugPaintError
from .evaluate import evaluate
from .filter import filter_synthetic
from .inpaint import inpaint
from .preprocess import preprocess
from .tracking import stage_run
from .train_ae import train_ae
from .train_ldm import train_ldm
from .train_seg import train_seg

STAGES: dict[str, Callable[..., Path]] = {
    "preprocess": preprocess,
    "train-ae": train_ae,
    "train-ldm": train_ldm,
    "inpaint": inpaint,
    "rand-aug": rand_aug,
    "filter": filter_synthetic,
    "train-seg": train_seg,
    "evaluate": evaluate,
}


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
    if stage not in STAGES:
        raise AugPaintError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if int(os.environ.get("RANK", "0")) != 0:
        tracking_uri = "none"  # under `accelerate launch` only rank 0 logs (and writes the artifact)
    with stage_run(tracking_uri, parent_run_id, run_name or stage, cfg.flat()) as tracker:
        return STAGES[stage](cfg, out=out, force=force, tracker=tracker, **inputs)


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
