"""Segmentation networks, all trained from scratch: ``build_segmenter(cfg.seg, num_classes, image_size)``.

- ``unet``: MONAI BasicUNet, 4 downsamplings; features (64,...,1024,64) is the paper's 31M-param U-Net.
- ``deeplabv3``: DeepLabV3 with a ResNet-50 encoder (bottlenecks 3-4-6-3, last stages dilated for output
  stride 16 or 8) and the ASPP head; about 39M params at width 64, as in the paper's Table 5.
- ``transunet``: TransUNet (R50-ViT): ResNet-50 stages 1-3 (1/16), a ViT encoder on the 1/16 grid, and a
  cascaded upsampler with skips from the 1/8, 1/4 and 1/2 features; about 105M params with ViT-B.

Everything is plain torch (no torchvision, no pretrained weights).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SegConfig
from ..errors import AugPaintError

ARCHS = ("unet", "deeplabv3", "transunet")
# The deepest encoder features each architecture hands its decoder: the filter's OOD score and the quality
# report pool them, and UniMatch's feature-perturbation stream drops channels there.
FEATURE_LAYER = {"unet": "down_4", "deeplabv3": "aspp", "transunet": "neck"}


def _bn_relu_conv(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), expansion 4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            *_bn_relu_conv(cin, width, 1), *_bn_relu_conv(width, width, 3, stride, dilation),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        nn.init.zeros_(self.body[-1].weight)  # zero-init last BN: each block starts as identity (trains from scratch)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + (x if self.down is None else self.down(x)))


class ResNet50(nn.Module):
    """ResNet-50 encoder returning the stem (1/2), layer1 (1/4), layer2 (1/8), layer3 and layer4 features.

    Args:
        in_channels: image channels.
        width: base width (64 = standard ResNet-50; smaller for tests).
        output_stride: 32 (plain), 16 (layer4 dilated) or 8 (layers 3-4 dilated), as in DeepLabV3.
        depth: how many of the 4 stages to build (TransUNet uses 3).
    """

    def __init__(self, in_channels: int = 3, width: int = 64, output_stride: int = 16, depth: int = 4) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise AugPaintError(f"seg.output_stride {output_stride}: choose 8, 16 or 32")
        self.stem = nn.Sequential(*_bn_relu_conv(in_channels, width, 7, 2))
        self.pool = nn.MaxPool2d(3, 2, 1)
        strides = {32: (1, 2, 2, 2), 16: (1, 2, 2, 1), 8: (1, 2, 1, 1)}[output_stride]
        dilations = {32: (1, 1, 1, 1), 16: (1, 1, 1, 2), 8: (1, 1, 2, 4)}[output_stride]
        cin, self.layers, self.channels = width, nn.ModuleList(), [width]
        for i, n in enumerate((3, 4, 6, 3)[:depth]):
            w = width * 2 ** i
            blocks = []
            for b in range(n):
                # the first block of a dilated stage keeps the previous stage's dilation (as torchvision)
                d = dilations[i] if b else (dilations[i - 1] if i else 1)
                blocks.append(Bottleneck(cin, w, strides[i] if b == 0 else 1, d))
                cin = w * Bottleneck.expansion
            self.layers.append(nn.Sequential(*blocks))
            self.channels.append(cin)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        h = self.pool(feats[0])
        for layer in self.layers:
            h = layer(h)
            feats.append(h)
        return feats


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and an image-pooling branch, projected."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, int, int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(*_bn_relu_conv(cin, cout, 1))] +
                                      [nn.Sequential(*_bn_relu_conv(cin, cout, 3, 1, r)) for r in rates])
        # no BatchNorm on the pooled 1x1 branch: it would fail at batch size 1
        self.pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(*_bn_relu_conv(5 * cout, cout, 1), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pooled(x).expand(-1, -1, *x.shape[2:]))
        return self.project(torch.cat(outs, 1))


class DeepLabV3(nn.Module):
    """DeepLabV3 (Chen et al. 2017): dilated ResNet-50 + ASPP + a 3x3 head, bilinear upsampling to the input."""

    def __init__(self, num_classes: int, width: int = 64, output_stride: int = 16) -> None:
        super().__init__()
        self.encoder = ResNet50(3, width, output_stride)
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36) if output_stride == 8 else (3, 6, 9)
        head = 4 * width  # 256 at the standard width
        self.aspp = ASPP(self.encoder.channels[-1], head, rates)
        self.head = nn.Sequential(*_bn_relu_conv(head, head, 3), nn.Conv2d(head, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.aspp(self.encoder(x)[-1]))
        return F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)


class TransUNet(nn.Module):
    """TransUNet (Chen et al. 2021), R50-ViT variant, trained from scratch.

    Args:
        num_classes: output classes.
        width: ResNet base width.
        hidden: ViT width (768 = ViT-B).
        layers: ViT depth.
        heads: attention heads.
        grid: reference token grid of the position embedding (resized to the input's 1/16 grid).
    """

    def __init__(self, num_classes: int, width: int = 64, hidden: int = 768, layers: int = 12, heads: int = 12,
                 grid: int = 16) -> None:
        super().__init__()
        self.encoder = ResNet50(3, width, output_stride=32, depth=3)  # stem 1/2, l1 1/4, l2 1/8, l3 1/16
        c = self.encoder.channels  # [w, 4w, 8w, 16w]
        self.embed = nn.Conv2d(c[3], hidden, 1)
        self.pos = nn.Parameter(torch.zeros(1, hidden, grid, grid))
        nn.init.trunc_normal_(self.pos, std=0.02)
        block = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.vit = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.neck = nn.Sequential(*_bn_relu_conv(hidden, 512 * width // 64, 3))
        dec = [256 * width // 64, 128 * width // 64, 64 * width // 64, 16 * width // 64]
        skips = [c[2], c[1], c[0], 0]
        cin, self.up = 512 * width // 64, nn.ModuleList()
        for d, s in zip(dec, skips):
            self.up.append(nn.Sequential(*_bn_relu_conv(cin + s, d, 3), *_bn_relu_conv(d, d, 3)))
            cin = d
        self.out = nn.Conv2d(cin, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem, l1, l2, l3 = self.encoder(x)
        h = self.embed(l3)
        pos = F.interpolate(self.pos, size=h.shape[2:], mode="bilinear", align_corners=False)
        b, ch, hh, ww = h.shape
        tokens = self.norm(self.vit((h + pos).flatten(2).transpose(1, 2)))
        h = self.neck(tokens.transpose(1, 2).reshape(b, ch, hh, ww))
        for block, skip in zip(self.up, (l2, l1, stem, None)):
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            if skip is not None:
                h = torch.cat([h, skip], 1)
            h = block(h)
        return self.out(h)


def build_segmenter(cfg: SegConfig, num_classes: int, image_size: int | None = None) -> nn.Module:
    """The segmenter named by ``cfg.arch``, randomly initialised.

    Args:
        cfg: ``seg`` config.
        num_classes: output classes including background.
        image_size: input size (unused by these architectures; kept for size-bound ones).

    The default ``unet`` is MONAI BasicUNet with 4 downsamplings; features (64, ..., 1024, 64) is the
    paper's 31M-parameter U-Net.
    """
    if cfg.arch == "unet":
        from monai.networks.nets import BasicUNet

        return BasicUNet(spatial_dims=2, in_channels=3, out_channels=num_classes, features=tuple(cfg.features))
    if cfg.arch == "deeplabv3":
        return DeepLabV3(num_classes, cfg.resnet_width, cfg.output_stride)
    if cfg.arch == "transunet":
        return TransUNet(num_classes, cfg.resnet_width, cfg.vit_hidden, cfg.vit_layers, cfg.vit_heads)
    raise AugPaintError(f"seg.arch {cfg.arch!r}: choose from {', '.join(ARCHS)}")


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def feature_layer(model: nn.Module, arch: str) -> nn.Module:
    """The module whose output are the architecture's deepest features (``FEATURE_LAYER``)."""
    return getattr(model, FEATURE_LAYER[arch])


@contextlib.contextmanager
def capture_features(model: nn.Module, arch: str) -> Iterator[list[torch.Tensor]]:
    """Collect the spatially averaged deepest features, (B, D) per forward call, while the block runs."""
    out: list[torch.Tensor] = []
    handle = feature_layer(model, arch).register_forward_hook(
        lambda _m, _i, y: out.append(y.detach().float().mean((2, 3))))
    try:
        yield out
    finally:
        handle.remove()


@contextlib.contextmanager
def perturb_features(model: nn.Module, arch: str, p: float = 0.5) -> Iterator[None]:
    """UniMatch's feature perturbation: channel dropout on the deepest features while the block runs."""
    handle = feature_layer(model, arch).register_forward_hook(lambda _m, _i, y: F.dropout2d(y, p, training=True))
    try:
        yield
    finally:
        handle.remove()


def load_segmenter(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """A trained segmenter artifact (``segmenter.pt`` + ``segmenter.json``), in eval mode, with its info."""
    p = Path(path)
    if not (p / "segmenter.pt").is_file():
        raise AugPaintError(f"{path}: not a segmenter artifact (no segmenter.pt)")
    info = json.loads((p / "segmenter.json").read_text())
    model = build_segmenter(SegConfig.model_validate(info["seg_config"]), info["num_classes"], info.get("image_size"))
    model.load_state_dict(torch.load(p / "segmenter.pt", map_location="cpu", weights_only=True))
    return model.eval(), info
