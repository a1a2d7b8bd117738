"""Train LDM: unconditional denoising U-Net in the AE's latent space (DDPM eps-prediction loss)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .artifacts import atomic_dir, read_artifact_meta, write_artifact_meta
from .dataset import load_dataset
from .config import AugPaintConfig
from .errors import AugPaintError
from .models import (AE_FACTOR, batches, build_train_scheduler, build_unet, ddim_from, load_vqmodel, num_steps,
                     seed_everything, to_tensor, to_uint8)
from .train_ae import encode_latents, image_grid

STAGE_SEED_OFFSET = 202


@torch.no_grad()
def sample_unconditional(unet, scheduler_config, ae, n: int, steps: int, seed: int) -> np.ndarray:
    """Plain DDIM samples decoded to images (a quick look at what the LDM learned)."""
    sched = ddim_from(scheduler_config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    c, s = unet.config.in_channels, unet.config.sample_size
    z = torch.randn((n, c, s, s), generator=g)
    for t in sched.timesteps:
        z = sched.step(unet(z, t).sample, t, z).prev_sample
    return to_uint8(ae.decode(z / ae.config.scaling_factor).sample)


def train_ldm(cfg: AugPaintConfig, dataset: str | Path, ae_path: str | Path, out: str | Path, *,
              force: bool = False, tracker=None) -> Path:
    """Stage 3: train the unconditional latent diffusion U-Net.

    Args:
        cfg: config (``ldm`` section, ``seed``).
        dataset: slice dataset artifact (training split: S^l + S^u).
        ae_path: autoencoder artifact from train-ae.
        out: output artifact (``unet/`` and ``scheduler/`` in diffusers format).
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    read_artifact_meta(ae_path, kind="model")
    ds = load_dataset(dataset)
    ae = load_vqmodel(ae_path)
    if ae.config.latent_channels != cfg.ae.latent_channels:
        raise AugPaintError(f"{ae_path}: AE has {ae.config.latent_channels} latent channels, "
                            f"config ae.latent_channels is {cfg.ae.latent_channels}")
    train_idx = ds.where(split="train")
    if len(train_idx) == 0:
        raise AugPaintError(f"{dataset}: no training images")
    x = to_tensor(ds.images[train_idx])
    # Latents are computed once: the AE is frozen, so the loop only runs the U-Net.
    z_all = torch.cat([encode_latents(ae, x), encode_latents(ae, x.flip(-1))]) * ae.config.scaling_factor
    gen = seed_everything(cfg.seed + STAGE_SEED_OFFSET)
    latent_size = x.shape[-1] // AE_FACTOR
    unet = build_unet(cfg.ldm, latent_size, ae.config.latent_channels).train()
    sched = build_train_scheduler(cfg.ldm)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.ldm.lr, weight_decay=0.0)
    ema = [p.detach().clone() for p in unet.parameters()] if cfg.ldm.ema_decay > 0 else None
    steps = num_steps(len(x), cfg.ldm.batch_size, cfg.ldm.epochs, cfg.ldm.max_steps)
    log_every = max(1, steps // 50)
    history = []
    for step, idx in enumerate(batches(len(z_all), cfg.ldm.batch_size, steps, gen)):
        z = z_all[idx]
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(z),), generator=gen)
        loss = F.mse_loss(unet(sched.add_noise(z, noise, t), t).sample, noise)
        if not torch.isfinite(loss):
            raise AugPaintError(f"train-ldm: loss became {loss.item()} at step {step}; lower ldm.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if ema is not None:
            # EMA weights sample far better than the raw ones; warm-up so short runs are not stuck at init.
            decay = min(cfg.ldm.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in unet.parameters()], 1 - decay)
        if step % log_every == 0 or step == steps - 1:
            history.append({"step": step, "loss": loss.item()})
            if tracker:
                tracker.log_metrics({"ldm_loss": loss.item()}, step=step)
    if ema is not None:
        torch._foreach_copy_([p.data for p in unet.parameters()], ema)
    unet.eval()
    samples = sample_unconditional(unet, sched.config, ae, 6, 50, cfg.seed)
    with atomic_dir(out, force=force) as tmp:
        unet.save_pretrained(tmp / "unet")
        sched.save_pretrained(tmp / "scheduler")
        write_artifact_meta(tmp, kind="model", stage="train-ldm", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"dataset": dataset, "ae": ae_path},
                            extra={"latent_size": latent_size, "steps": steps, "history": history})
    if tracker:
        tracker.log_image(image_grid([samples]), "ldm_unconditional_samples.png")
    return Path(out)
