"""(Shifted-)window multi-head self-attention as one replaceable function.

The Swin block hands over its qkv projection in the merged, un-shifted token
layout and gets the attention output back in that same layout. Everything in
between (cyclic shift, window partition, scaled QK^T + relative-position bias +
shift mask, softmax, times V, window merge, reverse shift) lives here, so a
fused kernel can replace the whole sequence without touching the model.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
    attn_mask: Tensor | None = None,
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


def window_attention(
    qkv: Tensor,
    relative_position_bias: Tensor,
    num_heads: int,
    window_size: int,
    shift_size: int = 0,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """The model's entry point: the one place a fused kernel replaces the reference."""
    return window_attention_reference(qkv, relative_position_bias, num_heads, window_size, shift_size, attn_mask)
