"""Fused operators (C++/CUDA kernels with plain-torch references)."""

from .softpool import softpool2d, softpool2d_reference

__all__ = [
    "softpool2d",
    "softpool2d_reference",
]
