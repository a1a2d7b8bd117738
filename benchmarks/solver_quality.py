"""Is a fast solver as good as DDIM 50 for AugPaint? Downstream Dice and sample quality, side by side.

Per split (independent patient split and seeds) it trains the AE, the LDM and
the labeled-only baseline once, then for each sampler variant runs inpaint ->
filter -> segmenter -> evaluate on the same models and data, and measures:
- test mean Dice of the segmenter trained on labeled + filtered synthetic data;
- realism: Frechet distance between AE-encoder features of synthetic and real
  training images (in-domain features; no downloaded Inception);
- diversity: mean pairwise MS-SSIM between samples of the same source (lower is
  more diverse);
- inpaint wall time.
Nothing defaults to a fast solver unless this says it is as good.

    .venv/bin/python benchmarks/solver_quality.py [--config configs/demo.yaml] [--splits 3]
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from augpaint_core.config import load_config
from augpaint_core.data.dataset import load_dataset
from augpaint_core.segmentation.evaluate import evaluate
from augpaint_core.segmentation.filter import filter_synthetic
from augpaint_core.generative.inpaint import inpaint
from augpaint_core.generative.models import load_vqmodel
from augpaint_core.runtime import to_tensor
from augpaint_core.data.preprocess import preprocess
from augpaint_core.generative.train_ae import train_ae
from augpaint_core.generative.train_ldm import train_ldm
from augpaint_core.segmentation.train_seg import train_seg
from common import split_runs

VARIANTS = {"ddim50": ("ddim", 50), "dpmpp20": ("dpmsolver++", 20), "unipc20": ("unipc", 20),
            "dpmpp10": ("dpmsolver++", 10)}


@torch.no_grad()
def encoder_features(ae, images: np.ndarray, pool: int = 4) -> np.ndarray:
    """AE-encoder latents average-pooled to pool x pool: a small in-domain feature vector per image."""
    out = []
    for i in range(0, len(images), 64):
        z = ae.encode(to_tensor(np.asarray(images[i:i + 64]))).latents
        out.append(torch.nn.functional.adaptive_avg_pool2d(z, pool).flatten(1).double().numpy())
    return np.concatenate(out)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def pairwise_ms_ssim(syn) -> float:
    """Mean MS-SSIM over all pairs of samples that share a source slice."""
    from monai.metrics import MultiScaleSSIMMetric

    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=3)
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(syn.records):
        groups.setdefault(r["provenance"]["source_index"], []).append(i)
    vals = []
    for idx in groups.values():
        for i, j in itertools.combinations(idx, 2):
            a = torch.from_numpy(np.asarray(syn.images[[i]])).permute(0, 3, 1, 2).float() / 255
            b = torch.from_numpy(np.asarray(syn.images[[j]])).permute(0, 3, 1, 2).float() / 255
            vals.append(float(metric(a, b).mean()))
    return float(np.mean(vals)) if vals else float("nan")


def one_split(cfg, d: Path, variants: list[str]) -> dict:
    preprocess(cfg, d / "ds")
    train_ae(cfg, d / "ds", d / "ae")
    train_ldm(cfg, d / "ds", d / "ae", d / "ldm")
    train_seg(cfg, d / "ds", d / "base")
    ds = load_dataset(d / "ds")
    ae = load_vqmodel(d / "ae")
    real = encoder_features(ae, ds.images[ds.where(split="train")])
    out = {}
    for name in variants:
        sampler, steps = VARIANTS[name]
        c = cfg.model_copy(deep=True)
        c.inpaint.sampler, c.inpaint.num_inference_steps = sampler, steps
        t0 = time.perf_counter()
        inpaint(c, d / "ds", d / "ae", d / "ldm", d / f"syn_{name}")
        secs = time.perf_counter() - t0
        filter_synthetic(c, d / "ds", d / f"syn_{name}", d / f"flt_{name}")
        train_seg(c, d / "ds", d / f"seg_{name}", synthetic=d / f"flt_{name}")
        evaluate(c, d / "ds", d / "base", d / f"seg_{name}", d / f"eval_{name}")
        m = json.loads((d / f"eval_{name}" / "metrics.json").read_text())
        syn = load_dataset(d / f"syn_{name}")
        out[name] = {"dice": 100 * m["augpaint"]["mean"]["dice"], "baseline": 100 * m["baseline"]["mean"]["dice"],
                     "fd": frechet(encoder_features(ae, syn.images), real), "ms_ssim": pairwise_ms_ssim(syn),
                     "inpaint_s": secs}
        print(f"  {name}: Dice {out[name]['dice']:.2f} (baseline {out[name]['baseline']:.2f}), FD "
              f"{out[name]['fd']:.3f}, MS-SSIM {out[name]['ms_ssim']:.3f}, inpaint {secs:.1f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--variants", default="ddim50,dpmpp20,unipc20,dpmpp10")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", default=None, help="also write per-split results here (after every split)")
    args = ap.parse_args()
    base = load_config(args.config, args.set)
    variants = args.variants.split(",")
    rows = []
    t0 = time.time()
    with split_runs(base, args.splits) as runs:
        for split, cfg, folder in runs:
            print(f"split {split}", flush=True)
            rows.append(one_split(cfg, folder, variants))
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\nSolver quality ({args.config}, {base.data.num_labeled} labeled cases, {args.splits} splits, "
          f"{time.time() - t0:.0f} s); mean ± std over splits")
    print("| sampler | test mean Dice | gain vs baseline | vs DDIM 50 | FD (AE features) | MS-SSIM same source "
          "| inpaint s |\n|---|---|---|---|---|---|---|")
    ref = np.array([r["ddim50"]["dice"] for r in rows]) if "ddim50" in variants else None
    for name in variants:
        d = np.array([r[name]["dice"] for r in rows])
        g = d - np.array([r[name]["baseline"] for r in rows])
        vs = f"{(d - ref).mean():+.2f} ± {(d - ref).std():.2f}" if ref is not None else "-"
        f, s, t = (np.array([r[name][k] for r in rows]) for k in ("fd", "ms_ssim", "inpaint_s"))
        print(f"| {name} | {d.mean():.2f} ± {d.std():.2f} | {g.mean():+.2f} ± {g.std():.2f} | {vs} | "
              f"{f.mean():.3f} ± {f.std():.3f} | {s.mean():.3f} ± {s.std():.3f} | {t.mean():.1f} |")


if __name__ == "__main__":
    main()
