"""Train segmenter: U-Net on labeled pairs (+ filtered synthetic pairs for AugPaint).

The same function trains the baseline (labeled only), the AugPaint model and
the filter's scorer, so the comparison differs only in the data.
"""
from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from ..infra.artifacts import atomic_dir, write_artifact_meta
from ..data.dataset import BatchReader, IndexedView, SliceDataset, batch_loader, open_dataset
from ..config import AugPaintConfig, SegConfig
from ..errors import AugPaintError
from .metrics import dice
from .augment import cutmix_box, strong_view, weak_flip
from .onthefly import augment_batch
from ..runtime import DevicePolicy, batches, device_policy, num_steps, policy_of, seed_everything
from .segmenters import build_segmenter
from .segmenters import capture_features, perturb_features

STAGE_SEED_OFFSET = 303


@torch.no_grad()
def predict_batches(model: torch.nn.Module, images, batch_size: int = 16, policy: DevicePolicy | None = None,
                    arch: str | None = None) -> Iterator[tuple[slice, np.ndarray, np.ndarray | None]]:
    """Softmax probabilities batch by batch: yields (rows, (B,C,H,W) float32 probabilities, (B,D) features).

    Only one batch is held at a time, on the device and then on the host.

    Args:
        model: a segmenter (already on ``policy.device``).
        images: (N,H,W,3) uint8 rows (ndarray, ShardedArray or IndexedView).
        batch_size: images per forward pass.
        policy: device and precision; default: fp32 on the model's device.
        arch: with a ``seg.arch``, also the pooled deepest features (else None).
    """
    policy = policy or policy_of(model)
    model.eval()
    with (capture_features(model, arch) if arch else contextlib.nullcontext([])) as feats:
        for i in range(0, len(images), batch_size):
            x = policy.images(np.asarray(images[i:i + batch_size]))
            with policy.autocast():
                logits = model(x)
            proba = torch.softmax(logits.float(), 1).cpu().numpy()
            f = feats.pop().cpu().numpy() if arch else None
            yield slice(i, i + len(x)), proba, f


def predict_proba(model: torch.nn.Module, images, batch_size: int = 16, policy: DevicePolicy | None = None
                  ) -> np.ndarray:
    """Softmax probabilities (N, C, H, W) for (N,H,W,3) uint8 images (all of them in memory: small sets only)."""
    return np.concatenate([p for _, p, _ in predict_batches(model, images, batch_size, policy)])


def predict_with_features(model: torch.nn.Module, arch: str, images, batch_size: int = 16,
                          policy: DevicePolicy | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, C, H, W) and pooled deepest features (N, D) in one pass.

    Args:
        model: a segmenter from ``build_segmenter``.
        arch: its ``seg.arch``.
        images: (N,H,W,3) uint8.
        batch_size: images per forward pass.
        policy: device and precision (default: fp32 on the model's device).
    """
    probs, feats = [], []
    for _, p, f in predict_batches(model, images, batch_size, policy, arch):
        probs.append(p)
        feats.append(f)
    return np.concatenate(probs), np.concatenate(feats)


def features(model: torch.nn.Module, arch: str, images, batch_size: int = 16,
             policy: DevicePolicy | None = None) -> np.ndarray:
    """Pooled deepest features (N, D) only; probabilities are dropped batch by batch."""
    return np.concatenate([f for _, _, f in predict_batches(model, images, batch_size, policy, arch)])


def predict(model: torch.nn.Module, images, batch_size: int = 16, policy: DevicePolicy | None = None
            ) -> np.ndarray:
    """Label maps (N, H, W) uint8, argmax taken batch by batch."""
    return np.concatenate([p.argmax(1).astype(np.uint8) for _, p, _ in predict_batches(model, images, batch_size,
                                                                                          policy)])


def _val_dice(model, images, labels, num_classes: int, policy: DevicePolicy | None = None) -> float:
    """Mean foreground Dice over the whole validation set, counted batch by batch."""
    inter, psum, gsum = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64), np.zeros(num_classes,
                                                                                                   np.int64)
    bs = policy.batch_size if policy else 16
    for rows, p, _ in predict_batches(model, images, bs, policy):
        pred, gt = p.argmax(1), np.asarray(labels[rows])
        for c in range(1, num_classes):
            pc, gc = pred == c, gt == c
            inter[c] += np.logical_and(pc, gc).sum()
            psum[c] += pc.sum()
            gsum[c] += gc.sum()
    # the same arithmetic as metrics.dice on the stacked set
    return float(np.mean([1.0 if psum[c] + gsum[c] == 0 else float(2.0 * inter[c] / (psum[c] + gsum[c]))
                          for c in range(1, num_classes)]))


def unimatch_loss(model: torch.nn.Module, arch: str, xu: torch.Tensor, gen: torch.Generator, threshold: float,
                  autocast=contextlib.nullcontext) -> tuple[torch.Tensor, float]:
    """UniMatch-style unlabeled loss: pseudo-labels from a weak view supervise two strong views (with CutMix)
    and a feature-perturbed pass of the weak view (Yang et al. 2023, dual-stream perturbations).

    Args:
        model: the segmenter (in train mode).
        arch: its ``seg.arch`` (where the feature perturbation goes).
        xu: (B, 3, H, W) unlabeled images in [-1, 1].
        gen: random source.
        threshold: confidence below which a pseudo-labeled pixel is ignored.
        autocast: context factory around forward passes (bf16 on a GPU).

    Returns:
        the loss and the fraction of pixels above the threshold (a 0-dim tensor: reading it waits for the GPU).
    """
    xw = weak_flip(xu, gen)
    with torch.no_grad():
        model.eval()  # pseudo-labels from the current model without touching BatchNorm statistics
        with autocast():
            logits = model(xw)
        conf, pseudo = torch.softmax(logits.float(), 1).max(1)
        model.train()
    h, w = xw.shape[2:]
    perm = torch.roll(torch.arange(len(xw), device=xw.device), 1)  # CutMix partner: the next image of the batch
    losses = []
    for _ in range(2):
        box = cutmix_box(h, w, gen).to(xw.device)  # drawn on the CPU generator, the same on any device
        xs = strong_view(xw, gen)
        xs = torch.where(box, xs[perm], xs)
        target = torch.where(box, pseudo[perm], pseudo)
        tconf = torch.where(box, conf[perm], conf)
        with autocast():
            logits = model(xs)
        ce = F.cross_entropy(logits.float(), target, reduction="none")
        losses.append((ce * (tconf >= threshold)).mean())
    with perturb_features(model, arch), autocast():
        logits = model(xw)
    ce = F.cross_entropy(logits.float(), pseudo, reduction="none")
    loss_fp = (ce * (conf >= threshold)).mean()
    return 0.25 * losses[0] + 0.25 * losses[1] + 0.5 * loss_fp, (conf >= threshold).float().mean()


def fit_segmenter(images, labels, num_classes: int, cfg: SegConfig, *, seed: int,
                  epochs: int | None = None, max_steps: int | None = None,
                  val: tuple | None = None, tracker=None, prefix: str = "seg",
                  unlabeled=None, policy: DevicePolicy | None = None, checkpoint=None,
                  checkpoint_every: int = 0) -> tuple[torch.nn.Module, list[dict]]:
    """Train a segmenter with Adam and Dice+CE; keep the best checkpoint on ``val``.

    With ``cfg.semi_supervised == "unimatch"`` and ``unlabeled`` images, each step adds the UniMatch
    weak-to-strong consistency loss on a batch of unlabeled images (``cfg.unimatch_*``).

    Batches stream from ``images``/``labels`` (arrays, memory-mapped shards or an ``IndexedView``) through a
    DataLoader; nothing holds the whole training set.

    Args:
        images: (N,H,W,3) uint8 rows.
        labels: (N,H,W) uint8 rows.
        num_classes: including background.
        cfg: ``seg`` config (architecture, lr, batch size, budget).
        seed: training seed.
        epochs: override ``cfg.epochs``.
        max_steps: override ``cfg.max_steps``.
        val: validation images and labels for checkpoint choice.
        tracker: optional MLflow tracker.
        prefix: metric name prefix.
        unlabeled: (M,H,W,3) uint8 unlabeled rows for the semi-supervised loss.
        policy: device, precision, loader workers (default: ``runtime`` defaults, i.e. CUDA when visible).
        checkpoint: a ``generative.training.Checkpointer``; its newest checkpoint is resumed, and one is saved
            every ``checkpoint_every`` steps (model, optimizer, best weights, random states), so a killed pod
            continues where it stopped (bitwise on CPU).
        checkpoint_every: steps between checkpoints (0 = none).
    """
    if len(images) == 0:
        raise AugPaintError(f"{prefix}: no labeled training images")
    policy = policy or device_policy(None)
    gen = seed_everything(seed + STAGE_SEED_OFFSET, policy.deterministic)
    model = build_segmenter(cfg, num_classes, images.shape[1]).to(policy.device).train()
    semi = cfg.semi_supervised == "unimatch" and unlabeled is not None and len(unlabeled) > 0
    ugen = torch.Generator().manual_seed(seed + STAGE_SEED_OFFSET + 1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    steps = num_steps(len(images), cfg.batch_size, epochs or cfg.epochs, max_steps or cfg.max_steps)
    checks = set(np.linspace(0, steps - 1, min(cfg.val_checks, steps) + 1).round().astype(int)[1:].tolist())
    log_every = max(1, steps // 50)
    best, best_score, history = None, -1.0, []
    start = 0
    done = checkpoint.steps() if checkpoint is not None and getattr(checkpoint, "resume", True) else []
    if done:
        state, meta = checkpoint.load(done[-1])
        if meta["step"] > steps:
            raise AugPaintError(f"{checkpoint.uri}: checkpoint at step {meta['step']} is past this run's budget of "
                                f"{steps} steps; raise the budget or use another training.checkpoint_dir")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        ugen.set_state(state["ugen"])
        torch.set_rng_state(state["torch_rng"])
        best, best_score, history = state.get("best"), float(state["best_score"]), list(state["history"])
        start = checkpoint.resumed_from = int(meta["step"])
    # The index batches replay from the seed, so the resumed run draws exactly the batches it would have.
    index_batches = itertools.islice(batches(len(images), cfg.batch_size, steps, gen), start, None)
    loader = batch_loader(BatchReader(images, labels), index_batches,
                          workers=policy.workers, pin_memory=policy.cuda, seed=seed + STAGE_SEED_OFFSET)
    for step, (xb, yb) in enumerate(loader, start=start):
        x, y = policy.images(xb), policy.labels(yb)[:, None]
        x, y = augment_batch(x, y, cfg.augment, seed=seed, step=step)  # identity unless seg.augment is on
        with policy.autocast():
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        logged = step % log_every == 0 and tracker is not None
        if semi:
            uidx = torch.randint(0, len(unlabeled), (cfg.unimatch_batch_size,), generator=ugen).numpy()
            loss_u, ratio = unimatch_loss(model, cfg.arch, policy.images(np.asarray(unlabeled[np.sort(uidx)])),
                                          ugen, cfg.unimatch_threshold, policy.autocast)
            loss = loss + cfg.unimatch_weight * loss_u
            if logged:  # .item() waits for the device: only on logging steps
                tracker.log_metrics({f"{prefix}_unlabeled_loss": loss_u.item(),
                                     f"{prefix}_pseudo_label_ratio": ratio.item()}, step=step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if logged:
            tracker.log_metrics({f"{prefix}_loss": loss.item()}, step=step)
        if step in checks:
            rec = {"step": step, "loss": loss.item()}
            if val is not None and len(val[0]):
                rec["val_dice"] = _val_dice(model, *val, num_classes, policy)
                model.train()
                if tracker:
                    tracker.log_metrics({f"{prefix}_val_dice": rec["val_dice"]}, step=step)
                if rec["val_dice"] > best_score:
                    best_score = rec["val_dice"]
                    best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            history.append(rec)
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            checkpoint.save(step + 1, {"model": cpu_state(model), "opt": opt.state_dict(), "ugen": ugen.get_state(),
                                       "torch_rng": torch.get_rng_state(), "best": best,
                                       "best_score": best_score, "history": history}, {"stage": prefix})
    if best is not None:
        model.load_state_dict(best)
    return model.eval(), history


def seg_checkpointer(cfg: AugPaintConfig, out: str | Path, stage: str, name: str, inputs: dict):
    """The checkpointer of a segmenter training run (None when ``training.checkpoint_every`` is 0).

    Args:
        cfg: config (``seg``, ``training``, ``seed``).
        out: the stage's output (the local default puts checkpoints beside it).
        stage: ``train-seg`` or ``filter``.
        name: which model (baseline, augpaint, scorer).
        inputs: input artifacts (their content hashes identify the data).
    """
    from ..generative.training import Checkpointer, checkpoint_dir
    from ..infra import storage
    from ..infra.artifacts import artifact_hash

    t = cfg.training
    if not t.checkpoint_every:
        return None
    arch = {"seg": {k: v for k, v in cfg.seg.model_dump(mode="json").items() if k not in ("epochs", "max_steps")}}
    ident = {"seed": cfg.seed, "model": name,
             **{k: str(v) if storage.is_s3(str(v)) else artifact_hash(v) for k, v in inputs.items()}}
    ckpt = Checkpointer(checkpoint_dir(t, out, f"{stage}-{name}", arch, ident), t.keep_checkpoints, arch, ident)
    ckpt.resume = t.resume  # training.resume=false: start over (and overwrite), as train-ae does
    return ckpt


def history_resumed(ckpt) -> int:
    """The step the run resumed from: the newest checkpoint that existed when it started (0 = none)."""
    return getattr(ckpt, "resumed_from", 0) if ckpt is not None else 0


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights on the host, so the artifact loads on any machine."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


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
    ds = open_dataset(dataset)  # memory-mapped: batches are read as training draws them
    train_idx = ds.where(split="train", labeled=True)
    if len(train_idx) == 0:
        raise AugPaintError(f"{dataset}: no labeled training slices")
    img_parts, lab_parts = [(ds.images, train_idx)], [(ds.labels, train_idx)]
    n_syn = 0
    inputs = {"dataset": dataset}
    if synthetic is not None:
        syn = open_dataset(synthetic)
        if syn.class_names != ds.class_names or syn.images.shape[1:] != ds.images.shape[1:]:
            raise AugPaintError(f"{synthetic}: classes/size {syn.class_names} {syn.images.shape[1:]} do not match "
                                f"{dataset}")
        img_parts.append((syn.images, None))
        lab_parts.append((syn.labels, None))
        n_syn = len(syn.records)
        inputs["synthetic"] = synthetic
    images, labels = IndexedView(img_parts), IndexedView(lab_parts)
    name = name or ("augpaint" if synthetic is not None else "baseline")
    vi = ds.where(split="val")
    unlabeled = None
    if cfg.seg.semi_supervised != "none":  # UniMatch: the unlabeled training slices S^u
        ui = ds.where(split="train", labeled=False)
        if len(ui) == 0:
            raise AugPaintError(f"{dataset}: seg.semi_supervised={cfg.seg.semi_supervised} needs unlabeled "
                                "training slices, and there are none")
        unlabeled = IndexedView([(ds.images, ui)])
    policy = device_policy(cfg.runtime)
    ckpt = seg_checkpointer(cfg, out, "train-seg", name, inputs)
    model, history = fit_segmenter(images, labels, ds.num_classes, cfg.seg, seed=cfg.seed,
                                   val=(IndexedView([(ds.images, vi)]), IndexedView([(ds.labels, vi)])),
                                   tracker=tracker, prefix=name, unlabeled=unlabeled, policy=policy,
                                   checkpoint=ckpt, checkpoint_every=cfg.training.checkpoint_every)
    resumed = history_resumed(ckpt)
    with atomic_dir(out, force=force) as tmp:
        torch.save(cpu_state(model), tmp / "segmenter.pt")
        (tmp / "segmenter.json").write_text(json.dumps({
            "seg_config": cfg.seg.model_dump(mode="json"), "num_classes": ds.num_classes,
            "image_size": int(ds.images.shape[1]),
            "class_names": ds.class_names, "name": name}))
        write_artifact_meta(tmp, kind="model", stage="train-seg", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs=inputs,
                            extra={"name": name, "num_real": len(train_idx), "num_synthetic": n_syn,
                                   "runtime": policy.summary(), "resumed_from_step": resumed,
                                   "num_unlabeled": 0 if unlabeled is None else len(unlabeled),
                                   "history": history})
    if tracker:
        tracker.log_metrics({f"{name}_num_real": len(train_idx), f"{name}_num_synthetic": n_syn})
    return Path(out)
