"""CLEAQ-DR's image-quality enhancement network (IQE): U-IQE with the Seg-IQE vessel-structure branch.

Hou et al., "Image Quality Assessment Guided Collaborative Learning of Image Enhancement and Classification
for Diabetic Retinopathy Grading", IEEE JBHI 2023. The parts, as the paper describes them:

* **U-IQE**: an encoder-decoder of residual blocks; max-pooling down, transposed convolutions up, additive
  skips. It predicts a correction that is added to the input (residual output), so an untrained or
  unsure network returns the photo as it is, and ``pyfundus enhance`` can apply the correction predicted at
  model size to the full-resolution capture.
* **Seg-IQE**: a vessel-structure branch, a ResNet-34 encoder with transposed-convolution decoder blocks
  (the CE-Net layout, without its DAC/SPP context blocks) that predicts a vessel map. Its decoder features
  at 1/8, 1/4 and 1/2 of the input are concatenated into U-IQE's first three decoder blocks, so the
  enhancement is told where the vessels are and is trained (Dice on the vessel map) to keep them.

Losses (``pyfundus.collab``): L2 between enhanced and clean image inside the retinal mask; Dice between the
vessel map and the vessel mask. Input: [0, 1] RGB (the InputSpec has mean 0, std 1); the ResNet branch
normalises to ImageNet statistics itself.

Configurable: ``widths`` (U-IQE channels per level), ``blocks`` (residual blocks per level), ``kernel_size``,
``seg_width`` (the ResNet-34's width multiplier) and ``segmentation=False`` (U-IQE alone, the ablation).
``cleaq_iqe`` is the paper's setting for a GPU; ``cleaq_iqe_cpu`` the reduced one this repository trains
on CPU (labelled as such wherever its figures appear).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..weights import InputSpec
from .registry import register_model
from .resnet import ImageNetNormalise, resnet34

__all__ = ["CleaqIQE", "EnhancedOnly", "SegIQE", "UnetDecoderBlock", "cleaq_iqe", "cleaq_iqe_cpu"]

# [0, 1] RGB in: enhancement must see the photo's own levels, not a normalised version of them.
UNIT_RANGE = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


class ResBlock(nn.Module):
    """conv-ReLU-conv plus the input, then ReLU: the residual unit of U-IQE (no normalisation)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(x + self.conv2(self.relu(self.conv1(x))))


def _stage(in_channels: int, channels: int, blocks: int, kernel_size: int) -> nn.Sequential:
    """A conv to ``channels`` and ``blocks`` residual blocks."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, kernel_size, padding=kernel_size // 2), nn.ReLU(inplace=True)]
    layers += [ResBlock(channels, kernel_size) for _ in range(blocks)]
    return nn.Sequential(*layers)


class UnetDecoderBlock(nn.Module):
    """CE-Net's decoder block: 1x1 reduce to a quarter, 3x3 transposed conv (x2 up), 1x1 to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = max(4, in_channels // 4)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class SegIQE(nn.Module):
    """Vessel-structure branch: ResNet-34 encoder, four decoder blocks with additive skips, a 1-channel head."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.normalise = ImageNetNormalise()
        self.encoder = resnet34(width)
        c = self.encoder.stage_channels  # layer1..layer4 channels
        self.decoder4 = UnetDecoderBlock(c[3], c[2])  # 1/32 -> 1/16, + layer3
        self.decoder3 = UnetDecoderBlock(c[2], c[1])  # -> 1/8, + layer2
        self.decoder2 = UnetDecoderBlock(c[1], c[0])  # -> 1/4, + layer1
        self.decoder1 = UnetDecoderBlock(c[0], c[0])  # -> 1/2
        self.feature_channels = (c[1], c[0], c[0])  # at 1/8, 1/4, 1/2
        head = max(8, c[0] // 2)
        self.head = nn.Sequential(
            nn.ConvTranspose2d(c[0], head, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(head, head, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(head, 1, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> list[Tensor]:
        """The decoder features [1/8, 1/4, 1/2]; ``self.head(features[-1])`` gives the vessel logits."""
        _, e1, e2, e3, e4 = self.encoder.forward_stages(self.normalise(x))
        d4 = self.decoder4(e4) + e3
        d3 = self.decoder3(d4) + e2
        d2 = self.decoder2(d3) + e1
        return [d3, d2, self.decoder1(d2)]


class CleaqIQE(nn.Module):
    """U-IQE (+ Seg-IQE). ``forward_with_heads(x)`` -> {"enhanced": (B,3,H,W) in [0,1], "vessel_logits": (B,1,H,W)}.

    ``forward(x)`` returns the enhanced image alone. Inputs are img_size x img_size (a multiple of 32, the
    ResNet's stride).
    """

    def __init__(
        self,
        img_size: int = 512,
        widths: Sequence[int] = (32, 64, 64, 128),
        blocks: int = 3,
        kernel_size: int = 5,
        segmentation: bool = True,
        seg_width: float = 1.0,
    ):
        super().__init__()
        if len(widths) != 4:
            raise ValueError("U-IQE has four levels (1, 1/2, 1/4, 1/8): widths needs four entries")
        if img_size % 32:
            raise ValueError(f"img_size must be a multiple of 32, got {img_size}")
        self.img_size = img_size
        self.input_spec = InputSpec(size=img_size, **UNIT_RANGE)
        self.segmentation = SegIQE(seg_width) if segmentation else None
        seg = self.segmentation.feature_channels if segmentation else (0, 0, 0)
        w0, w1, w2, w3 = widths
        self.pool = nn.MaxPool2d(2)
        self.enc0 = _stage(3, w0, blocks, kernel_size)
        self.enc1 = _stage(w0, w1, blocks, kernel_size)
        self.enc2 = _stage(w1, w2, blocks, kernel_size)
        self.enc3 = _stage(w2, w3, blocks, kernel_size)
        # Decoder blocks 1-3 (at 1/8, 1/4, 1/2) take Seg-IQE's features concatenated to their input.
        self.dec3 = _stage(w3 + seg[0], w3, blocks, kernel_size)
        self.up3 = nn.ConvTranspose2d(w3, w2, 4, stride=2, padding=1)
        self.dec2 = _stage(w2 + seg[1], w2, blocks, kernel_size)
        self.up2 = nn.ConvTranspose2d(w2, w1, 4, stride=2, padding=1)
        self.dec1 = _stage(w1 + seg[2], w1, blocks, kernel_size)
        self.up1 = nn.ConvTranspose2d(w1, w0, 4, stride=2, padding=1)
        self.dec0 = _stage(w0, w0, blocks, kernel_size)
        self.out = nn.Conv2d(w0, 3, kernel_size, padding=kernel_size // 2)
        # The correction starts at zero: an untrained U-IQE hands the photo back unchanged.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_heads(x, vessels=False)["enhanced"]

    def forward_with_heads(self, x: Tensor, vessels: bool = True) -> dict[str, Tensor]:
        """``vessels=False`` skips the vessel map's full-resolution head (inference needs only the image)."""
        heads: dict[str, Tensor] = {}
        guides: list[Tensor | None] = [None, None, None]
        if self.segmentation is not None:
            guides = self.segmentation(x)
            if vessels:
                heads["vessel_logits"] = self.segmentation.head(guides[-1])
        e0 = self.enc0(x)
        e1 = self.enc1(self.pool(e0))
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        d = self.dec3(_join(e3, guides[0]))
        d = self.dec2(_join(self.up3(d) + e2, guides[1]))
        d = self.dec1(_join(self.up2(d) + e1, guides[2]))
        d = self.dec0(self.up1(d) + e0)
        return {"enhanced": (x + self.out(d)).clamp(0.0, 1.0), **heads}


class EnhancedOnly(nn.Module):
    """The enhancer as inference and ONNX export run it: {"enhanced": ...} alone, no vessel map."""

    def __init__(self, enhancer: CleaqIQE):
        super().__init__()
        self.enhancer = enhancer
        self.input_spec = enhancer.input_spec

    def forward_with_heads(self, x: Tensor) -> dict[str, Tensor]:
        return {"enhanced": self.enhancer(x)}


def _join(x: Tensor, guide: Tensor | None) -> Tensor:
    return x if guide is None else torch.cat([x, guide], dim=1)


@register_model(task="enhance")
def cleaq_iqe(**kwargs) -> CleaqIQE:
    """The paper's IQE for a GPU: 512 px, U-IQE widths (32, 64, 64, 128), 3 residual blocks of 5x5 convs per
    level (as the authors' code), Seg-IQE on a full-width ResNet-34."""
    return CleaqIQE(**kwargs)


@register_model(task="enhance")
def cleaq_iqe_cpu(**kwargs) -> CleaqIQE:
    """The reduced CPU setting (not the paper's): 512 px as the paper, U-IQE widths (16, 24, 32, 48), 1 residual
    block of 3x3 convs per level, Seg-IQE on a ResNet-34 at width 0.25: 1.6 M parameters against 31 M. Sized so
    that ``pyfundus enhance`` of a 2304x1728 capture fits in 2 s on two CPU cores."""
    defaults = {"widths": (16, 24, 32, 48), "blocks": 1, "kernel_size": 3, "seg_width": 0.25}
    return CleaqIQE(**{**defaults, **kwargs})
