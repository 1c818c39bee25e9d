"""Window attention: the fused C++/CUDA op against the plain-torch reference.

CPU tests run everywhere; tests marked ``cuda`` need a GPU and the compiled
``pyfundus._C_cuda`` and are skipped (with the reason) otherwise.
"""

from __future__ import annotations

import importlib
import random

import pytest
import torch
from conftest import skip_or_fail
from cuda_helpers import requires_cuda

from pyfundus.models import create_model
from pyfundus.ops import window_attention as wa_module
from pyfundus.ops._ext import cpu_kernels
from pyfundus.ops.config import ENV_VAR, use_kernels
from pyfundus.ops.window_attention import (
    shifted_window_mask,
    window_attention,
    window_attention_reference,
)

FUSED = torch.ops.pyfundus.window_attention.default
FUSED_BACKWARD = torch.ops.pyfundus.window_attention_backward.default


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs difference relative to the largest expected magnitude."""
    scale = expected.abs().max().clamp_min(1e-12)
    return ((actual.double() - expected.double()).abs().max() / scale).item()


def make_inputs(batch, height, width, channels, heads, ws, shift, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, height, width, 3 * channels, generator=gen, dtype=torch.float64)
    bias = torch.randn(heads, ws * ws, ws * ws, generator=gen, dtype=torch.float64)
    mask = shifted_window_mask(height, width, ws, shift).to(dtype).to(device) if shift else None
    return qkv.to(dtype).to(device), bias.to(dtype).to(device), mask


def forward_backward(qkv, bias, heads, ws, shift, mask, impl, seed=7):
    """(out, dL/dqkv, dL/dbias) for L = sum(out * g) with a fixed random g."""
    qkv = qkv.detach().clone().requires_grad_()
    bias = bias.detach().clone().requires_grad_()
    out = window_attention(qkv, bias, heads, ws, shift, mask, impl=impl)
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype).to(out.device)
    grad_qkv, grad_bias = torch.autograd.grad(out, (qkv, bias), g)
    return out.detach(), grad_qkv, grad_bias


# (batch, height, width, channels, heads, window, shift)
STAGES_S = [  # FTHNet-S's four stages; odd blocks are shifted, the last grid is one window
    (1, 96, 96, 32, 2, 12, 6),
    (1, 48, 48, 64, 4, 12, 6),
    (1, 24, 24, 128, 8, 12, 6),
    (1, 12, 12, 256, 16, 12, 0),
]
CASES = [
    (2, 8, 8, 16, 2, 4, 0),
    (2, 8, 8, 16, 2, 4, 2),
    (3, 12, 8, 24, 3, 4, 1),  # odd batch, non-square grid, head_dim 8
    (1, 14, 21, 40, 5, 7, 3),  # window 7: 49 tokens, padded inside the kernel
    (5, 6, 6, 12, 1, 6, 0),  # one window, one head
    (1, 10, 10, 20, 4, 5, 4),  # head_dim 5: the CPU kernel takes any
    (2, 24, 24, 32, 1, 12, 6),  # head_dim 32
    (1, 4, 4, 8, 2, 1, 0),  # 1x1 windows
]


def _random_cases(count: int, seed: int):
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        ws = rng.randint(2, 8)
        heads = rng.randint(1, 4)
        head_dim = rng.choice([4, 8, 16, 24])
        shift = rng.choice([0, rng.randint(1, ws - 1)])
        height, width = ws * rng.randint(1, 3), ws * rng.randint(1, 3)
        cases.append((rng.choice([1, 2, 3, 5]), height, width, heads * head_dim, heads, ws, shift))
    return cases


ALL_CASES = CASES + _random_cases(16, seed=2026)


def _case_id(case) -> str:
    b, h, w, c, heads, ws, shift = case
    return f"b{b}-{h}x{w}x{c}-h{heads}-w{ws}-s{shift}"


# ---- parity --------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES, ids=_case_id)
def test_fused_matches_reference_float32(case):
    batch, height, width, channels, heads, ws, shift = case
    qkv, bias, mask = make_inputs(*case, seed=sum(case))
    fused = forward_backward(qkv, bias, heads, ws, shift, mask, "fused")
    ref = forward_backward(qkv, bias, heads, ws, shift, mask, "reference")
    assert fused[0].shape == (batch, height, width, channels) and fused[0].dtype == torch.float32
    for actual, expected in zip(fused, ref):
        assert actual.shape == expected.shape
        assert rel_err(actual, expected) < 2e-5


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fused_matches_reference_float64(case):
    heads, ws, shift = case[4:]
    qkv, bias, mask = make_inputs(*case, dtype=torch.float64, seed=3)
    fused = forward_backward(qkv, bias, heads, ws, shift, mask, "fused")
    ref = forward_backward(qkv, bias, heads, ws, shift, mask, "reference")
    for actual, expected in zip(fused, ref):
        assert rel_err(actual, expected) < 1e-12


@pytest.mark.parametrize("case", STAGES_S, ids=_case_id)
def test_fused_matches_reference_at_fthnet_shapes(case):
    heads, ws, shift = case[4:]
    qkv, bias, mask = make_inputs(*case, seed=1)
    fused = forward_backward(qkv, bias, heads, ws, shift, mask, "fused")
    ref = forward_backward(qkv, bias, heads, ws, shift, mask, "reference")
    for actual, expected in zip(fused, ref):
        assert rel_err(actual, expected) < 2e-5


@pytest.mark.parametrize("shift", [0, 2])
def test_fused_matches_the_naive_per_token_definition(shift):
    # The token-by-token implementation in test_fthnet.py, independent of the reference's reshapes.
    from test_fthnet import naive_window_attention

    heads, ws, size, channels = 2, 4, 8, 16
    qkv, bias, mask = make_inputs(2, size, size, channels, heads, ws, shift, dtype=torch.float64, seed=5)
    fused = window_attention(qkv, bias, heads, ws, shift, mask, impl="fused")
    torch.testing.assert_close(fused, naive_window_attention(qkv, bias, heads, ws, shift), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "case",
    [(2, 4, 4, 16, 2, 2, 0), (1, 6, 4, 16, 2, 2, 1), (3, 3, 6, 8, 1, 3, 2), (1, 4, 4, 24, 3, 4, 0)],
    ids=_case_id,
)
def test_gradcheck_float64(case):
    heads, ws, shift = case[4:]
    qkv, bias, mask = make_inputs(*case, dtype=torch.float64, seed=11)
    qkv.requires_grad_()
    bias.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda q, b: window_attention(q, b, heads, ws, shift, mask, impl="fused"), (qkv, bias)
    )


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_every_cpu_variant_matches_reference(isa, monkeypatch):
    # The kernels pick the widest variant the CPU has; PYFUNDUS_CPU_ISA caps it, so each
    # variant a CPU can run is checked there (a cap above the CPU falls back to what it has).
    monkeypatch.setenv("PYFUNDUS_CPU_ISA", isa)
    for case, dtype, tol in [
        ((3, 14, 21, 40, 5, 7, 3), torch.float32, 2e-5),
        ((2, 12, 12, 32, 2, 6, 3), torch.float32, 2e-5),  # 36 tokens padded to 48: AVX-512's wide products
        ((2, 8, 8, 32, 2, 4, 2), torch.float32, 2e-5),  # 16 tokens, unpadded: bias, mask and max in the product
        ((1, 12, 12, 32, 2, 12, 0), torch.float32, 2e-5),  # FTHNet's last stage: 144 tokens, no mask
        ((1, 8, 8, 48, 2, 4, 2), torch.float32, 2e-5),  # head_dim 24: transposed in part-filled register tiles
        ((1, 8, 8, 48, 2, 4, 2), torch.float64, 1e-12),
        ((1, 8, 8, 256, 2, 4, 2), torch.float32, 2e-5),  # head_dim 128, the largest the CUDA kernels take
        ((2, 8, 8, 16, 2, 4, 2), torch.float64, 1e-12),
        ((1, 12, 12, 16, 2, 6, 3), torch.float64, 1e-12),
    ]:
        heads, ws, shift = case[4:]
        qkv, bias, mask = make_inputs(*case, dtype=dtype, seed=17)
        fused = forward_backward(qkv, bias, heads, ws, shift, mask, "fused")
        ref = forward_backward(qkv, bias, heads, ws, shift, mask, "reference")
        for actual, expected in zip(fused, ref):
            assert rel_err(actual, expected) < tol


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
@pytest.mark.parametrize("ws", [4, 6], ids=["unpadded", "padded"])
def test_nan_reaches_the_same_outputs_as_in_the_reference(ws, isa, monkeypatch):
    # A NaN in one token's q spoils that token's row; one in k spoils its whole window and
    # head. Both code paths for the scores (bias and max added in the product's epilogue
    # when the window needs no padding, in a separate pass when it does) must agree.
    monkeypatch.setenv("PYFUNDUS_CPU_ISA", isa)
    qkv, bias, mask = make_inputs(1, 12, 12, 32, 2, ws, 2, seed=5)
    channels = 16
    qkv[0, 1, 2, 3] = float("nan")  # q of pixel (1, 2), head 0
    qkv[0, 7, 5, channels + 8 + 1] = float("nan")  # k of pixel (7, 5), head 1
    with torch.no_grad():
        fused = window_attention(qkv, bias, 2, ws, 2, mask, impl="fused")
        ref = window_attention(qkv, bias, 2, ws, 2, mask, impl="reference")
    assert fused.isnan().any()
    assert torch.equal(fused.isnan(), ref.isnan())
    finite = ~ref.isnan()
    assert rel_err(fused[finite], ref[finite]) < 2e-5


def test_bad_cpu_variant_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PYFUNDUS_CPU_ISA", "avx1024")
    qkv, bias, _ = make_inputs(1, 8, 8, 16, 2, 4, 0)
    with pytest.raises(ValueError, match="PYFUNDUS_CPU_ISA must be avx512, avx2 or baseline"):
        window_attention(qkv, bias, 2, 4, impl="fused")


# ---- numerics ------------------------------------------------------------------------


def test_large_scores_are_stable():
    # Scores in the thousands: without the max subtraction exp() overflows.
    case = (2, 8, 8, 16, 2, 4, 2)
    qkv, bias, mask = make_inputs(*case, seed=4)
    qkv = qkv * 40
    fused = forward_backward(qkv, bias, 2, 4, 2, mask, "fused")
    ref64 = forward_backward(qkv.double(), bias.double(), 2, 4, 2, mask.double(), "reference")
    assert all(torch.isfinite(t).all() for t in fused)
    assert rel_err(fused[0], ref64[0]) < 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)], ids=str)
def test_half_types_on_cpu_compute_in_float32(dtype, tol):
    case = (2, 8, 8, 16, 2, 4, 2)
    qkv, bias, mask = make_inputs(*case, dtype=dtype, seed=6)
    fused = forward_backward(qkv, bias, 2, 4, 2, mask, "fused")
    ref64 = forward_backward(qkv.double(), bias.double(), 2, 4, 2, mask.double(), "reference")
    for actual, expected in zip(fused, ref64):
        assert actual.dtype == dtype
        assert rel_err(actual, expected) < tol


@pytest.mark.parametrize("case", [*CASES[:4], STAGES_S[0], STAGES_S[3]], ids=_case_id)
@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_bfloat16_forward_on_cpu_equals_float32_rounded(case, isa, monkeypatch):
    # The CPU kernel reads bfloat16 qkv and writes bfloat16 itself: bit for bit the
    # float32 computation on a widened copy, rounded as torch rounds.
    monkeypatch.setenv("PYFUNDUS_CPU_ISA", isa)
    heads, ws, shift = case[4:]
    qkv, bias, mask = make_inputs(*case, dtype=torch.bfloat16, seed=11)
    with torch.no_grad():
        native = window_attention(qkv, bias.float(), heads, ws, shift, mask, impl="fused")
        widened = window_attention(qkv.float(), bias.float(), heads, ws, shift, _as_float(mask), impl="fused")
    assert native.dtype == torch.bfloat16
    assert torch.equal(native, widened.to(torch.bfloat16))


def test_bfloat16_rounding_matches_torch_on_special_values():
    # One token per window and one head: the output is v itself, so every value
    # goes through the kernel's bfloat16 -> float32 -> bfloat16 round trip.
    values = torch.tensor([1.0, -2.5, 3.0e38, -3.0e38, float("inf"), float("-inf"), float("nan"), 1e-40, 0.0])
    v = values.view(1, 1, values.numel(), 1).to(torch.bfloat16)
    qkv = torch.cat([torch.zeros_like(v), torch.zeros_like(v), v], dim=-1)
    bias = torch.zeros(1, 1, 1)
    with torch.no_grad():
        out = window_attention(qkv, bias, 1, 1, 0, None, impl="fused").view(-1)
    finite = ~values.isnan()
    assert torch.equal(out[finite].view(torch.int16), v.view(-1)[finite].view(torch.int16))
    # torch itself writes NaN as 0x7FC0 or 0xFFFF depending on the code path; a NaN is all that counts.
    assert out[~finite].isnan().all()


def _as_float(mask):
    return None if mask is None else mask.float()


def test_result_does_not_depend_on_thread_count():
    case = (3, 24, 24, 32, 2, 12, 6)  # 24 (window, head) pairs: split over threads
    heads, ws, shift = case[4:]
    qkv, bias, mask = make_inputs(*case, seed=8)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = forward_backward(qkv, bias, heads, ws, shift, mask, "fused")
        torch.set_num_threads(max(2, previous))
        many = forward_backward(qkv, bias, heads, ws, shift, mask, "fused")
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for a, b in zip(one, many))


def test_empty_batch():
    qkv, bias, _ = make_inputs(0, 8, 8, 16, 2, 4, 0)
    out, grad_qkv, grad_bias = forward_backward(qkv, bias, 2, 4, 0, None, "fused")
    assert out.shape == (0, 8, 8, 16) and grad_qkv.shape == qkv.shape
    assert torch.equal(grad_bias, torch.zeros_like(bias))


def test_non_contiguous_inputs():
    qkv, bias, mask = make_inputs(2, 8, 8, 16, 2, 4, 2, seed=9)
    strided = qkv.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    assert not strided.is_contiguous()
    expected = forward_backward(qkv, bias, 2, 4, 2, mask, "fused")
    actual = forward_backward(strided, bias.transpose(1, 2).contiguous().transpose(1, 2), 2, 4, 2, mask, "fused")
    assert all(torch.equal(a, b) for a, b in zip(actual, expected))


def test_mask_is_ignored_without_shift_and_required_with_it():
    qkv, bias, _ = make_inputs(1, 8, 8, 16, 2, 4, 0, seed=10)
    ones = torch.ones(4, 16, 16)  # would change every score if it were added
    unshifted = window_attention(qkv, bias, 2, 4, 0, ones, impl="fused")
    assert torch.equal(unshifted, window_attention(qkv, bias, 2, 4, 0, None, impl="fused"))
    for impl in ("fused", "reference"):
        with pytest.raises(ValueError, match="attn_mask"):
            window_attention(qkv, bias, 2, 4, 2, None, impl=impl)


# ---- torch integration ------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0, 1])
def test_opcheck(shift):
    qkv, bias, mask = make_inputs(2, 6, 4, 16, 2, 2, shift, dtype=torch.float64, seed=12)
    qkv.requires_grad_()
    bias.requires_grad_()
    torch.library.opcheck(FUSED, (qkv, bias, mask, 2, 2, shift))
    out = FUSED(qkv.detach(), bias.detach(), mask, 2, 2, shift)
    torch.library.opcheck(FUSED_BACKWARD, (torch.randn_like(out), qkv.detach(), bias.detach(), mask, 2, 2, shift))


class _Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.randn(2, 16, 16))
        self.register_buffer("mask", shifted_window_mask(8, 8, 4, 2))

    def forward(self, qkv):
        return window_attention(qkv, self.bias, 2, 4, 2, self.mask)


def test_torch_export_contains_the_custom_op():
    module, qkv = _Attention(), torch.randn(1, 8, 8, 48)
    with use_kernels("fused"):
        program = torch.export.export(module, (qkv,))
    targets = {node.target for node in program.graph.nodes if node.op == "call_function"}
    assert FUSED in targets
    with use_kernels("reference"):
        expected = module(qkv)
    torch.testing.assert_close(program.module()(qkv), expected, rtol=1e-5, atol=1e-6)


def test_eager_inference_calls_the_kernel_directly_with_the_ops_result():
    module, qkv = _Attention(), torch.randn(2, 8, 8, 48)
    expected = FUSED(qkv, module.bias.detach(), module.mask, 2, 4, 2)
    calls = []
    with use_kernels("fused"), torch.inference_mode(), torch.library._scoped_library("pyfundus", "IMPL") as lib:
        lib.impl("window_attention", lambda *args: calls.append(args), "CPU")  # a dispatched call would land here
        out = module(qkv)
    assert calls == []  # the dispatcher was skipped
    assert torch.equal(out, expected)  # the same kernel, bit for bit


def test_kernel_mode_routes_between_the_implementations(monkeypatch):
    calls = []
    real = wa_module.window_attention_reference

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(wa_module, "window_attention_reference", spy)
    qkv, bias, _ = make_inputs(1, 8, 8, 16, 2, 4, 0)
    monkeypatch.setenv(ENV_VAR, "reference")
    window_attention(qkv, bias, 2, 4)
    assert len(calls) == 1
    monkeypatch.setenv(ENV_VAR, "fused")
    window_attention(qkv, bias, 2, 4)
    with use_kernels("reference"):
        window_attention(qkv, bias, 2, 4)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="impl"):
        window_attention(qkv, bias, 2, 4, impl="triton")


# ---- the model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fthnet_s():
    torch.manual_seed(0)
    return create_model("fthnet_s").eval()


def test_fthnet_scores_match_between_fused_and_reference(fthnet_s, monkeypatch):
    calls = []
    real = wa_module.window_attention_reference
    monkeypatch.setattr(wa_module, "window_attention_reference", lambda *a: calls.append(a) or real(*a))
    images = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        with use_kernels("fused"):
            fused = 100 * fthnet_s(images)
        assert not calls  # every block took the fused op
        with use_kernels("reference"):
            reference = 100 * fthnet_s(images)
    assert len(calls) == 14  # depths 2 + 4 + 6 + 2
    assert (fused - reference).abs().max().item() < 1e-3


@pytest.mark.slow
def test_fthnet_gradients_match_between_fused_and_reference(fthnet_s):
    images = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(2))
    blocks = [fthnet_s.stages[0].blocks[1].attn, fthnet_s.stages[3].blocks[0].attn]
    params = [p for block in blocks for p in (block.relative_position_bias_table, block.qkv.weight)]
    grads = {}
    for mode in ("fused", "reference"):
        with use_kernels(mode):
            grads[mode] = torch.autograd.grad(fthnet_s(images).sum(), params)
    for fused, reference in zip(grads["fused"], grads["reference"]):
        assert rel_err(fused, reference) < 1e-4


# ---- argument checks -------------------------------------------------------------------


def test_python_argument_errors():
    qkv, bias, mask = make_inputs(1, 8, 8, 16, 2, 4, 2)
    with pytest.raises(ValueError, match="does not divide"):
        window_attention(qkv, torch.zeros(2, 9, 9), 2, 3, 1, torch.zeros(4, 9, 9), impl="fused")
    with pytest.raises(ValueError, match="shift_size must be in"):
        window_attention(qkv, bias, 2, 4, 4, mask, impl="fused")
    with pytest.raises(ValueError, match="do not split into 3 heads"):
        window_attention(qkv, bias, 3, 4, 0, impl="fused")
    with pytest.raises(ValueError, match=r"relative_position_bias must be .* \(2, 16, 16\)"):
        window_attention(qkv, bias[:, :8], 2, 4, 0, impl="fused")
    with pytest.raises(ValueError, match=r"attn_mask must be .* \(4, 16, 16\)"):
        window_attention(qkv, bias, 2, 4, 2, mask[:2], impl="fused")
    with pytest.raises(ValueError, match=r"qkv must be \(B, H, W, 3C\)"):
        window_attention(qkv[..., :-1], bias, 2, 4, 0, impl="fused")
    with pytest.raises(TypeError, match="float32"):
        window_attention(qkv.int(), bias, 2, 4, 0, impl="fused")
    with pytest.raises(RuntimeError, match="CPU and CUDA"):
        FUSED(qkv.to("meta"), bias.to("meta"), None, 2, 4, 0)


def test_cpp_argument_errors():
    ext = cpu_kernels()
    qkv, bias, _ = make_inputs(1, 8, 8, 16, 2, 4, 0)
    out = torch.empty(1, 8, 8, 16)
    f32 = ext.DTYPE_CODES["float32"]
    good = (qkv.data_ptr(), bias.data_ptr(), 0, out.data_ptr(), 1, 8, 8, 16, 2, 4, 0, f32, 1)
    ext.window_attention_forward(*good)
    torch.testing.assert_close(out, window_attention_reference(qkv, bias, 2, 4))

    def call(index, value, match):
        args = list(good)
        args[index] = value
        with pytest.raises(ValueError, match=match):
            ext.window_attention_forward(*args)

    call(0, 0, "qkv_ptr is a null pointer")
    call(9, 3, "must divide the grid")
    call(10, 4, r"shift_size must be in \[0, 4\)")
    call(8, 3, "multiple of num_heads 3")
    call(11, ext.DTYPE_CODES["float16"], "float32 or float64")
    call(12, 0, "num_threads must be >= 1")


def test_kernels_are_in_the_built_modules():
    assert hasattr(cpu_kernels(), "window_attention_backward")
    try:
        cuda = importlib.import_module("pyfundus._C_cuda")
    except ImportError as exc:
        skip_or_fail(f"this build has no CUDA module (no nvcc at build time): {exc}")
    assert hasattr(cuda, "window_attention_forward") and hasattr(cuda, "window_attention_backward")


# ---- CUDA ------------------------------------------------------------------------------


CUDA_CASES = [
    (2, 8, 8, 16, 2, 4, 2),
    (3, 14, 21, 40, 5, 7, 3),  # 49 tokens: a partial last query tile and key tile
    (2, 24, 24, 256, 2, 12, 6),  # head_dim 128: smaller query tiles
    *STAGES_S,
]


@pytest.mark.parametrize("case", CUDA_CASES, ids=_case_id)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 4e-3), (torch.bfloat16, 3e-2)], ids=str)
@pytest.mark.cuda
@requires_cuda
def test_cuda_matches_reference(case, dtype, tol):
    heads, ws, shift = case[4:]
    qkv, bias, mask = make_inputs(*case, dtype=dtype, device="cuda", seed=13)
    fused = forward_backward(qkv, bias, heads, ws, shift, mask, "fused")
    mask64 = None if mask is None else mask.double()
    ref64 = forward_backward(qkv.double(), bias.double(), heads, ws, shift, mask64, "reference")
    for actual, expected in zip(fused, ref64):
        assert actual.dtype == dtype and actual.device == qkv.device
        assert rel_err(actual, expected) < tol


@pytest.mark.parametrize("case", [(2, 4, 4, 16, 2, 2, 0), (1, 6, 4, 16, 2, 2, 1)], ids=_case_id)
@pytest.mark.cuda
@requires_cuda
def test_cuda_gradcheck_float64(case):
    heads, ws, shift = case[4:]
    qkv, bias, mask = make_inputs(*case, dtype=torch.float64, device="cuda", seed=14)
    qkv.requires_grad_()
    bias.requires_grad_()
    # The key, value and bias gradients add up atomically, in no fixed order.
    assert torch.autograd.gradcheck(
        lambda q, b: window_attention(q, b, heads, ws, shift, mask, impl="fused"), (qkv, bias), nondet_tol=1e-12
    )


@pytest.mark.cuda
@requires_cuda
def test_cuda_matches_cpu():
    case = (2, 48, 48, 64, 4, 12, 6)
    qkv, bias, mask = make_inputs(*case, seed=15)
    on_cpu = forward_backward(qkv, bias, 4, 12, 6, mask, "fused")
    on_gpu = forward_backward(qkv.cuda(), bias.cuda(), 4, 12, 6, mask.cuda(), "fused")
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert rel_err(gpu.cpu(), cpu) < 1e-5


@pytest.mark.cuda
@requires_cuda
def test_cuda_runs_on_the_current_stream():
    # The side stream sleeps before it writes qkv; a kernel on any other stream would read zeros.
    source, bias, mask = make_inputs(2, 24, 24, 32, 2, 12, 6, device="cuda", seed=16)
    qkv = torch.zeros_like(source)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        qkv.copy_(source)
        out = window_attention(qkv, bias, 2, 12, 6, mask, impl="fused")
    side.synchronize()
    assert rel_err(out, window_attention_reference(source, bias, 2, 12, 6, mask)) < 1e-5
