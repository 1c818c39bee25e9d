"""CLEAQ-DR's image-quality assessment network (IQA): C-IQA with the LQI-IQA reconstruction branch.

Hou et al., IEEE JBHI 2023 (see ``cleaq_iqe``). The parts:

* **C-IQA**: a ResNet-50 that classifies the image's quality as Good / Usable / Reject (cross-entropy).
* **LQI-IQA**: an encoder-decoder (ResNet-34 encoder, transposed-convolution decoder blocks) that
  reconstructs the low-quality image (MSE inside the retinal mask). Its decoder features at 1/2, 1/4, 1/8
  and 1/16 of the input are projected (1x1 conv) to C-IQA's channels and added to C-IQA's stem and to the
  outputs of its first three stages, so the classifier sees what the reconstruction had to model: the
  degradation. (The authors' code concatenates and convolves; the paper says the features are added.)

In pre-training the input is the low-quality image itself; in CLEAQ-DR's joint stage it is the enhanced
image behind a gradient-reversal layer (``pyfundus.models.cleaq``), and LQI-IQA must recover the
low-quality image from it: the enhancer is trained to leave nothing of the degradation to recover.

``forward_with_heads(x)`` -> {"quality_logits": (B, 3), "reconstruction": (B, 3, H, W), "features": (B, F)}
(no reconstruction with ``lqi=False``, the Table VI ablation). Input [0, 1] RGB; classes in
``pyfundus.verdicts.CLASSES`` order (Good, Usable, Reject).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..weights import InputSpec
from .cleaq_iqe import UNIT_RANGE, UnetDecoderBlock
from .registry import register_model
from .resnet import ImageNetNormalise, resnet34, resnet50

__all__ = ["CleaqIQA", "LowQualityReconstruction", "cleaq_iqa", "cleaq_iqa_cpu"]

QUALITY_CLASSES = 3


class LowQualityReconstruction(nn.Module):
    """LQI-IQA: ResNet-34 encoder-decoder; returns (reconstruction, [decoder features at 1/2, 1/4, 1/8, 1/16])."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.normalise = ImageNetNormalise()
        self.encoder = resnet34(width)
        c = self.encoder.stage_channels
        self.decoder4 = UnetDecoderBlock(c[3], c[2])
        self.decoder3 = UnetDecoderBlock(c[2], c[1])
        self.decoder2 = UnetDecoderBlock(c[1], c[0])
        self.decoder1 = UnetDecoderBlock(c[0], c[0])
        self.feature_channels = (c[0], c[0], c[1], c[2])  # at 1/2, 1/4, 1/8, 1/16
        head = max(8, c[0] // 2)
        self.head = nn.Sequential(
            nn.ConvTranspose2d(c[0], head, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(head, head, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(head, 3, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        _, e1, e2, e3, e4 = self.encoder.forward_stages(self.normalise(x))
        d4 = self.decoder4(e4) + e3
        d3 = self.decoder3(d4) + e2
        d2 = self.decoder2(d3) + e1
        d1 = self.decoder1(d2)
        # Reconstructed as a change of the input: the identity is the natural starting point.
        return (x + self.head(d1)).clamp(0.0, 1.0), [d1, d2, d3, d4]


class CleaqIQA(nn.Module):
    def __init__(self, img_size: int = 512, width: float = 1.0, lqi: bool = True, lqi_width: float | None = None):
        super().__init__()
        if img_size % 32:
            raise ValueError(f"img_size must be a multiple of 32, got {img_size}")
        self.img_size = img_size
        self.input_spec = InputSpec(size=img_size, **UNIT_RANGE)
        self.normalise = ImageNetNormalise()
        self.backbone = resnet50(width)
        self.num_features = self.backbone.num_features
        self.lqi = LowQualityReconstruction(width if lqi_width is None else lqi_width) if lqi else None
        if self.lqi is not None:
            targets = (self.backbone.stem_channels, *self.backbone.stage_channels[:3])
            self.inject = nn.ModuleList(
                nn.Conv2d(source, target, 1) for source, target in zip(self.lqi.feature_channels, targets)
            )
        self.fc = nn.Linear(self.num_features, QUALITY_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_heads(x)["quality_logits"]

    def forward_with_heads(self, x: Tensor) -> dict[str, Tensor]:
        heads: dict[str, Tensor] = {}
        injected: list[Tensor | None] = [None] * 4
        if self.lqi is not None:
            heads["reconstruction"], lqi_features = self.lqi(x)
            injected = [project(f) for project, f in zip(self.inject, lqi_features)]
        net = self.backbone
        h = _add(net.stem_features(self.normalise(x)), injected[0])
        h = net.maxpool(h)
        for index, layer in enumerate(net.layers):
            h = layer(h)
            if index < 3:
                h = _add(h, injected[index + 1])
        features = h.mean(dim=(2, 3))
        return {"quality_logits": self.fc(features), **heads, "features": features}


def _add(x: Tensor, extra: Tensor | None) -> Tensor:
    return x if extra is None else x + extra


@register_model(task="quality_class")
def cleaq_iqa(**kwargs) -> CleaqIQA:
    """The paper's IQA for a GPU: 512 px, C-IQA a full ResNet-50, LQI-IQA a full ResNet-34 encoder-decoder."""
    return CleaqIQA(**kwargs)


@register_model(task="quality_class")
def cleaq_iqa_cpu(**kwargs) -> CleaqIQA:
    """The reduced CPU setting (not the paper's): 256 px, both ResNets at width 0.25."""
    return CleaqIQA(**{"img_size": 256, "width": 0.25, **kwargs})
