"""FTHNet: fundus image quality assessment with a transformer backbone and a hypernetwork.

Gong et al., "Acquire precise and comparable fundus image quality score: FTHNet
and FQS dataset" (arXiv:2411.12273, 2024; Scientific Reports 2025,
doi:10.1038/s41598-025-24423-8). The parts, as in the paper:

* a Swin-style backbone on a 384x384 image: 4x4 patch embedding, four stages of
  (shifted-)window attention blocks on 96, 48, 24 and 12 token grids, patch
  merging at the start of stages 1-3;
* one distortion-perception block per stage: 1x1 conv to C/8 channels, SoftPool
  with a 12x12 window, linear layer; the four outputs form a 384-long vector V;
* a hypernetwork that turns the last stage's 12x12 map into the weights and
  biases of a small per-image target network (384-192-96-48-24-1);
* the target network, applied to V with batched matrix multiplies.

Tokens stay channels-last, (B, H, W, C), through the backbone: the window
attention op takes and returns that layout.

The forward pass returns the quality q on the MOS/100 scale (the training
target); 100 * q clamped to [0, 100] is the user-facing score. Two optional
linear heads read the distortion vector V as well: a 3-way class head and a
multi-label cause head (why an image is poor); ``forward_with_heads`` returns
all outputs. Both are off in the paper's configuration.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from ..ops.softpool import softpool2d
from ..ops.window_attention import shifted_window_mask, window_attention
from ..weights import InputSpec
from .registry import register_model

__all__ = ["FTHNet", "fthnet_s", "fthnet_l"]

# Target network layer widths; V (the distortion vector) is its 384-long input.
TARGET_WIDTHS = (384, 192, 96, 48, 24, 1)
# Distortion-perception output widths per stage: they concatenate to 384.
DISTORTION_WIDTHS = (32, 32, 32, 288)


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, prob: float = 0.0):
        super().__init__()
        self.prob = prob

    def forward(self, x: Tensor) -> Tensor:
        if self.prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float = 4.0):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def relative_position_index(window_size: int) -> Tensor:
    """(N*N,) index into the (2w-1)^2 bias table for each pair of window tokens."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # (2, N)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return (relative[..., 0] * (2 * window_size - 1) + relative[..., 1]).flatten()


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (optionally shifted) windows with relative-position bias."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, grid_size: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Constants, not parameters: precomputed so ONNX export sees plain tensors.
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        mask = shifted_window_mask(grid_size, grid_size, window_size, shift_size) if shift_size else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def relative_position_bias(self) -> Tensor:
        tokens = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index]
        return bias.view(tokens, tokens, self.num_heads).permute(2, 0, 1).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        out = window_attention(
            self.qkv(x),
            self.relative_position_bias(),
            self.num_heads,
            self.window_size,
            self.shift_size,
            self.attn_mask,
        )
        return self.proj(out)


class SwinBlock(nn.Module):
    def __init__(self, dim, num_heads, window_size, shift_size, grid_size, mlp_ratio=4.0, drop_path=0.0):
        super().__init__()
        if grid_size <= window_size:
            # One window covers the whole map: shifting would only wrap it around.
            window_size, shift_size = grid_size, 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, shift_size, grid_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm -> linear 4C -> 2C: halves the grid, doubles the width."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class Stage(nn.Module):
    def __init__(self, dim_in, dim, depth, num_heads, window_size, grid_size, shift, drop_paths, downsample):
        super().__init__()
        self.downsample = PatchMerging(dim_in) if downsample else nn.Identity()
        self.blocks = nn.Sequential(
            *[
                SwinBlock(
                    dim,
                    num_heads,
                    window_size,
                    shift_size=window_size // 2 if (shift and i % 2) else 0,
                    grid_size=grid_size,
                    drop_path=drop_paths[i],
                )
                for i in range(depth)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class DistortionPerception(nn.Module):
    """Per-stage distortion features: 1x1 conv to C/8, SoftPool over 12x12 windows, linear."""

    def __init__(self, dim: int, grid_size: int, pool_size: int, out_features: int):
        super().__init__()
        self.reduce = nn.Conv2d(dim, dim // 8, kernel_size=1, bias=False)
        self.pool_size = pool_size
        pooled = (grid_size // pool_size) ** 2
        self.fc = nn.Linear(dim // 8 * pooled, out_features)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.reduce(tokens.permute(0, 3, 1, 2))
        x = softpool2d(x, self.pool_size)
        return self.fc(x.flatten(1))


class TargetLayerGenerator(nn.Module):
    """Writes one target layer's per-image weights (3x3 conv) and bias (global SoftPool + linear)."""

    def __init__(self, in_channels: int, fan_in: int, fan_out: int, grid_size: int):
        super().__init__()
        cells = grid_size * grid_size
        if (fan_in * fan_out) % cells:
            raise ValueError(f"a {fan_out}x{fan_in} weight does not tile a {grid_size}x{grid_size} map")
        self.fan_in, self.fan_out, self.grid_size = fan_in, fan_out, grid_size
        self.weight = nn.Conv2d(in_channels, fan_in * fan_out // cells, kernel_size=3, padding=1)
        self.bias = nn.Linear(in_channels, fan_out)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        weight = self.weight(features).reshape(-1, self.fan_out, self.fan_in)
        bias = self.bias(softpool2d(features, self.grid_size).flatten(1))
        return weight, bias


class HyperNetwork(nn.Module):
    """Generates the target network's weights and biases from the last stage's 12x12 map.

    ``downsampling="stepwise"`` (the paper's choice) reduces the feature map
    384 -> 192 -> 96 -> 48 -> 24 in a chain, one step before each target layer;
    ``"direct"`` reduces the 384-channel map to each width with its own 1x1 conv.
    """

    def __init__(self, in_channels: int, grid_size: int, downsampling: Literal["stepwise", "direct"] = "stepwise"):
        super().__init__()
        if downsampling not in ("stepwise", "direct"):
            raise ValueError(f"downsampling must be 'stepwise' or 'direct', not {downsampling!r}")
        self.downsampling = downsampling
        widths = TARGET_WIDTHS
        self.norm = nn.LayerNorm(in_channels)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], kernel_size=1), nn.GELU())
        self.reducers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(widths[i] if downsampling == "stepwise" else widths[0], widths[i + 1], kernel_size=1),
                nn.GELU(),
            )
            for i in range(len(widths) - 2)
        )
        self.generators = nn.ModuleList(
            TargetLayerGenerator(widths[i], widths[i], widths[i + 1], grid_size) for i in range(len(widths) - 2)
        )
        last_features = widths[-2] * grid_size * grid_size
        self.last_weight = nn.Linear(last_features, widths[-2])
        self.last_bias = nn.Linear(last_features, 1)

    def forward(self, tokens: Tensor) -> list[tuple[Tensor, Tensor]]:
        stem = self.stem(self.norm(tokens).permute(0, 3, 1, 2))
        features, layers = stem, []
        for generator, reducer in zip(self.generators, self.reducers):
            layers.append(generator(features))
            features = reducer(features if self.downsampling == "stepwise" else stem)
        flat = features.flatten(1)
        layers.append((self.last_weight(flat).unsqueeze(1), self.last_bias(flat)))
        return layers


class StaticTargetNetwork(nn.Module):
    """The "without hypernetwork" ablation: one learned target network shared by all images."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(TARGET_WIDTHS[:-1], TARGET_WIDTHS[1:]))

    def forward(self, distortion: Tensor) -> Tensor:
        x = distortion
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.sigmoid(x)
        return x.squeeze(-1)


def apply_target_network(distortion: Tensor, layers: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """Run each image's own target network on its distortion vector with bmm."""
    x = distortion.unsqueeze(-1)  # (B, 384, 1)
    for i, (weight, bias) in enumerate(layers):
        x = torch.bmm(weight, x) + bias.unsqueeze(-1)
        if i < len(layers) - 1:
            x = torch.sigmoid(x)
    return x.flatten()


class FTHNet(nn.Module):
    """FTHNet quality model. ``forward`` returns q, the MOS/100 quality, shape (B,)."""

    def __init__(
        self,
        img_size: int = 384,
        patch_size: int = 4,
        embed_dim: int = 32,
        depths: Sequence[int] = (2, 4, 6, 2),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        window_size: int = 12,
        shift: bool = True,
        hypernetwork: bool = True,
        hyper_downsampling: Literal["stepwise", "direct"] = "stepwise",
        drop_path_rate: float = 0.1,
        num_classes: int = 0,
        num_causes: int = 0,
    ):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError("FTHNet has four stages: depths and num_heads need four entries each")
        grids = [img_size // patch_size // 2**i for i in range(4)]
        if grids[-1] * 2**3 * patch_size != img_size or grids[-1] % window_size:
            raise ValueError(f"img_size {img_size} does not give whole {window_size}x{window_size} windows at every stage")
        self.img_size = img_size
        self.input_spec = InputSpec(size=img_size)  # the contract a saved model carries (pyfundus.weights)
        dims = [embed_dim * 2**i for i in range(4)]
        self.patch_embed = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.patch_norm = nn.LayerNorm(embed_dim)
        drop_paths = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i in range(4):
            start = sum(depths[:i])
            self.stages.append(
                Stage(
                    dims[max(i - 1, 0)],
                    dims[i],
                    depths[i],
                    num_heads[i],
                    window_size,
                    grids[i],
                    shift,
                    drop_paths[start : start + depths[i]],
                    downsample=i > 0,
                )
            )
        self.distortion = nn.ModuleList(
            DistortionPerception(dims[i], grids[i], window_size, DISTORTION_WIDTHS[i]) for i in range(4)
        )
        if hypernetwork:
            self.hypernet = HyperNetwork(dims[-1], grids[-1], hyper_downsampling)
            self.target = None
        else:
            self.hypernet = None
            self.target = StaticTargetNetwork()
        width = TARGET_WIDTHS[0]
        self.class_head = nn.Linear(width, num_classes) if num_classes else None
        self.cause_head = nn.Linear(width, num_causes) if num_causes else None
        self.apply(_init_weights)

    def forward_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (V, last-stage tokens): the distortion vector and the (B, 12, 12, 8E) map."""
        x = self.patch_norm(self.patch_embed(images).permute(0, 2, 3, 1))
        distortion = []
        for stage, perceive in zip(self.stages, self.distortion):
            x = stage(x)
            distortion.append(perceive(x))
        return torch.cat(distortion, dim=1), x

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_with_heads(images)["quality"]

    def forward_with_heads(self, images: Tensor) -> dict[str, Tensor]:
        """{"quality": (B,)} plus "class_logits" (B, classes) and "cause_logits" (B, causes) when those heads exist."""
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"FTHNet expects {self.img_size}x{self.img_size} inputs, got {tuple(images.shape[-2:])}")
        distortion, tokens = self.forward_features(images)
        if self.hypernet is None:
            outputs = {"quality": self.target(distortion)}
        else:
            outputs = {"quality": apply_target_network(distortion, self.hypernet(tokens))}
        if self.class_head is not None:
            outputs["class_logits"] = self.class_head(distortion)
        if self.cause_head is not None:
            outputs["cause_logits"] = self.cause_head(distortion)
        return outputs


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_model
def fthnet_s(**kwargs) -> FTHNet:
    """FTHNet-S: E=32, depths (2, 4, 6, 2), heads (2, 4, 8, 16); 5.662 M parameters."""
    return FTHNet(**{"embed_dim": 32, "depths": (2, 4, 6, 2), "num_heads": (2, 4, 8, 16), **kwargs})


@register_model
def fthnet_l(**kwargs) -> FTHNet:
    """FTHNet-L: E=64, depths (2, 2, 6, 2), heads (2, 4, 8, 16); 14.88 M parameters."""
    return FTHNet(**{"embed_dim": 64, "depths": (2, 2, 6, 2), "num_heads": (2, 4, 8, 16), **kwargs})
