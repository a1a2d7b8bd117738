"""Train AE: VQ-regularised f=4 autoencoder on all training images (S^l + S^u).

Loss: L1 reconstruction + codebook/commitment, plus an optional patch
discriminator (hinge loss, adaptive weight as in LDM/taming) trained from
scratch. Runs through accelerate (mixed precision, accumulation, DDP with
``accelerate launch``), checkpoints every ``training.checkpoint_every`` steps
and resumes from the newest checkpoint. Images are read from the sharded
dataset a batch at a time, so the dataset need not fit in memory.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..infra.artifacts import atomic_dir, write_artifact_meta
from ..config import AugPaintConfig
from ..data.dataset import open_dataset
from ..errors import AugPaintError
from ..runtime import seed_everything, to_tensor, to_uint8
from .models import AE_FACTOR, PatchDiscriminator, build_vqmodel
from .training import (Checkpointer, FiniteGuard, Throughput, arch_of, checkpoint_dir, make_accelerator,
                       maybe_checkpoint, plan_steps, prepare, resume_state, run_identity, step_batch, step_generator)

STAGE_SEED_OFFSET = 101
MAX_SCALE_IMAGES = 2048  # the latent std is estimated on at most this many training images
log = logging.getLogger(__name__)


@torch.no_grad()
def encode_latents(ae, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Pre-quantisation latents (diffusion runs on these), unscaled, on ``x``'s device; runs on the AE's device."""
    dev = next(ae.parameters()).device
    return torch.cat([ae.encode(x[i:i + batch_size].to(dev)).latents.to(x.device)
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()
def reconstruct(ae, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """AE reconstructions on ``x``'s device; runs on the AE's device."""
    dev = next(ae.parameters()).device
    return torch.cat([ae(x[i:i + batch_size].to(dev)).sample.to(x.device) for i in range(0, len(x), batch_size)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def image_grid(rows: list[np.ndarray]) -> np.ndarray:
    """Stack rows of (N,H,W,3) uint8 images into one (rows*H, N*W, 3) picture."""
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Balance the GAN term against reconstruction by their gradient norms at the decoder's last layer."""
    g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def generator_gan_loss(disc: torch.nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """-D(fake) with the discriminator frozen, so the autoencoder's step does not train D.

    ``disc`` is the unwrapped module: its DDP wrapper is used only for D's own loss.
    """
    disc.requires_grad_(False)
    try:
        return -disc(fake).mean()
    finally:
        disc.requires_grad_(True)


def flipped_batch(images, idx: np.ndarray, gen: torch.Generator, part: slice = slice(None)) -> torch.Tensor:
    """Images ``idx[part]`` as a [-1, 1] tensor, each horizontally flipped with p=0.5 (label-free augmentation).

    The flips are drawn for the whole global batch ``idx``, so a process's ``part`` gets the
    same flips whatever the number of processes.
    """
    flip = (torch.rand(len(idx), generator=gen) < 0.5)[part]
    x = to_tensor(images[idx[part]])
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_ae(cfg: AugPaintConfig, dataset: str | Path, out: str | Path, *, force: bool = False,
             tracker=None) -> Path:
    """Stage 2: train the VQ autoencoder.

    Args:
        cfg: config (``ae`` and ``training`` sections, ``seed``).
        dataset: slice dataset artifact.
        out: output model artifact (``vqmodel/`` in diffusers format).
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    ds = open_dataset(dataset)
    size = ds.images.shape[1]
    if size % AE_FACTOR:
        raise AugPaintError(f"{dataset}: image size {size} is not divisible by the AE factor {AE_FACTOR}")
    train_idx = ds.where(split="train")
    if len(train_idx) == 0:
        raise AugPaintError(f"{dataset}: no training images")
    a, t = cfg.ae, cfg.training
    acc = make_accelerator(t)
    seed = cfg.seed + STAGE_SEED_OFFSET
    seed_everything(seed, cfg.runtime.deterministic)
    model = build_vqmodel(a, size)
    disc = PatchDiscriminator() if a.disc_weight > 0 else None
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    parts = {"model": model, "opt": opt}
    if disc is not None:
        dopt = torch.optim.Adam(disc.parameters(), lr=a.lr, betas=(0.5, 0.9))
        parts |= {"disc": disc, "disc_opt": dopt}
    arch, ident = {"vqmodel": arch_of(model), "discriminator": disc is not None}, \
        run_identity(cfg, a, {"dataset": dataset}, acc)
    ckpt = Checkpointer(checkpoint_dir(t, out, "train-ae", arch, ident), t.keep_checkpoints, arch, ident)
    start = resume_state(ckpt, t, parts, log)
    model, opt, raw, fwd = prepare(acc, model, opt, t)
    if disc is not None:
        disc, dopt = acc.prepare(disc, dopt)
        raw_disc = acc.unwrap_model(disc)
    world, rank, bs = acc.num_processes, acc.process_index, a.batch_size
    steps, log_every = plan_steps(acc, t, a, "ae", len(train_idx), start, ckpt)
    history, speed = [], Throughput()
    model.train()
    guard = FiniteGuard("train-ae", "lower ae.lr", acc.device)
    for step in range(start, steps):
        for micro in range(t.grad_accum):
            m = step * t.grad_accum + micro
            gidx = step_batch(len(train_idx), bs * world, m, seed)
            xb = flipped_batch(ds.images, train_idx[gidx], step_generator(seed, m), slice(rank * bs, (rank + 1) * bs))
            xb = xb.to(acc.device, memory_format=torch.channels_last if t.channels_last else torch.preserve_format)
            sync = contextlib.nullcontext() if micro == t.grad_accum - 1 else acc.no_sync(model)
            with sync, acc.autocast():
                o = fwd(xb)
                rec = (o.sample - xb).abs().mean()
                loss = rec + a.commitment_weight * o.commit_loss.mean()
                use_gan = disc is not None and step >= a.disc_start
                if use_gan:
                    g_loss = generator_gan_loss(raw_disc, o.sample)
                    loss = loss + a.disc_weight * adaptive_weight(rec, g_loss, raw.decoder.conv_out.weight) * g_loss
                guard.check(loss, step)
                acc.backward(loss / t.grad_accum)
            if use_gan:
                with acc.autocast():
                    d_loss = 0.5 * (F.relu(1 - disc(xb)).mean() + F.relu(1 + disc(o.sample.detach())).mean())
                acc.backward(d_loss / t.grad_accum)
            speed.add(len(xb) * world)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if disc is not None and step >= a.disc_start:
            dopt.step()
            dopt.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == steps - 1:
            rec_v = float(acc.reduce(rec.detach(), "mean"))
            row = {"step": step, "loss": float(loss.detach()), "l1": rec_v, "images_per_s": speed.rate()}
            history.append(row)
            if tracker and acc.is_main_process:
                tracker.log_metrics({"ae_loss": row["loss"], "ae_l1": rec_v, "ae_images_per_s": row["images_per_s"]},
                                    step=step)
        guard.end_step(step, steps, log_every, t.checkpoint_every)
        maybe_checkpoint(ckpt, acc, t, step, steps, parts, "train-ae")
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return Path(out)
    model = raw.float().eval()
    # Scale latents to unit std for the diffusion model (0.18215 is SD's KL-AE value, wrong here).
    pick = train_idx[np.random.default_rng(seed).permutation(len(train_idx))[:MAX_SCALE_IMAGES]]
    lat = encode_latents(model, to_tensor(ds.images[np.sort(pick)]))
    scale = float(1.0 / lat.std().clamp_min(1e-6))
    model.register_to_config(scaling_factor=scale)
    held = ds.where(split="val")
    held = (held if len(held) else train_idx)[:256]
    xv = ds.images[held]
    rec_v = to_uint8(reconstruct(model, to_tensor(xv)))
    val_psnr = psnr(xv, rec_v)
    grid = image_grid([xv[:6], rec_v[:6]])
    with atomic_dir(out, force=force) as tmp:
        model.save_pretrained(tmp / "vqmodel")
        np.save(tmp / "recon_grid.npy", grid)
        write_artifact_meta(tmp, kind="model", stage="train-ae", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"dataset": dataset},
                            extra={"scaling_factor": scale, "val_psnr": val_psnr, "steps": steps,
                                   "resumed_from_step": start, "processes": world,
                                   "mixed_precision": acc.mixed_precision, "device": acc.device.type,
                                   "history": history})
    if tracker:
        tracker.log_metrics({"ae_val_psnr": val_psnr, "ae_scaling_factor": scale})
        tracker.log_image(grid, "ae_reconstructions.png")
    return Path(out)
