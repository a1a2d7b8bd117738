"""Relabel: the same dataset with fewer labeled training patients (the experiment's labeled counts).

Preprocessing keeps the first ``data.num_labeled`` training patients of the seeded order; their slices come
first among the training records, in that order. So the dataset for a smaller k is the preprocessed one with
only the first k of those patients still labeled: the others become unlabeled (their labels are zeroed, as
preprocess does for S^u). One preprocessing serves every labeled count.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import AugPaintConfig
from ..errors import AugPaintError
from ..infra.artifacts import atomic_dir, write_artifact_meta
from .dataset import SliceDataset, load_dataset, read_manifest, save_dataset


def labeled_patients(ds: SliceDataset) -> list[str]:
    """The labeled training patients in the dataset's (seeded) order."""
    out: list[str] = []
    for r in ds.records:
        if r["split"] == "train" and r["labeled"] and r["patient_id"] not in out:
            out.append(r["patient_id"])
    return out


def relabel_dataset(ds: SliceDataset, k: int) -> tuple[SliceDataset, list[str]]:
    """An in-memory copy with only the first ``k`` labeled training patients labeled; returns it and them."""
    order = labeled_patients(ds)
    if k < 1 or k > len(order):
        raise AugPaintError(f"data.num_labeled: {k} labeled cases requested but the dataset has {len(order)} "
                            "labeled training cases (preprocess with at least the largest labeled count)")
    keep = set(order[:k])
    labels = np.array(ds.labels)
    records = []
    for i, r in enumerate(ds.records):
        r = dict(r)
        if r["split"] == "train" and r["labeled"] and r["patient_id"] not in keep:
            r["labeled"] = False
            labels[i] = 0  # like preprocess: the labels of S^u are not stored
        records.append(r)
    return SliceDataset(np.asarray(ds.images), labels, records, ds.class_names, ds.regions), order[:k]


def relabel(cfg: AugPaintConfig, dataset: str | Path, out: str | Path, *, force: bool = False,
            tracker=None) -> Path:
    """Stage: keep ``data.num_labeled`` labeled training patients of a preprocessed dataset.

    Args:
        cfg: config; ``data.num_labeled`` is the labeled count k.
        dataset: a preprocessed dataset with at least k labeled training patients.
        out: output dataset artifact.
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    src = load_dataset(dataset)
    ds, kept = relabel_dataset(src, cfg.data.num_labeled)
    manifest = read_manifest(dataset)
    info = {k: manifest[k] for k in ("dataset", "format") if k in manifest}
    with atomic_dir(out, force=force) as tmp:
        save_dataset(ds, tmp, shard_size=cfg.data.shard_size, info=info)
        write_artifact_meta(tmp, kind="dataset", stage="relabel", config=cfg.model_dump(mode="json"), seed=cfg.seed,
                            inputs={"dataset": dataset}, extra={"labeled_cases": kept,
                                                                "labeled_before": labeled_patients(src)})
    if tracker:
        tracker.log_metrics({"labeled_cases": len(kept), "slices_train_labeled":
                             int(sum(r["split"] == "train" and r["labeled"] for r in ds.records))})
    return Path(out)
