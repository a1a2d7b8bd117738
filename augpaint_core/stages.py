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
    "relabel": "data.relabel:relabel",
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


# The config sections each cached pipeline task receives (besides name and seed): exactly what its stage reads,
# so that KFP's cache key (input values + input artifacts) changes only when the stage's output would. A new
# ``cfg.<section>`` read in a stage must be added here (tests/core/test_stages.py checks the stage modules).
# Every stage gets ``data``: its input checks compare ``data.image_size`` with the dataset they are given (a
# data change also changes the dataset artifact, so this costs no cache hit).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "preprocess": ("data",),
    "train-ae": ("data", "ae", "training", "runtime"),
    "train-ldm": ("data", "ae", "ldm", "pixel", "training", "runtime"),
    "inpaint": ("data", "inpaint", "runtime"),
    "merge-shards": ("data", "inpaint", "runtime"),
    "filter": ("data", "filter", "seg", "training", "runtime"),
    "train-seg": ("data", "seg", "training", "runtime"),
}
# Environment variable naming the pipeline run, set on cluster pods from the pod's KFP run-id label and by
# ``pipelines.local``; stages find their MLflow parent run by it instead of taking the parent's id as an input.
RUN_KEY_ENV = "AUGPAINT_RUN_KEY"
RUN_KEY_TAG = "augpaint.run_key"


def stage_config_text(cfg: AugPaintConfig | str, stage: str) -> str:
    """The part of the config that determines ``stage``'s output, as compact JSON (valid YAML).

    Sections the stage does not read are left out (they load as defaults in the task); ``evaluate`` and
    stages without an entry in ``STAGE_SECTIONS`` get the whole config.

    Args:
        cfg: the config or its YAML text.
        stage: a ``STAGES`` name.
    """
    import json

    if isinstance(cfg, str):
        cfg = config_from_yaml_text(cfg)
    full = cfg.model_dump(mode="json")
    if stage not in STAGE_SECTIONS:
        return json.dumps(full, separators=(",", ":"), sort_keys=True)
    keep = {"name": full["name"], "seed": full["seed"], **{k: full[k] for k in STAGE_SECTIONS[stage]}}
    return json.dumps(keep, separators=(",", ":"), sort_keys=True)


def find_parent_run(tracking_uri: str | None, run_key: str) -> str:
    """The MLflow parent run tagged with this pipeline run's key, or "" (none found, or the server is down).

    Args:
        tracking_uri: MLflow URI.
        run_key: the ``augpaint.run_key`` tag value (the KFP run id on a cluster).
    """
    from .infra.tracking import _client, resolve_uri

    if not run_key or tracking_uri in ("none", "off"):
        return ""
    try:
        client = _client(resolve_uri(tracking_uri))
        exps = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(exps, filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1)
        return runs[0].info.run_id if runs else ""
    except Exception as err:  # noqa: BLE001 - unreachable server: the stage still runs (spooled, top level)
        logging.getLogger(__name__).warning("no MLflow parent run found for %s: %s", run_key, type(err).__name__)
        return ""


def stage_function(stage: str) -> Callable[..., Path]:
    """The function behind a stage name."""
    if stage not in STAGES:
        raise AugPaintError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    module, name = STAGES[stage].split(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


# Stage name -> the stage names its artifact.json may record (--force replaces only those).
_RECORDED = {"merge-shards": ("inpaint", "merge-shards")}


def _local_paths(value: Any) -> list[Path]:
    vals = value if isinstance(value, (list, tuple)) else [value]
    return [Path(v).resolve() for v in vals if isinstance(v, (str, Path)) and v and "://" not in str(v)]


def check_stage_inputs(stage: str, cfg: AugPaintConfig, out: str | Path, *, force: bool = False,
                       **inputs: Any) -> None:
    """Refuse, before any work, what would lose data or give a wrong result silently.

    * ``out`` equal to, inside, or holding an input (``--out`` = ``--in`` with ``--force`` deleted the input);
    * ``--force`` on a folder that is not a finished artifact of this stage;
    * a dataset whose size is not ``data.image_size``, or segmenters trained at another size.

    Args:
        stage: stage name.
        cfg: validated config.
        out: output folder (s3:// outputs are not checked here).
        force: whether an existing output may be replaced.
        inputs: the stage's inputs as passed to the stage function.
    """
    from .infra.artifacts import ARTIFACT_FILE, read_artifact_meta

    if "://" in str(out):
        return
    o = Path(out).resolve()
    names = {"input_dir": "--in", "dataset": "--in", "shard_dirs": "--in", "ae_path": "--ae", "ldm_path": "--ldm",
             "synthetic": "--synthetic", "scorer": "--scorer", "baseline": "--baseline", "augpaint": "--augpaint"}
    given = dict(inputs)
    if stage == "preprocess" and not given.get("input_dir") and cfg.data.path:
        given["input_dir"] = cfg.data.path
    for key, value in given.items():
        for p in _local_paths(value) if key in names else []:
            if o == p or o in p.parents or p in o.parents:
                rel = "is" if o == p else ("contains" if o in p.parents else "is inside")
                raise AugPaintError(f"--out {out}: {rel} the input {names[key]} {p}; write the output to its own "
                                    f"folder (nothing was changed)")
    if force and o.exists() and (not o.is_dir() or any(o.iterdir())):
        meta = read_artifact_meta(o) if (o / ARTIFACT_FILE).is_file() else None
        if meta is None:
            raise AugPaintError(f"--out {out}: exists and is not a finished augpaint artifact (no {ARTIFACT_FILE}); "
                                f"--force only replaces an artifact, so nothing was deleted")
        if meta.get("stage") not in _RECORDED.get(stage, (stage,)):
            raise AugPaintError(f"--out {out}: holds the output of stage {meta.get('stage')!r}; --force only replaces "
                                f"an output of {stage!r}, so nothing was deleted")
    dataset = given.get("dataset")
    if stage != "preprocess" and isinstance(dataset, (str, Path)):
        from .data.dataset import read_manifest

        size = read_manifest(dataset)["image_size"]
        if size != cfg.data.image_size:
            raise AugPaintError(f"data.image_size: {cfg.data.image_size} does not match the dataset {dataset} "
                                f"({size} px); use the config it was made with")
        for key in ("baseline", "augpaint", "scorer"):
            seg = given.get(key)
            if isinstance(seg, (str, Path)) and (Path(seg) / "segmenter.json").is_file():
                import json

                try:
                    got = json.loads((Path(seg) / "segmenter.json").read_text()).get("image_size")
                except (ValueError, UnicodeDecodeError, AttributeError):
                    continue  # load_segmenter names the corrupt file
                if got is not None and got != size:
                    raise AugPaintError(f"{names[key]} {seg}: segmenter was trained on {got} px images, the dataset "
                                        f"{dataset} has {size} px")


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
    from .runtime import apply_cpu_quota

    fn = stage_function(stage)
    check_stage_inputs(stage, cfg, out, force=force, **inputs)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    apply_cpu_quota()  # torch/OpenMP threads = the pod's CPU limit, not the node's core count
    if not parent_run_id and os.environ.get(RUN_KEY_ENV) and tracking_uri not in ("none", "off"):
        parent_run_id = find_parent_run(tracking_uri, os.environ[RUN_KEY_ENV])
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
