"""What a fused call costs around its kernel, at FTHNet's smallest SoftPool shape.

SoftPool at FTHNet's last stage, (1, 32, 12, 12) with a 12 x 12 window, is a kernel of about two
microseconds, so the path to it decides the call's cost. This times, in one run, inside one
inference_mode block:

- the registered custom op, ``torch.ops.pyfundus.softpool2d`` (what autograd, torch.compile and
  torch.export go through);
- ``softpool2d()``, which in plain eager inference calls the kernel directly (``eager_inference``);
- the compiled kernel alone, called with raw pointers.

    python benchmarks/dispatch.py [--threads N] [--min-run-time SECONDS]
"""

from __future__ import annotations

import torch
import torch.utils.benchmark as benchmark
from timing_args import timing_parser

from pyfundus.ops import softpool2d
from pyfundus.ops._ext import cpu_kernels, dtype_code


def main() -> None:
    args = timing_parser(__doc__).parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 32, 12, 12, generator=torch.Generator().manual_seed(0))
    y = torch.empty(1, 32, 1, 1)
    ext = cpu_kernels()
    raw = (x.data_ptr(), y.data_ptr(), 1, 32, 12, 12, 12, 12, 12, 12, dtype_code(ext, x.dtype), args.threads)
    paths = {
        "through torch.ops.pyfundus.softpool2d": lambda: torch.ops.pyfundus.softpool2d(x, [12, 12], [12, 12]),
        "softpool2d(), eager inference path": lambda: softpool2d(x, 12, impl="fused"),
        "the kernel alone (raw pointers)": lambda: ext.softpool2d_forward(*raw),
    }
    with torch.inference_mode():
        expected = softpool2d(x, 12, impl="reference")
        for fn in list(paths.values())[:2]:  # a wrong answer fast is no result
            torch.testing.assert_close(fn(), expected, rtol=1e-5, atol=1e-6)
        paths["the kernel alone (raw pointers)"]()
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
        for name, fn in paths.items():
            timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=args.threads)
            median = timer.blocked_autorange(min_run_time=args.min_run_time).median
            print(f"softpool2d (1, 32, 12, 12) {name:38s} {median * 1e6:6.1f} us")


if __name__ == "__main__":
    main()
