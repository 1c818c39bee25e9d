"""Lazy access to the compiled kernel modules.

``pyfundus._C`` (CPU) and ``pyfundus._C_cuda`` (CUDA) are imported on first
use and cached, so importing pyfundus stays cheap and a CPU-only machine never
loads the CUDA module unless a CUDA tensor reaches a fused op.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

__all__ = ["cpu_kernels", "cuda_kernels", "cuda_kernels_available"]


@functools.cache
def cpu_kernels() -> ModuleType:
    """The CPU kernel module ``pyfundus._C``."""
    try:
        return importlib.import_module("pyfundus._C")
    except ImportError as exc:
        raise ImportError(
            "pyfundus was installed without its compiled core; reinstall with a C++ compiler: "
            "pip install --force-reinstall --no-binary pyfundus pyfundus "
            f"(or pip install --no-build-isolation -e . in a checkout). Import error: {exc}"
        ) from exc


@functools.cache
def cuda_kernels() -> ModuleType:
    """The CUDA kernel module ``pyfundus._C_cuda``."""
    try:
        return importlib.import_module("pyfundus._C_cuda")
    except ImportError as exc:
        raise ImportError(
            "this pyfundus build has no CUDA module: it was built without nvcc. Rebuild with "
            "the CUDA toolkit on PATH (PYFUNDUS_CUDA=ON makes a missing nvcc an error), or use "
            f"impl='reference'. Import error: {exc}"
        ) from exc


def cuda_kernels_available() -> bool:
    """Whether ``pyfundus._C_cuda`` imports (it does without a GPU: no CUDA call at import)."""
    try:
        cuda_kernels()
    except ImportError:
        return False
    return True
