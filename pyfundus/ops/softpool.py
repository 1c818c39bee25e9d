"""SoftPool 2-D (Stergiou et al., ICCV 2021): exponentially weighted pooling.

Per channel and window, ``y = sum(x * e^x) / sum(e^x)``, computed as
``sum(x * e^(x-m)) / sum(e^(x-m))`` with ``m`` the window maximum, so inputs in
the thousands neither overflow nor give NaN. No padding: the output is
``floor((H - kh) / sh) + 1`` by ``floor((W - kw) / sw) + 1`` and a kernel larger
than the input is an error. The stride defaults to the kernel size.

Two implementations with the same semantics:

* :func:`softpool2d_reference`: plain torch, any device, autograd, ONNX export.
* the fused custom op ``torch.ops.pyfundus.softpool2d`` (C++/OpenMP on CPU,
  CUDA on GPU) with its backward ``pyfundus::softpool2d_backward``; both have
  fake kernels, so ``torch.compile(fullgraph=True)`` and ``torch.export`` work.

:func:`softpool2d` picks one (``impl=`` or :func:`pyfundus.ops.config.kernel_mode`).
"""

# No ``from __future__ import annotations``: torch.library reads the op
# signatures from the annotations.
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._ext import DTYPE_NAMES, HALF_TYPES, cuda_kernels, dtype_code, eager_inference, launch
from .config import kernel_mode

__all__ = ["softpool2d", "softpool2d_reference"]

IntOrPair = Union[int, tuple[int, int], list[int]]


class _Geometry(NamedTuple):
    kh: int
    kw: int
    sh: int
    sw: int
    oh: int
    ow: int


def _pair(value: IntOrPair, name: str) -> tuple[int, int]:
    # Exact type checks: they reject bools and are cheaper than an ABC
    # isinstance, which matters for batch-1 calls that take microseconds.
    if type(value) is int:
        pair = (value, value)
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and type(value[0]) is int
        and type(value[1]) is int
    ):
        pair = (value[0], value[1])
    else:
        raise TypeError(f"softpool2d: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"softpool2d: {name} must be >= 1, got {value!r}")
    return pair


def _geometry(x: Tensor, kernel_size: IntOrPair, stride: Optional[IntOrPair]) -> _Geometry:
    """Validates the input and the window, and derives the output size."""
    if not isinstance(x, Tensor):
        raise TypeError(f"softpool2d expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"softpool2d expects a 4-D NCHW tensor, got shape {tuple(x.shape)}")
    if x.dtype not in DTYPE_NAMES:
        raise TypeError(
            f"softpool2d supports float32, float64, float16 and bfloat16 tensors, got {x.dtype}"
        )
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = (kh, kw) if stride is None else _pair(stride, "stride")
    h, w = x.shape[-2:]
    if kh > h or kw > w:
        raise ValueError(
            f"softpool2d: kernel_size ({kh}, {kw}) does not fit in the input of size "
            f"({h}, {w}) (there is no padding)"
        )
    return _Geometry(kh, kw, sh, sw, (h - kh) // sh + 1, (w - kw) // sw + 1)


# ---- reference ------------------------------------------------------------------


def softpool2d_reference(
    x: Tensor, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None
) -> Tensor:
    """SoftPool in plain torch: any device, autograd, torch.export and ONNX export."""
    kh, kw, sh, sw, oh, ow = _geometry(x, kernel_size, stride)
    n, c = x.shape[0], x.shape[1]
    if (sh, sw) == (kh, kw):
        # Tiles: crop what no window covers, then a reshape puts each window on
        # two axes of its own; no unfold copy.
        windows = x[:, :, : oh * kh, : ow * kw].reshape(n, c, oh, kh, ow, kw)
        dims: tuple[int, ...] = (3, 5)
    else:
        # unfold gives (n, c * kh * kw, oh * ow), channel-major.
        windows = F.unfold(x, (kh, kw), stride=(sh, sw)).reshape(n, c, kh * kw, oh, ow)
        dims = (2,)
    # The max only stabilises the exponent (its gradient cancels exactly),
    # so it stays out of the autograd graph.
    m = windows.amax(dim=dims, keepdim=True).detach()
    e = torch.exp(windows - m)
    return (windows * e).sum(dim=dims) / e.sum(dim=dims)


# ---- fused custom ops -------------------------------------------------------------


def _check_device(x: Tensor) -> None:
    if not (x.is_cpu or x.is_cuda):
        raise RuntimeError(
            f"the fused softpool2d runs on CPU and CUDA tensors, got a tensor on {x.device}; "
            "use impl='reference' (or PYFUNDUS_KERNELS=reference)"
        )


def _sizes(x: Tensor, g: _Geometry) -> tuple[int, ...]:
    """The (n, c, h, w, kh, kw, sh, sw) arguments of the kernel calls."""
    n, c, h, w = x.shape
    return (n, c, h, w, g.kh, g.kw, g.sh, g.sw)


def _forward(x: Tensor, g: _Geometry) -> Tensor:
    """Runs the kernel of x's device. The kernels read contiguous NCHW: other
    layouts (channels_last, views) are copied first."""
    x = x.contiguous()
    n, c, h, w = x.shape
    y = x.new_empty(n, c, g.oh, g.ow)  # sizes as ints: 0.3 us less than a tuple
    launch("softpool2d_forward", x, x.data_ptr(), y.data_ptr(), n, c, h, w, g.kh, g.kw, g.sh, g.sw)
    return y


def _backward(grad_y: Tensor, x: Tensor, g: _Geometry) -> Tensor:
    grad_y, x = grad_y.contiguous(), x.contiguous()
    grad_x = torch.empty_like(x)  # x is contiguous, so grad_x is too
    args = (grad_y.data_ptr(), x.data_ptr(), grad_x.data_ptr())
    if x.is_cpu:
        launch("softpool2d_backward", x, *args, *_sizes(x, g))
        return grad_x
    # Half types with overlapping windows accumulate in a float32 buffer,
    # taken from torch's allocator on the current stream.
    ext = cuda_kernels()
    scratch = None
    if ext.backward_needs_scratch(g.kh, g.kw, g.sh, g.sw, dtype_code(ext, x.dtype)):
        scratch = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    scratch_ptr = 0 if scratch is None else scratch.data_ptr()
    launch("softpool2d_backward", x, *args, scratch_ptr, *_sizes(x, g))
    return grad_x


def _check_grad(grad_y: Tensor, x: Tensor, g: _Geometry) -> None:
    expected = (x.shape[0], x.shape[1], g.oh, g.ow)
    if tuple(grad_y.shape) != expected or grad_y.dtype != x.dtype or grad_y.device != x.device:
        raise ValueError(
            f"softpool2d_backward: grad_y must be {x.dtype} of shape {expected} on {x.device}, "
            f"got {grad_y.dtype} of shape {tuple(grad_y.shape)} on {grad_y.device}"
        )


def _fused_forward(x: Tensor, g: _Geometry) -> Tensor:
    """The fused forward of an input ``_geometry`` has checked: what eager inference calls directly."""
    _check_device(x)
    if x.is_cpu and x.dtype in HALF_TYPES:
        # The CPU kernels are float32/float64; half types compute in float32.
        return _forward(x.float(), g).to(x.dtype)
    return _forward(x, g)


def _softpool2d_kernel(x: Tensor, kernel_size: list[int], stride: list[int]) -> Tensor:
    """The custom op's body."""
    return _fused_forward(x, _geometry(x, kernel_size, stride))


# Registered from a plain function; eager inference calls _fused_forward directly.
_softpool2d_op = torch.library.custom_op("pyfundus::softpool2d", _softpool2d_kernel, mutates_args=())


@_softpool2d_op.register_fake
def _softpool2d_fake(x: Tensor, kernel_size: list[int], stride: list[int]) -> Tensor:
    g = _geometry(x, kernel_size, stride)
    return x.new_empty((x.shape[0], x.shape[1], g.oh, g.ow))


@torch.library.custom_op("pyfundus::softpool2d_backward", mutates_args=())
def _softpool2d_backward_op(
    grad_y: Tensor, x: Tensor, kernel_size: list[int], stride: list[int]
) -> Tensor:
    g = _geometry(x, kernel_size, stride)
    _check_grad(grad_y, x, g)
    _check_device(x)
    if x.is_cpu and x.dtype in HALF_TYPES:
        return _backward(grad_y.float(), x.float(), g).to(x.dtype)
    return _backward(grad_y, x, g)


@_softpool2d_backward_op.register_fake
def _softpool2d_backward_fake(
    grad_y: Tensor, x: Tensor, kernel_size: list[int], stride: list[int]
) -> Tensor:
    _check_grad(grad_y, x, _geometry(x, kernel_size, stride))
    return x.new_empty(x.shape)  # contiguous, like the real kernel's result


def _setup_context(ctx, inputs, output) -> None:
    # Only x is kept: the backward recomputes each window's max and sums
    # anyway (it needs them for the weights), and y falls out of the same
    # pass, so saving y would hold memory without saving work.
    x, kernel_size, stride = inputs
    ctx.save_for_backward(x)
    ctx.kernel_size, ctx.stride = kernel_size, stride


def _softpool2d_autograd(ctx, grad_y: Tensor):
    (x,) = ctx.saved_tensors
    grad_x = torch.ops.pyfundus.softpool2d_backward(grad_y, x, ctx.kernel_size, ctx.stride)
    return grad_x, None, None


_softpool2d_op.register_autograd(_softpool2d_autograd, setup_context=_setup_context)


# ---- public entry -------------------------------------------------------------------


def softpool2d(
    x: Tensor,
    kernel_size: IntOrPair,
    stride: Optional[IntOrPair] = None,
    *,
    impl: Optional[str] = None,
) -> Tensor:
    """SoftPool over ``kernel_size`` windows moved by ``stride`` (default: the kernel size).

    Args:
        x: ``(N, C, H, W)`` float32, float64, float16 or bfloat16 tensor. The fused
            kernels read contiguous NCHW: other layouts (channels_last, views) are
            copied first. On CPU, float16/bfloat16 compute in float32.
        kernel_size, stride: an int or an ``(h, w)`` pair.
        impl: ``"fused"`` (C++/CUDA kernels, CPU and CUDA tensors only) or
            ``"reference"`` (plain torch); ``None`` follows
            :func:`pyfundus.ops.config.kernel_mode` (``$PYFUNDUS_KERNELS``).

    Returns:
        ``(N, C, (H - kh) // sh + 1, (W - kw) // sw + 1)``, the dtype of ``x``.
    """
    if impl is None:
        impl = kernel_mode()
    if impl == "reference":
        return softpool2d_reference(x, kernel_size, stride)
    if impl != "fused":
        raise ValueError(f"softpool2d: impl must be None, 'fused' or 'reference', got {impl!r}")
    g = _geometry(x, kernel_size, stride)
    if eager_inference(x):
        return _fused_forward(x, g)
    return torch.ops.pyfundus.softpool2d(x, [g.kh, g.kw], [g.sh, g.sw])
