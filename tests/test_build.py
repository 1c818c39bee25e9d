"""The installed build: the CPU core is always there; in CI the CUDA module must have compiled too."""

import importlib

from conftest import skip_or_fail


def test_cpu_core_is_built():
    module = importlib.import_module("pyfundus._C")
    assert hasattr(module, "softpool2d_forward")


def test_cuda_module_compiled_in_ci():
    """CI has nvcc and builds with -DPYFUNDUS_CUDA=ON: the module must exist and import without a GPU."""
    try:
        module = importlib.import_module("pyfundus._C_cuda")
    except ImportError as exc:
        skip_or_fail(f"this build has no CUDA module (no nvcc at build time): {exc}")
    assert hasattr(module, "softpool2d_forward")


def test_cpu_variants_name_what_runs_and_follow_the_cap(monkeypatch):
    """cpu_variants() reports the kernels' instruction set; PYFUNDUS_CPU_ISA lowers window attention's only."""
    module = importlib.import_module("pyfundus._C")
    order = ["baseline", "avx2", "avx512"]
    widest = module.cpu_variants()
    assert set(widest) == {"window_attention", "softpool"}
    assert widest["window_attention"] in order and widest["softpool"] in order
    for cap in order:
        monkeypatch.setenv("PYFUNDUS_CPU_ISA", cap)
        capped = module.cpu_variants()
        expected = order[min(order.index(cap), order.index(widest["window_attention"]))]
        assert capped == {"window_attention": expected, "softpool": widest["softpool"]}
