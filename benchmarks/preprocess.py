"""Preprocess throughput and peak memory on a synthetic BraTS-shaped dataset.

Writes N fake MSD Task01 volumes (240x240x155x4 float32, the real shape), then
preprocesses the first n of them for growing n, each run in a fresh process, and
prints slices/s and the peak resident memory of the main process and of the
busiest worker. Peak memory should stay flat as n grows: shards are streamed
to disk and at most 2 x workers cases are in flight.

    python benchmarks/preprocess.py                 # 12, 24, 48 volumes, 2 workers, 256 px
    python benchmarks/preprocess.py --volumes 10 20 40 --workers 4
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def subset(full: Path, n: int, dest: Path) -> Path:
    """An MSD folder listing the first n training cases (files are symlinks)."""
    meta = json.loads((full / "dataset.json").read_text())
    meta["training"] = meta["training"][:n]
    meta["numTraining"] = n
    meta["test"] = []
    dest.mkdir(parents=True)
    for sub in ("imagesTr", "labelsTr"):
        (dest / sub).mkdir()
    for e in meta["training"]:
        for key in ("image", "label"):
            rel = e[key].lstrip("./")
            (dest / rel).symlink_to(full / rel)
    (dest / "dataset.json").write_text(json.dumps(meta))
    return dest


def run_one(raw: str, out: str, size: int, workers: int) -> None:
    """Child process: preprocess and print one JSON line with timing and peak memory."""
    from augpaint_core.config import parse_config
    from augpaint_core.data.preprocess import preprocess

    cfg = parse_config({"data": {"image_size": size, "split": [0.9, 0.05, 0.05], "num_labeled": 1,
                                 "workers": workers}})
    t0 = time.perf_counter()
    preprocess(cfg, out, raw, fmt="msd")
    secs = time.perf_counter() - t0
    rep = json.loads((Path(out) / "preprocess_report.json").read_text())
    kib = 1024.0
    print(json.dumps({"slices": rep["num_slices"], "seconds": secs, "workers": rep["workers"],
                      "main_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
                      "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, nargs="+", default=[12, 24, 48])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--shape", type=int, nargs=4, default=[240, 240, 155, 4])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_one(args.child[0], args.child[1], args.size, args.workers)
        return
    from augpaint_core.data.fakedata import write_fake_dataset

    n_max = max(args.volumes)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        full = write_fake_dataset("msd_brats", Path(tmp) / "raw", num_cases=n_max, seed=0, shape=tuple(args.shape),
                                  num_test=0)
        gen = time.perf_counter() - t0
        size_gb = sum(p.stat().st_size for p in full.rglob("*.nii.gz")) / 1e9
        print(f"wrote {n_max} BraTS-shaped volumes {tuple(args.shape)} ({size_gb:.2f} GB gzip) in {gen:.0f} s; "
              f"{os.cpu_count()} CPU cores, {args.workers} workers, {args.size} px slices")
        rows = []
        for n in sorted(args.volumes):
            raw = subset(full, n, Path(tmp) / f"sub{n}")
            out = Path(tmp) / f"ds{n}"
            res = subprocess.run([sys.executable, __file__, "--child", str(raw), str(out), "--size", str(args.size),
                                  "--workers", str(args.workers)], capture_output=True, text=True, cwd=REPO)
            if res.returncode:
                sys.exit(f"preprocess of {n} volumes failed:\n{res.stderr[-3000:]}")
            r = json.loads(res.stdout.strip().splitlines()[-1])
            r["volumes"] = n
            r["dataset_gb"] = sum(p.stat().st_size for p in (out / "shards").glob("*.npy")) / 1e9
            rows.append(r)
            subprocess.run(["rm", "-rf", str(out)])
    print("\n| volumes | slices | seconds | slices/s | dataset on disk | main peak RSS | worker peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['volumes']} | {r['slices']} | {r['seconds']:.1f} | {r['slices'] / r['seconds']:.0f} | "
              f"{r['dataset_gb']:.2f} GB | {r['main_peak_mb']:.0f} MB | {r['worker_peak_mb']:.0f} MB |")
    a, b = rows[0], rows[-1]
    print(f"\n{b['volumes'] / a['volumes']:.0f}x the volumes: main peak x{b['main_peak_mb'] / a['main_peak_mb']:.2f}, "
          f"worker peak x{b['worker_peak_mb'] / a['worker_peak_mb']:.2f}, dataset x{b['dataset_gb'] / a['dataset_gb']:.2f}"
          f"; throughput x{(b['slices'] / b['seconds']) / (a['slices'] / a['seconds']):.2f}")
    full_brats = 484 * 155 * args.size * args.size * 3 / 1e9
    print(f"Full BraTS (484 volumes) at {args.size} px is {full_brats:.1f} GB of images; memory does not grow with it.")


if __name__ == "__main__":
    main()
