"""The CPU kernels' vectorised exponential, checked against double exp over every float it takes.

SoftPool and the attention softmax both weight by exp_nonpositive (csrc/cpu/vector_math.h). It
trades a little accuracy (a degree-5 polynomial) for speed, so its error bound is held here,
exhaustively, rather than only through op parity tests whose tolerances would hide a few ulp.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORST_ULP_BOUND = 2.5  # measured 2.18 ulp; Cephes' degree-7 expf, which it replaced, had 1.02


def compiler():
    for name in ("c++", "g++", "clang++"):
        if path := shutil.which(name):
            return path
    pytest.fail("no C++ compiler: the package's own build needs one, so this environment is broken")


@pytest.mark.parametrize("march", ["native", None], ids=["native", "baseline"])
def test_exp_nonpositive_error_over_every_float(tmp_path, march):
    """Compiled as the kernels are (-O3, vectorised), for this CPU's widest ISA and for the baseline."""
    binary = tmp_path / "exp_accuracy"
    flags = ["-O3", "-std=gnu++17", "-fno-math-errno", "-fopenmp-simd"]
    if march:
        flags.append(f"-march={march}")
    subprocess.run(
        [compiler(), *flags, "-I", str(ROOT / "csrc"), str(ROOT / "tests/cpp/exp_accuracy.cpp"),
         "-o", str(binary)],
        check=True, capture_output=True, text=True)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    worst = float(re.search(r"worst_ulp (\S+)", result.stdout).group(1))
    assert worst <= WORST_ULP_BOUND, result.stdout


def test_coefficients_are_those_the_fitting_script_gives():
    """The polynomial in vector_math.h is reproducible: scripts/fit_exp_polynomial.py prints it."""
    import numpy as np
    from script_helpers import load_script

    coeffs, worst = load_script("fit_exp_polynomial").fit(5)
    header = (ROOT / "csrc/cpu/vector_math.h").read_text()
    body = header[header.index("PYFUNDUS_INLINE float exp_nonpositive") :]
    body = body[: body.index("return")]
    in_header = [np.float32(v) for v in re.findall(r"p = (?:p \* r \+ )?([0-9.e-]+)f;", body)]
    # Horner order in the kernel: c5 first, down to c1, then the constant term 1.
    assert in_header == [np.float32(c) for c in reversed(coeffs)] + [np.float32(1)]
    assert worst < 1.1e-7
