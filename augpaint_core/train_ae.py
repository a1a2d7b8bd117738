"""Train AE: VQ-regularised f=4 autoencoder on all training images (S^l + S^u)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .artifacts import atomic_dir, write_artifact_meta
from .dataset import load_dataset
from .config import AugPaintConfig
from .errors import AugPaintError
from .models import (AE_FACTOR, batches, build_vqmodel, num_steps, seed_everything, to_tensor, to_uint8)

STAGE_SEED_OFFSET = 101


@torch.no_grad()
def encode_latents(ae, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Pre-quantisation latents (diffusion runs on these), unscaled."""
    return torch.cat([ae.encode(x[i:i + batch_size]).latents for i in range(0, len(x), batch_size)])


@torch.no_grad()
def reconstruct(ae, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    return torch.cat([ae(x[i:i + batch_size]).sample for i in range(0, len(x), batch_size)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def image_grid(rows: list[np.ndarray]) -> np.ndarray:
    """Stack rows of (N,H,W,3) uint8 images into one (rows*H, N*W, 3) picture."""
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def train_ae(cfg: AugPaintConfig, dataset: str | Path, out: str | Path, *, force: bool = False,
             tracker=None) -> Path:
    """Stage 2: train the VQ autoencoder.

    Args:
        cfg: config (``ae`` section, ``seed``).
        dataset: slice dataset artifact.
        out: output model artifact (``vqmodel/`` in diffusers format).
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    ds = load_dataset(dataset)
    size = ds.images.shape[1]
    if size % AE_FACTOR:
        raise AugPaintError(f"{dataset}: image size {size} is not divisible by the AE factor {AE_FACTOR}")
    train_idx = ds.where(split="train")
    if len(train_idx) == 0:
        raise AugPaintError(f"{dataset}: no training images")
    x = to_tensor(ds.images[train_idx])
    gen = seed_everything(cfg.seed + STAGE_SEED_OFFSET)
    model = build_vqmodel(cfg.ae, size).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.ae.lr)
    steps = num_steps(len(x), cfg.ae.batch_size, cfg.ae.epochs, cfg.ae.max_steps)
    log_every = max(1, steps // 50)
    history = []
    for step, idx in enumerate(batches(len(x), cfg.ae.batch_size, steps, gen)):
        xb = x[idx]
        flip = torch.rand(len(xb), generator=gen) < 0.5  # horizontal flips: cheap, label-free augmentation
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        o = model(xb)
        rec = (o.sample - xb).abs().mean()
        loss = rec + cfg.ae.commitment_weight * o.commit_loss.mean()
        if not torch.isfinite(loss):
            raise AugPaintError(f"train-ae: loss became {loss.item()} at step {step}; lower ae.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            history.append({"step": step, "loss": loss.item(), "l1": rec.item()})
            if tracker:
                tracker.log_metrics({"ae_loss": loss.item(), "ae_l1": rec.item()}, step=step)
    model.eval()
    # Scale latents to unit std for the diffusion model (0.18215 is SD's KL-AE value, wrong here).
    lat = encode_latents(model, x)
    scale = float(1.0 / lat.std().clamp_min(1e-6))
    model.register_to_config(scaling_factor=scale)
    held = ds.where(split="val")
    held = held if len(held) else train_idx
    xv = ds.images[held]
    rec_v = to_uint8(reconstruct(model, to_tensor(xv)))
    val_psnr = psnr(xv, rec_v)
    with atomic_dir(out, force=force) as tmp:
        model.save_pretrained(tmp / "vqmodel")
        grid = image_grid([xv[:6], rec_v[:6]])
        np.save(tmp / "recon_grid.npy", grid)
        write_artifact_meta(tmp, kind="model", stage="train-ae", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"dataset": dataset},
                            extra={"scaling_factor": scale, "val_psnr": val_psnr, "steps": steps,
                                   "history": history})
    if tracker:
        tracker.log_metrics({"ae_val_psnr": val_psnr, "ae_scaling_factor": scale})
        tracker.log_image(grid, "ae_reconstructions.png")
    return Path(out)
