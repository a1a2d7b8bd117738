"""Inpaint: the paper's Algorithm 1 (unconditional AugPaint) with an explicit DDIM loop.

For each labeled slice with foreground, the union of the per-class bounding
boxes is kept; everything else is generated. At every DDIM step the known region
of the latent is replaced by a forward-noised latent of the real image (fresh
noise each step by default). After decoding, the original pixels of the box are
pasted back, so the labeled area is bit-exact and the label stays correct.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import torch

from .artifacts import atomic_dir, read_artifact_meta, write_artifact_meta
from .dataset import SliceDataset, load_dataset, save_dataset
from .config import AugPaintConfig
from .errors import AugPaintError
from .models import AE_FACTOR, ddim_from, load_ldm, load_vqmodel, seed_everything, to_tensor, to_uint8
from .train_ae import image_grid

log = logging.getLogger(__name__)
FLIPS = ("none", "h", "v")


def box_mask(label: np.ndarray, factor: int = AE_FACTOR, margin: int = 0) -> np.ndarray:
    """Union of per-class bounding boxes, edges rounded outward to multiples of ``factor``.

    Args:
        label: (H, W) integer label map.
        factor: the AE's downsampling factor, so the box maps exactly onto the latent grid.
        margin: extra pixels around every box before rounding.

    Returns:
        (H, W) bool mask, True = kept (known) pixels.
    """
    h, w = label.shape
    mask = np.zeros((h, w), bool)
    for c in np.unique(label):
        if c == 0:
            continue
        ys, xs = np.nonzero(label == c)
        y0, y1 = max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)
        x0, x1 = max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)
        y0, x0 = (y0 // factor) * factor, (x0 // factor) * factor
        y1, x1 = min(h, -(-y1 // factor) * factor), min(w, -(-x1 // factor) * factor)
        mask[y0:y1, x0:x1] = True
    return mask


def item_seed(seed: int, source_index: int, sample_index: int) -> int:
    """Per-item seed: outputs do not depend on batch composition or sharding."""
    return zlib.crc32(f"{seed}:{source_index}:{sample_index}".encode()) & 0x7FFFFFFF


@torch.no_grad()
def augpaint_sample(unet, ae, scheduler_config, x0: torch.Tensor, mask: torch.Tensor, seeds: list[int], *,
                    steps: int = 50, eta: float = 0.0, known_noise: str = "fresh") -> torch.Tensor:
    """Algorithm 1 on a batch; with a conditional U-Net, cond AugPaint (no replacement, [z_t, E(masked x0)] in).

    Args:
        unet: latent eps-prediction U-Net, unconditional (C channels in) or conditional (2C in).
        ae: VQModel (its ``scaling_factor`` scales latents).
        scheduler_config: the training noise schedule.
        x0: (B,3,H,W) images in [-1, 1].
        mask: (B,1,H,W) float, 1 = known pixels; must be aligned to the AE factor.
        seeds: one seed per item.
        steps: DDIM steps.
        eta: DDIM eta (0 = deterministic given the noise).
        known_noise: ``fresh`` noise for the known region every step (the paper), or ``fixed``.

    Returns:
        (B,3,H,W) decoded images in [-1, 1]; the caller pastes the known pixels back.
    """
    if len(seeds) != len(x0) or mask.shape[0] != len(x0):
        raise AugPaintError(f"augpaint_sample: {len(x0)} images, {mask.shape[0]} masks, {len(seeds)} seeds")
    sched = ddim_from(scheduler_config)
    sched.set_timesteps(steps)
    scale = ae.config.scaling_factor
    z0 = ae.encode(x0).latents * scale
    m = torch.nn.functional.avg_pool2d(mask, AE_FACTOR)  # exact 0/1 because the box is on the latent grid
    gens = [torch.Generator().manual_seed(s) for s in seeds]

    def randn() -> torch.Tensor:  # per-item draws keep results independent of the batch
        return torch.stack([torch.randn(z0.shape[1:], generator=g) for g in gens])

    z = randn()
    if unet.config.in_channels == 2 * z0.shape[1]:  # conditional: the kept pixels enter by concatenation
        cond = ae.encode(x0 * mask).latents * scale
        for t in sched.timesteps:
            var_noise = randn() if eta > 0 else None
            z = sched.step(unet(torch.cat([z, cond], 1), t).sample, t, z, eta=eta, variance_noise=var_noise).prev_sample
        return ae.decode(z / scale).sample
    fixed = randn() if known_noise == "fixed" else None
    for t in sched.timesteps:
        eps = fixed if fixed is not None else randn()
        known = sched.add_noise(z0, eps, t.expand(len(z0)))
        zc = m * known + (1 - m) * z
        eps_hat = unet(zc, t).sample
        var_noise = randn() if eta > 0 else None
        z = sched.step(eps_hat, t, zc, eta=eta, variance_noise=var_noise).prev_sample
    z = m * z0 + (1 - m) * z
    return ae.decode(z / scale).sample


def inpaint_grid(ds: SliceDataset, syn: SliceDataset, sources: list[int], n: int) -> np.ndarray:
    """One row per source slice: input, kept-box mask, then its samples."""
    rows = []
    for s in sources:
        idx = [i for i, r in enumerate(syn.records) if r["provenance"]["source_index"] == s][:n]
        mask = box_mask(syn.labels[idx[0]]) if syn.records[idx[0]]["provenance"]["flip"] == "none" else \
            box_mask(ds.labels[s])
        m_img = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, -1)
        rows.append(np.stack([ds.images[s], m_img, *syn.images[idx]]))
    return image_grid(rows)


def anchors(ds: SliceDataset) -> tuple[list[int], list[int]]:
    """Labeled training slices with foreground (anchors) and those skipped for an empty label."""
    labeled = ds.where(split="train", labeled=True)
    keep = [int(i) for i in labeled if ds.labels[i].any()]
    empty = [int(i) for i in labeled if not ds.labels[i].any()]
    return keep, empty


def inpaint(cfg: AugPaintConfig, dataset: str | Path, ae_path: str | Path, ldm_path: str | Path,
            out: str | Path, *, force: bool = False, tracker=None) -> Path:
    """Stage 4: make ``samples_per_pair`` synthetic images per labeled anchor slice.

    Args:
        cfg: config (``inpaint`` section, ``seed``).
        dataset: slice dataset artifact.
        ae_path: autoencoder artifact.
        ldm_path: LDM artifact.
        out: output synthetic dataset artifact.
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    read_artifact_meta(ae_path, kind="model")
    read_artifact_meta(ldm_path, kind="model")
    ds = load_dataset(dataset)
    ae = load_vqmodel(ae_path)
    unet, train_sched = load_ldm(ldm_path)
    if unet.config.in_channels not in (ae.config.latent_channels, 2 * ae.config.latent_channels):
        raise AugPaintError(f"{ldm_path}: U-Net takes {unet.config.in_channels} channels but the AE makes "
                            f"{ae.config.latent_channels} (a conditional U-Net takes twice that)")
    if unet.config.sample_size * AE_FACTOR != ds.images.shape[1]:
        raise AugPaintError(f"{ldm_path}: U-Net latent size {unet.config.sample_size} does not match images of "
                            f"{ds.images.shape[1]} px")
    seed_everything(cfg.seed)
    icfg = cfg.inpaint
    src, empty = anchors(ds)
    for i in empty:
        log.warning("inpaint: skipping %s slice %s: label has no foreground", ds.records[i]["case_id"],
                    ds.records[i]["slice_index"])
    if not src:
        raise AugPaintError(f"{dataset}: no labeled training slice has foreground; nothing to inpaint")
    items = [(s, j) for s in src for j in range(icfg.samples_per_pair)]
    images, labels, records = [], [], []
    for b in range(0, len(items), icfg.batch_size):
        chunk = items[b:b + icfg.batch_size]
        xs, ys, ms, seeds, flips = [], [], [], [], []
        for s, j in chunk:
            seed = item_seed(cfg.seed, s, j)
            rng = np.random.default_rng(seed)
            flip = FLIPS[rng.integers(0, 3)] if icfg.mask_flip else "none"
            x, y = ds.images[s], ds.labels[s]
            if flip == "h":
                x, y = x[:, ::-1], y[:, ::-1]
            elif flip == "v":
                x, y = x[::-1], y[::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
            ms.append(box_mask(ys[-1], AE_FACTOR, icfg.box_margin))
            seeds.append(seed)
            flips.append(flip)
        x_u8 = np.stack(xs)
        mask = np.stack(ms)
        gen = augpaint_sample(unet, ae, train_sched.config, to_tensor(x_u8),
                              torch.from_numpy(mask[:, None].astype(np.float32)), seeds,
                              steps=icfg.num_inference_steps, eta=icfg.eta, known_noise=icfg.known_noise)
        out_u8 = to_uint8(gen)
        out_u8 = np.where(mask[..., None], x_u8, out_u8)  # paste the real box pixels back: exact labels
        for k, (s, j) in enumerate(chunk):
            r = ds.records[s]
            records.append({"case_id": r["case_id"], "slice_index": r["slice_index"], "split": "train",
                            "labeled": True, "source": "synthetic",
                            "provenance": {"source_index": s, "sample_index": j, "seed": seeds[k],
                                           "sampler": "ddim", "steps": icfg.num_inference_steps,
                                           "conditional": unet.config.in_channels != ae.config.latent_channels,
                                           "eta": icfg.eta, "known_noise": icfg.known_noise,
                                           "flip": flips[k]}})
        images.append(out_u8)
        labels.append(np.stack(ys))
        if tracker:
            tracker.log_metrics({"inpaint_done": b + len(chunk)}, step=b)
    syn = SliceDataset(np.concatenate(images), np.concatenate(labels), records, ds.class_names, ds.regions)
    grid = inpaint_grid(ds, syn, src[:4], icfg.samples_per_pair)
    with atomic_dir(out, force=force) as tmp:
        save_dataset(syn, tmp)
        np.save(tmp / "inpaint_grid.npy", grid)
        write_artifact_meta(tmp, kind="dataset", stage="inpaint", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"dataset": dataset, "ae": ae_path, "ldm": ldm_path},
                            extra={"num_anchors": len(src), "skipped_empty": len(empty),
                                   "num_samples": len(records), "class_names": ds.class_names})
    if tracker:
        tracker.log_metrics({"inpaint_anchors": len(src), "inpaint_samples": len(records),
                             "inpaint_skipped_empty": len(empty)})
        tracker.log_image(grid, "inpaint_grid.png")
    return Path(out)
