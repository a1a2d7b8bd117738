"""Peak memory of train-seg, filter and evaluate on fake datasets of N and 4N slices (streaming check).

Each stage runs in a fresh process (``python benchmarks/memory.py --child ...``) that samples its own
``/proc/self/status`` every 10 ms. It prints two numbers per stage and size:

- ``anon``: peak anonymous RSS (heap, tensors): what the stage itself holds. A stage that streams keeps this
  flat as the data grows; the goal is a 4N/N ratio of 1.2 or less.
- ``maxrss``: ``ru_maxrss``, which also counts pages of memory-mapped shards the stage has touched. Those are
  clean page cache that the kernel (and a pod's cgroup) reclaims under pressure, so they grow with the data
  read without being held.

    python benchmarks/memory.py [--n 400] [--size 128]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = ("train-seg", "filter", "evaluate")


def _anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def fake_dataset(folder: Path, n: int, size: int, seed: int, *, synthetic: bool = False) -> None:
    """A dataset artifact of ``n`` slices (disc phantoms), 10 per case; cases split 10% labeled, 50% unlabeled,
    15% val, 25% test (real), or all synthetic training pairs with inpaint-like provenance."""
    from augpaint_core.data.dataset import DatasetWriter
    from augpaint_core.infra.artifacts import write_artifact_meta

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    w = DatasetWriter(folder, ["disc"], size, shard_size=128)
    for a in range(0, n, 64):
        k = min(64, n - a)
        imgs = rng.integers(0, 60, (k, size, size, 3), dtype=np.uint8)
        labs = np.zeros((k, size, size), np.uint8)
        recs = []
        for j in range(k):
            i = a + j
            cy, cx, r = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [int(rng.integers(size // 10, size // 5))]
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            imgs[j][disc] += 150
            labs[j][disc] = 1
            frac = ((i // 10) % 20) / 20  # splits by case, as preprocess makes them
            split = "train" if frac < 0.6 else "val" if frac < 0.75 else "test"
            rec = {"case_id": f"case{i // 10:05d}", "slice_index": i % 10, "split": split,
                   "labeled": split != "train" or frac < 0.1, "source": "real", "provenance": {}}
            if synthetic:
                rec.update(split="train", labeled=True, source="synthetic",
                           provenance={"source_index": int(i % 7), "sample_index": int(i // 7), "flip": "none"})
            recs.append(rec)
        w.add(imgs, labs, recs)
    w.close()
    write_artifact_meta(folder, kind="dataset", stage="benchmark", config=None, seed=seed)


def child(stage: str, work: Path, tag: str) -> None:
    """Run one stage in this (fresh) process and print its peak memory as JSON."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _anon_kb())
            time.sleep(0.01)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    from augpaint_core.config import parse_config

    cfg = parse_config({"seed": 0, "seg": {"features": [8, 8, 16, 16, 32, 8], "max_steps": 4, "val_checks": 1},
                        "filter": {"scorer_max_steps": 4, "quality_report": False}}, "memory")
    ds, out = work / f"real-{tag}", work / f"out-{stage}-{tag}"
    base = _anon_kb()
    t0 = time.time()
    if stage == "train-seg":
        from augpaint_core.segmentation.train_seg import train_seg

        train_seg(cfg, ds, out, synthetic=work / f"syn-{tag}", force=True)
    elif stage == "filter":
        from augpaint_core.segmentation.filter import filter_synthetic

        filter_synthetic(cfg, ds, work / f"syn-{tag}", out, force=True)
    else:
        from augpaint_core.segmentation.evaluate import evaluate

        model = work / f"out-train-seg-{tag}"
        evaluate(cfg, ds, model, model, out, force=True)
    stop.set()
    t.join()
    peak[0] = max(peak[0], _anon_kb())
    print(json.dumps({"stage": stage, "tag": tag, "anon_mb": peak[0] / 1024, "after_import_mb": base / 1024,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": time.time() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="slices of the small dataset (the large one has 4N)")
    ap.add_argument("--size", type=int, default=128, help="image size")
    ap.add_argument("--child", nargs=3, metavar=("STAGE", "WORK", "TAG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.child[2])
        return
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sizes = {"N": args.n, "4N": 4 * args.n}
        for tag, n in sizes.items():
            fake_dataset(work / f"real-{tag}", n, args.size, 0)
            fake_dataset(work / f"syn-{tag}", n, args.size, 1, synthetic=True)
        res = {}
        for stage in STAGES:  # train-seg first: evaluate scores its model
            for tag in sizes:
                out = subprocess.run([sys.executable, __file__, "--child", stage, str(work), tag], env=env,
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{stage} {tag} failed:\n{out.stderr[-3000:]}")
                res[stage, tag] = json.loads(out.stdout.strip().splitlines()[-1])
                print(json.dumps(res[stage, tag]), file=sys.stderr, flush=True)  # progress
    mb = args.n * args.size * args.size * 4 / 2**20
    print(f"Peak memory per stage, fresh process each; N = {args.n} real + {args.n} synthetic slices of "
          f"{args.size}x{args.size} (uint8 images + labels: {mb:.0f} MiB per N)\n")
    print("| stage | anon N (MiB) | anon 4N (MiB) | anon 4N/N | maxrss N | maxrss 4N | maxrss 4N/N | s N | s 4N |")
    print("|---|---|---|---|---|---|---|---|---|")
    for stage in STAGES:
        a, b = res[stage, "N"], res[stage, "4N"]
        print(f"| {stage} | {a['anon_mb']:.0f} | {b['anon_mb']:.0f} | {b['anon_mb'] / a['anon_mb']:.2f} | "
              f"{a['maxrss_mb']:.0f} | {b['maxrss_mb']:.0f} | {b['maxrss_mb'] / a['maxrss_mb']:.2f} | "
              f"{a['seconds']:.0f} | {b['seconds']:.0f} |")


if __name__ == "__main__":
    main()
