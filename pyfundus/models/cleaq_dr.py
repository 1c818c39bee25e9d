"""CLEAQ-DR's diabetic-retinopathy grading network: a ResNet-50 classifier (cross-entropy).

Hou et al., IEEE JBHI 2023 (see ``cleaq_iqe``). 5 classes for ICDR grades (EyeQ, APTOS), 4 for Messidor.
With ``quality_features=F`` the classifier also reads an F-long quality feature vector (C-IQA's pooled
features), so the grade is given with the image's quality taken into account; ``pyfundus.models.cleaq``
wires it. Input [0, 1] RGB.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..weights import InputSpec
from .cleaq_iqe import UNIT_RANGE
from .registry import register_model
from .resnet import ImageNetNormalise, resnet50

__all__ = ["CleaqDR", "cleaq_dr", "cleaq_dr_cpu"]


class CleaqDR(nn.Module):
    def __init__(self, img_size: int = 512, num_classes: int = 5, width: float = 1.0, quality_features: int = 0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.img_size = img_size
        self.num_classes = num_classes
        self.input_spec = InputSpec(size=img_size, **UNIT_RANGE)
        self.normalise = ImageNetNormalise()
        self.backbone = resnet50(width)
        self.quality_features = quality_features
        self.fc = nn.Linear(self.backbone.num_features + quality_features, num_classes)

    def forward(self, x: Tensor, quality: Tensor | None = None) -> Tensor:
        features = self.backbone(self.normalise(x))
        if self.quality_features:
            if quality is None:
                raise ValueError("this grader reads quality features: pass them (pyfundus.models.cleaq wires them)")
            features = torch.cat([features, quality], dim=1)
        return self.fc(features)

    def forward_with_heads(self, x: Tensor) -> dict[str, Tensor]:
        return {"dr_logits": self(x)}


@register_model(task="grade")
def cleaq_dr(**kwargs) -> CleaqDR:
    """The paper's grader for a GPU: 512 px, a full ResNet-50, 5 classes."""
    return CleaqDR(**kwargs)


@register_model(task="grade")
def cleaq_dr_cpu(**kwargs) -> CleaqDR:
    """The reduced CPU setting (not the paper's): 256 px, ResNet-50 at width 0.25."""
    return CleaqDR(**{"img_size": 256, "width": 0.25, **kwargs})
