"""Fits the polynomial of the CPU kernels' exponential (csrc/cpu/vector_math.h, exp_nonpositive).

e^r on [-ln2/2, ln2/2] as 1 + c1 r + ... + c5 r^5, minimising the largest relative error:
weighted least squares on Chebyshev nodes, reweighted by the error (Lawson's algorithm),
which converges to the minimax fit. Prints the coefficients as float32 and the error.

    python scripts/fit_exp_polynomial.py
"""

import argparse

import numpy as np


def fit(degree: int, iterations: int = 200, nodes: int = 4000) -> tuple[np.ndarray, float]:
    half = np.log(2) / 2
    r = np.cos(np.linspace(0, np.pi, nodes)) * half
    powers = np.stack([r**k for k in range(1, degree + 1)], axis=1)
    exact = np.exp(r)
    weights = np.ones_like(r)
    for _ in range(iterations):
        # Relative error (1 + powers @ c - e^r) / e^r, weighted: a linear least-squares problem in c.
        scaled = weights / exact
        coeffs, *_ = np.linalg.lstsq(powers * scaled[:, None], (exact - 1) * scaled, rcond=None)
        error = (1 + powers @ coeffs - exact) / exact
        weights = weights * np.abs(error) + 1e-30
        weights /= weights.sum()
    return coeffs, float(np.abs(error).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--degree", type=int, default=5)
    args = parser.parse_args()
    coeffs, worst = fit(args.degree)
    for k, c in enumerate(coeffs, start=1):
        print(f"c{k} = {np.float32(c):.10e}f")
    print(f"largest relative error before rounding to float32: {worst:.3e}")


if __name__ == "__main__":
    main()
