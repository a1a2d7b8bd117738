"""Filter: score synthetic pairs with a segmenter trained on S^l and keep the top fraction.

Score = the scorer's mean probability of the given label class over the
labeled (foreground) pixels. A sample whose generated surroundings confuse the
scorer gets a low score.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .artifacts import atomic_dir, write_artifact_meta
from .dataset import load_dataset, save_dataset
from .config import AugPaintConfig
from .errors import AugPaintError
from .train_seg import fit_segmenter, labeled_train, predict_proba


def confidence_scores(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean probability of the true class inside the labeled (foreground) area, per image.

    Args:
        proba: (N, C, H, W) softmax probabilities.
        labels: (N, H, W) labels.
    """
    p_true = np.take_along_axis(proba, labels[:, None].astype(np.int64), 1)[:, 0]
    fg = labels > 0
    n = fg.sum((1, 2))
    return np.where(n > 0, (p_true * fg).sum((1, 2)) / np.maximum(n, 1), 0.0)


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the top ``ceil(fraction * N)`` scores, best first (ties: lower index first)."""
    k = max(1, math.ceil(fraction * len(scores)))
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:k]


def filter_synthetic(cfg: AugPaintConfig, dataset: str | Path, synthetic: str | Path, out: str | Path, *,
                     force: bool = False, tracker=None) -> Path:
    """Stage 5: keep the best ``filter.keep_fraction`` of the synthetic pairs.

    Args:
        cfg: config (``filter`` and ``seg`` sections, ``seed``).
        dataset: real slice dataset artifact (its labeled training slices train the scorer).
        synthetic: synthetic dataset from inpaint.
        out: output filtered synthetic dataset (records carry ``filter_score``).
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    ds = load_dataset(dataset)
    syn = load_dataset(synthetic)
    if len(syn.records) == 0:
        raise AugPaintError(f"{synthetic}: no synthetic samples to filter")
    train = labeled_train(ds)
    vi = ds.where(split="val")
    scorer, _ = fit_segmenter(train.images, train.labels, ds.num_classes, cfg.seg, seed=cfg.seed + 7,
                              epochs=cfg.filter.scorer_epochs, max_steps=cfg.filter.scorer_max_steps,
                              val=(ds.images[vi], ds.labels[vi]), tracker=tracker, prefix="scorer")
    scores = confidence_scores(predict_proba(scorer, syn.images), syn.labels)
    keep = top_fraction(scores, cfg.filter.keep_fraction)
    kept = syn.select(keep)
    for r, i in zip(kept.records, keep):
        r["provenance"] = {**r["provenance"], "filter_score": float(scores[i]), "synthetic_index": int(i)}
    kept_set = set(keep.tolist())
    table = [{"index": i, "score": float(s), "kept": i in kept_set} for i, s in enumerate(scores)]
    with atomic_dir(out, force=force) as tmp:
        save_dataset(kept, tmp)
        (tmp / "scores.json").write_text(json.dumps(table))
        write_artifact_meta(tmp, kind="dataset", stage="filter", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"dataset": dataset, "synthetic": synthetic},
                            extra={"num_in": len(scores), "num_kept": len(keep),
                                   "score_threshold": float(scores[keep[-1]]),
                                   "score_mean": float(scores.mean())})
    if tracker:
        tracker.log_metrics({"filter_in": len(scores), "filter_kept": len(keep),
                             "filter_score_mean": float(scores.mean()),
                             "filter_score_threshold": float(scores[keep[-1]])})
    return Path(out)
