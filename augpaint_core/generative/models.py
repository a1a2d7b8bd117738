"""Builders and loaders of the generative models (VQ autoencoder, latent and pixel U-Nets).

Models come from diffusers (VQModel, UNet2DModel, DDPM scheduler); this module only picks
their configuration. The segmenters live in ``segmentation.segmenters``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel, VQModel

from ..config import AEConfig, LDMConfig, PixelDMConfig
from ..errors import AugPaintError
from .masks import AE_FACTOR  # noqa: F401  (re-exported: the AE's downsampling)


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


def _from_pretrained(cls, folder: Path, artifact: str | Path):
    """``cls.from_pretrained(folder)``; a missing, corrupt or foreign file becomes one line naming it."""
    cfg = folder / ("scheduler_config.json" if cls is DDPMScheduler else "config.json")
    if not cfg.is_file():
        raise AugPaintError(f"{cfg}: missing; {artifact} is not a complete model artifact")
    try:
        return cls.from_pretrained(folder)
    except Exception as err:  # noqa: BLE001 - diffusers/safetensors raise many types for one bad file
        raise AugPaintError(f"{folder}: unreadable model files ({type(err).__name__}: "
                            f"{(str(err).splitlines() or [''])[0][:200]})") from None


def load_vqmodel(path: str | Path) -> VQModel:
    """The autoencoder of a train-ae artifact, after checking its files against ``artifact.json``."""
    from ..infra.artifacts import verify_artifact

    p = Path(path) / "vqmodel"
    if not p.is_dir():
        raise AugPaintError(f"{path}: not an autoencoder artifact (no vqmodel/)")
    verify_artifact(path, kind="model")
    return _from_pretrained(VQModel, p, path).eval()


def load_ldm(path: str | Path) -> tuple[UNet2DModel, DDPMScheduler]:
    """The U-Net and training schedule of a train-ldm/train-pixel artifact, checked against ``artifact.json``."""
    from ..infra.artifacts import verify_artifact

    p = Path(path)
    if not (p / "unet").is_dir():
        raise AugPaintError(f"{path}: not an LDM artifact (no unet/)")
    verify_artifact(path, kind="model")
    return _from_pretrained(UNet2DModel, p / "unet", path).eval(), _from_pretrained(DDPMScheduler, p / "scheduler",
                                                                                     path)


def check_pair(ldm_path: str | Path, ldm_meta: dict, ae_path: str | Path) -> None:
    """Refuse an LDM used with another AE than the one it was trained on (recorded hash in its artifact.json)."""
    from ..infra.artifacts import artifact_hash

    recorded = ((ldm_meta.get("inputs") or {}).get("ae") or {}).get("content_sha256")
    if recorded is None:
        raise AugPaintError(f"{Path(ldm_path) / 'artifact.json'}: records no AE hash (inputs.ae); cannot check that "
                            f"{ae_path} is the autoencoder it was trained on")
    if recorded != artifact_hash(ae_path):
        raise AugPaintError(f"{ae_path}: not the autoencoder {ldm_path} was trained on (its content hash differs "
                            f"from inputs.ae.content_sha256 {recorded[:12]}...)")
