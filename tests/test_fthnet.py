"""FTHNet architecture: faithfulness (parameter counts), shapes, attention semantics, registry, weights."""

import itertools
import subprocess
import sys

import pytest
import torch

from pyfundus.models import create_model, list_models
from pyfundus.models.fthnet import FTHNet, relative_position_index
from pyfundus.ops.window_attention import shifted_window_mask, window_attention_reference


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# The paper's own figures (Gong et al., arXiv:2411.12273: Tables 2/3 and the depth/width ablation rows).
@pytest.mark.parametrize(
    "name, kwargs, paper_millions",
    [
        ("fthnet_s", {}, 5.662),
        ("fthnet_l", {}, 14.88),
        ("fthnet_s", {"depths": (2, 2, 2, 2)}, 4.748),
        ("fthnet_s", {"depths": (2, 2, 6, 2)}, 5.558),
        ("fthnet_s", {"embed_dim": 64}, 15.28),
        ("fthnet_s", {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)}, 30.34),
    ],
)
def test_parameter_counts_match_paper(name, kwargs, paper_millions):
    count = n_params(create_model(name, **kwargs)) / 1e6
    assert abs(count - paper_millions) / paper_millions < 0.005, count
    # Not just close: equal to the paper's rounding.
    assert round(count, len(str(paper_millions).split(".")[1])) == paper_millions


def test_exact_counts_of_the_two_factories():
    assert n_params(create_model("fthnet_s")) == 5_662_293
    assert n_params(create_model("fthnet_l")) == 14_877_933


def test_registry():
    assert {"fthnet_s", "fthnet_l"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'nope'.*fthnet_s"):
        create_model("nope")


@pytest.fixture(scope="module")
def small_images():
    torch.manual_seed(0)
    return torch.randn(2, 3, 384, 384)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"shift": False}, {"hypernetwork": False}, {"hyper_downsampling": "direct"}, {"depths": (2, 2, 2, 2)}],
)
def test_forward_shape_and_ablation_switches(kwargs, small_images):
    model = create_model("fthnet_s", **kwargs).eval()
    with torch.no_grad():
        q = model(small_images)
    assert q.shape == (2,)
    assert torch.isfinite(q).all()


def test_ablations_change_the_architecture():
    base = create_model("fthnet_s")
    assert create_model("fthnet_s", hypernetwork=False).hypernet is None
    assert n_params(create_model("fthnet_s", hyper_downsampling="direct")) != n_params(base)
    shifts = [b.attn.shift_size for s in create_model("fthnet_s", shift=False).stages for b in s.blocks]
    assert set(shifts) == {0}
    shifts = [b.attn.shift_size for s in base.stages for b in s.blocks]
    # Odd blocks shift by window/2, except on the 12x12 grid that one window covers.
    assert shifts == [0, 6, 0, 6, 0, 6, 0, 6, 0, 6, 0, 6, 0, 0]


def test_per_image_target_networks_differ(small_images):
    model = create_model("fthnet_s").eval()
    with torch.no_grad():
        _, tokens = model.forward_features(small_images)
        layers = model.hypernet(tokens)
    shapes = [tuple(w.shape) for w, _ in layers]
    assert shapes == [(2, 192, 384), (2, 96, 192), (2, 48, 96), (2, 24, 48), (2, 1, 24)]
    first_weight = layers[0][0]
    assert not torch.allclose(first_weight[0], first_weight[1])


def test_batch_independence(small_images):
    model = create_model("fthnet_s").eval()
    with torch.no_grad():
        together = model(small_images)
        alone = torch.stack([model(small_images[i : i + 1])[0] for i in range(2)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter(small_images):
    model = create_model("fthnet_s", drop_path_rate=0.0).train()
    model(small_images).sum().backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not dead


def test_wrong_input_size_is_rejected():
    with pytest.raises(ValueError, match="384x384"):
        create_model("fthnet_s")(torch.randn(1, 3, 256, 256))
    with pytest.raises(ValueError, match="whole 12x12 windows"):
        FTHNet(img_size=400)


# ---- window attention semantics, against a naive per-token implementation ------


def naive_window_attention(qkv, bias, heads, ws, shift):
    """Token by token: attend to the tokens of the same shifted window and the same image region."""
    b, h, w, c3 = qkv.shape
    c = c3 // 3
    hd = c // heads
    q, k, v = qkv.split(c, dim=-1)
    out = torch.zeros(b, h, w, c, dtype=qkv.dtype)

    def region(i, n):  # which of the three bands a shifted coordinate falls in
        return 0 if i < n - ws else (1 if i < n - shift else 2)

    for y, x in itertools.product(range(h), range(w)):
        sy, sx = (y - shift) % h, (x - shift) % w  # position after the cyclic shift
        wy, wx = sy // ws, sx // ws
        keys = []
        for ky, kx in itertools.product(range(wy * ws, wy * ws + ws), range(wx * ws, wx * ws + ws)):
            if shift and (region(ky, h), region(kx, w)) != (region(sy, h), region(sx, w)):
                continue
            keys.append((ky, kx))
        src = [((ky + shift) % h, (kx + shift) % w) for ky, kx in keys]
        qi = (sy % ws) * ws + sx % ws
        kis = [(ky % ws) * ws + kx % ws for ky, kx in keys]
        for head in range(heads):
            sl = slice(head * hd, (head + 1) * hd)
            kk = torch.stack([k[:, yy, xx, sl] for yy, xx in src], dim=1)  # (b, n, hd)
            vv = torch.stack([v[:, yy, xx, sl] for yy, xx in src], dim=1)
            logits = (kk @ q[:, y, x, sl].unsqueeze(-1)).squeeze(-1) * hd**-0.5 + bias[head, qi, kis]
            out[:, y, x, sl] = (logits.softmax(-1).unsqueeze(-1) * vv).sum(1)
    return out


@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_matches_naive(shift):
    torch.manual_seed(1)
    heads, ws, size, c = 2, 4, 8, 16
    qkv = torch.randn(2, size, size, 3 * c, dtype=torch.float64)
    bias = torch.randn(heads, ws * ws, ws * ws, dtype=torch.float64)
    mask = shifted_window_mask(size, size, ws, shift).double() if shift else None
    fast = window_attention_reference(qkv, bias, heads, ws, shift, mask)
    slow = naive_window_attention(qkv, bias, heads, ws, shift)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)


def test_shift_without_mask_is_an_error():
    with pytest.raises(ValueError, match="attn_mask"):
        window_attention_reference(torch.randn(1, 8, 8, 12), torch.zeros(2, 16, 16), 2, 4, 2, None)


def test_relative_position_index_is_symmetric_in_offsets():
    index = relative_position_index(3).view(9, 9)
    assert index.max() == 24 and index.min() == 0
    assert (index.diagonal() == 12).all()  # zero offset sits in the table's centre
    assert (index + index.T == 24).all()  # offset d and -d mirror around the centre


# ---- import cost ------------------------------------------------------------


def test_import_is_cheap():
    code = "import sys, pyfundus; assert 'torch' not in sys.modules, 'torch imported at package import'"
    subprocess.run([sys.executable, "-c", code], check=True)
