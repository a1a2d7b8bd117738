"""Filter: score synthetic pairs with a segmenter trained on S^l and keep the top fraction.

Score = the scorer's mean probability of the given label class over the
labeled (foreground) pixels (the paper's rule). A sample whose generated
surroundings confuse the scorer gets a low score.

Two optional rules address what the paper names as its filter's limitation:

- ``filter.reject_background``: the scorer finds a target structure outside the
  kept boxes (an organ generated in the background, whose pixels the label
  calls background).
- ``filter.ood_reject``: the sample's pooled scorer features are far from the
  real training slices (Mahalanobis distance above the ``ood_quantile`` of the
  distances of held-out real slices, the val split).

Kept = the top ``ceil(keep_fraction * N)`` by confidence, minus the rejected
ones (a rejected sample is not replaced by a worse one); with ``filter.per_source``
the top fraction of each source slice's samples instead, so no source is lost. Every sample's scores
and the decision are recorded in ``scores.json``; ``quality.json`` holds the
quality report (``augpaint_core.quality``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..infra.artifacts import atomic_dir, write_artifact_meta
from ..data.dataset import IndexedView, SliceDataset, open_dataset, require_provenance, save_dataset
from ..config import AugPaintConfig
from ..errors import AugPaintError
from ..generative.masks import box_mask
from .segmenters import load_segmenter
from ..runtime import DevicePolicy, device_policy
from .train_seg import cpu_state, features, fit_segmenter, predict_batches, seg_checkpointer


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


def background_fraction(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Fraction of each image that the scorer calls foreground outside the kept boxes of its label.

    Args:
        proba: (N, C, H, W) softmax probabilities.
        labels: (N, H, W) labels (the kept boxes are recomputed from them).
    """
    pred_fg = proba.argmax(1) > 0
    outside = np.stack([~box_mask(np.asarray(y)) for y in labels])
    return (pred_fg & outside).mean((1, 2))


def mahalanobis(reference: np.ndarray, query: np.ndarray, shrinkage: float = 0.1) -> np.ndarray:
    """Mahalanobis distance of each query row to the Gaussian of ``reference`` (shrunk covariance).

    Args:
        reference: (M, D) features.
        query: (N, D) features.
        shrinkage: weight of the scaled identity mixed into the covariance (few samples, many dimensions).
    """
    mu = reference.mean(0)
    cov = np.atleast_2d(np.cov(reference, rowvar=False)) if len(reference) > 1 else np.eye(reference.shape[1])
    d = cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * (np.trace(cov) / d + 1e-8) * np.eye(d)
    prec = np.linalg.inv(cov)
    q = query - mu
    return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", q, prec, q), 0.0))


def top_fraction(scores: np.ndarray, fraction: float, groups: np.ndarray | None = None) -> np.ndarray:
    """Indices of the top ``ceil(fraction * N)`` scores, best first (ties: lower index first).

    Args:
        scores: one score per sample.
        fraction: share to keep.
        groups: optional group per sample (the source slice): then the top ``ceil(fraction * n)`` of each
            group's n samples, still ordered best first overall.
    """
    order = np.lexsort((np.arange(len(scores)), -scores))
    if groups is None:
        return order[:max(1, math.ceil(fraction * len(scores)))]
    names, counts = np.unique(groups, return_counts=True)
    left = {g: max(1, math.ceil(fraction * n)) for g, n in zip(names.tolist(), counts.tolist())}
    picked = []
    for i in order:
        g = groups[i].item()
        if left[g]:
            left[g] -= 1
            picked.append(i)
    return np.array(picked, dtype=np.int64)


def select(scores: np.ndarray, fraction: float, rejected: np.ndarray, groups: np.ndarray | None = None
           ) -> np.ndarray:
    """The top fraction by score (per group when given), best first, without the rejected samples."""
    return np.array([i for i in top_fraction(scores, fraction, groups) if not rejected[i]], dtype=np.int64)


def _subsample(idx: np.ndarray, k: int, seed: int) -> np.ndarray:
    if len(idx) <= k:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, k, replace=False))


def score_synthetic(model, arch: str, images, labels, policy: DevicePolicy
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confidence score, background fraction and pooled features of every synthetic sample, batch by batch.

    Args:
        model: the scorer.
        arch: its ``seg.arch``.
        images: (N,H,W,3) uint8 rows (memory-mapped).
        labels: (N,H,W) rows.
        policy: device and precision.

    Returns:
        scores (N,), background fractions (N,), features (N, D).
    """
    scores, bg, feats = [], [], []
    for rows, proba, f in predict_batches(model, images, policy.batch_size, policy, arch):
        y = np.asarray(labels[rows])
        scores.append(confidence_scores(proba, y))
        bg.append(background_fraction(proba, y))
        feats.append(f)
    return np.concatenate(scores), np.concatenate(bg), np.concatenate(feats)


def _calibration_features(model, arch: str, ds, cfg: AugPaintConfig, policy: DevicePolicy) -> np.ndarray:
    """Features of held-out real slices (the val split) to set the OOD threshold.

    Distances of the slices the Gaussian was fitted on are biased low (many dimensions, few slices), so
    their quantile would call nearly every new image out of distribution; unseen real patients are the
    fair reference.
    """
    idx = _subsample(ds.where(split="val"), cfg.filter.quality_max_reference, cfg.seed + 1)
    if len(idx) == 0:
        raise AugPaintError("filter.ood_reject needs validation slices to calibrate the threshold; the val split "
                            "is empty")
    return features(model, arch, IndexedView([(ds.images, idx)]), policy.batch_size, policy)


def filter_synthetic(cfg: AugPaintConfig, dataset: str | Path, synthetic: str | Path, out: str | Path, *,
                     scorer: str | Path | None = None, force: bool = False, tracker=None) -> Path:
    """Stage 5: keep the best ``filter.keep_fraction`` of the synthetic pairs.

    Args:
        cfg: config (``filter`` and ``seg`` sections, ``seed``).
        dataset: real slice dataset artifact (its labeled training slices train the scorer).
        synthetic: synthetic dataset from inpaint (or rand-aug).
        out: output filtered synthetic dataset (records carry ``filter_score``); the scorer is saved in
            ``out/scorer`` so later filters on the same data can reuse it.
        scorer: a trained scorer (segmenter folder) to reuse instead of training one.
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    fcfg = cfg.filter
    ds = open_dataset(dataset)  # memory-mapped; scoring streams batch by batch
    syn = open_dataset(synthetic)
    if len(syn.records) == 0:
        raise AugPaintError(f"{synthetic}: no synthetic samples to filter")
    require_provenance(syn, ("source_index",), synthetic, "a synthetic dataset from inpaint or rand-aug")
    if syn.images.shape[1:] != ds.images.shape[1:] or syn.class_names != ds.class_names:
        raise AugPaintError(f"{synthetic}: classes/size {syn.class_names} {syn.images.shape[1:]} do not match "
                            f"{dataset}")
    policy = device_policy(cfg.runtime)
    if scorer is not None:
        model, info = load_segmenter(scorer)
        model = model.to(policy.device)
        arch, scorer_info = info["seg_config"].get("arch", "unet"), {**info, "reused_from": str(scorer)}
    else:
        ti = ds.where(split="train", labeled=True)
        vi = ds.where(split="val")
        model, _ = fit_segmenter(IndexedView([(ds.images, ti)]), IndexedView([(ds.labels, ti)]), ds.num_classes,
                                 cfg.seg, seed=cfg.seed + 7, epochs=fcfg.scorer_epochs,
                                 max_steps=fcfg.scorer_max_steps,
                                 val=(IndexedView([(ds.images, vi)]), IndexedView([(ds.labels, vi)])),
                                 tracker=tracker, prefix="scorer", policy=policy,
                                 checkpoint=seg_checkpointer(cfg, out, "filter", "scorer", {"dataset": dataset}),
                                 checkpoint_every=cfg.training.checkpoint_every)
        arch = cfg.seg.arch
        scorer_info = {"seg_config": cfg.seg.model_dump(mode="json"), "num_classes": ds.num_classes,
                       "class_names": ds.class_names, "image_size": int(ds.images.shape[1]), "name": "scorer"}
    syn_images, syn_labels = syn.images, syn.labels
    scores, bg, syn_feats = score_synthetic(model, arch, syn_images, syn_labels, policy)
    real_idx = ds.where(split="train")
    ref_idx = _subsample(real_idx, fcfg.quality_max_reference, cfg.seed)
    real_images = IndexedView([(ds.images, ref_idx)])
    real_feats = features(model, arch, real_images, policy.batch_size, policy)
    ood = mahalanobis(real_feats, syn_feats)
    ood_threshold = float(np.quantile(mahalanobis(real_feats, _calibration_features(model, arch, ds, cfg, policy)),
                                      fcfg.ood_quantile))
    rej_bg = bg > fcfg.background_max_fraction if fcfg.reject_background else np.zeros(len(scores), bool)
    rej_ood = ood > ood_threshold if fcfg.ood_reject else np.zeros(len(scores), bool)
    # per source: every labeled slice keeps its best samples (the paper ranks the whole pool together)
    groups = np.array([int(r["provenance"]["source_index"]) for r in syn.records]) if fcfg.per_source else None
    keep = select(scores, fcfg.keep_fraction, rej_bg | rej_ood, groups)
    if len(keep) == 0:
        raise AugPaintError(f"{synthetic}: every sample in the top {fcfg.keep_fraction:.0%} was rejected "
                            f"(background {int(rej_bg.sum())}, out-of-distribution {int(rej_ood.sum())}); "
                            "loosen filter.background_max_fraction / filter.ood_quantile")
    top = set(top_fraction(scores, fcfg.keep_fraction, groups).tolist())
    kept_mask = np.zeros(len(scores), bool)
    kept_mask[keep] = True
    # a lazy view: save_dataset copies the kept samples shard by shard
    kept = SliceDataset(IndexedView([(syn.images, keep)]), IndexedView([(syn.labels, keep)]),
                        [dict(syn.records[i]) for i in keep], syn.class_names, syn.regions)
    for r, i in zip(kept.records, keep):
        r["provenance"] = {**r["provenance"], "filter_score": float(scores[i]), "synthetic_index": int(i)}
    table = []
    for i, r in enumerate(syn.records):
        p = r.get("provenance", {})
        reasons = (["background_structure"] if rej_bg[i] else []) + (["out_of_distribution"] if rej_ood[i] else [])
        table.append({"index": i, "source_index": p.get("source_index"), "sample_index": p.get("sample_index"),
                      "flip": p.get("flip"), "score": float(scores[i]), "background_fraction": float(bg[i]),
                      "ood_score": float(ood[i]), "in_top_fraction": i in top, "rejected": reasons,
                      "kept": bool(kept_mask[i])})
    rejected = {"background_structure": int(rej_bg.sum()),
                "out_of_distribution": int(rej_ood.sum()),
                "in_top_fraction_rejected": int(sum(1 for i in top if rej_bg[i] or rej_ood[i]))}
    quality = None
    if fcfg.quality_report:
        from .quality import quality_report

        sources = sorted({int(r["provenance"]["source_index"]) for r in syn.records})
        quality = quality_report(
            real_images=real_images, real_indices=ref_idx, real_case_ids=[ds.records[i]["case_id"] for i in ref_idx],
            real_features=real_feats, syn_images=syn_images, syn_labels=syn_labels, syn_features=syn_feats,
            provenance=[r["provenance"] for r in syn.records],
            source_images={s: np.asarray(ds.images[s]) for s in sources},
            source_labels={s: np.asarray(ds.labels[s]) for s in sources},
            source_case_ids={s: ds.records[s]["case_id"] for s in sources}, kept=kept_mask, rejected=rejected,
            max_samples=fcfg.quality_max_samples, max_reference=fcfg.quality_max_reference, seed=cfg.seed)
    summary = {"num_in": len(scores), "num_kept": len(keep), "score_threshold": float(scores[keep[-1]]),
               "score_mean": float(scores.mean()), "ood_threshold": ood_threshold, "rejected": rejected}
    with atomic_dir(out, force=force) as tmp:
        save_dataset(kept, tmp)
        (tmp / "scores.json").write_text(json.dumps(table))
        if quality is not None:
            (tmp / "quality.json").write_text(json.dumps(quality, indent=1))
        (tmp / "scorer").mkdir()
        torch.save(cpu_state(model), tmp / "scorer" / "segmenter.pt")
        (tmp / "scorer" / "segmenter.json").write_text(json.dumps(scorer_info))
        write_artifact_meta(tmp, kind="dataset", stage="filter", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"dataset": dataset, "synthetic": synthetic,
                                                   **({"scorer": scorer} if scorer is not None else {})},
                            extra={**summary, "quality": quality, "runtime": policy.summary()})
    if tracker:
        m = {"filter_in": len(scores), "filter_kept": len(keep), "filter_score_mean": float(scores.mean()),
             "filter_score_threshold": float(scores[keep[-1]]),
             "filter_rejected_background": rejected["background_structure"],
             "filter_rejected_ood": rejected["out_of_distribution"]}
        if quality is not None:
            m.update({f"quality_{k}": v for k, v in quality.items() if isinstance(v, (int, float))})
        tracker.log_metrics(m)
        if quality is not None:
            tracker.log_artifact(Path(out) / "quality.json")
    return Path(out)
