"""Train LDM: the denoising U-Net in the AE's latent space (DDPM eps-prediction loss, EMA weights).

The unconditional model (the default, Algorithm 1) trains on precomputed
latents of every training image (and its mirror image only with ``ldm.hflip``:
the paper trains "without flipping or rotation", and mirrored anatomy is wrong
anatomy for ACDC and Synapse). The conditional model
(``ldm.conditional``, the paper's "cond AugPaint") sees [z_t, E(masked image)]
and learns from random box/irregular keep-masks (``masks.py``), so it needs no
labels. Training runs through accelerate like train-ae (mixed precision,
accumulation, DDP, checkpoints and resume).
"""
from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..infra.artifacts import atomic_dir, read_artifact_meta, write_artifact_meta
from ..config import AugPaintConfig
from ..data.dataset import open_dataset
from ..errors import AugPaintError
from .masks import random_keep_mask
from ..runtime import device_policy, seed_everything, to_tensor, to_uint8
from .models import AE_FACTOR, build_pixel_unet, build_train_scheduler, build_unet, load_vqmodel
from .sampling import make_scheduler
from .train_ae import encode_latents, flipped_batch, image_grid
from .training import (Checkpointer, FiniteGuard, Throughput, arch_of, checkpoint_dir, make_accelerator,
                       maybe_checkpoint, plan_steps, prepare, resume_state, run_identity, step_batch, step_generator)

STAGE_SEED_OFFSET = 202
log = logging.getLogger(__name__)


def masked_input(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The conditioning image: kept pixels as they are, the region to generate set to 0 (mid grey)."""
    return x * keep


@torch.no_grad()
def sample_unconditional(unet, scheduler_config, ae, n: int, steps: int, seed: int,
                         autocast=contextlib.nullcontext) -> np.ndarray:
    """Plain DDIM samples decoded to images (a quick look at what the LDM learned), on the U-Net's device.

    Args:
        autocast: context factory around network calls (bf16 on a GPU).
    """
    sched = make_scheduler("ddim", scheduler_config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    c, s = unet.config.out_channels, unet.config.sample_size
    device = next(unet.parameters()).device
    z = torch.randn((n, c, s, s), generator=g).to(device)  # CPU draws: the same noise on any device
    for t in sched.timesteps:
        with autocast():
            eps = unet(z, t).sample
        z = sched.step(eps.float(), t, z).prev_sample
    if ae is not None:
        with autocast():
            z = ae.decode(z / ae.config.scaling_factor).sample
    return to_uint8(z.float())


@torch.no_grad()
def sample_conditional(unet, scheduler_config, ae, x: torch.Tensor, keep: torch.Tensor, steps: int, seed: int,
                       autocast=contextlib.nullcontext) -> np.ndarray:
    """DDIM samples of the conditional model for images ``x`` with keep-masks ``keep`` (N,1,H,W), on ``x``'s device.

    Args:
        autocast: context factory around network calls (bf16 on a GPU).
    """
    sched = make_scheduler("ddim", scheduler_config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    with autocast():
        cond = (encode_latents(ae, masked_input(x, keep)) * ae.config.scaling_factor).float()
    z = torch.randn(cond.shape, generator=g).to(cond.device)
    for t in sched.timesteps:
        with autocast():
            eps = unet(torch.cat([z, cond], 1), t).sample
        z = sched.step(eps.float(), t, z).prev_sample
    with autocast():
        out = ae.decode(z / ae.config.scaling_factor).sample
    return to_uint8(out.float())


def _batch(images, idx: np.ndarray, hflip: bool, seed: int, m: int, part: slice) -> torch.Tensor:
    """Images ``idx[part]`` in [-1, 1]; mirrored with p=0.5 only with ``ldm.hflip`` (the paper trains without)."""
    if hflip:
        return flipped_batch(images, idx, step_generator(seed, m, 1), part)
    return to_tensor(images[idx[part]])


def _latents(ae, images, idx: np.ndarray, flip: bool, device, chunk: int = 256) -> torch.Tensor:
    """Latents of ``images[idx]`` (mirrored if ``flip``), read a chunk at a time from the (lazy) dataset."""
    out = []
    for i in range(0, len(idx), chunk):
        x = to_tensor(images[idx[i:i + chunk]]).to(device)
        out.append(encode_latents(ae, x.flip(-1) if flip else x).cpu())
    return torch.cat(out)


def _keep_batch(size: int, seed: int, m: int, items: np.ndarray) -> torch.Tensor:
    """Keep-masks of micro-step ``m``, one per batch position (from ``[seed, m, position]``)."""
    masks = [random_keep_mask(size, np.random.default_rng([seed, m, int(i)]), AE_FACTOR) for i in items]
    return torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))


def train_pixel(cfg: AugPaintConfig, dataset: str | Path, out: str | Path, *, force: bool = False,
                tracker=None) -> Path:
    """The RePaint baseline's model: an image-space diffusion U-Net (``pixel`` architecture), trained with
    exactly the LDM's recipe (``ldm`` schedule, optimiser, steps, EMA; ``training`` section).

    Args:
        cfg: config.
        dataset: slice dataset artifact.
        out: output artifact (``unet/`` and ``scheduler/``), read by ``inpaint.sampler: repaint``.
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    return train_ldm(cfg, dataset, None, out, force=force, tracker=tracker)


def train_ldm(cfg: AugPaintConfig, dataset: str | Path, ae_path: str | Path | None, out: str | Path, *,
              force: bool = False, tracker=None) -> Path:
    """Stage 3: train the latent diffusion U-Net (unconditional, or conditional with ``ldm.conditional``).

    Args:
        cfg: config (``ldm`` and ``training`` sections, ``seed``).
        dataset: slice dataset artifact (training split: S^l + S^u).
        ae_path: autoencoder artifact from train-ae; None trains in pixel space (see :func:`train_pixel`).
        out: output artifact (``unet/`` and ``scheduler/`` in diffusers format).
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    pixel = ae_path is None
    ds = open_dataset(dataset)
    size = ds.images.shape[1]
    ae = None
    if not pixel:
        read_artifact_meta(ae_path, kind="model")
        ae = load_vqmodel(ae_path)
        if ae.config.latent_channels != cfg.ae.latent_channels:
            raise AugPaintError(f"{ae_path}: AE has {ae.config.latent_channels} latent channels, "
                                f"config ae.latent_channels is {cfg.ae.latent_channels}")
        if ae.config.sample_size != size:
            raise AugPaintError(f"{ae_path}: AE was trained on {ae.config.sample_size} px images, dataset has "
                                f"{size} px")
    train_idx = ds.where(split="train")
    if len(train_idx) == 0:
        raise AugPaintError(f"{dataset}: no training images")
    l, t = cfg.ldm, cfg.training
    acc = make_accelerator(t)
    seed = cfg.seed + STAGE_SEED_OFFSET
    seed_everything(seed, cfg.runtime.deterministic)
    conditional = l.conditional and not pixel
    if pixel:
        latent_size, channels = size, 3
        unet = build_pixel_unet(cfg.pixel, size)
    else:
        latent_size, channels = size // AE_FACTOR, ae.config.latent_channels
        unet = build_unet(l, latent_size, channels)
    sched = build_train_scheduler(l)
    opt = torch.optim.AdamW(unet.parameters(), lr=l.lr, weight_decay=0.0)
    ema = [p.detach().clone() for p in unet.parameters()] if l.ema_decay > 0 else None
    parts = {"unet": unet, "opt": opt} | ({"ema": ema} if ema is not None else {})
    arch, ident = {"unet": arch_of(unet)}, \
        run_identity(cfg, l, {"dataset": dataset} | ({} if pixel else {"ae": ae_path}), acc)
    ckpt = Checkpointer(checkpoint_dir(t, out, "train-pixel" if pixel else "train-ldm", arch, ident),
                        t.keep_checkpoints, arch, ident)
    start = resume_state(ckpt, t, parts, log)
    if not pixel:
        ae = ae.to(acc.device)
    scale = 1.0 if pixel else ae.config.scaling_factor
    if not conditional and not pixel:
        # The AE is frozen: latents of every image (and, with ldm.hflip, its mirror) are computed once
        # ([originals, mirrors]).
        flips = (False, True) if l.hflip else (False,)
        z_all = torch.cat([_latents(ae, ds.images, train_idx, flip, acc.device) for flip in flips]) * scale
        n_items = len(flips) * len(train_idx)
    else:
        n_items = len(train_idx)
    unet, opt, raw, fwd = prepare(acc, unet, opt, t)
    if ema is not None:  # beside the weights it averages (in place: the checkpoint holds this list)
        ema[:] = [e.to(acc.device) for e in ema]
    world, rank, bs = acc.num_processes, acc.process_index, l.batch_size
    steps, log_every = plan_steps(acc, t, l, "ldm", len(train_idx), start, ckpt)
    history, speed = [], Throughput()
    part = slice(rank * bs, (rank + 1) * bs)
    unet.train()
    guard = FiniteGuard("train-ldm", "lower ldm.lr", acc.device)
    for step in range(start, steps):
        for micro in range(t.grad_accum):
            m = step * t.grad_accum + micro
            gidx = step_batch(n_items, bs * world, m, seed)
            g = step_generator(seed, m)
            noise = torch.randn((len(gidx), channels, latent_size, latent_size), generator=g)[part].to(acc.device)
            ts = torch.randint(0, sched.config.num_train_timesteps, (len(gidx),), generator=g)[part].to(acc.device)
            if pixel:  # images straight from the dataset, mirrored with p=0.5 as the latent model sees them
                z = _batch(ds.images, train_idx[gidx], l.hflip, seed, m, part).to(acc.device)
            elif conditional:
                x = _batch(ds.images, train_idx[gidx], l.hflip, seed, m, part).to(acc.device)
                keep = _keep_batch(size, seed, m, np.arange(len(gidx))[part]).to(acc.device)
                z = encode_latents(ae, x) * scale
                cond = encode_latents(ae, masked_input(x, keep)) * scale
            else:
                z = z_all[gidx[part]].to(acc.device)
            zt = sched.add_noise(z, noise, ts)
            inp = torch.cat([zt, cond], 1) if conditional else zt
            if t.channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last)
            sync = contextlib.nullcontext() if micro == t.grad_accum - 1 else acc.no_sync(unet)
            with sync, acc.autocast():
                loss = F.mse_loss(fwd(inp, ts).sample.float(), noise)
                guard.check(loss, step)
                acc.backward(loss / t.grad_accum)
            speed.add(len(z) * world)
        acc.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            # EMA weights sample far better than the raw ones; warm-up so short runs are not stuck at init.
            decay = min(l.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in raw.parameters()], 1 - decay)
        if step % log_every == 0 or step == steps - 1:
            row = {"step": step, "loss": float(acc.reduce(loss.detach(), "mean")), "images_per_s": speed.rate()}
            history.append(row)
            if tracker and acc.is_main_process:
                tracker.log_metrics({"ldm_loss": row["loss"], "ldm_images_per_s": row["images_per_s"]}, step=step)
        if acc.is_main_process and tracker and t.sample_every and (step + 1) % t.sample_every == 0:
            tracker.log_image(_preview(raw, ema, sched, ae, ds, cfg), f"ldm_samples_step{step + 1:07d}.png")
        guard.end_step(step, steps, log_every, t.checkpoint_every)
        maybe_checkpoint(ckpt, acc, t, step, steps, parts, "train-ldm")
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return Path(out)
    final = _with_ema(raw, ema).float().eval()
    grid = _preview(final, None, sched, ae, ds, cfg)
    with atomic_dir(out, force=force) as tmp:
        final.save_pretrained(tmp / "unet")
        sched.save_pretrained(tmp / "scheduler")
        write_artifact_meta(tmp, kind="model", stage="train-pixel" if pixel else "train-ldm",
                            config=cfg.model_dump(mode="json"), seed=cfg.seed,
                            inputs={"dataset": dataset} | ({} if pixel else {"ae": ae_path}),
                            extra={"space": "pixel" if pixel else "latent", "latent_size": latent_size,
                                   "conditional": conditional, "steps": steps,
                                   "resumed_from_step": start, "processes": world,
                                   "mixed_precision": acc.mixed_precision, "device": acc.device.type,
                                   "history": history})
    if tracker:
        tracker.log_image(grid, "ldm_samples.png")
    return Path(out)


def _with_ema(unet, ema: list[torch.Tensor] | None):
    """A copy of the U-Net carrying the EMA weights (the training copy is left alone)."""
    out = copy.deepcopy(unet)
    if ema is not None:
        torch._foreach_copy_([p.data for p in out.parameters()], ema)
    return out


def _preview(unet, ema, sched, ae, ds, cfg: AugPaintConfig) -> np.ndarray:
    """Sample grid for MLflow: unconditional samples, or [image | masked | sample] rows for the conditional model."""
    # On the training device (the previews took about 3 of ACDC's 8 LDM hours on the CPU), bf16 where it has it.
    policy = device_policy(cfg.runtime)
    model = _with_ema(unet, ema).float().eval().to(policy.device)
    if ae is None:  # pixel-space model
        return image_grid([sample_unconditional(model, sched.config, None, 6, 50, cfg.seed, policy.autocast)])
    ae = copy.deepcopy(ae).float().to(policy.device)  # the training copy is left as it is
    if not cfg.ldm.conditional:
        return image_grid([sample_unconditional(model, sched.config, ae, 6, 50, cfg.seed, policy.autocast)])
    idx = ds.where(split="val")[:4]
    idx = idx if len(idx) else ds.where(split="train")[:4]
    x = to_tensor(ds.images[idx])
    keep = torch.from_numpy(np.stack([random_keep_mask(x.shape[-1], np.random.default_rng([cfg.seed, i]), AE_FACTOR)
                                      for i in range(len(idx))])[:, None].astype(np.float32))
    out = sample_conditional(model, sched.config, ae, x.to(policy.device), keep.to(policy.device), 50, cfg.seed,
                             policy.autocast)
    return image_grid([to_uint8(x), to_uint8(masked_input(x, keep)), out])
