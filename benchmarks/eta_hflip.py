"""DDIM eta 0 vs 1 and LDM mirroring (ldm.hflip) on vs off: sample realism and downstream Dice, side by side.

The paper's Algorithm 1 is stochastic DDIM (eta = 1) and its LDM trains without flipping;
the demo preset used eta = 0 and a mirrored LDM. Per split (independent patient split and
seeds) this trains the AE and the labeled-only baseline once, the LDM once per hflip
setting, then for each (hflip, eta) variant runs inpaint -> filter -> segmenter -> evaluate
on the same data, and measures:
- test mean Dice of the segmenter trained on labeled + filtered synthetic data;
- realism: Fréchet distance between AE-encoder features of synthetic and real training
  slices, at equal sample sizes (random subsets of the larger set, averaged over repeats);
- inpaint wall time.

    .venv/bin/python benchmarks/eta_hflip.py [--config configs/demo.yaml] [--splits 3] [--set KEY=VALUE]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from augpaint_core.config import load_config
from augpaint_core.data.dataset import load_dataset
from augpaint_core.data.preprocess import preprocess
from augpaint_core.experiment import bootstrap_ci
from augpaint_core.generative.inpaint import inpaint
from augpaint_core.generative.models import load_vqmodel
from augpaint_core.generative.train_ae import train_ae
from augpaint_core.generative.train_ldm import train_ldm
from augpaint_core.segmentation.evaluate import evaluate
from augpaint_core.segmentation.filter import filter_synthetic
from augpaint_core.segmentation.quality import frechet_equal_size
from augpaint_core.segmentation.train_seg import train_seg
from common import split_runs
from solver_quality import encoder_features

# name: (ldm.hflip, inpaint.eta)
VARIANTS = {"eta0_flip": (True, 0.0), "eta1_flip": (True, 1.0), "eta0_noflip": (False, 0.0),
            "eta1_noflip": (False, 1.0)}


def one_split(cfg, d: Path, variants: list[str], seed: int) -> dict:
    preprocess(cfg, d / "ds")
    train_ae(cfg, d / "ds", d / "ae")
    train_seg(cfg, d / "ds", d / "base")
    ds = load_dataset(d / "ds")
    ae = load_vqmodel(d / "ae")
    real = encoder_features(ae, ds.images[ds.where(split="train")])
    out = {}
    for name in variants:
        hflip, eta = VARIANTS[name]
        c = cfg.model_copy(deep=True)
        c.ldm.hflip, c.inpaint.eta = hflip, eta
        ldm = d / f"ldm_{'flip' if hflip else 'noflip'}"
        if not ldm.exists():
            train_ldm(c, d / "ds", d / "ae", ldm)
        t0 = time.perf_counter()
        inpaint(c, d / "ds", d / "ae", ldm, d / f"syn_{name}")
        secs = time.perf_counter() - t0
        filter_synthetic(c, d / "ds", d / f"syn_{name}", d / f"flt_{name}")
        train_seg(c, d / "ds", d / f"seg_{name}", synthetic=d / f"flt_{name}")
        evaluate(c, d / "ds", d / "base", d / f"seg_{name}", d / f"eval_{name}")
        m = json.loads((d / f"eval_{name}" / "metrics.json").read_text())
        syn = encoder_features(ae, load_dataset(d / f"syn_{name}").images)
        n = min(len(syn), len(real))
        out[name] = {"dice": 100 * m["augpaint"]["mean"]["dice"], "baseline": 100 * m["baseline"]["mean"]["dice"],
                     "fd": frechet_equal_size(syn, real, n, rng=np.random.default_rng(seed)), "fd_n": n,
                     "inpaint_s": secs}
        print(f"  {name}: Dice {out[name]['dice']:.2f} (baseline {out[name]['baseline']:.2f}), FD "
              f"{out[name]['fd']:.3f} (n={n}), inpaint {secs:.1f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
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
            rows.append(one_split(cfg, folder, variants, split))
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\nDDIM eta and LDM hflip ({args.config} {' '.join(args.set)}; {base.data.num_labeled} labeled cases, "
          f"{args.splits} splits, {time.time() - t0:.0f} s); mean ± std over splits")
    ref_name = variants[0]
    ref = np.array([r[ref_name]["dice"] for r in rows])
    print(f"| variant (ldm.hflip, eta) | test mean Dice | gain vs baseline | vs {ref_name} (per split) | "
          "FD, AE features, equal n | inpaint s |\n|---|---|---|---|---|---|")
    for name in variants:
        dice = np.array([r[name]["dice"] for r in rows])
        g = dice - np.array([r[name]["baseline"] for r in rows])
        d = dice - ref
        ci = bootstrap_ci(d) if len(d) >= 2 else None
        vs = "" if name == ref_name else (f"{d.mean():+.2f} ± {d.std():.2f}"
                                         + (f" [95% CI {ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "")
                                         + " (" + ", ".join(f"{x:+.1f}" for x in d) + ")")
        f, t = (np.array([r[name][k] for r in rows]) for k in ("fd", "inpaint_s"))
        print(f"| {name} {VARIANTS[name]} | {dice.mean():.2f} ± {dice.std():.2f} | {g.mean():+.2f} ± {g.std():.2f} "
              f"| {vs} | {f.mean():.3f} ± {f.std():.3f} (n={rows[0][name]['fd_n']}) | {t.mean():.1f} |")


if __name__ == "__main__":
    main()
