"""ResNet-34 and ResNet-50 backbones (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

The CLEAQ-DR networks (``cleaq_iqe``, ``cleaq_iqa``, ``cleaq_dr``) are built on these. Module names follow
torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``...), so a user's own ImageNet
weights, saved from torchvision as safetensors (``save_file(resnet50().state_dict(), "r50.safetensors")``), load
into a full-width backbone with ``pyfundus train --init dr=r50.safetensors``. pyfundus ships no ImageNet weights and
downloads none.

``width`` scales every stage's channels (1.0 = the paper's ResNet; the reduced CPU setting uses 0.25). The
backbone expects ImageNet-normalised input; the CLEAQ-DR networks take [0, 1] RGB and normalise it themselves.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..weights import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BasicBlock", "Bottleneck", "ImageNetNormalise", "ResNet", "resnet34", "resnet50"]

STAGE_WIDTHS = (64, 128, 256, 512)


def scaled(channels: int, width: float) -> int:
    """Channels at a width multiplier, at least 8 and a multiple of 4 (keeps vector units busy)."""
    return max(8, int(round(channels * width / 4)) * 4)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a shortcut (ResNet-50); the stride sits on the 3x3, as torchvision."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _shortcut(inplanes: int, out: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == out:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))


class ResNet(nn.Module):
    """Stem (7x7 stride-2 conv, BN, ReLU; 3x3 stride-2 max-pool) and four stages; no classifier.

    ``forward`` returns the pooled features (B, ``num_features``). ``stem_features`` and ``layers`` are
    public so that networks which inject or tap features between stages (C-IQA, Seg-IQE) run them step by step.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: Sequence[int], width: float = 1.0):
        super().__init__()
        widths = [scaled(c, width) for c in STAGE_WIDTHS]
        self.stem_channels = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = widths[0]
        self.stage_channels: list[int] = []
        for index, (planes, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for i in range(depth):
                blocks.append(block(inplanes, planes, stride=2 if (i == 0 and index > 0) else 1))
                inplanes = planes * block.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            self.stage_channels.append(inplanes)
        self.num_features = inplanes
        _init_weights(self)

    @property
    def layers(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def stem_features(self, x: Tensor) -> Tensor:
        """The stem before its max-pool: (B, C, H/2, W/2)."""
        return self.relu(self.bn1(self.conv1(x)))

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """[stem (1/2), layer1 (1/4), layer2 (1/8), layer3 (1/16), layer4 (1/32)] feature maps."""
        features = [self.stem_features(x)]
        x = self.maxpool(features[0])
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_stages(x)[-1], 1), 1)


class ImageNetNormalise(nn.Module):
    """[0, 1] RGB to the ImageNet statistics a ResNet backbone is conventionally trained with."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    # Zero the last BN of each residual branch: every block starts as the identity (Goyal et al. 2017),
    # which trains a deep ResNet from scratch more stably, as here without ImageNet weights.
    for m in module.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


def resnet34(width: float = 1.0) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3); 21.3 M parameters at width 1."""
    return ResNet(BasicBlock, (3, 4, 6, 3), width)


def resnet50(width: float = 1.0) -> ResNet:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3); 23.5 M parameters at width 1 (without the classifier)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), width)
