"""CLEAQ-DR: the enhancement (IQE), quality (IQA) and grading (DR) networks wired together.

Hou et al., "Image Quality Assessment Guided Collaborative Learning of Image Enhancement and Classification
for Diabetic Retinopathy Grading", IEEE JBHI 2023. The data flow:

    image --IQE--> enhanced --+--> DR grader ------------------------------> DR logits
                              |                      ^ quality features (no gradient)
                              +--> gradient reversal --> IQA --> quality logits, low-quality reconstruction

* The grader grades the enhanced image, and its loss trains the enhancer too: enhancement is shaped by what
  helps grading.
* IQA judges the enhanced image's quality against the *input's* quality label and reconstructs the low-quality
  input from it. The gradient-reversal layer (Ganin & Lempitsky, ICML 2015) passes IQA's gradient back to the
  enhancer negated: IQA learns to detect the degradation, the enhancer learns to leave none to detect
  (it maximises the IQA loss).
* With ``quality_fusion`` the grader also reads IQA's pooled features, detached so that the grading loss
  does not reach the enhancer through the reversed path: grading with the image's quality taken into account.

Each part is optional (``iqe=None``, ``iqa=None``: the ablations of the paper's Table V); the grader is not.
Parts are given as ``{"arch": registered name, "kwargs": {...}}`` so a saved model rebuilds from its config.
``forward_with_heads`` returns "dr_logits" first, then whichever of "enhanced", "vessel_logits",
"quality_logits", "reconstruction" the parts produce.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .registry import create_model, register_model

__all__ = ["CleaqDRPipeline", "GradientReversal", "cleaq"]


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: float) -> Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.weight * grad, None


class GradientReversal(nn.Module):
    """Identity forward; multiplies the gradient by ``-weight`` backward (identity when no gradient is taken)."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, x: Tensor) -> Tensor:
        return _ReverseGradient.apply(x, self.weight) if torch.is_grad_enabled() else x


class CleaqDRPipeline(nn.Module):
    def __init__(
        self,
        dr: dict[str, Any],
        iqe: dict[str, Any] | None = None,
        iqa: dict[str, Any] | None = None,
        gradient_reversal: bool = True,
        reversal_weight: float = 1.0,
        quality_fusion: bool = True,
    ):
        super().__init__()
        self.iqe = _part(iqe)
        self.iqa = _part(iqa)
        self.quality_fusion = quality_fusion and self.iqa is not None
        dr_kwargs = dict(dr.get("kwargs", {}))
        if self.quality_fusion:
            dr_kwargs["quality_features"] = self.iqa.num_features
        self.dr = create_model(dr["arch"], **dr_kwargs)
        self.reverse = GradientReversal(reversal_weight) if gradient_reversal and self.iqe is not None else None
        self.input_spec = self.dr.input_spec
        self.img_size = self.dr.img_size
        for name, part in (("iqe", self.iqe), ("iqa", self.iqa)):
            if part is not None and part.img_size != self.img_size:
                raise ValueError(f"the {name} works at {part.img_size} px, the grader at {self.img_size}: give one size")

    @property
    def num_classes(self) -> int:
        return self.dr.num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_heads(x)["dr_logits"]

    def forward_with_heads(self, x: Tensor) -> dict[str, Tensor]:
        heads: dict[str, Tensor] = {}
        graded = x
        if self.iqe is not None:
            heads.update(self.iqe.forward_with_heads(x))
            graded = heads["enhanced"]
        quality = None
        if self.iqa is not None:
            judged = self.iqa.forward_with_heads(self.reverse(graded) if self.reverse is not None else graded)
            heads["quality_logits"] = judged["quality_logits"]
            if "reconstruction" in judged:
                heads["reconstruction"] = judged["reconstruction"]
            if self.quality_fusion:
                quality = judged["features"].detach()
        return {"dr_logits": self.dr(graded, quality), **heads}


def _part(spec: dict[str, Any] | None) -> nn.Module | None:
    return None if spec is None else create_model(spec["arch"], **spec.get("kwargs", {}))


@register_model(task="grade")
def cleaq(**kwargs) -> CleaqDRPipeline:
    """CLEAQ-DR: a grader with optional enhancer and quality networks, trained together (``pyfundus.collab``).

    Default: the grader alone at the paper's size (``dr={"arch": "cleaq_dr"}``).
    """
    return CleaqDRPipeline(**{"dr": {"arch": "cleaq_dr"}, **kwargs})
