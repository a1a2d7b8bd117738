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
from monai.losses import DiceCELoss

from .artifacts import atomic_dir, write_artifact_meta
from .dataset import SliceDataset, load_dataset
from .config import AugPaintConfig, SegConfig
from .errors import AugPaintError
from .metrics import dice
from .models import batches, build_segmenter, num_steps, seed_everything, to_tensor

STAGE_SEED_OFFSET = 303


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Softmax probabilities (N, C, H, W) for (N,H,W,3) uint8 images."""
    model.eval()
    out = [torch.softmax(model(to_tensor(images[i:i + batch_size])), 1).numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    return predict_proba(model, images, batch_size).argmax(1).astype(np.uint8)


def _val_dice(model, images: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    pred = predict(model, images)
    return float(np.mean([dice(pred == c, labels == c) for c in range(1, num_classes)]))


def fit_segmenter(images: np.ndarray, labels: np.ndarray, num_classes: int, cfg: SegConfig, *, seed: int,
                  epochs: int | None = None, max_steps: int | None = None,
                  val: tuple[np.ndarray, np.ndarray] | None = None, tracker=None, prefix: str = "seg"
                  ) -> tuple[torch.nn.Module, list[dict]]:
    """Train a segmenter with Adam and Dice+CE; keep the best checkpoint on ``val``.

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
    """
    if len(images) == 0:
        raise AugPaintError(f"{prefix}: no labeled training images")
    gen = seed_everything(seed + STAGE_SEED_OFFSET)
    model = build_segmenter(cfg, num_classes).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x, y = to_tensor(images), torch.from_numpy(labels.astype(np.int64))[:, None]
    steps = num_steps(len(x), cfg.batch_size, epochs or cfg.epochs, max_steps or cfg.max_steps)
    checks = set(np.linspace(0, steps - 1, min(cfg.val_checks, steps) + 1).round().astype(int)[1:].tolist())
    log_every = max(1, steps // 50)
    best, best_score, history = None, -1.0, []
    for step, idx in enumerate(batches(len(x), cfg.batch_size, steps, gen)):
        loss = loss_fn(model(x[idx]), y[idx])
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
    model, history = fit_segmenter(images, labels, ds.num_classes, cfg.seg, seed=cfg.seed,
                                   val=(ds.images[vi], ds.labels[vi]), tracker=tracker, prefix=name)
    with atomic_dir(out, force=force) as tmp:
        torch.save(model.state_dict(), tmp / "segmenter.pt")
        (tmp / "segmenter.json").write_text(json.dumps({
            "seg_config": cfg.seg.model_dump(mode="json"), "num_classes": ds.num_classes,
            "class_names": ds.class_names, "name": name}))
        write_artifact_meta(tmp, kind="model", stage="train-seg", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs=inputs,
                            extra={"name": name, "num_real": len(train.records), "num_synthetic": n_syn,
                                   "history": history})
    if tracker:
        tracker.log_metrics({f"{name}_num_real": len(train.records), f"{name}_num_synthetic": n_syn})
    return Path(out)
