"""The skip marker every CUDA test uses: it runs only with a GPU and the compiled CUDA module."""

import pytest
import torch

from pyfundus.ops._ext import cuda_kernels_available


def _cuda_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if not cuda_kernels_available():
        return "pyfundus._C_cuda is absent (pyfundus was built without nvcc)"
    return None


_CUDA_REASON = _cuda_skip_reason()
requires_cuda = pytest.mark.skipif(_CUDA_REASON is not None, reason=str(_CUDA_REASON))
