"""How much entering torch.inference_mode() on every call moves the op benchmark's smallest cells.

benchmarks/ops.py times forward cells inside one inference_mode block, as the ops run inside a
model's forward. Its earlier versions entered the block on every call, which adds about 1 us to
both sides of a cell: that matters for SoftPool at FTHNet's last stage, where the fused call
itself takes a few microseconds. This prints both ways, side by side, in one run:

    python benchmarks/timing_method.py [--threads N] [--min-run-time SECONDS]
"""

from __future__ import annotations

import torch
import torch.utils.benchmark as benchmark
from timing_args import timing_parser

from pyfundus.ops import softpool2d
from pyfundus.ops.window_attention import window_attention


def _median(fn, threads: int, min_run_time: float, block_per_call: bool) -> float:
    if block_per_call:

        def call():
            with torch.inference_mode():
                return fn()

        timer = benchmark.Timer("call()", globals={"call": call}, num_threads=threads)
        return timer.blocked_autorange(min_run_time=min_run_time).median
    with torch.inference_mode():
        fn()
        timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=threads)
        return timer.blocked_autorange(min_run_time=min_run_time).median


def main() -> None:
    args = timing_parser(__doc__).parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 32, 12, 12, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(12)
    qkv, bias = torch.randn(1, 12, 12, 768, generator=gen), torch.randn(16, 144, 144, generator=gen)
    cases = {
        "softpool2d (1, 32, 12, 12)": lambda impl: softpool2d(x, 12, impl=impl),
        "window attention (1, 12, 12, 768) h16": lambda impl: window_attention(qkv, bias, 16, 12, impl=impl),
    }
    for name, op in cases.items():
        for block_per_call in (True, False):
            times = {
                impl: _median(lambda impl=impl: op(impl), args.threads, args.min_run_time, block_per_call)
                for impl in ("reference", "fused")
            }
            method = "a block per call" if block_per_call else "one block       "
            print(
                f"{name:38s} {method}: reference {times['reference'] * 1e6:7.1f} us, "
                f"fused {times['fused'] * 1e6:7.1f} us, {times['reference'] / times['fused']:.2f}x"
            )


if __name__ == "__main__":
    main()
