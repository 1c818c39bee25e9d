"""Lazy access to the compiled kernel modules.

``pyfundus._C`` (CPU) and ``pyfundus._C_cuda`` (CUDA) are imported on first
use and cached, so importing pyfundus stays cheap and a CPU-only machine never
loads the CUDA module unless a CUDA tensor reaches a fused op. The kernels
take raw pointers, a dtype code and, on CUDA, the device index and stream:
:func:`dtype_code` and :func:`cuda_target` produce those arguments.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

__all__ = [
    "DTYPE_NAMES",
    "HALF_TYPES",
    "cpu_kernels",
    "cuda_kernels",
    "cuda_kernels_available",
    "cuda_target",
    "dtype_code",
    "eager_inference",
]

# The dtypes the kernels take, named as in the modules' DTYPE_CODES table.
DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}
# The CPU kernels compute these in float32.
HALF_TYPES = (torch.float16, torch.bfloat16)


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


def dtype_code(ext: ModuleType, dtype: torch.dtype) -> int:
    """The code of ``dtype`` in the compiled module ``ext``."""
    return ext.DTYPE_CODES[DTYPE_NAMES[dtype]]


def cuda_target(x: torch.Tensor) -> tuple[int, int]:
    """(device index, handle of the current stream) for a CUDA tensor."""
    return x.device.index, torch.cuda.current_stream(x.device).cuda_stream


def launch(kernel: str, like: torch.Tensor, *args: int) -> None:
    """Call ``kernel`` of ``like``'s device module with ``args``, then ``like``'s dtype code and the
    device's own tail: the thread count on CPU, (device index, current stream) on CUDA."""
    if like.is_cpu:  # not like.device.type: building a torch.device costs 0.3 us
        ext, tail = cpu_kernels(), (torch.get_num_threads(),)
    else:
        ext, tail = cuda_kernels(), cuda_target(like)
    getattr(ext, kernel)(*args, dtype_code(ext, like.dtype), *tail)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def eager_inference(*tensors: torch.Tensor | None) -> bool:
    """Whether nothing needs to see a fused op go by, so its kernel may be called directly.

    True for plain tensors (and parameters) outside any compiler, tracer or dispatch
    mode, with no gradient wanted. The torch.library dispatch costs about 6 us per call, three
    times the SoftPool kernel at FTHNet's last stage (1.9 us; benchmarks/dispatch.py).
    Autograd, torch.compile, torch.export and fake tensors still go through the registered
    custom op.
    Plain loops rather than all()/any() over generators: this runs before every
    fused call, and a generator costs more than the checks themselves.
    """
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() or torch.jit.is_tracing():
        return False
    grad_enabled = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if type(t) not in _PLAIN:  # fake, functional or other wrapper tensors
            return False
        if grad_enabled and t.requires_grad:
            return False
    return True
