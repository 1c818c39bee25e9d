"""(Shifted-)window multi-head self-attention as one replaceable function.

The Swin block hands over its qkv projection in the merged, un-shifted token
layout and gets the attention output back in that same layout. Everything in
between (cyclic shift, window partition, scaled QK^T + relative-position bias +
shift mask, softmax, times V, window merge, reverse shift) lives here, so a
fused kernel replaces the whole sequence without touching the model.

Two implementations with the same semantics:

* :func:`window_attention_reference`: plain torch, any device, autograd, ONNX export.
* the fused custom op ``torch.ops.pyfundus.window_attention`` (C++/OpenMP on
  CPU, CUDA on GPU) with its backward ``pyfundus::window_attention_backward``.
  One kernel call reads qkv where it lies: the shift and the partition are
  index arithmetic in its loads, and the output is written straight back in
  image layout. The backward recomputes the probabilities instead of saving
  them. Both ops have fake kernels, so ``torch.compile`` and ``torch.export`` work.

:func:`window_attention` picks one (``impl=`` or :func:`pyfundus.ops.config.kernel_mode`).
"""

# No ``from __future__ import annotations``: torch.library reads the op
# signatures from the annotations.
from typing import Optional

import torch
from torch import Tensor

from ._ext import DTYPE_NAMES, HALF_TYPES, eager_inference, launch
from .config import kernel_mode

__all__ = ["shifted_window_mask", "window_attention", "window_attention_reference"]


def shifted_window_mask(height: int, width: int, window_size: int, shift_size: int) -> Tensor:
    """Additive mask (num_windows, N, N): 0 inside a region, -100 across regions.

    After the cyclic shift, windows on the bottom/right edges hold tokens from
    opposite sides of the image; they must not attend to each other.
    """
    region = torch.zeros(height, width, dtype=torch.long)
    bands = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    label = 0
    for rows in bands:
        for cols in bands:
            region[rows, cols] = label
            label += 1
    windows = region.view(height // window_size, window_size, width // window_size, window_size)
    windows = windows.permute(0, 2, 1, 3).reshape(-1, window_size * window_size)
    different = windows.unsqueeze(1) != windows.unsqueeze(2)
    return different.float() * -100.0


def window_attention_reference(
    qkv: Tensor,
    relative_position_bias: Tensor,
    num_heads: int,
    window_size: int,
    shift_size: int = 0,
    attn_mask: Optional[Tensor] = None,
) -> Tensor:
    """Plain-torch window attention.

    qkv: (B, H, W, 3C) in image layout; relative_position_bias: (heads, N, N)
    with N = window_size**2; attn_mask: (num_windows, N, N), required when
    shift_size > 0. Returns (B, H, W, C) in image layout, before the output
    projection.
    """
    batch, height, width, channels3 = qkv.shape
    channels = channels3 // 3
    head_dim = channels // num_heads
    rows, cols = height // window_size, width // window_size
    tokens = window_size * window_size
    if shift_size:
        qkv = torch.roll(qkv, shifts=(-shift_size, -shift_size), dims=(1, 2))
    # (B, rows, ws, cols, ws, 3, heads, hd) -> (3, B*windows, heads, N, hd)
    qkv = qkv.reshape(batch, rows, window_size, cols, window_size, 3, num_heads, head_dim)
    qkv = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, batch * rows * cols, num_heads, tokens, head_dim)
    q, k, v = qkv.unbind(0)
    attn = (q * head_dim**-0.5) @ k.transpose(-2, -1)
    attn = attn + relative_position_bias.unsqueeze(0)
    if shift_size:
        if attn_mask is None:
            raise ValueError("shifted window attention needs attn_mask (see shifted_window_mask)")
        attn = attn.view(batch, rows * cols, num_heads, tokens, tokens) + attn_mask.unsqueeze(1)
        attn = attn.view(-1, num_heads, tokens, tokens)
    attn = attn.softmax(dim=-1)
    out = attn @ v  # (B*windows, heads, N, hd)
    out = out.view(batch, rows, cols, num_heads, window_size, window_size, head_dim)
    out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, height, width, channels)
    if shift_size:
        out = torch.roll(out, shifts=(shift_size, shift_size), dims=(1, 2))
    return out


# ---- fused custom ops -------------------------------------------------------------


def _check_inputs(
    qkv: Tensor, bias: Tensor, mask: Optional[Tensor], num_heads: int, window_size: int, shift_size: int
) -> None:
    """The fused ops' argument checks, with the messages a caller can act on."""
    if qkv.dim() != 4 or qkv.shape[-1] % 3:
        raise ValueError(f"window_attention: qkv must be (B, H, W, 3C), got shape {tuple(qkv.shape)}")
    if qkv.dtype not in DTYPE_NAMES:
        raise TypeError(f"window_attention supports float32, float64, float16 and bfloat16, got {qkv.dtype}")
    _, height, width, channels3 = qkv.shape
    if num_heads < 1 or (channels3 // 3) % num_heads:
        raise ValueError(f"window_attention: {channels3 // 3} channels do not split into {num_heads} heads")
    if window_size < 1 or height % window_size or width % window_size:
        raise ValueError(f"window_attention: window_size {window_size} does not divide the grid ({height}, {width})")
    if not 0 <= shift_size < window_size:
        raise ValueError(f"window_attention: shift_size must be in [0, {window_size}), got {shift_size}")
    tokens = window_size * window_size
    expected = {"relative_position_bias": (bias, (num_heads, tokens, tokens))}
    if mask is not None:
        windows = (height // window_size) * (width // window_size)
        expected["attn_mask"] = (mask, (windows, tokens, tokens))
    # Half-type qkv may come with float32 bias and mask: the CPU bfloat16 kernel reads them so.
    dtypes = (qkv.dtype, torch.float32) if qkv.dtype in HALF_TYPES else (qkv.dtype,)
    device = qkv.device
    for name, (tensor, shape) in expected.items():
        if tensor.shape != shape or tensor.dtype not in dtypes or tensor.device != device:
            raise ValueError(
                f"window_attention: {name} must be {' or '.join(map(str, dtypes))} of shape {shape} "
                f"on {qkv.device}, got {tensor.dtype} of shape {tuple(tensor.shape)} on {tensor.device}"
            )
    if not (qkv.is_cpu or qkv.is_cuda):
        raise RuntimeError(
            f"the fused window_attention runs on CPU and CUDA tensors, got a tensor on {qkv.device}; "
            "use impl='reference' (or PYFUNDUS_KERNELS=reference)"
        )


def _sizes(qkv: Tensor, num_heads: int, window_size: int, shift_size: int) -> tuple[int, ...]:
    """The (batch, height, width, channels, heads, window, shift) arguments of the kernels."""
    batch, height, width, channels3 = qkv.shape
    return (batch, height, width, channels3 // 3, num_heads, window_size, shift_size)


def _mask_ptr(mask: Optional[Tensor]) -> int:
    return 0 if mask is None else mask.data_ptr()


def _forward(qkv: Tensor, bias: Tensor, mask: Optional[Tensor], sizes: tuple[int, ...]) -> Tensor:
    """Runs the kernel of qkv's device on contiguous copies of the inputs."""
    qkv, bias = qkv.contiguous(), bias.contiguous()
    mask = None if mask is None else mask.contiguous()
    batch, height, width, channels3 = qkv.shape
    out = qkv.new_empty(batch, height, width, channels3 // 3)  # sizes as ints: 0.3 us less than a tuple
    launch("window_attention_forward", qkv, qkv.data_ptr(), bias.data_ptr(), _mask_ptr(mask), out.data_ptr(), *sizes)
    return out


def _backward(
    grad_out: Tensor, qkv: Tensor, bias: Tensor, mask: Optional[Tensor], sizes: tuple[int, ...]
) -> tuple[Tensor, Tensor]:
    grad_out, qkv, bias = grad_out.contiguous(), qkv.contiguous(), bias.contiguous()
    mask = None if mask is None else mask.contiguous()
    if qkv.is_cpu:
        grad_qkv, grad_bias = torch.empty_like(qkv), torch.empty_like(bias)
    else:
        # The CUDA kernel adds the key/value and bias gradients of many blocks
        # atomically, so it accumulates into zeroed float32 (float64) buffers
        # taken from torch's allocator on the current stream; one cast at the end.
        accum = torch.float64 if qkv.dtype == torch.float64 else torch.float32
        grad_qkv = torch.zeros(qkv.shape, dtype=accum, device=qkv.device)
        grad_bias = torch.zeros(bias.shape, dtype=accum, device=qkv.device)
    launch(
        "window_attention_backward", qkv,
        grad_out.data_ptr(), qkv.data_ptr(), bias.data_ptr(), _mask_ptr(mask),
        grad_qkv.data_ptr(), grad_bias.data_ptr(), *sizes,
    )  # fmt: skip
    return grad_qkv.to(qkv.dtype), grad_bias.to(qkv.dtype)


def _on_cpu_in_half(qkv: Tensor) -> bool:
    # The CPU kernels compute in float32 (float64); half types are read into float32.
    return qkv.is_cpu and qkv.dtype in HALF_TYPES


def _side_dtype(qkv: Tensor) -> torch.dtype:
    """The dtype the kernels read the bias and the mask in: float32 for half types on CPU, else qkv's."""
    return torch.float32 if _on_cpu_in_half(qkv) else qkv.dtype


def _as(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    # The dtype test first: even a no-op .to() costs about 1 us.
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _window_attention_kernel(
    qkv: Tensor,
    relative_position_bias: Tensor,
    attn_mask: Optional[Tensor],
    num_heads: int,
    window_size: int,
    shift_size: int,
) -> Tensor:
    """The custom op's body."""
    _check_inputs(qkv, relative_position_bias, attn_mask, num_heads, window_size, shift_size)
    side = _side_dtype(qkv)
    bias, mask = _as(relative_position_bias, side), _as(attn_mask, side)
    return _fused_forward(qkv, bias, mask, _sizes(qkv, num_heads, window_size, shift_size))


def _fused_forward(qkv: Tensor, bias: Tensor, mask: Optional[Tensor], sizes: tuple[int, ...]) -> Tensor:
    """The fused forward of checked inputs whose bias and mask are already in ``_side_dtype(qkv)``:
    what eager inference calls directly."""
    if qkv.is_cpu and qkv.dtype == torch.float16:
        # The CPU kernel reads and writes bfloat16 itself; float16 goes through a float32 copy.
        return _forward(qkv.float(), bias, mask, sizes).to(qkv.dtype)
    return _forward(qkv, bias, mask, sizes)


# Registered from a plain function; eager inference calls _fused_forward directly.
_window_attention_op = torch.library.custom_op("pyfundus::window_attention", _window_attention_kernel, mutates_args=())


@_window_attention_op.register_fake
def _window_attention_fake(
    qkv: Tensor,
    relative_position_bias: Tensor,
    attn_mask: Optional[Tensor],
    num_heads: int,
    window_size: int,
    shift_size: int,
) -> Tensor:
    _check_inputs(qkv, relative_position_bias, attn_mask, num_heads, window_size, shift_size)
    return qkv.new_empty((*qkv.shape[:3], qkv.shape[3] // 3))


def _check_grad_out(grad_out: Tensor, qkv: Tensor) -> None:
    expected = (*qkv.shape[:3], qkv.shape[3] // 3)
    if tuple(grad_out.shape) != expected or grad_out.dtype != qkv.dtype or grad_out.device != qkv.device:
        raise ValueError(
            f"window_attention_backward: grad_out must be {qkv.dtype} of shape {expected} on "
            f"{qkv.device}, got {grad_out.dtype} of shape {tuple(grad_out.shape)} on {grad_out.device}"
        )


@torch.library.custom_op("pyfundus::window_attention_backward", mutates_args=())
def _window_attention_backward_op(
    grad_out: Tensor,
    qkv: Tensor,
    relative_position_bias: Tensor,
    attn_mask: Optional[Tensor],
    num_heads: int,
    window_size: int,
    shift_size: int,
) -> tuple[Tensor, Tensor]:
    _check_inputs(qkv, relative_position_bias, attn_mask, num_heads, window_size, shift_size)
    _check_grad_out(grad_out, qkv)
    sizes = _sizes(qkv, num_heads, window_size, shift_size)
    side = _side_dtype(qkv)
    bias, mask = _as(relative_position_bias, side), _as(attn_mask, side)
    if _on_cpu_in_half(qkv):  # the CPU backward is float32/float64 only
        grad_out, qkv_in = grad_out.float(), qkv.float()
    else:
        qkv_in = qkv
    grad_qkv, grad_bias = _backward(grad_out, qkv_in, bias, mask, sizes)
    return grad_qkv.to(qkv.dtype), grad_bias.to(relative_position_bias.dtype)


@_window_attention_backward_op.register_fake
def _window_attention_backward_fake(
    grad_out: Tensor,
    qkv: Tensor,
    relative_position_bias: Tensor,
    attn_mask: Optional[Tensor],
    num_heads: int,
    window_size: int,
    shift_size: int,
) -> tuple[Tensor, Tensor]:
    _check_inputs(qkv, relative_position_bias, attn_mask, num_heads, window_size, shift_size)
    _check_grad_out(grad_out, qkv)
    # Contiguous, like the real kernels' results.
    return qkv.new_empty(qkv.shape), relative_position_bias.new_empty(relative_position_bias.shape)


def _setup_context(ctx, inputs, output) -> None:
    # The inputs, not the probabilities: the backward recomputes them, which
    # costs one more QK^T per window but no (B * windows, heads, N, N) tensor.
    qkv, bias, mask, num_heads, window_size, shift_size = inputs
    ctx.save_for_backward(qkv, bias, mask)
    ctx.config = (num_heads, window_size, shift_size)


def _window_attention_autograd(ctx, grad_out: Tensor):
    qkv, bias, mask = ctx.saved_tensors
    grad_qkv, grad_bias = torch.ops.pyfundus.window_attention_backward(grad_out, qkv, bias, mask, *ctx.config)
    return grad_qkv, grad_bias, None, None, None, None


_window_attention_op.register_autograd(_window_attention_autograd, setup_context=_setup_context)


# ---- public entry -------------------------------------------------------------------


def window_attention(
    qkv: Tensor,
    relative_position_bias: Tensor,
    num_heads: int,
    window_size: int,
    shift_size: int = 0,
    attn_mask: Optional[Tensor] = None,
    *,
    impl: Optional[str] = None,
) -> Tensor:
    """The model's entry point: (shifted-)window attention, qkv in and output out in image layout.

    Args:
        qkv: ``(B, H, W, 3C)``, each token's values ordered (q|k|v, head, head_dim).
        relative_position_bias: ``(num_heads, N, N)`` with ``N = window_size**2``.
        num_heads, window_size: the window must divide H and W.
        shift_size: cyclic shift in ``[0, window_size)``.
        attn_mask: ``(num_windows, N, N)`` additive mask (:func:`shifted_window_mask`),
            required when ``shift_size > 0`` and ignored otherwise; never differentiated.
        impl: ``"fused"`` (C++/CUDA kernels, CPU and CUDA tensors only) or
            ``"reference"`` (plain torch); ``None`` follows
            :func:`pyfundus.ops.config.kernel_mode` (``$PYFUNDUS_KERNELS``).

    Returns:
        ``(B, H, W, C)``, the dtype of ``qkv``. The fused op casts the bias and the
        mask to that dtype, except on CPU with a half-type qkv, where they stay float32:
        the CPU kernels compute in float32 (bfloat16 qkv is read and the output written
        as bfloat16 directly; float16 goes through a float32 copy). On CUDA the head
        dimension is at most 128.
    """
    if impl is None:
        impl = kernel_mode()
    if impl == "reference":
        return window_attention_reference(qkv, relative_position_bias, num_heads, window_size, shift_size, attn_mask)
    if impl != "fused":
        raise ValueError(f"window_attention: impl must be None, 'fused' or 'reference', got {impl!r}")
    side_dtype = _side_dtype(qkv)
    if not shift_size:
        attn_mask = None
    elif attn_mask is None:
        raise ValueError("shifted window attention needs attn_mask (see shifted_window_mask)")
    else:
        attn_mask = _as(attn_mask, side_dtype)
    bias = _as(relative_position_bias, side_dtype)
    if eager_inference(qkv, bias, attn_mask):
        _check_inputs(qkv, bias, attn_mask, num_heads, window_size, shift_size)
        return _fused_forward(qkv, bias, attn_mask, _sizes(qkv, num_heads, window_size, shift_size))
    return torch.ops.pyfundus.window_attention(qkv, bias, attn_mask, num_heads, window_size, shift_size)
