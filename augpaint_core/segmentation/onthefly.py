"""On-the-fly augmentation of segmenter training batches (``seg.augment``), the kind nnU-Net applies.

Spatial: rotation and scaling (one affine grid per image), optional elastic deformation (a smooth random
displacement added to the grid), mirroring along each axis. Intensity: Gaussian noise, Gaussian blur,
multiplicative brightness, contrast, gamma. Each transform fires per image with its own probability
(nnU-Net's defaults: rotation/scaling 0.2, noise 0.1, blur 0.2, brightness 0.15, contrast 0.15, gamma 0.3,
mirroring 0.5 per axis).

Everything runs batched on the batch's device (``grid_sample`` and a separable convolution), so it costs a
few percent of a training step on a GPU. MONAI's random transforms (``RandAffined``, ``Rand2DElasticd``) work
per item on CPU dictionaries, which would put a host round trip into every step, so the same operations are
written here directly in torch. The label goes through the same sampling grid with nearest-neighbour
interpolation, so it moves with the image and stays an integer map.

Draws are seeded by (seed, step): a training run is repeatable, and the draws do not depend on the device.
"""
from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F

from ..config import AugmentConfig


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one training step's draws."""
    return torch.Generator().manual_seed(zlib.crc32(f"onthefly:{seed}:{step}".encode()) & 0x7FFFFFFF)


def _u(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _fires(gen: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) < p


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (B,) on (B, C, H, W)."""
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].clamp_min(1e-3)) ** 2)
    k = k / k.sum(1, keepdim=True)  # (B, K)
    b, c, h, w = x.shape
    # one group per (image, channel): every image gets its own kernel in a single conv call
    kk = k.repeat_interleave(c, 0)
    y = F.conv2d(F.pad(x.reshape(1, b * c, h, w), (radius, radius, 0, 0), mode="reflect"),
                 kk[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kk[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def sampling_grid(n: int, h: int, w: int, cfg: AugmentConfig, gen: torch.Generator,
                  device: torch.device) -> tuple[torch.Tensor, dict]:
    """The (B, H, W, 2) sampling grid of the spatial transforms, and the drawn parameters.

    Args:
        n: batch size.
        h: image height.
        w: image width.
        cfg: ``seg.augment``.
        gen: the step's generator.
        device: where the grid lives.
    """
    rot = _fires(gen, n, cfg.p_rotation)
    angle = torch.where(rot, _u(gen, n, -cfg.rotation_deg, cfg.rotation_deg), torch.zeros(n)) * math.pi / 180
    scl = _fires(gen, n, cfg.p_scale)
    zoom = torch.where(scl, _u(gen, n, *cfg.scale), torch.ones(n))
    flip_x = torch.where(_fires(gen, n, cfg.p_flip), -1.0, 1.0)
    flip_y = torch.where(_fires(gen, n, cfg.p_flip), -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # affine_grid maps output to input coordinates: a zoom > 1 samples a smaller area (enlarges the content)
    theta = torch.stack([torch.stack([cos * flip_x, -sin * flip_y, torch.zeros(n)], 1),
                         torch.stack([sin * flip_x, cos * flip_y, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta.to(device), [n, 1, h, w], align_corners=False)
    params = {"rotation": angle, "scale": zoom, "flip_x": flip_x < 0, "flip_y": flip_y < 0}
    if cfg.elastic:
        el = _fires(gen, n, cfg.p_elastic)
        # coarse random displacements, upsampled bicubically: a smooth field, magnitude in grid units (2 = image)
        coarse = torch.randn(n, 2, cfg.elastic_grid, cfg.elastic_grid, generator=gen) * cfg.elastic_magnitude * 2
        coarse = coarse * el[:, None, None, None]
        disp = F.interpolate(coarse.to(device), size=(h, w), mode="bicubic", align_corners=True)
        grid = grid + disp.permute(0, 2, 3, 1)
        params["elastic"] = el
    return grid, params


def augment_batch(images: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig, *, seed: int, step: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly transform a training batch; identity when ``cfg.enabled`` is false.

    Args:
        images: (B, C, H, W) float in [-1, 1], on any device.
        labels: (B, 1, H, W) or (B, H, W) integer labels on the same device.
        cfg: ``seg.augment``.
        seed: the training seed.
        step: the training step (each step draws anew).

    Returns:
        the transformed images (same range) and labels (same shape and dtype).
    """
    if not cfg.enabled:
        return images, labels
    gen = step_generator(seed, step)
    n, _, h, w = images.shape
    dev = images.device
    grid, _ = sampling_grid(n, h, w, cfg, gen, dev)
    x = (images.float() + 1) / 2  # [0, 1]: zero padding outside the rotated image is black, as in a scan
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab = labels if labels.dim() == 4 else labels[:, None]
    y = F.grid_sample(lab.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    y = y.round().to(labels.dtype)
    if labels.dim() == 3:
        y = y[:, 0]

    def per_image(v: torch.Tensor) -> torch.Tensor:
        return v.to(dev, x.dtype)[:, None, None, None]

    noise = _fires(gen, n, cfg.p_noise)
    if noise.any():
        std = torch.where(noise, _u(gen, n, 0.0, cfg.noise_std), torch.zeros(n))
        ngen = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen)))
        x = x + per_image(std) * torch.randn(x.shape, generator=ngen, device=dev, dtype=x.dtype)
    blur = _fires(gen, n, cfg.p_blur)
    if blur.any():
        sigma = _u(gen, n, *cfg.blur_sigma)
        x = torch.where(per_image(blur) > 0, _gaussian_blur(x, sigma.to(dev, x.dtype)), x)
    bright = torch.where(_fires(gen, n, cfg.p_brightness), _u(gen, n, *cfg.brightness), torch.ones(n))
    x = x * per_image(bright)
    con = torch.where(_fires(gen, n, cfg.p_contrast), _u(gen, n, *cfg.contrast), torch.ones(n))
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * per_image(con) + mean
    gam = torch.where(_fires(gen, n, cfg.p_gamma), _u(gen, n, *cfg.gamma), torch.ones(n))
    x = x.clamp(0, 1) ** per_image(gam)
    return (x * 2 - 1).to(images.dtype), y
