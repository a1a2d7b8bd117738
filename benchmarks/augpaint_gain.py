"""Does AugPaint help? Baseline vs AugPaint test Dice over several splits, in process.

Runs all seven stages (no KFP, no MLflow) once per split seed with the given
preset and prints mean +- std of the test mean Dice and HD95 for both models,
plus the per-split gain. Same test patients for both models within a split.

    .venv/bin/python benchmarks/augpaint_gain.py [--config configs/demo.yaml] [--splits 3]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from augpaint_core.infra.artifacts import read_artifact_meta
from augpaint_core.config import load_config
from augpaint_core.segmentation.evaluate import evaluate
from augpaint_core.segmentation.filter import filter_synthetic
from augpaint_core.generative.inpaint import inpaint
from augpaint_core.data.preprocess import preprocess
from augpaint_core.generative.train_ae import train_ae
from augpaint_core.generative.train_ldm import train_ldm
from augpaint_core.segmentation.train_seg import train_seg
from common import split_runs


def one_split(cfg, d: Path) -> dict:
    preprocess(cfg, d / "ds")
    train_ae(cfg, d / "ds", d / "ae")
    train_ldm(cfg, d / "ds", d / "ae", d / "ldm")
    inpaint(cfg, d / "ds", d / "ae", d / "ldm", d / "syn")
    filter_synthetic(cfg, d / "ds", d / "syn", d / "flt")
    train_seg(cfg, d / "ds", d / "base")
    train_seg(cfg, d / "ds", d / "aug", synthetic=d / "flt")
    evaluate(cfg, d / "ds", d / "base", d / "aug", d / "eval")
    ae, ldm = read_artifact_meta(d / "ae"), read_artifact_meta(d / "ldm")
    curve = ldm["history"][:: max(1, len(ldm["history"]) // 8)] + ldm["history"][-1:]
    print(f"  AE validation PSNR {ae['val_psnr']:.2f} dB; LDM loss " +
          ", ".join(f"{h['step']}: {h['loss']:.3f}" for h in curve), flush=True)
    return json.loads((d / "eval" / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    base = load_config(args.config, args.set)
    rows = []
    t0 = time.time()
    with split_runs(base, args.splits) as runs:
        for split, cfg, folder in runs:
            m = one_split(cfg, folder)
            rows.append({k: (100 * m[k]["mean"]["dice"], m[k]["mean"]["hd95"]) for k in ("baseline", "augpaint")})
            print(f"split {split}: baseline Dice {rows[-1]['baseline'][0]:.2f}  AugPaint Dice "
                  f"{rows[-1]['augpaint'][0]:.2f}  gain {m['dice_gain_points']:+.2f}", flush=True)
    print(f"\nAugPaint vs baseline ({args.config}, {base.data.num_labeled} labeled cases, {args.splits} splits, "
          f"{time.time() - t0:.0f} s)")
    print("| method | test mean Dice | test mean HD95 (px) |\n|---|---|---|")
    for k in ("baseline", "augpaint"):
        d = np.array([r[k][0] for r in rows])
        h = np.array([r[k][1] for r in rows])
        print(f"| {k} | {d.mean():.2f} ± {d.std():.2f} | {h.mean():.2f} ± {h.std():.2f} |")
    g = np.array([r["augpaint"][0] - r["baseline"][0] for r in rows])
    print(f"\nGain: {g.mean():+.2f} ± {g.std():.2f} Dice points (per split: {', '.join(f'{x:+.2f}' for x in g)})")


if __name__ == "__main__":
    main()
