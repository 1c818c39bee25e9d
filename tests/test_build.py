"""The installed build: the CPU core is always there; in CI the CUDA module must have compiled too."""

import importlib
import os

import pytest

IN_CI = os.environ.get("CI") == "true"


def test_cpu_core_is_built():
    module = importlib.import_module("pyfundus._C")
    assert hasattr(module, "softpool2d_forward")


def test_cuda_module_compiled_in_ci():
    """CI has nvcc and builds with -DPYFUNDUS_CUDA=ON: the module must exist and import without a GPU."""
    try:
        module = importlib.import_module("pyfundus._C_cuda")
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"CI must compile the CUDA module, but it is missing: {exc}")
        pytest.skip(f"this build has no CUDA module (no nvcc at build time): {exc}")
    assert hasattr(module, "softpool2d_forward")
