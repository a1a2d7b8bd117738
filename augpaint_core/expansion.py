"""Recurring dataset expansion: new cases in a MinIO prefix -> a new, atomically published dataset version.

One round (the ``augpaint-expansion`` pipeline, or ``augpaint expand`` locally):

1. ``expand-prepare``: preprocess the incoming raw prefix (every labeled training case
   keeps its label). Patients already in the parent version keep the split they had
   there, so test cases never move into training as data arrives.
2. AE/LDM: the latest registered ones (``<prefix>-ae@current``, ``<prefix>-ldm@current``)
   unless retraining is asked for (``expand-models``).
3. ``expand-select``: the labeled training cases the parent version has not expanded yet.
4. inpaint those, filter (the ordinary stages).
5. ``expand-publish``: the new version = this dataset + the parent's synthetic slices
   (of cases still in training) + the new filtered ones; manifest with parent, counts
   and hashes (see :mod:`augpaint_core.versions`).
6. train the segmenter on the version, ``expand-promote``: evaluate it and the current
   ``<prefix>-seg@champion`` on the same val split; move the alias only if it is better there
   (the test split is reported, never used to decide).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .infra import storage, versions
from .infra.artifacts import atomic_dir, read_artifact_meta, write_artifact_meta
from .config import AugPaintConfig
from .data.dataset import SliceDataset, load_dataset, save_dataset
from .errors import AugPaintError

CURRENT = "current"  # alias of the AE/LDM the expansion reuses
CHAMPION = "champion"  # alias of the best segmenter


def fingerprint(incoming: str) -> str:
    """sha256 over the incoming prefix's object names and content hashes (the KFP cache key's data version)."""
    h = hashlib.sha256()
    for uri in storage.list_uris(incoming):
        rel = uri[len(str(incoming).rstrip("/")) + 1:]
        h.update(rel.encode() + b"\0")
        if not storage.is_s3(uri):
            h.update(storage._sha256_file(Path(uri)).encode())  # local data: content, not just names
    return h.hexdigest()


def parent_manifest(versions_uri: str, parent: int) -> dict | None:
    """The parent version's manifest (``parent`` 0 = none yet)."""
    return versions.read_manifest(versions_uri, parent) if parent else None


def _labeled_train_cases(ds: SliceDataset) -> list[str]:
    return sorted({ds.records[i]["case_id"] for i in ds.where(split="train", labeled=True)})


def prepare(cfg: AugPaintConfig, out: str | Path, *, incoming: str, versions_uri: str, parent: int = 0,
            force: bool = False, tracker=None) -> Path:
    """Stage expand-prepare: the slice dataset of everything in ``incoming``, splits pinned by the parent.

    Args:
        cfg: config (``data`` section).
        out: output dataset artifact.
        incoming: raw dataset prefix (``s3://`` or a folder) in any ingest layout.
        versions_uri: dataset versions root.
        parent: parent version number (0: none).
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    from .data.ingest import scan
    from .data.preprocess import preprocess, split_patients

    pm = parent_manifest(versions_uri, parent)
    pinned: dict[str, str] = (pm or {}).get("info", {}).get("splits", {})
    with tempfile.TemporaryDirectory() as scratch:
        raw = storage.download_dir(incoming, Path(scratch) / "raw") if storage.is_s3(incoming) else Path(incoming)
        source = scan(raw, cfg.data.format, cfg.data.channels)
        # The same split preprocess will draw (its rule, its seed), to know how many training patients there are.
        labeled_cases = [c for c in source.cases if c.label is not None]
        fixed = {c.patient_id for c in labeled_cases if c.fixed_split}
        free = sorted({c.patient_id for c in labeled_cases} - fixed)
        if not free:
            raise AugPaintError(f"{incoming}: no labeled cases")
        seed = cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed
        _, train_order = split_patients(free, cfg.data.split, seed, fixed_test=bool(fixed))
        # Every labeled training case keeps its label: expansion grows S^l as annotated cases arrive.
        full = cfg.model_copy(update={"data": cfg.data.model_copy(update={"num_labeled": len(train_order)})})
        pre = preprocess(full, Path(scratch) / "pre", input_dir=raw, force=True)
        ds = load_dataset(pre)
        records = []
        moved = 0
        for r in ds.records:
            r = dict(r)
            old = pinned.get(r.get("patient_id", r["case_id"]))
            if old and old != r["split"] and r["labeled"]:
                r["split"], moved = old, moved + 1
            records.append(r)
        pinned_ds = SliceDataset(np.asarray(ds.images), np.asarray(ds.labels), records, ds.class_names, ds.regions)
        meta = read_artifact_meta(pre)
        with atomic_dir(out, force=force) as tmp:
            save_dataset(pinned_ds, tmp, shard_size=cfg.data.shard_size)
            write_artifact_meta(tmp, kind="dataset", stage="expand-prepare", config=cfg.model_dump(mode="json"),
                                seed=cfg.seed, extra={"source": str(incoming), "parent_version": parent,
                                                      "class_names": ds.class_names, "regions": ds.regions,
                                                      "slices_moved_to_parent_split": moved,
                                                      "skipped": meta.get("skipped", [])})
    if tracker:
        tracker.log_metrics({"slices": len(records), "labeled_train_cases": len(_labeled_train_cases(pinned_ds)),
                             "slices_moved_to_parent_split": moved})
    return Path(out)


def select_new(cfg: AugPaintConfig, out: str | Path, *, dataset: str | Path, versions_uri: str, parent: int = 0,
               force: bool = False, tracker=None) -> Path:
    """Stage expand-select: the dataset without the labeled training cases the parent already expanded.

    Inpainting it makes synthetic slices for the new labeled cases only. The number of new
    cases is in ``artifact.json`` (``new_cases``).
    """
    ds = load_dataset(dataset)
    pm = parent_manifest(versions_uri, parent)
    done = set((pm or {}).get("info", {}).get("expanded_cases", []))
    new = [c for c in _labeled_train_cases(ds) if c not in done]
    keep = [i for i, r in enumerate(ds.records)
            if not (r["split"] == "train" and r["labeled"] and r["case_id"] in done)]
    sub = ds.select(keep)
    with atomic_dir(out, force=force) as tmp:
        save_dataset(sub, tmp, shard_size=cfg.data.shard_size)
        write_artifact_meta(tmp, kind="dataset", stage="expand-select", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"dataset": dataset},
                            extra={"new_cases": new, "already_expanded": sorted(done), "parent_version": parent,
                                   "class_names": ds.class_names, "regions": ds.regions})
    if tracker:
        tracker.log_metrics({"new_labeled_cases": len(new), "already_expanded_cases": len(done)})
    return Path(out)


def _concat(parts: list[SliceDataset]) -> SliceDataset:
    parts = [p for p in parts if len(p.records)]
    first = parts[0]
    return SliceDataset(np.concatenate([np.asarray(p.images) for p in parts]),
                        np.concatenate([np.asarray(p.labels) for p in parts]),
                        [r for p in parts for r in p.records], first.class_names, first.regions)


def publish(cfg: AugPaintConfig, out: str | Path, *, dataset: str | Path, selected: str | Path,
            filtered: str | Path | None, versions_uri: str, parent: int = 0, incoming: str = "",
            force: bool = False, tracker=None) -> Path:
    """Stage expand-publish: write the new dataset version to ``versions_uri``, atomically.

    ``out`` gets a local copy: ``dataset/`` and ``synthetic/`` artifacts, and
    ``version.json`` (the published manifest).

    Args:
        cfg: config.
        out: local output folder (the KFP artifact).
        dataset: this round's real dataset (expand-prepare).
        selected: expand-select's artifact (names the new cases).
        filtered: the new cases' filtered synthetic dataset (None when there were none).
        versions_uri: versions root.
        parent: parent version (0: none).
        incoming: the raw prefix (recorded).
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    ds = load_dataset(dataset)
    new_cases = read_artifact_meta(selected)["new_cases"]
    pm = parent_manifest(versions_uri, parent)
    train_cases = set(_labeled_train_cases(ds))
    parts: list[SliceDataset] = []
    carried = 0
    with tempfile.TemporaryDirectory() as scratch:
        if pm is not None:
            old_dir, _ = versions.download_version(versions_uri, Path(scratch) / "parent", parent)
            if (old_dir / "synthetic" / "artifact.json").is_file():
                old = load_dataset(old_dir / "synthetic")
                # Synthetic slices of cases that left training (none, with pinned splits) are dropped.
                idx = [i for i, r in enumerate(old.records) if r["case_id"] in train_cases]
                carried = len(idx)
                if idx:
                    parts.append(old.select(idx))
        if filtered is not None:
            parts.append(load_dataset(filtered))
        with atomic_dir(out, force=force) as tmp:
            shutil.copytree(dataset, tmp / "dataset")
            n_syn = 0
            if parts:
                syn = _concat(parts)
                n_syn = len(syn.records)
                (tmp / "synthetic").mkdir()
                save_dataset(syn, tmp / "synthetic", shard_size=cfg.data.shard_size)
                write_artifact_meta(tmp / "synthetic", kind="dataset", stage="expand-publish",
                                    config=cfg.model_dump(mode="json"), seed=cfg.seed,
                                    extra={"class_names": ds.class_names, "regions": ds.regions,
                                           "carried_from_parent": carried})
            expanded = sorted(set((pm or {}).get("info", {}).get("expanded_cases", [])) | set(new_cases))
            splits = {r.get("patient_id", r["case_id"]): r["split"] for r in ds.records if r["labeled"]}
            counts = {"slices": len(ds.records), "cases": len({r["case_id"] for r in ds.records}),
                      "labeled_train_cases": len(train_cases),
                      "unlabeled_slices": sum(not r["labeled"] for r in ds.records),
                      "test_cases": len({r["case_id"] for r in ds.records if r["split"] == "test"}),
                      "new_cases": len(new_cases), "synthetic_slices": n_syn,
                      "synthetic_carried_from_parent": carried}
            info = {"expanded_cases": expanded, "new_cases": new_cases, "splits": splits, "incoming": incoming,
                    "dataset_sha256": read_artifact_meta(dataset)["content_sha256"]}
            manifest = versions.publish_version(tmp, versions_uri, parent=parent or None, counts=counts, info=info)
            (tmp / "version.json").write_text(json.dumps(manifest, indent=1))
            write_artifact_meta(tmp, kind="dataset-version", stage="expand-publish",
                                config=cfg.model_dump(mode="json"), seed=cfg.seed,
                                inputs={"dataset": dataset, "selected": selected,
                                        **({"filtered": filtered} if filtered else {})},
                                extra={"version": manifest["version"], "versions_uri": versions_uri,
                                       "counts": counts})
    if tracker:
        tracker.log_metrics({"dataset_version": manifest["version"], **{f"version_{k}": v for k, v in counts.items()}})
        tracker.set_tags({"augpaint.dataset_version": str(manifest["version"]),
                          "augpaint.dataset_uri": versions.version_uri(versions_uri, manifest["version"])})
    return Path(out)


def models(cfg: AugPaintConfig, out: str | Path, *, kind: str, dataset: str | Path, prefix: str,
           tracking_uri: str | None, retrain: bool = False, ae_path: str | Path | None = None,
           force: bool = False, tracker=None) -> tuple[Path, bool]:
    """Stage expand-models: the registered ``<prefix>-<kind>@current`` model, else train and register one.

    Returns:
        the model folder and whether it was trained now (False: reused from the registry).

    Args:
        cfg: config.
        out: output model artifact.
        kind: ``ae`` or ``ldm``.
        dataset: slice dataset (for training).
        prefix: registered model name prefix.
        tracking_uri: MLflow (the registry).
        retrain: train even if a registered model exists.
        ae_path: the AE (for the LDM).
        force: replace an existing output.
        tracker: the stage's MLflow tracker (the registered version points at its run).
    """
    from .infra.tracking import download_model, register_model

    if kind not in ("ae", "ldm"):
        raise AugPaintError(f"expand-models: kind must be ae or ldm, got {kind!r}")
    name = f"{prefix}-{kind}"
    if not retrain:
        with tempfile.TemporaryDirectory() as scratch:
            got = download_model(tracking_uri, name, CURRENT, Path(scratch) / kind)
            if got is not None:
                read_artifact_meta(got, kind="model")
                with atomic_dir(out, force=force) as tmp:
                    shutil.copytree(got, tmp, dirs_exist_ok=True)
                if tracker:
                    tracker.set_tags({"augpaint.model_source": f"models:/{name}@{CURRENT}"})
                return Path(out), False
    if kind == "ae":
        from .generative.train_ae import train_ae

        train_ae(cfg, dataset, out, force=force, tracker=tracker)
    else:
        from .generative.train_ldm import train_ldm

        if ae_path is None:
            raise AugPaintError("expand-models: the LDM needs the AE")
        train_ldm(cfg, dataset, ae_path, out, force=force, tracker=tracker)
    if tracker is None or tracker.offline:
        raise AugPaintError(f"expand-models: registering {name} needs a reachable MLflow server")
    version = register_model(tracking_uri, name, out, tracker.run_id, alias=CURRENT)
    tracker.set_tags({"augpaint.model_source": f"models:/{name}/{version}"})
    return Path(out), True


def promote(cfg: AugPaintConfig, out: str | Path, *, dataset: str | Path, candidate: str | Path, prefix: str,
            tracking_uri: str | None, force: bool = False, tracker=None) -> Path:
    """Stage expand-promote: register the new segmenter; make it ``champion`` only if it beats the current one.

    The decision uses the val split of ``dataset``: deciding on test would turn the test score of a
    recurring job into an optimistic maximum over rounds. Both models' test numbers are reported beside
    it, never used. ``out/metrics.json`` has the numbers and the decision.
    """
    from .segmentation.evaluate import evaluate_model
    from .infra.tracking import download_model, register_model, set_alias

    ds = load_dataset(dataset)
    name = f"{prefix}-seg"
    new = {s: evaluate_model(candidate, ds, s) for s in ("val", "test")}
    with tempfile.TemporaryDirectory() as scratch:
        champ_dir = download_model(tracking_uri, name, CHAMPION, Path(scratch) / "champion")
        champ = {s: evaluate_model(champ_dir, ds, s) for s in ("val", "test")} if champ_dir is not None else None
    if tracker is None or tracker.offline:
        raise AugPaintError(f"expand-promote: the registry ({name}) needs a reachable MLflow server")
    version = register_model(tracking_uri, name, candidate, tracker.run_id)
    better = champ is None or new["val"]["mean"]["dice"] > champ["val"]["mean"]["dice"]
    if better:
        set_alias(tracking_uri, name, CHAMPION, version)
    result: dict[str, Any] = {"decided_on": "val", "candidate": new["val"]["mean"],
                              "champion": champ["val"]["mean"] if champ else None,
                              "test": {"candidate": new["test"]["mean"],
                                       "champion": champ["test"]["mean"] if champ else None},
                              "registered_version": version, "promoted": better, "model": name}
    with atomic_dir(out, force=force) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(result, indent=1))
        write_artifact_meta(tmp, kind="report", stage="expand-promote", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"dataset": dataset, "candidate": candidate}, extra=result)
    tracker.log_metrics({"candidate_mean_dice": new["val"]["mean"]["dice"], "promoted": float(better),
                         "candidate_test_mean_dice": new["test"]["mean"]["dice"],
                         **({"champion_mean_dice": champ["val"]["mean"]["dice"],
                             "champion_test_mean_dice": champ["test"]["mean"]["dice"]} if champ else {})})
    tracker.set_tags({"augpaint.promoted": str(better).lower(), "augpaint.seg_version": str(version),
                      "augpaint.promotion_split": "val"})
    return Path(out)


def run_tracked(stage: str, config_yaml: str, fn, *, tracking_uri: str = "", parent_run_id: str = "", **kw: Any):
    """Component entry point for an expansion stage: config from YAML text, a nested MLflow run, one-line errors.

    Args:
        stage: stage name (the MLflow child run's name).
        config_yaml: the config as YAML text.
        fn: the stage function, called as ``fn(cfg, force=True, tracker=..., **kw)``.
        tracking_uri: MLflow URI ('' = $MLFLOW_TRACKING_URI; 'none' = off).
        parent_run_id: the pipeline's parent run.
    """
    import inspect
    import logging
    import sys

    from .config import config_from_yaml_text
    from .infra.tracking import stage_run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_yaml_text(config_yaml)
        with stage_run(tracking_uri, parent_run_id, stage, cfg.flat()) as tracker:
            if "tracking_uri" in inspect.signature(fn).parameters:
                kw["tracking_uri"] = tracking_uri  # the registry lives on the same server
            return fn(cfg, force=True, tracker=tracker, **kw)
    except AugPaintError as err:
        print(f"augpaint {stage}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
