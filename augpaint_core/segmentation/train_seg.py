"""Train segmenter: U-Net on labeled pairs (+ filtered synthetic pairs for AugPaint).

The same function trains the baseline (labeled only), the AugPaint model and
the filter's scorer, so the comparison differs only in the data.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from ..infra.artifacts import atomic_dir, write_artifact_meta
from ..data.dataset import SliceDataset, load_dataset
from ..config import AugPaintConfig, SegConfig
from ..errors import AugPaintError
from .metrics import dice
from .augment import cutmix_box, strong_view, weak_flip
from .onthefly import augment_batch
from ..runtime import batches, num_steps, seed_everything, to_tensor
from .segmenters import build_segmenter
from .segmenters import capture_features, perturb_features

STAGE_SEED_OFFSET = 303


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Softmax probabilities (N, C, H, W) for (N,H,W,3) uint8 images."""
    model.eval()
    out = [torch.softmax(model(to_tensor(images[i:i + batch_size])), 1).numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


@torch.no_grad()
def predict_with_features(model: torch.nn.Module, arch: str, images: np.ndarray, batch_size: int = 16
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, C, H, W) and pooled deepest features (N, D) in one pass.

    Args:
        model: a segmenter from ``build_segmenter``.
        arch: its ``seg.arch``.
        images: (N,H,W,3) uint8.
        batch_size: images per forward pass.
    """
    model.eval()
    probs = []
    with capture_features(model, arch) as feats:
        for i in range(0, len(images), batch_size):
            probs.append(torch.softmax(model(to_tensor(np.asarray(images[i:i + batch_size]))), 1).numpy())
    return np.concatenate(probs), torch.cat(feats).numpy()


def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    return predict_proba(model, images, batch_size).argmax(1).astype(np.uint8)


def _val_dice(model, images: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    pred = predict(model, images)
    return float(np.mean([dice(pred == c, labels == c) for c in range(1, num_classes)]))


def unimatch_loss(model: torch.nn.Module, arch: str, xu: torch.Tensor, gen: torch.Generator, threshold: float
                  ) -> tuple[torch.Tensor, float]:
    """UniMatch-style unlabeled loss: pseudo-labels from a weak view supervise two strong views (with CutMix)
    and a feature-perturbed pass of the weak view (Yang et al. 2023, dual-stream perturbations).

    Args:
        model: the segmenter (in train mode).
        arch: its ``seg.arch`` (where the feature perturbation goes).
        xu: (B, 3, H, W) unlabeled images in [-1, 1].
        gen: random source.
        threshold: confidence below which a pseudo-labeled pixel is ignored.

    Returns:
        the loss and the fraction of pixels above the threshold.
    """
    xw = weak_flip(xu, gen)
    with torch.no_grad():
        model.eval()  # pseudo-labels from the current model without touching BatchNorm statistics
        conf, pseudo = torch.softmax(model(xw), 1).max(1)
        model.train()
    h, w = xw.shape[2:]
    perm = torch.roll(torch.arange(len(xw)), 1)  # CutMix partner: the next image of the batch
    losses = []
    for _ in range(2):
        box = cutmix_box(h, w, gen)
        xs = strong_view(xw, gen)
        xs = torch.where(box, xs[perm], xs)
        target = torch.where(box, pseudo[perm], pseudo)
        tconf = torch.where(box, conf[perm], conf)
        ce = F.cross_entropy(model(xs), target, reduction="none")
        losses.append((ce * (tconf >= threshold)).mean())
    with perturb_features(model, arch):
        ce = F.cross_entropy(model(xw), pseudo, reduction="none")
    loss_fp = (ce * (conf >= threshold)).mean()
    return 0.25 * losses[0] + 0.25 * losses[1] + 0.5 * loss_fp, float((conf >= threshold).float().mean())


def fit_segmenter(images: np.ndarray, labels: np.ndarray, num_classes: int, cfg: SegConfig, *, seed: int,
                  epochs: int | None = None, max_steps: int | None = None,
                  val: tuple[np.ndarray, np.ndarray] | None = None, tracker=None, prefix: str = "seg",
                  unlabeled: np.ndarray | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """Train a segmenter with Adam and Dice+CE; keep the best checkpoint on ``val``.

    With ``cfg.semi_supervised == "unimatch"`` and ``unlabeled`` images, each step adds the UniMatch
    weak-to-strong consistency loss on a batch of unlabeled images (``cfg.unimatch_*``).

    Args:
        images: (N,H,W,3) uint8.
        labels: (N,H,W) uint8.
        num_classes: including background.
        cfg: ``seg`` config (architecture, lr, batch size, budget).
        seed: training seed.
        epochs: override ``cfg.epochs``.
        max_steps: override ``cfg.max_steps``.
        val: validation images and labels for checkpoint choice.
        tracker: optional MLflow tracker.
        prefix: metric name prefix.
        unlabeled: (M,H,W,3) uint8 unlabeled images for the semi-supervised loss.
    """
    if len(images) == 0:
        raise AugPaintError(f"{prefix}: no labeled training images")
    gen = seed_everything(seed + STAGE_SEED_OFFSET)
    model = build_segmenter(cfg, num_classes, images.shape[1]).train()
    semi = cfg.semi_supervised == "unimatch" and unlabeled is not None and len(unlabeled) > 0
    ugen = torch.Generator().manual_seed(seed + STAGE_SEED_OFFSET + 1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x, y = to_tensor(images), torch.from_numpy(labels.astype(np.int64))[:, None]
    steps = num_steps(len(x), cfg.batch_size, epochs or cfg.epochs, max_steps or cfg.max_steps)
    checks = set(np.linspace(0, steps - 1, min(cfg.val_checks, steps) + 1).round().astype(int)[1:].tolist())
    log_every = max(1, steps // 50)
    best, best_score, history = None, -1.0, []
    for step, idx in enumerate(batches(len(x), cfg.batch_size, steps, gen)):
        xb, yb = augment_batch(x[idx], y[idx], cfg.augment, seed=seed, step=step)  # identity unless seg.augment
        loss = loss_fn(model(xb), yb)
        if semi:
            uidx = torch.randint(0, len(unlabeled), (cfg.unimatch_batch_size,), generator=ugen).numpy()
            loss_u, ratio = unimatch_loss(model, cfg.arch, to_tensor(np.asarray(unlabeled[np.sort(uidx)])), ugen,
                                          cfg.unimatch_threshold)
            loss = loss + cfg.unimatch_weight * loss_u
            if step % log_every == 0 and tracker:
                tracker.log_metrics({f"{prefix}_unlabeled_loss": loss_u.item(),
                                     f"{prefix}_pseudo_label_ratio": ratio}, step=step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 and tracker:
            tracker.log_metrics({f"{prefix}_loss": loss.item()}, step=step)
        if step in checks:
            rec = {"step": step, "loss": loss.item()}
            if val is not None and len(val[0]):
                rec["val_dice"] = _val_dice(model, *val, num_classes)
                model.train()
                if tracker:
                    tracker.log_metrics({f"{prefix}_val_dice": rec["val_dice"]}, step=step)
                if rec["val_dice"] > best_score:
                    best_score, best = rec["val_dice"], copy.deepcopy(model.state_dict())
            history.append(rec)
    if best is not None:
        model.load_state_dict(best)
    return model.eval(), history


def labeled_train(ds: SliceDataset) -> SliceDataset:
    return ds.select(ds.where(split="train", labeled=True))


def train_seg(cfg: AugPaintConfig, dataset: str | Path, out: str | Path, synthetic: str | Path | None = None, *,
              name: str | None = None, force: bool = False, tracker=None) -> Path:
    """Stage 6: train the segmenter on S^l (baseline) or S^l + filtered synthetic pairs (AugPaint).

    Args:
        cfg: config (``seg`` section, ``seed``).
        dataset: real slice dataset artifact.
        out: output model artifact.
        synthetic: filtered synthetic dataset; omit for the baseline.
        name: label for logs (``baseline`` / ``augpaint``).
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    ds = load_dataset(dataset)
    train = labeled_train(ds)
    if len(train.records) == 0:
        raise AugPaintError(f"{dataset}: no labeled training slices")
    images, labels = train.images, train.labels
    n_syn = 0
    inputs = {"dataset": dataset}
    if synthetic is not None:
        syn = load_dataset(synthetic)
        if syn.class_names != ds.class_names or syn.images.shape[1:] != ds.images.shape[1:]:
            raise AugPaintError(f"{synthetic}: classes/size {syn.class_names} {syn.images.shape[1:]} do not match "
                                f"{dataset}")
        images, labels = np.concatenate([images, syn.images]), np.concatenate([labels, syn.labels])
        n_syn = len(syn.records)
        inputs["synthetic"] = synthetic
    name = name or ("augpaint" if synthetic is not None else "baseline")
    vi = ds.where(split="val")
    unlabeled = None
    if cfg.seg.semi_supervised != "none":  # UniMatch: the unlabeled training slices S^u
        unlabeled = ds.images[ds.where(split="train", labeled=False)]
        if len(unlabeled) == 0:
            raise AugPaintError(f"{dataset}: seg.semi_supervised={cfg.seg.semi_supervised} needs unlabeled "
                                "training slices, and there are none")
    model, history = fit_segmenter(images, labels, ds.num_classes, cfg.seg, seed=cfg.seed,
                                   val=(ds.images[vi], ds.labels[vi]), tracker=tracker, prefix=name,
                                   unlabeled=unlabeled)
    with atomic_dir(out, force=force) as tmp:
        torch.save(model.state_dict(), tmp / "segmenter.pt")
        (tmp / "segmenter.json").write_text(json.dumps({
            "seg_config": cfg.seg.model_dump(mode="json"), "num_classes": ds.num_classes,
            "image_size": int(ds.images.shape[1]),
            "class_names": ds.class_names, "name": name}))
        write_artifact_meta(tmp, kind="model", stage="train-seg", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs=inputs,
                            extra={"name": name, "num_real": len(train.records), "num_synthetic": n_syn,
                                   "num_unlabeled": 0 if unlabeled is None else len(unlabeled),
                                   "history": history})
    if tracker:
        tracker.log_metrics({f"{name}_num_real": len(train.records), f"{name}_num_synthetic": n_syn})
    return Path(out)
