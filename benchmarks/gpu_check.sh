#!/usr/bin/env bash
# GPU check (under 8 minutes on one GPU): every stage of the tiny pipeline on CUDA, then the throughput benchmark.
#
#   benchmarks/gpu_check.sh            # from the repository root, with .venv built (make venv)
#
# 1. Runs preprocess, train-ae, train-ldm, inpaint, filter, train-seg (baseline, AugPaint) and evaluate on the
#    tiny test config with runtime.device=cuda and inpaint.device=cuda, and asserts from each artifact.json that
#    the stage ran on the GPU (device "cuda"; bf16 where the GPU has it).
# 2. Runs the GPU-marked tests (tests marked `gpu`; they skip on CPU).
# 3. Runs benchmarks/train_throughput.py (AE, LDM, segmenter; fp32/bf16/channels_last/compile; DataLoader).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-$(mktemp -d)}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA GPU visible')"

timeout 150 "$PY" - "$OUT" <<'PY'
import json, sys, time
from pathlib import Path

from augpaint_core.config import parse_config
from augpaint_core.infra.artifacts import read_artifact_meta
from tests.conftest import tiny_dict

d = tiny_dict()
d["runtime"] = {"device": "cuda"}
d["inpaint"]["device"] = "cuda"
cfg = parse_config(d, "gpu-check")
out = Path(sys.argv[1])
from augpaint_core.data.preprocess import preprocess
from augpaint_core.generative.inpaint import inpaint
from augpaint_core.generative.train_ae import train_ae
from augpaint_core.generative.train_ldm import train_ldm
from augpaint_core.segmentation.evaluate import evaluate
from augpaint_core.segmentation.filter import filter_synthetic
from augpaint_core.segmentation.train_seg import train_seg

a = {k: out / k for k in ("dataset", "ae", "ldm", "synthetic", "filtered", "baseline", "augpaint", "report")}
steps = [("preprocess", lambda: preprocess(cfg, a["dataset"])),
         ("train-ae", lambda: train_ae(cfg, a["dataset"], a["ae"])),
         ("train-ldm", lambda: train_ldm(cfg, a["dataset"], a["ae"], a["ldm"])),
         ("inpaint", lambda: inpaint(cfg, a["dataset"], a["ae"], a["ldm"], a["synthetic"])),
         ("filter", lambda: filter_synthetic(cfg, a["dataset"], a["synthetic"], a["filtered"])),
         ("train-seg baseline", lambda: train_seg(cfg, a["dataset"], a["baseline"])),
         ("train-seg augpaint", lambda: train_seg(cfg, a["dataset"], a["augpaint"], synthetic=a["filtered"])),
         ("evaluate", lambda: evaluate(cfg, a["dataset"], a["baseline"], a["augpaint"], a["report"]))]
where = {"train-ae": "ae", "train-ldm": "ldm", "inpaint": "synthetic", "filter": "filtered",
         "train-seg baseline": "baseline", "train-seg augpaint": "augpaint", "evaluate": "report"}
bad = []
for name, run in steps:
    t0 = time.time()
    run()
    if name in where:
        meta = read_artifact_meta(a[where[name]])
        dev = meta.get("device") or meta.get("runtime", {}).get("device")
        prec = meta.get("mixed_precision") or meta.get("precision") or meta.get("runtime", {}).get("precision")
        ok = dev == "cuda"
        bad += [] if ok else [name]
        print(f"{name:20s} {time.time() - t0:6.1f} s  device={dev} precision={prec}  {'ok' if ok else 'NOT ON GPU'}",
              flush=True)
    else:
        print(f"{name:20s} {time.time() - t0:6.1f} s  (CPU stage)", flush=True)
sys.exit(f"gpu_check: not on the GPU: {', '.join(bad)}" if bad else 0)
PY

timeout 60 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/core/test_runtime.py
timeout 240 "$PY" benchmarks/train_throughput.py --steps 5 || echo "gpu_check: the throughput benchmark did not finish in 240 s"
echo "gpu_check: every stage ran on the GPU"
