"""SoftPool: fused C++/CUDA op against the plain-torch reference.

CPU tests run everywhere; tests marked ``cuda`` need a GPU and the compiled
``pyfundus._C_cuda`` and are skipped (with the reason) otherwise.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys

import pytest
import torch
from cuda_helpers import requires_cuda
from torch.utils._python_dispatch import TorchDispatchMode

from pyfundus.ops import softpool as softpool_module
from pyfundus.ops import softpool2d, softpool2d_reference
from pyfundus.ops._ext import DTYPE_NAMES, cpu_kernels, cuda_kernels, cuda_kernels_available, eager_inference
from pyfundus.ops.config import ENV_VAR, kernel_mode, use_kernels

FUSED = torch.ops.pyfundus.softpool2d.default
FUSED_BACKWARD = torch.ops.pyfundus.softpool2d_backward.default


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs difference relative to the largest expected magnitude (elementwise
    relative error is meaningless where the output crosses zero)."""
    scale = expected.abs().max().clamp_min(1e-12)
    return ((actual.double() - expected.double()).abs().max() / scale).item()


def forward_backward(x: torch.Tensor, grad_y_seed: int, **kwargs):
    """(y, dL/dx) for L = sum(y * g) with a fixed random g."""
    x = x.detach().clone().requires_grad_()
    y = softpool2d(x, **kwargs)
    gen = torch.Generator().manual_seed(grad_y_seed)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype).to(y.device)
    (grad,) = torch.autograd.grad(y, x, g)
    return y.detach(), grad


# (shape, kernel_size, stride): odd sizes, overlap (stride < kernel), gaps
# (stride > kernel), non-square kernels and strides, batch 1 and odd batches,
# and the four FTHNet pooling shapes.
CASES = [
    ((2, 3, 8, 8), 2, None),
    ((1, 1, 7, 9), 3, None),  # ragged edges: the last rows/cols are in no window
    ((3, 2, 13, 17), 3, 2),  # overlap
    ((1, 4, 11, 11), 4, 1),  # heavy overlap
    ((5, 2, 10, 12), 2, 3),  # gaps
    ((2, 3, 15, 14), (3, 5), (4, 2)),  # non-square, overlap in W, gap in H
    ((1, 2, 9, 20), (2, 7), (2, 7)),
    ((1, 2, 36, 12), 12, None),  # windows spanning whole rows: read in place, not packed
    ((2, 3, 30, 7), (5, 7), (2, 3)),  # whole rows, overlapping down the plane
    ((1, 1, 5, 5), 5, None),  # one window
    ((2, 2, 6, 6), 1, None),  # identity
    ((2, 4, 96, 96), 12, 12),  # FTHNet
    ((2, 8, 48, 48), 12, 12),
    ((2, 16, 24, 24), 12, 12),
    ((1, 32, 12, 12), 12, 12),
]


def _random_cases(count: int, seed: int):
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        kh, kw = rng.randint(1, 6), rng.randint(1, 6)
        sh, sw = rng.randint(1, 7), rng.randint(1, 7)
        n, c = rng.randint(1, 3), rng.randint(1, 4)
        shape = (n, c, kh + rng.randint(0, 12), kw + rng.randint(0, 12))
        cases.append((shape, (kh, kw), (sh, sw)))
    return cases


ALL_CASES = CASES + _random_cases(24, seed=1234)


def _case_id(case) -> str:
    shape, k, s = case
    return f"{'x'.join(map(str, shape))}-k{k}-s{s}".replace(" ", "")


# ---- parity --------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES, ids=_case_id)
def test_fused_matches_reference_float32(case):
    shape, k, s = case
    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape) + sum(shape)))
    y_fused, g_fused = forward_backward(x, 7, kernel_size=k, stride=s, impl="fused")
    y_ref, g_ref = forward_backward(x, 7, kernel_size=k, stride=s, impl="reference")
    assert y_fused.shape == y_ref.shape
    assert y_fused.dtype == torch.float32
    assert rel_err(y_fused, y_ref) < 1e-5
    assert rel_err(g_fused, g_ref) < 1e-5


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fused_matches_reference_float64(case):
    shape, k, s = case
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y_fused, g_fused = forward_backward(x, 11, kernel_size=k, stride=s, impl="fused")
    y_ref, g_ref = forward_backward(x, 11, kernel_size=k, stride=s, impl="reference")
    assert rel_err(y_fused, y_ref) < 1e-12
    assert rel_err(g_fused, g_ref) < 1e-12


def test_reference_is_the_softpool_formula():
    # Direct formula in float64 for moderate values, where it cannot overflow.
    x = torch.randn(2, 3, 6, 9, dtype=torch.float64)
    windows = x.unfold(2, 3, 3).unfold(3, 3, 3)  # (n, c, 2, 3, 3, 3)
    expected = (windows * windows.exp()).sum((-1, -2)) / windows.exp().sum((-1, -2))
    torch.testing.assert_close(softpool2d_reference(x, 3), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(softpool2d(x, 3, impl="fused"), expected, rtol=1e-12, atol=1e-12)


def test_backward_is_the_exact_gradient():
    # dy/dx_i = w_i * (1 + x_i - y) for one window, written out by hand.
    x = torch.tensor([[[[0.5, -1.0], [2.0, 0.25]]]], dtype=torch.float64, requires_grad=True)
    y = softpool2d(x, 2, impl="fused")
    (grad,) = torch.autograd.grad(y.sum(), x)
    w = torch.softmax(x.detach().flatten(), 0).view_as(x)
    expected = w * (1 + x.detach() - y.detach())
    torch.testing.assert_close(grad, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize(
    "shape,k,s",
    [
        ((2, 2, 7, 6), 3, 2),
        ((1, 3, 6, 8), 2, None),
        ((2, 1, 7, 9), (2, 3), (3, 2)),
        ((1, 2, 5, 5), 3, 1),
    ],
)
def test_gradcheck_float64(shape, k, s):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: softpool2d(t, k, s, impl="fused"), (x,))


# ---- numerics --------------------------------------------------------------------------


@pytest.mark.parametrize("transform", ["times_3000", "very_negative", "mixed_extremes"])
def test_large_magnitudes_are_stable(transform):
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(2, 4, 24, 24, generator=gen)
    x = {
        "times_3000": base * 3000,
        "very_negative": base * 100 - 1e4,
        "mixed_extremes": torch.where(base > 0, base * 5000, base * 5000 - 2e4),
    }[transform]
    # The textbook formula overflows in float32: the test inputs are hard.
    naive = (x * x.exp()).sum() / x.exp().sum()
    assert not torch.isfinite(naive)

    y, grad = forward_backward(x, 3, kernel_size=12, impl="fused")
    y64, grad64 = forward_backward(x.double(), 3, kernel_size=12, impl="reference")
    _, grad32 = forward_backward(x, 3, kernel_size=12, impl="reference")
    assert torch.isfinite(y).all() and torch.isfinite(grad).all()
    assert rel_err(y, y64) < 1e-6
    # (1 + x_i - y) cancels at |x| ~ 1e3 in float32, so the gradient is only as
    # good as float32 allows: at least as good as plain torch in float32.
    assert rel_err(grad, grad64) <= rel_err(grad32, grad64) < 1e-3


def test_nan_propagates():
    x = torch.randn(1, 1, 4, 4)
    x[0, 0, 0, 1] = float("nan")
    y = softpool2d(x, 2, impl="fused")
    assert torch.isnan(y[0, 0, 0, 0])
    assert torch.isfinite(y[0, 0, 1]).all() and torch.isfinite(y[0, 0, 0, 1])


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_types_on_cpu_compute_in_float32(dtype, tol):
    x = torch.randn(2, 3, 12, 12).to(dtype)
    y, grad = forward_backward(x, 2, kernel_size=3, stride=2, impl="fused")
    y_ref, grad_ref = forward_backward(x.double(), 2, kernel_size=3, stride=2, impl="reference")
    assert y.dtype == grad.dtype == dtype
    assert rel_err(y, y_ref) < tol
    assert rel_err(grad, grad_ref) < tol


@pytest.mark.parametrize("k,s", [(12, 12), (5, 3)])  # row tasks / whole-plane tasks
def test_result_does_not_depend_on_thread_count(k, s):
    x = torch.randn(8, 8, 48, 48)  # large enough to be split over threads
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = forward_backward(x, 1, kernel_size=k, stride=s, impl="fused")
        torch.set_num_threads(max(2, previous))
        many = forward_backward(x, 1, kernel_size=k, stride=s, impl="fused")
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_empty_batch():
    x = torch.randn(0, 3, 8, 8, requires_grad=True)
    y = softpool2d(x, 4, impl="fused")
    assert y.shape == (0, 3, 2, 2)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert grad.shape == x.shape


# ---- layouts ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_non_contiguous_inputs(layout):
    base = torch.randn(2, 3, 20, 18)
    if layout == "channels_last":
        x = base.to(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = base.transpose(2, 3)
    else:
        x = base[:, :, 1:-2, ::2]
    assert not x.is_contiguous()
    x.requires_grad_()
    contiguous = x.detach().contiguous().requires_grad_()
    y = softpool2d(x, 3, 2, impl="fused")
    y_contig = softpool2d(contiguous, 3, 2, impl="fused")
    assert torch.equal(y, y_contig)
    # sum() hands the backward an expanded (stride 0) gradient.
    (grad,) = torch.autograd.grad(y.sum(), x)
    (grad_contig,) = torch.autograd.grad(y_contig.sum(), contiguous)
    assert torch.equal(grad, grad_contig)
    assert rel_err(y, softpool2d_reference(x.detach(), 3, 2)) < 1e-5


# ---- torch integration ------------------------------------------------------------------


@pytest.mark.parametrize("kernel,stride", [([2, 2], [2, 2]), ([3, 3], [2, 2]), ([3, 2], [1, 3])])
def test_opcheck(kernel, stride):
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(FUSED, (x, kernel, stride))
    y = FUSED(x.detach(), kernel, stride)
    torch.library.opcheck(FUSED_BACKWARD, (torch.randn_like(y), x.detach(), kernel, stride))


def test_torch_compile_fullgraph_matches_eager():
    # aot_eager runs the fake kernels and the autograd formula through AOT
    # autograd; inductor works too but takes ~15 s to compile here.
    def f(t):
        return softpool2d(torch.tanh(t) * 4, 3, 2).square().sum()

    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = torch.randn(2, 3, 11, 12, requires_grad=True)
    with use_kernels("fused"):  # kernel_mode() is read inside the compiled code
        loss = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
        (grad,) = torch.autograd.grad(loss, x)
        loss_eager = f(x)
        (grad_eager,) = torch.autograd.grad(loss_eager, x)
        torch.compile(f, fullgraph=True, backend=recording_backend)(x)
    torch.testing.assert_close(loss, loss_eager)
    torch.testing.assert_close(grad, grad_eager)
    assert len(graphs) == 1
    assert any(node.target is torch.ops.pyfundus.softpool2d for node in graphs[0].graph.nodes)


class _Pool(torch.nn.Module):
    def forward(self, x):
        return softpool2d(x, 12)


def _exported_ops(mode: str) -> set:
    x = torch.randn(1, 4, 24, 24)
    with use_kernels(mode):
        program = torch.export.export(_Pool(), (x,))
    torch.testing.assert_close(program.module()(x), softpool2d_reference(x, 12))
    return {node.target for node in program.graph.nodes if node.op == "call_function"}


def test_torch_export_contains_the_custom_op():
    assert FUSED in _exported_ops("fused")


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_eager_inference_calls_the_kernel_directly_and_everything_else_sees_the_op():
    x = torch.randn(2, 8, 24, 24)
    expected = torch.ops.pyfundus.softpool2d(x, [12, 12], [12, 12])
    with torch.inference_mode():
        assert eager_inference(x)
        assert torch.equal(softpool2d(x, 12, impl="fused"), expected)  # the same kernel, bit for bit
    with torch.no_grad():
        assert eager_inference(x)
    assert not eager_inference(x.requires_grad_())  # autograd needs the op's registered backward
    with torch.no_grad():
        assert eager_inference(torch.nn.Parameter(x.detach()))  # a module's own weights are fine
    with _OpRecorder() as recorder:  # a dispatch mode (fake tensors, FLOP counters) must see the op
        assert not eager_inference(x.detach())
        softpool2d(x.detach(), 12, impl="fused")
    assert any("pyfundus.softpool2d" in op for op in recorder.ops)


def test_use_kernels_reference_routes_to_the_reference():
    targets = _exported_ops("reference")
    assert FUSED not in targets
    assert torch.ops.aten.exp.default in targets


def test_env_var_routes_to_the_reference(monkeypatch):
    calls = []
    real = softpool_module.softpool2d_reference

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(softpool_module, "softpool2d_reference", spy)
    x = torch.randn(1, 2, 8, 8)
    monkeypatch.setenv(ENV_VAR, "reference")
    assert kernel_mode() == "reference"
    softpool2d(x, 4)
    assert len(calls) == 1
    for value in ("fused", "auto", ""):
        monkeypatch.setenv(ENV_VAR, value)
        assert kernel_mode() == "fused"
        softpool2d(x, 4)
    assert len(calls) == 1
    monkeypatch.delenv(ENV_VAR)
    assert kernel_mode() == "fused"


def test_use_kernels_overrides_env_and_nests(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "reference")
    with use_kernels("fused"):
        assert kernel_mode() == "fused"
        with use_kernels("reference"):
            assert kernel_mode() == "reference"
        assert kernel_mode() == "fused"
    assert kernel_mode() == "reference"


def test_bad_kernel_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=f"{ENV_VAR}.*'reference'"):
        kernel_mode()
    with pytest.raises(ValueError, match="use_kernels"):
        with use_kernels("cuda"):
            pass
    with pytest.raises(ValueError, match="impl"):
        softpool2d(torch.randn(1, 1, 4, 4), 2, impl="triton")


# ---- argument checks -------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_python_argument_errors(impl):
    with pytest.raises(ValueError, match="4-D"):
        softpool2d(torch.randn(3, 8, 8), 2, impl=impl)
    with pytest.raises(TypeError, match="float"):
        softpool2d(torch.ones(1, 1, 8, 8, dtype=torch.int64), 2, impl=impl)
    with pytest.raises(ValueError, match="does not fit"):
        softpool2d(torch.randn(1, 1, 8, 8), (4, 9), impl=impl)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        softpool2d(torch.randn(1, 1, 8, 8), 2, 0, impl=impl)
    with pytest.raises(TypeError, match="pair of ints"):
        softpool2d(torch.randn(1, 1, 8, 8), (2, 2, 2), impl=impl)


def test_fused_rejects_other_devices():
    with pytest.raises(RuntimeError, match="CPU and CUDA"):
        softpool_module._check_device(torch.empty(1, 1, 2, 2, device="meta"))


def test_cpp_argument_errors():
    ext = cpu_kernels()
    x, y = torch.randn(1, 1, 4, 4), torch.empty(1, 1, 2, 2)
    f32 = ext.DTYPE_CODES["float32"]
    good = (x.data_ptr(), y.data_ptr(), 1, 1, 4, 4, 2, 2, 2, 2, f32, 1)
    ext.softpool2d_forward(*good)
    torch.testing.assert_close(y, softpool2d_reference(x, 2))

    def call(index, value, match):
        args = list(good)
        args[index] = value
        with pytest.raises(ValueError, match=match):
            ext.softpool2d_forward(*args)

    call(0, 0, "x_ptr is a null pointer")
    call(6, 5, "does not fit")
    call(8, 0, "stride must be >= 1")
    call(10, 99, "unknown dtype code 99")
    call(10, ext.DTYPE_CODES["float16"], "float32 or float64")
    call(11, 0, "num_threads must be >= 1")
    assert set(ext.DTYPE_CODES) == set(DTYPE_NAMES.values())


# ---- packaging ---------------------------------------------------------------------------


def _compiled_modules():
    modules = [cpu_kernels()]
    if cuda_kernels_available():
        modules.append(cuda_kernels())
    return modules


def _run(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("ldd") is None, reason="ldd is not available")
def test_extensions_do_not_link_libtorch():
    for module in _compiled_modules():
        linked = _run(["ldd", module.__file__])
        assert "libc" in linked  # ldd really listed the dependencies
        for lib in ("libtorch", "libc10", "libtorch_python", "libcudart.so"):
            assert lib not in linked, f"{module.__name__} links {lib}:\n{linked}"
        if shutil.which("nm"):
            undefined = _run(["nm", "-D", "--undefined-only", module.__file__])
            assert "_ZN3c10" not in undefined and "_ZN2at" not in undefined


def test_missing_compiled_modules_raise_clear_errors(monkeypatch):
    from pyfundus.ops import _ext

    # None in sys.modules makes the import fail, as for a missing extension.
    monkeypatch.setitem(sys.modules, "pyfundus._C", None)
    monkeypatch.setitem(sys.modules, "pyfundus._C_cuda", None)
    _ext.cpu_kernels.cache_clear()
    _ext.cuda_kernels.cache_clear()
    try:
        missing_core = r"without its compiled core; reinstall with a C\+\+ compiler"
        with pytest.raises(ImportError, match=missing_core):
            _ext.cpu_kernels()
        with pytest.raises(ImportError, match="no CUDA module: it was built without nvcc"):
            _ext.cuda_kernels()
        assert not _ext.cuda_kernels_available()
    finally:
        _ext.cpu_kernels.cache_clear()
        _ext.cuda_kernels.cache_clear()


def test_cpu_use_never_imports_the_cuda_module():
    code = (
        "import sys, torch\n"
        "from pyfundus.ops import softpool2d\n"
        "x = torch.randn(1, 2, 8, 8, requires_grad=True)\n"
        "softpool2d(x, 4, impl='fused').sum().backward()\n"
        "assert 'pyfundus._C' in sys.modules\n"
        "assert 'pyfundus._C_cuda' not in sys.modules, 'CUDA module imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- CUDA ------------------------------------------------------------------------------


CUDA_CASES = [
    ((2, 4, 96, 96), 12, 12),  # tiles
    ((3, 2, 13, 17), 3, 2),  # overlap: atomics (and the float32 scratch for half types)
    ((2, 3, 15, 14), (3, 5), (4, 2)),  # overlap in W, gap in H
    ((5, 2, 10, 12), 2, 3),  # gaps: zeroed before the plain stores
]


@pytest.mark.parametrize("case", CUDA_CASES, ids=_case_id)
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)], ids=str
)
@pytest.mark.cuda
@requires_cuda
def test_cuda_matches_reference(case, dtype, tol):
    shape, k, s = case
    x = torch.randn(shape, device="cuda").to(dtype) * 3
    y, grad = forward_backward(x, 4, kernel_size=k, stride=s, impl="fused")
    y_ref, grad_ref = forward_backward(x.double(), 4, kernel_size=k, stride=s, impl="reference")
    assert y.dtype == grad.dtype == dtype and y.device == x.device
    assert rel_err(y, y_ref) < tol
    assert rel_err(grad, grad_ref) < tol


@pytest.mark.parametrize(
    "shape,k,s", [((2, 2, 7, 6), 3, 2), ((1, 3, 6, 8), 2, None), ((1, 2, 7, 9), 2, 3)]
)
@pytest.mark.cuda
@requires_cuda
def test_cuda_gradcheck_float64(shape, k, s):
    x = torch.randn(shape, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: softpool2d(t, k, s, impl="fused"), (x,))


@pytest.mark.cuda
@requires_cuda
def test_cuda_matches_cpu():
    x = torch.randn(3, 8, 48, 48) * 5
    y_cpu, g_cpu = forward_backward(x, 9, kernel_size=12, impl="fused")
    y_gpu, g_gpu = forward_backward(x.cuda(), 9, kernel_size=12, impl="fused")
    assert rel_err(y_gpu.cpu(), y_cpu) < 1e-5 and rel_err(g_gpu.cpu(), g_cpu) < 1e-5


@pytest.mark.cuda
@requires_cuda
def test_cuda_runs_on_the_current_stream():
    # The side stream sleeps before it writes x. A kernel launched on any other
    # stream would read x before the write and pool zeros.
    source = torch.randn(4, 8, 96, 96, device="cuda")
    x = torch.zeros_like(source)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        x.copy_(source)
        x.requires_grad_()
        y = softpool2d(x, 12, impl="fused")
        (grad,) = torch.autograd.grad(y.sum(), x)
    side.synchronize()
    source.requires_grad_()
    y_ref = softpool2d_reference(source, 12)
    (grad_ref,) = torch.autograd.grad(y_ref.sum(), source)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(grad, grad_ref) < 1e-5


@pytest.mark.cuda
@requires_cuda
def test_cuda_keeps_the_current_device():
    last = torch.cuda.device_count() - 1
    x = torch.randn(2, 3, 12, 12, device=f"cuda:{last}")
    torch.cuda.set_device(0)
    y = softpool2d(x, 4, impl="fused")
    assert y.device == x.device
    assert torch.cuda.current_device() == 0
    assert rel_err(y, softpool2d_reference(x, 4)) < 1e-5
