"""Model builders and small tensor helpers shared by the stages.

Models come from diffusers (VQModel, UNet2DModel, DDPM/DDIM schedulers) and
MONAI (BasicUNet); this module only picks their configuration.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel, VQModel

from .config import AEConfig, LDMConfig, PixelDMConfig, SegConfig
from .errors import AugPaintError

AE_FACTOR = 4


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for the stage's own draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) float in [-1, 1] -> (N,H,W,3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _groups(ch: list[int]) -> int:
    g = 32
    while any(c % g for c in ch):
        g //= 2
    return g


def build_vqmodel(cfg: AEConfig, image_size: int) -> VQModel:
    """VQ-f4 autoencoder: 3 blocks give a 4x downsampling; no attention (as LDM's vq-f4)."""
    return VQModel(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=tuple(cfg.block_channels), layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels, vq_embed_dim=cfg.latent_channels,
        num_vq_embeddings=cfg.num_embeddings, sample_size=image_size,
        norm_num_groups=_groups(cfg.block_channels), mid_block_add_attention=False,
        scaling_factor=1.0,
    )


class PatchDiscriminator(torch.nn.Module):
    """The pix2pix/taming N-layer patch discriminator, trained from scratch (one logit per patch).

    Args:
        in_channels: image channels.
        base: width of the first layer.
        n_layers: strided layers; 3 gives 70x70-pixel patches.
    """

    def __init__(self, in_channels: int = 3, base: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        nn = torch.nn
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = base
        for i in range(1, n_layers + 1):
            nch = base * min(2 ** i, 8)
            layers += [nn.Conv2d(ch, nch, 4, 2 if i < n_layers else 1, 1, bias=False), nn.BatchNorm2d(nch),
                       nn.LeakyReLU(0.2, True)]
            ch = nch
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_unet(cfg: LDMConfig, latent_size: int, channels: int) -> UNet2DModel:
    """The latent U-Net; the conditional one takes [z_t, masked-image latent] (2x channels) and predicts eps."""
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DModel(
        sample_size=latent_size, in_channels=2 * channels if cfg.conditional else channels, out_channels=channels,
        block_out_channels=tuple(cfg.block_channels), down_block_types=down, up_block_types=up,
        layers_per_block=cfg.layers_per_block, norm_num_groups=_groups(cfg.block_channels),
        attention_head_dim=min(32, min(cfg.block_channels)),
    )


def build_pixel_unet(cfg: PixelDMConfig, image_size: int) -> UNet2DModel:
    """The RePaint baseline's image-space U-Net (3 channels in and out); same block types as the latent U-Net."""
    lcfg = LDMConfig(block_channels=cfg.block_channels, attention=cfg.attention, layers_per_block=cfg.layers_per_block)
    return build_unet(lcfg, image_size, 3)


def build_train_scheduler(cfg: LDMConfig) -> DDPMScheduler:
    """LDM's "linear" schedule (linear in sqrt(beta)) = diffusers' scaled_linear; latents are unbounded."""
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule="scaled_linear",
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end, clip_sample=False)


def build_segmenter(cfg: SegConfig, num_classes: int, image_size: int | None = None) -> torch.nn.Module:
    """The ``cfg.arch`` segmenter (see ``augpaint_core.segmenters``); the default ``unet`` is MONAI BasicUNet with
    4 downsamplings, and features (64,...,1024,64) is the paper's 31M-param U-Net."""
    from .segmenters import build_segmenter as build

    return build(cfg, num_classes, image_size)


def load_vqmodel(path: str | Path) -> VQModel:
    p = Path(path) / "vqmodel"
    if not p.is_dir():
        raise AugPaintError(f"{path}: not an autoencoder artifact (no vqmodel/)")
    return VQModel.from_pretrained(p).eval()


def load_ldm(path: str | Path) -> tuple[UNet2DModel, DDPMScheduler]:
    p = Path(path)
    if not (p / "unet").is_dir():
        raise AugPaintError(f"{path}: not an LDM artifact (no unet/)")
    return UNet2DModel.from_pretrained(p / "unet").eval(), DDPMScheduler.from_pretrained(p / "scheduler")


def load_segmenter(path: str | Path) -> tuple[torch.nn.Module, dict]:
    import json

    p = Path(path)
    if not (p / "segmenter.pt").is_file():
        raise AugPaintError(f"{path}: not a segmenter artifact (no segmenter.pt)")
    info = json.loads((p / "segmenter.json").read_text())
    model = build_segmenter(SegConfig.model_validate(info["seg_config"]), info["num_classes"], info.get("image_size"))
    model.load_state_dict(torch.load(p / "segmenter.pt", weights_only=True))
    return model.eval(), info


def num_steps(n_items: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    """Optimizer steps for an epoch budget, capped by max_steps when given."""
    per_epoch = max(1, -(-n_items // batch_size))
    return min(per_epoch * epochs, max_steps) if max_steps else per_epoch * epochs


def batches(n_items: int, batch_size: int, steps: int, gen: torch.Generator):
    """Yield index batches over shuffled epochs, exactly ``steps`` of them."""
    done = 0
    while done < steps:
        perm = torch.randperm(n_items, generator=gen)
        for i in range(0, n_items, batch_size):
            if done >= steps:
                return
            yield perm[i:i + batch_size]
            done += 1
