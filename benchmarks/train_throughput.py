"""Training throughput of the paper's AE, LDM and segmenter at the paper's shapes, and of the data loader.

Times full optimizer steps (forward, loss, backward, Adam) of the models that
configs/paper.yaml builds: the VQ-f4 AE (128/256/512 channels, 8192 codes), the
latent U-Net (224/448/672/896 channels, attention at 32/16/8 px) and the segmenter
(MONAI BasicUNet 64..1024, Dice+CE, 256x256). On CPU it prints fp32 eager. On a GPU
it also runs bf16 autocast, channels_last and torch.compile, and prints every
variant as a ratio to fp32 eager in the same run, with the step time, the achieved
TFLOP/s (FLOPs counted by torch's FlopCounterMode: 3x the forward pass) and the
fraction of the bf16 dense peak (``--peak-tflops``, 989 for H100/H200).
Then it times the segmenter's DataLoader over memory-mapped shards (256x256 uint8,
batch 4) with 0 and 2 workers (pinned memory on a GPU), as batches per second:
it must outrun the GPU's steps.

    python benchmarks/train_throughput.py [--batch 4] [--steps 10] [--models ae ldm seg]
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np

import torch
import torch.nn.functional as F

from augpaint_core.config import load_config
from augpaint_core.generative.models import build_train_scheduler, build_unet, build_vqmodel

REPO = Path(__file__).resolve().parents[1]


def make_step(kind: str, cfg, batch: int, device: str, channels_last: bool, compiled: bool):
    """One training step closure for the AE or the LDM, with its own model and optimizer."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    if kind == "ae":
        model = build_vqmodel(cfg.ae, 256).to(device, memory_format=fmt).train()
        x = (torch.rand(batch, 3, 256, 256, generator=g) * 2 - 1).to(device, memory_format=fmt)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.ae.lr)
        fwd = torch.compile(model) if compiled else model

        def loss_fn():
            o = fwd(x)
            return (o.sample - x).abs().mean() + o.commit_loss.mean()
    elif kind == "seg":
        from monai.losses import DiceCELoss

        from augpaint_core.segmentation.segmenters import build_segmenter

        model = build_segmenter(cfg.seg, 4).to(device, memory_format=fmt).train()  # ACDC: 3 classes + background
        x = (torch.rand(batch, 3, 256, 256, generator=g) * 2 - 1).to(device, memory_format=fmt)
        y = torch.randint(0, 4, (batch, 1, 256, 256), generator=g).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.seg.lr)
        fwd = torch.compile(model) if compiled else model
        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

        def loss_fn():
            return dice_ce(fwd(x).float(), y)
    else:
        model = build_unet(cfg.ldm, 64, 3).to(device, memory_format=fmt).train()
        sched = build_train_scheduler(cfg.ldm)
        z = torch.randn(batch, 3, 64, 64, generator=g)
        noise = torch.randn(batch, 3, 64, 64, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        zt = sched.add_noise(z, noise, t).to(device, memory_format=fmt)
        noise, t = noise.to(device), t.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.ldm.lr)
        fwd = torch.compile(model) if compiled else model

        def loss_fn():
            return F.mse_loss(fwd(zt, t).sample.float(), noise)

    params = sum(p.numel() for p in model.parameters())
    return loss_fn, opt, params


def train_flops(kind: str, cfg, batch: int) -> float:
    """FLOPs of one training step: 3x the forward pass (backward ~ 2x), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from augpaint_core.segmentation.segmenters import build_segmenter

    with torch.device("meta"):
        if kind == "ae":
            model, inp = build_vqmodel(cfg.ae, 256), (torch.empty(batch, 3, 256, 256),)
        elif kind == "seg":
            model, inp = build_segmenter(cfg.seg, 4), (torch.empty(batch, 3, 256, 256),)
        else:
            model, inp = build_unet(cfg.ldm, 64, 3), (torch.empty(batch, 3, 64, 64), torch.zeros(batch).long())
        with FlopCounterMode(display=False) as fc:
            model(*inp)
    return 3.0 * fc.get_total_flops()


def loader_rate(device: str, workers: int, batch: int = 4, batches: int = 60) -> float:
    """Batches per second the segmenter's DataLoader delivers from memory-mapped 256x256 shards (on the device)."""
    from augpaint_core.data.dataset import BatchReader, DatasetWriter, IndexedView, batch_loader, open_dataset
    from augpaint_core.infra.artifacts import write_artifact_meta
    from augpaint_core.runtime import DevicePolicy, batches as index_batches

    with tempfile.TemporaryDirectory() as tmp:
        w = DatasetWriter(tmp, ["a", "b", "c"], 256, shard_size=128)
        rng = np.random.default_rng(0)
        for _ in range(4):
            w.add(rng.integers(0, 255, (128, 256, 256, 3), dtype=np.uint8),
                  rng.integers(0, 4, (128, 256, 256), dtype=np.uint8),
                  [{"case_id": "c", "slice_index": 0, "split": "train", "labeled": True, "source": "real",
                    "provenance": {}}] * 128)
        w.close()
        write_artifact_meta(Path(tmp), kind="dataset", stage="benchmark", config=None, seed=0)
        ds = open_dataset(tmp)
        idx = np.arange(len(ds.records))
        policy = DevicePolicy(torch.device(device))
        loader = batch_loader(BatchReader(IndexedView([(ds.images, idx)]), IndexedView([(ds.labels, idx)])),
                              index_batches(len(idx), batch, batches, torch.Generator().manual_seed(0)),
                              workers=workers, pin_memory=device == "cuda")
        t0 = None
        for k, (xb, yb) in enumerate(loader):
            x, y = policy.images(xb), policy.labels(yb)
            if k == 4:  # workers started, caches warm
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
        if device == "cuda":
            torch.cuda.synchronize()
        return (batches - 5) / (time.perf_counter() - t0)


def measure(kind: str, cfg, batch: int, steps: int, device: str, bf16: bool = False, channels_last: bool = False,
            compiled: bool = False) -> tuple[float, int]:
    """Images per second over ``steps`` steps after warm-up (compile happens in warm-up)."""
    loss_fn, opt, params = make_step(kind, cfg, batch, device, channels_last, compiled)
    amp = torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        with amp:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2 if compiled else 1):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0), params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "paper.yaml"))
    ap.add_argument("--batch", type=int, default=None, help="default: the paper's 4 on a GPU, 1 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 on a GPU, 2 on CPU)")
    ap.add_argument("--models", nargs="+", default=["ae", "ldm", "seg"], choices=["ae", "ldm", "seg"])
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the GPU (H100/H200: 989)")
    ap.add_argument("--no-loader", action="store_true", help="skip the DataLoader timing")
    args = ap.parse_args()
    cfg = load_config(args.config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # One paper-size AE step is ~8 TFLOP at batch 4: minutes on a 2-core CPU, so CPU runs are kept short.
    args.batch = args.batch or (4 if device == "cuda" else 1)
    args.steps = args.steps or (10 if device == "cuda" else 2)
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}; torch {torch.__version__}; batch {args.batch}; {args.steps} timed steps after warm-up")
    variants = [("fp32 eager", {})]
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the baseline
        torch.backends.cudnn.allow_tf32 = False
        variants += [("bf16 eager", {"bf16": True}), ("bf16 channels_last", {"bf16": True, "channels_last": True}),
                     ("bf16 compile", {"bf16": True, "compiled": True}),
                     ("bf16 compile channels_last", {"bf16": True, "compiled": True, "channels_last": True})]
    print("\n| model | params | variant | images/s | step (s) | TFLOP/step | TFLOP/s | of bf16 peak | vs fp32 eager |"
          "\n|---|---:|---|---:|---:|---:|---:|---:|---:|")
    labels = {"ae": "AE (256x256 images)", "ldm": "LDM U-Net (64x64x3 latents)", "seg": "segmenter U-Net (256x256)"}
    for kind in args.models:
        base = None
        flops = train_flops(kind, cfg, args.batch)
        for name, kw in variants:
            ips, params = measure(kind, cfg, args.batch, args.steps, device, **kw)
            base = base or ips
            step_s = args.batch / ips
            tflops = flops / step_s / 1e12
            print(f"| {labels[kind]} | {params / 1e6:.1f}M | {name} | {ips:.2f} | {step_s:.3f} | {flops / 1e12:.2f} | "
                  f"{tflops:.1f} | {100 * tflops / args.peak_tflops:.1f}% | x{ips / base:.2f} |", flush=True)
    if device == "cpu":
        print("\nNo GPU here: bf16, channels_last and torch.compile ratios are printed only on a GPU "
              "(the peak fraction is against the GPU peak).")
    if not args.no_loader:
        print("\n| DataLoader (segmenter, 256x256, batch 4, memory-mapped shards) | batches/s | images/s |"
              "\n|---|---:|---:|")
        for workers in (0, 2):
            r = loader_rate(device, workers, 4)
            print(f"| {workers} workers{', pinned' if device == 'cuda' else ''} | {r:.1f} | {4 * r:.1f} |", flush=True)


if __name__ == "__main__":
    main()
