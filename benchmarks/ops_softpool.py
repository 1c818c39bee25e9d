"""CPU speed of the fused SoftPool against the plain-torch reference.

The four FTHNet pooling shapes (kernel 12, stride 12) at batch 1 and 16,
forward alone (no autograd, as the daemon scores) and forward + backward.
Everything runs with the same thread count (torch's, unless --threads).

Columns: the reference, the fused op as users call it (softpool2d, through
the torch dispatcher and autograd), and the C++ kernels called directly, which
shows how much of a small call is the dispatcher's fixed cost.

    python benchmarks/ops_softpool.py [--threads N] [--min-run-time SECONDS]
"""

from __future__ import annotations

import argparse
import platform

import torch
import torch.utils.benchmark as benchmark

from pyfundus.ops import softpool2d
from pyfundus.ops._ext import cpu_kernels

SHAPES = [(4, 96, 96), (8, 48, 48), (16, 24, 24), (32, 12, 12)]
BATCHES = [1, 16]
KERNEL = 12


def _op(impl: str, backward: bool):
    def forward(x, g):
        return softpool2d(x, KERNEL, impl=impl)

    def forward_backward(x, g):
        return torch.autograd.grad(softpool2d(x, KERNEL, impl=impl), x, g)

    return forward_backward if backward else forward


def _kernels(x: torch.Tensor, g: torch.Tensor, threads: int, backward: bool):
    """The C++ forward (and backward) on preallocated buffers, no dispatcher."""
    ext = cpu_kernels()
    y, grad_x = torch.empty_like(g), torch.empty_like(x)
    sizes = (*x.shape, KERNEL, KERNEL, KERNEL, KERNEL, ext.DTYPE_CODES["float32"], threads)

    def run(x, g):
        ext.softpool2d_forward(x.data_ptr(), y.data_ptr(), *sizes)
        if backward:
            ext.softpool2d_backward(g.data_ptr(), x.data_ptr(), grad_x.data_ptr(), *sizes)

    return run


def _time(fn, x, g, threads: int, min_run_time: float) -> float:
    """Median seconds per call."""
    timer = benchmark.Timer(
        stmt="fn(x, g)", globals={"fn": fn, "x": x, "g": g}, num_threads=threads
    )
    return timer.blocked_autorange(min_run_time=min_run_time).median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-run-time", type=float, default=0.5)
    args = parser.parse_args()

    print(
        f"torch {torch.__version__}, {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}, float32, kernel {KERNEL} stride {KERNEL}\n"
    )
    print("| input | pass | reference (us) | fused op (us) | speedup | C++ kernels alone (us) |")
    print("|---|---|---:|---:|---:|---:|")
    for batch in BATCHES:
        for channels, height, width in SHAPES:
            x = torch.randn(batch, channels, height, width)
            g = torch.randn(batch, channels, height // KERNEL, width // KERNEL)
            for backward in (False, True):
                inputs = (x.clone().requires_grad_() if backward else x, g)
                timing = (args.threads, args.min_run_time)
                ref = _time(_op("reference", backward), *inputs, *timing)
                fused = _time(_op("fused", backward), *inputs, *timing)
                alone = _time(_kernels(x, g, args.threads, backward), *inputs, *timing)
                shape = f"({batch}, {channels}, {height}, {width})"
                name = "fwd+bwd" if backward else "forward"
                us = f"{ref * 1e6:.1f} | {fused * 1e6:.1f} | {ref / fused:.1f}x | {alone * 1e6:.1f}"
                print(f"| {shape} | {name} | {us} |")


if __name__ == "__main__":
    main()
