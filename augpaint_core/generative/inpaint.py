"""Inpaint: turn each labeled slice into ``samples_per_pair`` new images that keep its labeled area exactly.

The default is the paper's Algorithm 1 (unconditional AugPaint, DDIM 50): the
union of the per-class bounding boxes is kept, everything else is generated;
at every step the kept region of the latent is replaced by a forward-noised
latent of the real image. Options: DPM-Solver++ / UniPC, the conditional LDM
(cond AugPaint), the label shape as the kept region, a margin, mask flipping,
and the pixel-space RePaint baseline. After decoding, the original pixels of
the kept region are pasted back, so the label stays exact bit for bit.

The work is a list of (source slice, sample index) items cut into global
batches; ``--shard i --num-shards n`` takes whole batches, so shards compute
exactly what one run computes, and :func:`merge_shards` puts them together.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

from ..infra.artifacts import atomic_dir, read_artifact_meta, write_artifact_meta
from ..config import AugPaintConfig, InpaintConfig
from ..data.dataset import DatasetWriter, SliceDataset, open_dataset, shard_hashes
from ..errors import AugPaintError
from ..runtime import seed_everything, to_tensor, to_uint8
from .masks import AE_FACTOR, box_mask, label_mask
from .models import check_pair, load_ldm, load_vqmodel
from .noise import match_noise
from .sampling import ItemNoise, augpaint_loop, batch_invariant, make_scheduler, repaint_loop
from .train_ae import image_grid

log = logging.getLogger(__name__)
FLIPS = ("none", "h", "v")
GRID_SOURCES = 4


def is_big_box(label: np.ndarray, icfg: InpaintConfig, factor: int = AE_FACTOR) -> bool:
    """Whether the kept box (with its margin) covers more than ``inpaint.big_box_fraction`` of the image."""
    return icfg.mask == "box" and float(box_mask(label, factor, icfg.box_margin).mean()) > icfg.big_box_fraction


def kept_region(label: np.ndarray, icfg: InpaintConfig, factor: int = AE_FACTOR) -> tuple[np.ndarray, str]:
    """The kept region the config asks for and its kind (``box``, ``label``, or ``label_big_box``).

    ``inpaint.mask`` and ``inpaint.box_margin`` choose it; with ``inpaint.big_box: label`` a box over
    ``big_box_fraction`` of the image becomes the label shape (grown by the margin), because a box that
    covers nearly everything leaves nothing to repaint and its samples are near-copies of the source.
    """
    if icfg.mask == "label":
        return label_mask(label, factor, icfg.box_margin), "label"
    m = box_mask(label, factor, icfg.box_margin)
    if icfg.big_box == "label" and float(m.mean()) > icfg.big_box_fraction:
        return label_mask(label, factor, icfg.box_margin), "label_big_box"
    return m, "box"


def keep_mask(label: np.ndarray, icfg: InpaintConfig, factor: int = AE_FACTOR) -> np.ndarray:
    """The kept region the config asks for (``inpaint.mask``, ``inpaint.box_margin``, ``inpaint.big_box``)."""
    return kept_region(label, icfg, factor)[0]


def item_seed(seed: int, source_index: int, sample_index: int) -> int:
    """Per-item seed: outputs do not depend on batch composition or sharding."""
    return zlib.crc32(f"{seed}:{source_index}:{sample_index}".encode()) & 0x7FFFFFFF


def flip_of(seed: int, enabled: bool) -> str:
    """The item's flip (mask flipping, paper section 4.4), drawn from its own seed."""
    return FLIPS[int(np.random.default_rng(seed).integers(0, 3))] if enabled else "none"


def apply_flip(a: np.ndarray, flip: str) -> np.ndarray:
    """Flip an (H, W, ...) array horizontally (``h``) or vertically (``v``)."""
    if flip == "h":
        return np.ascontiguousarray(a[:, ::-1])
    if flip == "v":
        return np.ascontiguousarray(a[::-1])
    return a


@torch.no_grad()
def augpaint_sample(unet, ae, scheduler_config, x0: torch.Tensor, mask: torch.Tensor, seeds: list[int], *,
                    steps: int = 50, eta: float = 0.0, known_noise: str = "fresh", sampler: str = "ddim",
                    autocast=contextlib.nullcontext) -> torch.Tensor:
    """Encode, run the AugPaint loop (Algorithm 1, or cond AugPaint for a conditional U-Net), decode.

    Args:
        unet: latent eps-prediction U-Net, unconditional (C channels in) or conditional (2C in).
        ae: VQModel (its ``scaling_factor`` scales latents).
        scheduler_config: the training noise schedule.
        x0: (B,3,H,W) images in [-1, 1].
        mask: (B,1,H,W) float, 1 = known pixels; aligned to the AE factor.
        seeds: one seed per item.
        steps: sampler steps.
        eta: DDIM eta.
        known_noise: ``fresh`` (Algorithm 1) or ``fixed``.
        sampler: ``ddim``, ``dpmsolver++`` or ``unipc``.
        autocast: context factory around network calls (bf16 on GPU).

    Returns:
        (B,3,H,W) decoded images in [-1, 1]; the caller pastes the known pixels back.
    """
    if len(seeds) != len(x0) or mask.shape[0] != len(x0):
        raise AugPaintError(f"augpaint_sample: {len(x0)} images, {mask.shape[0]} masks, {len(seeds)} seeds")
    scale = ae.config.scaling_factor
    with autocast():
        z0 = ae.encode(x0).latents.float() * scale
        cond = None
        if unet.config.in_channels == 2 * z0.shape[1]:  # conditional: kept pixels enter by concatenation
            cond = ae.encode(x0 * mask).latents.float() * scale
    m = torch.nn.functional.avg_pool2d(mask, AE_FACTOR)  # exact 0/1 because the mask is on the latent grid
    z = augpaint_loop(unet, make_scheduler(sampler, scheduler_config), z0, m, ItemNoise(seeds, x0.device),
                      steps=steps, eta=eta, known_noise=known_noise, cond=cond, autocast=autocast)
    with autocast():
        return ae.decode(z / scale).sample.float()


def anchors(ds: SliceDataset) -> tuple[list[int], list[int]]:
    """Labeled training slices with foreground (anchors) and those skipped for an empty label."""
    labeled = ds.where(split="train", labeled=True)
    has_fg = [bool(ds.labels[int(i)].any()) for i in labeled]
    keep = [int(i) for i, f in zip(labeled, has_fg) if f]
    empty = [int(i) for i, f in zip(labeled, has_fg) if not f]
    return keep, empty


def shard_items(n_items: int, batch_size: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Item range [start, end) of a shard: whole global batches, so batches are the same as in one run."""
    if not 0 <= shard < num_shards:
        raise AugPaintError(f"--shard {shard} is outside 0..{num_shards - 1} (--num-shards {num_shards})")
    n_batches = -(-n_items // batch_size)
    b0, b1 = shard * n_batches // num_shards, (shard + 1) * n_batches // num_shards
    return min(n_items, b0 * batch_size), min(n_items, b1 * batch_size)


class _Runtime:
    """Device, precision and compilation of the inpaint stage."""

    def __init__(self, icfg: InpaintConfig) -> None:
        cuda = torch.cuda.is_available()
        if icfg.device == "cuda" and not cuda:
            raise AugPaintError("inpaint.device is cuda but no CUDA GPU is visible")
        self.device = torch.device("cuda" if (icfg.device == "cuda" or (icfg.device == "auto" and cuda)) else "cpu")
        gpu = self.device.type == "cuda"
        if icfg.precision == "bf16" and not gpu:
            raise AugPaintError("inpaint.precision bf16 needs a GPU (CPU inference runs in fp32); use auto or fp32")
        self.bf16 = gpu and icfg.precision in ("auto", "bf16") and torch.cuda.is_bf16_supported()
        self.compile = icfg.compile and gpu
        if icfg.compile and not gpu:
            log.warning("inpaint.compile is ignored on CPU")
        self.invariant = icfg.batch_invariant and not gpu

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"


def _plan_fingerprint(cfg: AugPaintConfig, dataset, ae_path, ldm_path, n_items: int) -> str:
    """What every shard of one inpaint run must agree on: inputs, seed, inpaint settings, item count."""
    icfg = cfg.inpaint.model_dump(mode="json")
    for k in ("num_shards", "device", "compile", "precision"):  # how it runs, not what it computes
        icfg.pop(k)
    inputs = {}
    for name, p in (("dataset", dataset), ("ae", ae_path), ("model", ldm_path)):
        if p is not None:
            try:
                inputs[name] = read_artifact_meta(p)["content_sha256"]
            except AugPaintError:
                inputs[name] = str(p)
    blob = json.dumps({"seed": cfg.seed, "inpaint": icfg, "inputs": inputs, "items": n_items}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_models(cfg: AugPaintConfig, ds: SliceDataset, ae_path, ldm_path):
    """(unet, ae or None, training schedule config) after checking they fit each other and the data."""
    size = ds.images.shape[1]
    meta = read_artifact_meta(ldm_path, kind="model")
    unet, train_sched = load_ldm(ldm_path)
    if cfg.inpaint.sampler == "repaint":
        if meta.get("space") != "pixel" or unet.config.in_channels != 3:
            raise AugPaintError(f"{ldm_path}: inpaint.sampler repaint needs a pixel-space model from "
                                f"'augpaint train-pixel', found a {meta.get('stage')} artifact")
        if unet.config.sample_size != size:
            raise AugPaintError(f"{ldm_path}: pixel model is {unet.config.sample_size} px, images are {size} px")
        return unet, None, train_sched.config
    if meta.get("space") == "pixel":
        raise AugPaintError(f"{ldm_path}: a pixel-space model needs inpaint.sampler repaint "
                            f"(sampler is {cfg.inpaint.sampler})")
    if ae_path is None:
        raise AugPaintError(f"inpaint.sampler {cfg.inpaint.sampler} needs the autoencoder (--ae)")
    read_artifact_meta(ae_path, kind="model")
    check_pair(ldm_path, meta, ae_path)
    ae = load_vqmodel(ae_path)
    c = ae.config.latent_channels
    if unet.config.in_channels not in (c, 2 * c):
        raise AugPaintError(f"{ldm_path}: U-Net takes {unet.config.in_channels} channels but the AE makes "
                            f"{c} (a conditional U-Net takes twice that)")
    if unet.config.sample_size * AE_FACTOR != size:
        raise AugPaintError(f"{ldm_path}: U-Net latent size {unet.config.sample_size} does not match images of "
                            f"{size} px")
    return unet, ae, train_sched.config


def inpaint(cfg: AugPaintConfig, dataset: str | Path, ae_path: str | Path | None, ldm_path: str | Path,
            out: str | Path, *, shard: int = 0, num_shards: int = 1, force: bool = False,
            progress: bool | None = None, tracker=None) -> Path:
    """Stage 4: make ``samples_per_pair`` synthetic images per labeled anchor slice (or one shard of them).

    Args:
        cfg: config (``inpaint`` section, ``seed``).
        dataset: slice dataset artifact (read lazily: only the anchor slices).
        ae_path: autoencoder artifact (unused by ``inpaint.sampler: repaint``).
        ldm_path: LDM artifact, or the pixel model from train-pixel for RePaint.
        out: output synthetic dataset artifact.
        shard: which shard of the work to do.
        num_shards: how many shards the work is cut into (whole batches each).
        force: replace an existing output.
        progress: progress bar; None shows one when stderr is a terminal.
        tracker: optional MLflow stage tracker.
    """
    icfg = cfg.inpaint
    ds = open_dataset(dataset)
    unet, ae, sched_cfg = _load_models(cfg, ds, ae_path, ldm_path)
    rt = _Runtime(icfg)
    seed_everything(cfg.seed, cfg.runtime.deterministic)
    src, empty = anchors(ds)
    for i in empty:
        log.warning("inpaint: skipping %s slice %s: label has no foreground", ds.records[i]["case_id"],
                    ds.records[i]["slice_index"])
    if not src:
        raise AugPaintError(f"{dataset}: no labeled training slice has foreground; nothing to inpaint")
    big = [s for s in src if is_big_box(ds.labels[s], icfg)]
    if big:
        what = {"skip": "skipped", "label": "inpainted with the label shape kept instead",
                "keep": "inpainted with the box anyway"}[icfg.big_box]
        log.warning("inpaint: %d of %d source slices have a kept box over inpaint.big_box_fraction=%.2f of the "
                    "image (little to repaint); %s (inpaint.big_box=%s)", len(big), len(src),
                    icfg.big_box_fraction, what, icfg.big_box)
    if icfg.big_box == "skip":
        src = [s for s in src if s not in set(big)]
        if not src:
            raise AugPaintError(f"{dataset}: every labeled slice's kept box covers more than "
                                f"inpaint.big_box_fraction={icfg.big_box_fraction} of the image and "
                                "inpaint.big_box is skip; nothing to inpaint (use inpaint.big_box=label)")
    items = [(s, j) for s in src for j in range(icfg.samples_per_pair)]
    start, end = shard_items(len(items), icfg.batch_size, shard, num_shards)
    conditional = ae is not None and unet.config.in_channels == 2 * ae.config.latent_channels
    sampler = icfg.sampler
    unet = unet.to(rt.device)
    ae = ae.to(rt.device) if ae is not None else None
    net = torch.compile(unet) if rt.compile else unet
    steps = icfg.num_inference_steps
    bar = None
    if progress or (progress is None and sys.stderr.isatty()):
        from tqdm.auto import tqdm

        bar = tqdm(total=end - start, unit="img", desc=f"inpaint {shard + 1}/{num_shards}", dynamic_ncols=True)
    with atomic_dir(out, force=force) as tmp:
        writer = DatasetWriter(tmp, ds.class_names, ds.images.shape[1], shard_size=cfg.data.shard_size,
                               regions=ds.regions)
        grid_rows: dict[int, list[np.ndarray]] = {}
        models = [m for m in (unet, ae) if m is not None]
        with batch_invariant(*models, enabled=rt.invariant):
            for b in range(start, end, icfg.batch_size):
                chunk = items[b:min(b + icfg.batch_size, end)]
                seeds = [item_seed(cfg.seed, s, j) for s, j in chunk]
                flips = [flip_of(sd, icfg.mask_flip) for sd in seeds]
                xs = np.stack([apply_flip(ds.images[s], f) for (s, _), f in zip(chunk, flips)])
                ys = np.stack([apply_flip(ds.labels[s], f) for (s, _), f in zip(chunk, flips)])
                regions = [kept_region(y, icfg) for y in ys]
                mask = np.stack([m for m, _ in regions])
                x = to_tensor(xs).to(rt.device)
                m = torch.from_numpy(mask[:, None].astype(np.float32)).to(rt.device)
                if sampler == "repaint":
                    gen = repaint_loop(net, sched_cfg, x, m, seeds, steps=steps,
                                       jump_length=icfg.repaint_jump_length, jump_n_sample=icfg.repaint_resample,
                                       eta=icfg.repaint_eta, autocast=rt.autocast)
                else:
                    gen = augpaint_sample(net, ae, sched_cfg, x, m, seeds, steps=steps, eta=icfg.eta,
                                          known_noise=icfg.known_noise, sampler=sampler, autocast=rt.autocast)
                gen_u8, added = to_uint8(gen), [0.0] * len(chunk)
                if icfg.match_noise:
                    for k in range(len(chunk)):
                        gen_u8[k], added[k] = match_noise(gen_u8[k], xs[k], mask[k], seeds[k])
                out_u8 = np.where(mask[..., None], xs, gen_u8)  # paste the real pixels back: exact labels
                records = []
                for k, (s, j) in enumerate(chunk):
                    r = ds.records[s]
                    records.append({
                        "case_id": r["case_id"], "slice_index": r["slice_index"], "split": "train", "labeled": True,
                        "source": "synthetic",
                        "provenance": {"source_index": s, "source_case": r["case_id"],
                                       "source_slice": r["slice_index"], "sample_index": j, "item_index": b + k,
                                       "seed": seeds[k], "sampler": sampler, "steps": steps,
                                       "conditional": conditional, "eta": icfg.repaint_eta if sampler == "repaint"
                                       else icfg.eta, "known_noise": icfg.known_noise, "mask": icfg.mask,
                                       "box_margin": icfg.box_margin, "flip": flips[k],
                                       "kept_region": regions[k][1], "big_box": icfg.big_box,
                                       "big_box_fraction": icfg.big_box_fraction,
                                       "match_noise_sd": round(added[k], 3) if icfg.match_noise else None}})
                    if s in src[:GRID_SOURCES] and flips[k] == "none":
                        grid_rows.setdefault(s, [xs[k], np.repeat((mask[k] * 255).astype(np.uint8)[..., None], 3,
                                                                 -1)]).append(out_u8[k])
                writer.add(out_u8, ys, records)
                if bar is not None:
                    bar.update(len(chunk))
                if tracker:
                    tracker.log_metrics({"inpaint_done": b + len(chunk) - start}, step=b)
        if bar is not None:
            bar.close()
        manifest = writer.close()
        if grid_rows:
            width = max(len(r) for r in grid_rows.values())
            np.save(tmp / "inpaint_grid.npy", image_grid([r + [np.zeros_like(r[0])] * (width - len(r))
                                                          for r in grid_rows.values()]))
        write_artifact_meta(
            tmp, kind="dataset", stage="inpaint", config=cfg.model_dump(mode="json"), seed=cfg.seed,
            inputs={"dataset": dataset, "model": ldm_path} | ({"ae": ae_path} if ae is not None else {}),
            known_hashes=shard_hashes(manifest),
            extra={"num_anchors": len(src), "skipped_empty": len(empty), "num_samples": end - start,
                   "big_box": {"policy": icfg.big_box, "fraction": icfg.big_box_fraction, "sources": len(big),
                               "skipped": len(big) if icfg.big_box == "skip" else 0},
                   "class_names": ds.class_names, "sampler": sampler, "precision": rt.precision,
                   "device": rt.device.type, "batch_invariant": rt.invariant,
                   "shard": {"index": shard, "count": num_shards, "items": [start, end], "total_items": len(items),
                             "plan": _plan_fingerprint(cfg, dataset, ae_path, ldm_path, len(items))}})
    if tracker:
        tracker.log_metrics({"inpaint_anchors": len(src), "inpaint_samples": end - start,
                             "inpaint_skipped_empty": len(empty)})
        if grid_rows:
            tracker.log_image(np.load(Path(out) / "inpaint_grid.npy"), "inpaint_grid.png")
    return Path(out)


def merge_shards(cfg: AugPaintConfig, shard_dirs: list[str | Path], out: str | Path, *, force: bool = False,
                 tracker=None) -> Path:
    """Put the shards of one inpaint run together, in item order, into one synthetic dataset artifact.

    Refuses shards of different runs (inputs, seed or inpaint settings), a missing or repeated shard, or
    a gap in the items, naming the culprit.

    Args:
        cfg: config (for the shard size of the output).
        shard_dirs: shard artifacts from ``inpaint --shard i --num-shards n``, in any order.
        out: merged artifact.
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    if not shard_dirs:
        raise AugPaintError("merge-shards: no shard artifacts given")
    metas = []
    for p in shard_dirs:
        meta = read_artifact_meta(p, kind="dataset")
        if meta.get("stage") != "inpaint" or "shard" not in meta:
            raise AugPaintError(f"{p}: not an inpaint shard artifact (stage {meta.get('stage')!r})")
        metas.append((meta["shard"], Path(p), meta))
    metas.sort(key=lambda m: m[0]["index"])
    first = metas[0][0]
    for sh, p, _ in metas:
        if sh["plan"] != first["plan"] or sh["count"] != first["count"]:
            raise AugPaintError(f"{p}: shard of another inpaint run (plan {sh['plan']}/{sh['count']} shards vs "
                                f"{first['plan']}/{first['count']})")
    got = [sh["index"] for sh, _, _ in metas]
    if got != list(range(first["count"])):
        missing = sorted(set(range(first["count"])) - set(got))
        dup = sorted({i for i in got if got.count(i) > 1})
        raise AugPaintError(f"merge-shards: expected shards 0..{first['count'] - 1}; missing {missing}, "
                            f"repeated {dup}")
    pos = 0
    for sh, p, _ in metas:
        if sh["items"][0] != pos:
            raise AugPaintError(f"{p}: items start at {sh['items'][0]}, expected {pos}")
        pos = sh["items"][1]
    if pos != first["total_items"]:
        raise AugPaintError(f"merge-shards: shards cover {pos} of {first['total_items']} items")
    parts = [open_dataset(p) for _, p, _ in metas]  # memory-mapped: copied one block of slices at a time
    base = parts[0]
    with atomic_dir(out, force=force) as tmp:
        writer = DatasetWriter(tmp, base.class_names, base.images.shape[1], shard_size=cfg.data.shard_size,
                               regions=base.regions)
        block = cfg.data.shard_size
        for part in parts:
            for a in range(0, len(part.records), block):
                b = min(a + block, len(part.records))
                writer.add(part.images[a:b], part.labels[a:b], part.records[a:b])
        manifest = writer.close()
        grid = metas[0][1] / "inpaint_grid.npy"
        if grid.is_file():
            np.save(tmp / "inpaint_grid.npy", np.load(grid))
        m0 = metas[0][2]
        write_artifact_meta(
            tmp, kind="dataset", stage="inpaint", config=m0["config"], seed=m0["seed"],
            inputs={f"shard{sh['index']}": p for sh, p, _ in metas}, known_hashes=shard_hashes(manifest),
            extra={k: m0[k] for k in ("num_anchors", "skipped_empty", "class_names", "sampler", "precision",
                                       "device", "batch_invariant") if k in m0}
            | {"num_samples": pos, "merged_from": first["count"], "plan": first["plan"]})
    if tracker:
        tracker.log_metrics({"inpaint_samples": pos, "inpaint_shards": first["count"]})
    return Path(out)
