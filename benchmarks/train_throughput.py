"""Training throughput of the paper's AE and LDM at the paper's shapes (256x256 images, 64x64x3 latents).

Times full optimizer steps (forward, loss, backward, Adam) of the models that
configs/paper.yaml builds: the VQ-f4 AE (128/256/512 channels, 8192 codes) and the
latent U-Net (224/448/672/896 channels, attention at 32/16/8 px). On CPU it
prints fp32 eager. On a GPU it also runs bf16 autocast, channels_last and
torch.compile, and prints every variant as a ratio to fp32 eager in the same run.

    python benchmarks/train_throughput.py [--batch 4] [--steps 10] [--models ae ldm]
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

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
    ap.add_argument("--models", nargs="+", default=["ae", "ldm"], choices=["ae", "ldm"])
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
    print("\n| model | params | variant | images/s | vs fp32 eager |\n|---|---:|---|---:|---:|")
    for kind in args.models:
        base = None
        for name, kw in variants:
            ips, params = measure(kind, cfg, args.batch, args.steps, device, **kw)
            base = base or ips
            label = "AE (256x256 images)" if kind == "ae" else "LDM U-Net (64x64x3 latents)"
            print(f"| {label} | {params / 1e6:.1f}M | {name} | {ips:.2f} | x{ips / base:.2f} |", flush=True)
    if device == "cpu":
        print("\nNo GPU here: bf16, channels_last and torch.compile ratios are printed only on a GPU.")


if __name__ == "__main__":
    main()
