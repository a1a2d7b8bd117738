"""Export a demo-size run for nnU-Net, then let nnU-Net check it and plan + preprocess its 2D configuration.

The data, sampling and filter counts are the demo preset's (24 phantom patients, 10 slices of 64 px,
2 labeled patients, 5 samples per labeled slice, top half kept); model training is cut to a few steps
because only the export is measured here, not the quality of the synthetic images. Prints the export's
layout, its time, and the time and output of ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity -c 2d``.

    python benchmarks/nnunet_export.py                 # demo preset
    python benchmarks/nnunet_export.py --config configs/demo.yaml --id 500
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FAST = ["ae.max_steps=5", "ldm.max_steps=5", "inpaint.num_inference_steps=4", "filter.scorer_max_steps=5",
        "filter.quality_report=false", "seg.max_steps=2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--id", type=int, default=500, help="nnU-Net dataset id")
    ap.add_argument("--processes", type=int, default=1, help="nnU-Net worker processes")
    args = ap.parse_args()

    from augpaint_core.config import load_config
    from augpaint_core.data.export import export_nnunet
    from augpaint_core.data.preprocess import preprocess
    from augpaint_core.generative.inpaint import inpaint
    from augpaint_core.generative.train_ae import train_ae
    from augpaint_core.generative.train_ldm import train_ldm
    from augpaint_core.segmentation.filter import filter_synthetic

    cfg = load_config(args.config, FAST)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        t0 = time.perf_counter()
        preprocess(cfg, t / "ds")
        train_ae(cfg, t / "ds", t / "ae")
        train_ldm(cfg, t / "ds", t / "ae", t / "ldm")
        inpaint(cfg, t / "ds", t / "ae", t / "ldm", t / "syn")
        filter_synthetic(cfg, t / "ds", t / "syn", t / "flt")
        print(f"artifacts (fast-trained models): {time.perf_counter() - t0:.1f} s")

        name = f"Dataset{args.id:03d}_AugPaintDemo"
        t0 = time.perf_counter()
        out = export_nnunet(t / "ds", t / "raw" / name, synthetic=t / "flt")
        export_s = time.perf_counter() - t0
        art = json.loads((out / "artifact.json").read_text())
        meta = json.loads((out / "dataset.json").read_text())
        print(f"export: {export_s:.2f} s -> {name}")
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            print(f"  {sub:9s} {len(list((out / sub).glob('*.png'))):5d} files")
        print(f"  counts   {art['counts']}")
        print(f"  channels {meta['channel_names']}  labels {meta['labels']}  folds {art['folds']}")

        env = {**os.environ, "nnUNet_raw": str(t / "raw"), "nnUNet_preprocessed": str(t / "pre"),
               "nnUNet_results": str(t / "res"), "CUDA_VISIBLE_DEVICES": ""}
        cmd = [str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", str(args.id),
               "--verify_dataset_integrity", "-c", "2d", "-np", str(args.processes), "-npfp", str(args.processes)]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        plan_s = time.perf_counter() - t0
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        print(f"nnUNetv2_plan_and_preprocess -c 2d: exit {res.returncode} in {plan_s:.1f} s; output (integrity "
              f"check lines and the tail):")
        for ln in [ln for ln in lines if "verify_dataset_integrity" in ln or "rror" in ln] + lines[-8:]:
            print(f"  | {ln}")
        plans = t / "pre" / name / "nnUNetPlans.json"
        if plans.is_file():
            c2d = json.loads(plans.read_text())["configurations"]["2d"]
            print(f"  2d plan: patch {c2d['patch_size']}, batch {c2d['batch_size']}, spacing {c2d['spacing']}, "
                  f"normalization {c2d['normalization_schemes']}")
        n_pre = len(list((t / "pre" / name).rglob("*.b2nd"))) + len(list((t / "pre" / name).rglob("*.npz")))
        print(f"  preprocessed files: {n_pre}")
        sys.exit(res.returncode)


if __name__ == "__main__":
    main()
