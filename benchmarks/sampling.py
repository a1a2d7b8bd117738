"""Inpainting speed, side by side: AugPaint (latent, DDIM 50 / DPM-Solver++ 20) vs pixel-space RePaint.

All three run in one process on the same images, masks, batch and device, with
the architectures of one preset (default configs/paper.yaml: the VQ-f4 AE, the
latent U-Net, and a pixel U-Net of the same block types for RePaint; weights are
random, which does not change the cost). Printed: samples/s of each, the
AugPaint/RePaint ratio (the paper claims about 20x at 50 steps and 5
resamplings), DPM-Solver++ 20 vs DDIM 50, and batched vs one image at a time.
On a GPU it also prints U-Net GFLOPs per step, the FLOP/s the samplers reach and
their fraction of the GPU's dense bf16 peak, bf16 vs fp32, and torch.compile.

    python benchmarks/sampling.py [--config configs/paper.yaml] [--image-size 256] [--batch 8]
    python benchmarks/sampling.py --config configs/demo.yaml --image-size 64   # a quick CPU run
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from augpaint_core.config import load_config
from augpaint_core.generative.inpaint import augpaint_sample
from augpaint_core.generative.masks import box_mask
from augpaint_core.generative.models import build_pixel_unet, build_train_scheduler, build_unet, build_vqmodel
from augpaint_core.generative.sampling import batch_invariant, repaint_calls, repaint_loop

REPO = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A10": 125e12, "L4": 121e12, "L40S": 362e12}


def peak_flops(name: str) -> float | None:
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if key in name:
            return PEAK_BF16[key]
    return None


def inputs(n: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images and a centred box covering about a quarter of each (a typical organ box)."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, size // 8, size // 8, generator=g), size=size,
                                        mode="bilinear") * 2 - 1
    lab = np.zeros((size, size), np.uint8)
    lab[size // 4: size // 2, size // 3: 2 * size // 3] = 1
    m = torch.from_numpy(np.repeat(box_mask(lab)[None, None], n, 0).astype(np.float32))
    return x.to(device), m.to(device)


def unet_flops(unet, x: torch.Tensor, t: int = 500) -> float:
    """FLOPs of one U-Net call on ``x`` (matmuls and convolutions, as torch counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        unet(x, t)
    return float(fc.get_total_flops())


def timed(fn, repeats: int, device: torch.device, warmup: bool = True) -> float:
    """Seconds per call (after one warm-up call unless ``warmup`` is False)."""
    if warmup:
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs/paper.yaml"))
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--repaint-steps", type=int, default=50)
    ap.add_argument("--jump-length", type=int, default=10)
    ap.add_argument("--resample", type=int, default=5)
    ap.add_argument("--no-extras", action="store_true", help="skip batch-1, fp32 and compile variants")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--big-batches", type=lambda v: [int(b) for b in v.split(",") if b], default=[32],
                    help="GPU: also time AugPaint at these batch sizes")
    ap.add_argument("--compile-only", action="store_true", help="only the torch.compile table (both U-Nets)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = dev.type == "cuda"
    size, n = args.image_size, args.batch
    torch.manual_seed(0)
    ae = build_vqmodel(cfg.ae, size).to(dev).eval()
    unet = build_unet(cfg.ldm.model_copy(update={"conditional": False}), size // 4, cfg.ae.latent_channels).to(dev).eval()
    pix = build_pixel_unet(cfg.pixel, size).to(dev).eval()
    sched_cfg = build_train_scheduler(cfg.ldm).config
    x, m = inputs(n, size, dev)
    seeds = list(range(n))
    bf16 = gpu and torch.cuda.is_bf16_supported()
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    fp32 = contextlib.nullcontext
    calls_rp = repaint_calls(args.repaint_steps, args.jump_length, args.resample)

    def aug(sampler: str, steps: int, ctx=amp, net=unet, xs=x, ms=m, sd=seeds):
        return lambda: augpaint_sample(net, ae, sched_cfg, xs, ms, sd, steps=steps, sampler=sampler, autocast=ctx)

    def rp(ctx=amp, net=pix):
        return lambda: repaint_loop(net, sched_cfg, x, m, seeds, steps=args.repaint_steps,
                                    jump_length=args.jump_length, jump_n_sample=args.resample, autocast=ctx)

    where = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {where}; torch {torch.__version__}; {'bf16 autocast' if bf16 else 'fp32'}; {size}x{size} images, batch {n}; preset {args.config}")
    print(f"params: AE {sum(p.numel() for p in ae.parameters()) / 1e6:.1f}M, latent U-Net "
          f"{sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M, pixel U-Net "
          f"{sum(p.numel() for p in pix.parameters()) / 1e6:.1f}M; RePaint {args.repaint_steps} steps, jump "
          f"{args.jump_length}, {args.resample} resamplings = {calls_rp} U-Net calls", flush=True)
    res: dict[str, float] = {}

    def table(tag: str, un, px) -> None:
        """The three samplers with U-Nets ``un`` (latent) and ``px`` (pixel); RePaint warms up on a short run."""
        a = res[f"{tag}augpaint_ddim50"] = n / timed(aug("ddim", 50, net=un), args.repeats, dev)
        d = res[f"{tag}augpaint_dpmpp20"] = n / timed(aug("dpmsolver++", 20, net=un), args.repeats, dev)
        repaint_loop(px, sched_cfg, x, m, seeds, steps=10, jump_length=5, jump_n_sample=2, autocast=amp)
        r = res[f"{tag}repaint"] = n / timed(rp(net=px), 1, dev, warmup=False)
        print(f"{tag or 'eager '}AugPaint DDIM 50         {a:9.3f} samples/s\n"
              f"{tag or 'eager '}AugPaint DPM-Solver++ 20 {d:9.3f} samples/s\n"
              f"{tag or 'eager '}RePaint {args.repaint_steps}x{args.resample} (pixel)    {r:9.3f} samples/s\n"
              f"  ratio AugPaint DDIM 50 / RePaint:         {a / r:7.1f}x   (paper: about 20x)\n"
              f"  ratio AugPaint DPM-Solver++ 20 / RePaint: {d / r:7.1f}x\n"
              f"  ratio DPM-Solver++ 20 / DDIM 50:          {d / a:7.2f}x", flush=True)

    if args.compile_only:
        table("compiled ", torch.compile(unet), torch.compile(pix))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        return
    table("", unet, pix)
    if not args.no_extras:
        one = 1 / timed(aug("ddim", 50, xs=x[:1], ms=m[:1], sd=seeds[:1]), args.repeats, dev)
        res["augpaint_ddim50_batch1"] = one
        print(f"ratio batch {n} / one image at a time (DDIM 50): {res['augpaint_ddim50'] / one:5.2f}x")
    if not gpu and not args.no_extras:
        with batch_invariant(unet, ae):
            res["augpaint_ddim50_invariant"] = n / timed(aug("ddim", 50), args.repeats, dev)
        print(f"ratio batch-invariant kernels / default kernels (CPU, DDIM 50): "
              f"{res['augpaint_ddim50_invariant'] / res['augpaint_ddim50']:.2f}x")
    if gpu:
        f_lat = unet_flops(unet, torch.randn(n, cfg.ae.latent_channels, size // 4, size // 4, device=dev))
        f_pix = unet_flops(pix, torch.randn(n, 3, size, size, device=dev))
        peak = peak_flops(torch.cuda.get_device_name())
        ach_lat = f_lat * 50 * res["augpaint_ddim50"] / n
        ach_pix = f_pix * calls_rp * res["repaint"] / n
        print(f"\nU-Net GFLOPs per step (batch {n}): latent {f_lat / 1e9:.1f}, pixel {f_pix / 1e9:.1f} "
              f"(pixel/latent {f_pix / f_lat:.1f}x; x {calls_rp}/50 calls = {f_pix * calls_rp / f_lat / 50:.1f}x "
              f"the FLOPs per sample)")
        for name, ach in (("eager AugPaint DDIM 50 (U-Net only)", ach_lat), ("eager RePaint", ach_pix)):
            frac = f" = {100 * ach / peak:.1f}% of the {peak / 1e12:.0f} TFLOP/s dense bf16 peak" if peak else ""
            print(f"{name}: {ach / 1e12:.1f} TFLOP/s{frac}")
        res.update(latent_unet_gflops=f_lat / 1e9, pixel_unet_gflops=f_pix / 1e9,
                   augpaint_tflops=ach_lat / 1e12, repaint_tflops=ach_pix / 1e12)
        if not args.no_extras:
            res["augpaint_ddim50_fp32"] = n / timed(aug("ddim", 50, ctx=fp32), args.repeats, dev)
            print(f"ratio bf16 / fp32 (DDIM 50): {res['augpaint_ddim50'] / res['augpaint_ddim50_fp32']:.2f}x")
            for mdl in (unet, ae):
                mdl.to(memory_format=torch.channels_last)
            res["augpaint_ddim50_channels_last"] = n / timed(aug("ddim", 50), args.repeats, dev)
            print(f"ratio channels_last / default (DDIM 50, bf16): "
                  f"{res['augpaint_ddim50_channels_last'] / res['augpaint_ddim50']:.2f}x")
            for mdl in (unet, ae):
                mdl.to(memory_format=torch.contiguous_format)
            for big in args.big_batches:
                xb, mb = inputs(big, size, dev)
                res[f"augpaint_ddim50_batch{big}"] = big / timed(aug("ddim", 50, xs=xb, ms=mb, sd=list(range(big))),
                                                                 1, dev)
                print(f"AugPaint DDIM 50 at batch {big}: {res[f'augpaint_ddim50_batch{big}']:.3f} samples/s "
                      f"({res[f'augpaint_ddim50_batch{big}'] / res['repaint']:.1f}x RePaint at batch {n})")
            t0 = time.perf_counter()
            print("\ntorch.compile (both U-Nets; compile time is in the warm-up):", flush=True)
            table("compiled ", torch.compile(unet), torch.compile(pix))
            print(f"  (compile + all compiled runs {time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
