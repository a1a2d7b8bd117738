"""Is the phantom hard enough? U-Net test Dice with 1, 2 and all labeled training cases.

Trains the demo's segmenter (same step budget for every row) on the demo phantom
over several splits and prints mean +- std test Dice per labeled count, plus the
ratio to the fully supervised model.

    .venv/bin/python benchmarks/phantom_difficulty.py [--config configs/demo.yaml] [--splits 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from augpaint_core.config import load_config
from augpaint_core.segmentation.evaluate import evaluate_model
from augpaint_core.infra.artifacts import read_artifact_meta
from augpaint_core.data.dataset import load_dataset
from augpaint_core.data.preprocess import preprocess
from augpaint_core.segmentation.train_seg import train_seg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--labeled", default="1,2,all")
    args = ap.parse_args()
    base = load_config(args.config)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        # "all" = every training case; the split decides how many that is.
        probe = base.model_copy(deep=True)
        probe.data.num_labeled = 1
        n_train = len(read_artifact_meta(preprocess(probe, Path(tmp) / "probe"))["patients"]["train"])
        counts = [n_train if k == "all" else int(k) for k in args.labeled.split(",")]
        results: dict[int, list[float]] = {k: [] for k in counts}
        for split in range(args.splits):
            for k in counts:
                cfg = base.model_copy(deep=True)
                cfg.seed = split
                cfg.data.num_labeled = k
                d = Path(tmp) / f"s{split}_k{k}"
                preprocess(cfg, d / "ds")
                train_seg(cfg, d / "ds", d / "seg")
                r = evaluate_model(d / "seg", load_dataset(d / "ds"))
                results[k].append(100 * r["mean"]["dice"])
                print(f"split {split} labeled {k:2d}: test mean Dice {results[k][-1]:.2f}", flush=True)
    full = np.mean(results[counts[-1]])
    print(f"\nPhantom difficulty ({args.config}, {args.splits} splits, seg max_steps={base.seg.max_steps}, "
          f"{time.time() - t0:.0f} s)")
    print("| labeled cases | test mean Dice | ratio to all labeled |\n|---|---|---|")
    for k in counts:
        v = np.array(results[k])
        print(f"| {k} | {v.mean():.2f} ± {v.std():.2f} | {v.mean() / full:.2f} |")


if __name__ == "__main__":
    main()
