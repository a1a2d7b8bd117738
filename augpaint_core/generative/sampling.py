"""Inpainting sampling loops, written out: AugPaint (Algorithm 1) in latent space and RePaint in pixel space.

Models and schedulers stay apart (the diffusers way): the loops here take a
U-Net, a scheduler built from the trained noise schedule, and per-item noise.

Reproducibility: every random draw of an item comes from that item's own
generator, so an item's sample never depends on which other items share its
batch or shard. ``batch_invariant`` additionally makes the CPU kernels compute
each item exactly as they would alone (see :func:`batch_invariant`).
"""
from __future__ import annotations

import contextlib
import types
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, RePaintScheduler, UniPCMultistepScheduler

from ..errors import AugPaintError

LATENT_SAMPLERS = ("ddim", "dpmsolver++", "unipc")


class KeptRegionUniPC(UniPCMultistepScheduler):
    """UniPC whose corrector keeps AugPaint's known-region replacement.

    diffusers' corrector rebuilds the current sample from the previous step's sample and ignores
    the sample ``step`` is given, so the replaced known region would be lost before the predictor
    runs (only the final paste would hide it). With ``kept = (keep, known)`` set for the step, the
    corrected sample gets the known region back before the predictor uses it.
    """

    kept: tuple[torch.Tensor, torch.Tensor] | None = None

    def multistep_uni_c_bh_update(self, *args, **kwargs) -> torch.Tensor:
        x = super().multistep_uni_c_bh_update(*args, **kwargs)
        if self.kept is None:
            return x
        keep, known = self.kept
        return keep * known.to(x.dtype) + (1 - keep) * x


def make_scheduler(name: str, train_config) -> DDIMScheduler | DPMSolverMultistepScheduler | UniPCMultistepScheduler:
    """An inference scheduler for the trained noise schedule; never clips (latents are unbounded).

    Args:
        name: ``ddim`` (LDM-style: steps_offset 1, no alpha_1 = 1), ``dpmsolver++`` (2nd-order multistep)
            or ``unipc`` (UniPC, predicting x0).
        train_config: the training scheduler's config (betas, timesteps).
    """
    if name == "ddim":
        return DDIMScheduler.from_config(train_config, clip_sample=False, steps_offset=1, set_alpha_to_one=False)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(train_config, algorithm_type="dpmsolver++", solver_order=2,
                                                       thresholding=False, lower_order_final=True)
    if name == "unipc":
        return KeptRegionUniPC.from_config(train_config, predict_x0=True, solver_order=2,
                                           thresholding=False, lower_order_final=True)
    raise AugPaintError(f"unknown sampler {name!r}; choose one of {', '.join(LATENT_SAMPLERS)} or repaint")


class ItemNoise:
    """Gaussian draws from one generator per item, on ``device`` (so a GPU does not wait for CPU draws).

    Args:
        seeds: one seed per batch item.
        device: where the draws are used.
    """

    def __init__(self, seeds: list[int], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.gens = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        """(B, *shape): item b's draw comes from generator b only."""
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.gens])


def _per_item_linear(mod: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # BLAS blocks GEMM rows: an item's rows in a batch of 2 or 8 meet other kernels than alone. One item
    # at a time always runs the batch-of-1 kernels.
    return torch.cat([F.linear(x[i:i + 1], mod.weight, mod.bias) for i in range(len(x))])


def _contiguous_group_norm(mod: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    # The channels-last GroupNorm kernel reduces differently depending on the batch size.
    return F.group_norm(x.contiguous(), mod.num_groups, mod.weight, mod.bias, mod.eps)


def _contiguous_conv(mod: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return mod._conv_forward(x.contiguous(), mod.weight, mod.bias)


@contextlib.contextmanager
def batch_invariant(*models: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Make CPU inference of ``models`` bitwise independent of the batch size (a no-op on GPU).

    oneDNN convolutions, small GEMMs and the channels-last GroupNorm give an item a
    slightly different result in a batch of 8 than alone (about 1e-6), which 50
    sampling steps can turn into different pixels. Inside this context those ops
    use per-item-identical kernels; measured cost on CPU is small (see README).

    Args:
        models: modules to patch for the duration of the context.
        enabled: False leaves everything as it is.
    """
    on_cpu = all(p.device.type == "cpu" for m in models for p in m.parameters())
    if not enabled or not on_cpu:
        yield
        return
    patched = []
    for model in models:
        for mod in model.modules():
            fn: Callable | None = None
            if isinstance(mod, torch.nn.Linear):
                fn = _per_item_linear
            elif isinstance(mod, torch.nn.GroupNorm):
                fn = _contiguous_group_norm
            elif isinstance(mod, torch.nn.Conv2d) and type(mod).forward is torch.nn.Conv2d.forward:
                fn = _contiguous_conv
            if fn is not None:
                mod.forward = types.MethodType(fn, mod)
                patched.append(mod)
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # oneDNN convolutions block the batch dimension
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was
        for mod in patched:
            del mod.forward


@torch.no_grad()
def augpaint_loop(unet, scheduler, z0: torch.Tensor, keep: torch.Tensor, noise: ItemNoise, *, steps: int,
                  eta: float = 0.0, known_noise: str = "fresh", cond: torch.Tensor | None = None,
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                  ) -> torch.Tensor:
    """Algorithm 1 in latent space; with ``cond``, cond AugPaint (no replacement, [z_t, cond] into the U-Net).

    At every step t the known region of the latent is replaced by q_sample(z0, t)
    (fresh noise each step, or one fixed draw with ``known_noise="fixed"``), then the
    U-Net predicts eps from the combined latent and the scheduler steps to t-1.

    Args:
        unet: eps-prediction U-Net.
        scheduler: from :func:`make_scheduler`.
        z0: (B,C,h,w) scaled latents of the real images.
        keep: (B,1,h,w) 0/1 latent mask, 1 = known.
        noise: per-item noise source.
        steps: inference steps.
        eta: DDIM eta (stochasticity; ignored by the multistep solvers).
        known_noise: ``fresh`` (the paper) or ``fixed``.
        cond: (B,C,h,w) latent of the masked image for the conditional U-Net, else None.
        autocast: context factory around U-Net calls (bf16 on GPU).

    Returns:
        (B,C,h,w) final latents; for the unconditional loop the known region is z0 exactly.
    """
    scheduler.set_timesteps(steps)
    shape = tuple(z0.shape[1:])
    z = noise.randn(shape) * scheduler.init_noise_sigma
    fixed = noise.randn(shape) if known_noise == "fixed" else None
    ddim = isinstance(scheduler, DDIMScheduler)
    unipc = isinstance(scheduler, KeptRegionUniPC)
    for t in scheduler.timesteps:
        if cond is None:
            eps_known = fixed if fixed is not None else noise.randn(shape)
            known = scheduler.add_noise(z0, eps_known, t.reshape(1).expand(len(z0)))
            z = keep * known + (1 - keep) * z
            inp = z
            if unipc:  # its corrector would otherwise drop the replacement (see KeptRegionUniPC)
                scheduler.kept = (keep, known)
        else:
            inp = torch.cat([z, cond], 1)
        with autocast():
            eps = unet(scheduler.scale_model_input(inp, t), t).sample.float()
        if ddim:
            var = noise.randn(shape) if eta > 0 else None
            z = scheduler.step(eps, t, z, eta=eta, variance_noise=var).prev_sample
        else:
            z = scheduler.step(eps, t, z).prev_sample
    if unipc:
        scheduler.kept = None
    return z if cond is not None else keep * z0 + (1 - keep) * z


def repaint_calls(steps: int, jump_length: int, jump_n_sample: int, num_train_timesteps: int = 1000) -> int:
    """U-Net evaluations of one RePaint run (the cost the speed comparison is about)."""
    s = RePaintScheduler(num_train_timesteps=num_train_timesteps)
    s.set_timesteps(steps, jump_length, jump_n_sample)
    ts = s.timesteps.tolist()
    return sum(1 for prev, t in zip([ts[0] + 1] + ts, ts) if t < prev)


@torch.no_grad()
def repaint_loop(unet, train_config, x0: torch.Tensor, keep: torch.Tensor, seeds: list[int], *, steps: int,
                 jump_length: int, jump_n_sample: int, eta: float = 1.0,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                 ) -> torch.Tensor:
    """Pixel-space RePaint (Lugmayr et al.) with diffusers' ``RePaintScheduler``: resampling by jumping back.

    Args:
        unet: pixel-space eps-prediction U-Net.
        train_config: its training noise schedule.
        x0: (B,3,H,W) images in [-1, 1].
        keep: (B,1,H,W) 0/1 mask, 1 = known pixels.
        seeds: one seed per item.
        steps: inference steps (T/steps apart).
        jump_length: steps jumped forward before resampling.
        jump_n_sample: resamplings per jump point.
        eta: 1 = DDPM-like (RePaint), 0 = deterministic unknown part.
        autocast: context factory around U-Net calls.

    Returns:
        (B,3,H,W) images in [-1, 1].
    """
    sched = RePaintScheduler.from_config(train_config, clip_sample=False, eta=eta)
    sched.set_timesteps(steps, jump_length, jump_n_sample)
    # Per-item generators on the images' device; the scheduler's own draws (randn_tensor) use them too.
    noise = ItemNoise(seeds, x0.device)
    gens = noise.gens if len(seeds) > 1 else noise.gens[0]  # randn_tensor wants one generator for a batch of 1
    x = noise.randn(tuple(x0.shape[1:]))
    t_last = int(sched.timesteps[0]) + 1
    for t_tensor in sched.timesteps:
        t = int(t_tensor)
        if t < t_last:
            with autocast():  # a tensor timestep: torch.compile does not recompile for every step
                eps = unet(x, t_tensor.to(x.device)).sample.float()
            x = sched.step(eps, t, x, x0, keep, generator=gens).prev_sample
        else:
            x = sched.undo_step(x, t_last, generator=gens)
        t_last = t
    return x
