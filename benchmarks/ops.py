"""Speed of the fused kernels against plain torch, and of FTHNet-S with each.

One run, one table (median of repeated timings after a warm-up, all with the
same thread count):

* window attention at FTHNet-S's four stage shapes (shifted where the model
  shifts), batch 1 and 16: the reference (roll, partition, matmuls, merge), the
  fused op, and torch's scaled_dot_product_attention on the partitioned
  windows with bias + mask as its attn_mask (roll and partition included:
  the model would need them). Forward without autograd, as the daemon scores:
  the timed calls run inside one torch.inference_mode() block, as the ops do
  inside a model's forward (a block per call would add about 1 us to every
  cell); and forward + backward at batch 1;
* SoftPool at the four FTHNet pooling shapes (kernel 12, stride 12);
* the whole FTHNet-S forward at batch 1, fused ops against reference ops,
  with the scores of both.

    python benchmarks/ops.py [--device cpu|cuda] [--threads N] [--min-run-time SECONDS]
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark
from timing_args import timing_parser

from pyfundus.models import create_model
from pyfundus.ops import softpool2d
from pyfundus.ops.config import use_kernels
from pyfundus.ops.window_attention import shifted_window_mask, window_attention
from pyfundus.runtime_bench import cpu_instructions

# (grid, channels, heads) of FTHNet-S's stages; window 12, shift 6 where the grid has more than one window.
STAGES = [(96, 32, 2), (48, 64, 4), (24, 128, 8), (12, 256, 16)]
WINDOW = 12
POOL_SHAPES = [(4, 96, 96), (8, 48, 48), (16, 24, 24), (32, 12, 12)]
BATCHES = [1, 16]


def window_attention_sdpa(qkv, bias, heads, ws, shift, mask):
    """Roll + partition, then F.scaled_dot_product_attention with bias (+ mask) as attn_mask."""
    batch, height, width, channels3 = qkv.shape
    head_dim = channels3 // 3 // heads
    rows, cols = height // ws, width // ws
    if shift:
        qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2))
    qkv = qkv.reshape(batch, rows, ws, cols, ws, 3, heads, head_dim)
    q, k, v = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, batch, rows * cols, heads, ws * ws, head_dim)
    attn_mask = bias if mask is None else bias + mask.unsqueeze(1)  # (windows or 1, heads, N, N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype))
    out = out.view(batch, rows, cols, heads, ws, ws, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
    out = out.reshape(batch, height, width, heads * head_dim)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    return out


def _median(fn, args: tuple, threads: int, min_run_time: float, device: torch.device) -> float:
    """Median seconds per call, after one warm-up call."""
    fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timer = benchmark.Timer(stmt="fn(*args)", globals={"fn": fn, "args": args}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _attention_fn(impl: str, backward: bool):
    def forward(qkv, bias, heads, shift, mask, grad):
        if impl == "sdpa":
            return window_attention_sdpa(qkv, bias, heads, WINDOW, shift, mask)
        return window_attention(qkv, bias, heads, WINDOW, shift, mask, impl=impl)

    def forward_backward(qkv, bias, heads, shift, mask, grad):
        return torch.autograd.grad(forward(qkv, bias, heads, shift, mask, grad), (qkv, bias), grad)

    return forward_backward if backward else forward


def _row(name: str, shape: str, passes: str, times: dict[str, float]) -> str:
    ref, fused = times["reference"], times["fused"]
    sdpa = times.get("sdpa")
    cells = [name, shape, passes, f"{ref * 1e3:.3f}", f"{fused * 1e3:.3f}"]
    cells += ["-" if sdpa is None else f"{sdpa * 1e3:.3f}", f"**{ref / fused:.2f}x**"]
    cells += ["-" if sdpa is None else f"{sdpa / fused:.2f}x"]
    return "| " + " | ".join(cells) + " |"


def attention_rows(device, threads, min_run_time):
    for batch in BATCHES:
        for grid, channels, heads in STAGES:
            shift = WINDOW // 2 if grid > WINDOW else 0
            gen = torch.Generator().manual_seed(grid)
            qkv = torch.randn(batch, grid, grid, 3 * channels, generator=gen).to(device)
            bias = torch.randn(heads, WINDOW**2, WINDOW**2, generator=gen).to(device)
            mask = shifted_window_mask(grid, grid, WINDOW, shift).to(device) if shift else None
            grad = torch.randn(batch, grid, grid, channels, generator=gen).to(device)
            inputs = (qkv, bias, heads, shift, mask, grad)
            expected = _attention_fn("reference", False)(*inputs)
            for impl in ("fused", "sdpa"):  # a wrong answer fast is no result
                actual = _attention_fn(impl, False)(*inputs)
                torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
            shape = f"({batch}, {grid}, {grid}, {3 * channels}) h{heads}{' shifted' if shift else ''}"
            for backward in (False, True) if batch == 1 else (False,):
                if backward:
                    inputs = (qkv.clone().requires_grad_(), bias.clone().requires_grad_(), heads, shift, mask, grad)
                with torch.inference_mode(not backward):
                    times = {
                        impl: _median(_attention_fn(impl, backward), inputs, threads, min_run_time, device)
                        for impl in ("reference", "fused", "sdpa")
                    }
                yield _row("window attention", shape, "fwd+bwd" if backward else "forward", times)


def _softpool_forward(impl: str):
    return lambda x, g: softpool2d(x, WINDOW, impl=impl)


def _softpool_backward(impl: str):
    return lambda x, g: torch.autograd.grad(softpool2d(x, WINDOW, impl=impl), x, g)


def softpool_rows(device, threads, min_run_time):
    timing = (threads, min_run_time, device)
    for batch in BATCHES:
        for channels, height, width in POOL_SHAPES:
            x = torch.randn(batch, channels, height, width, device=device)
            g = torch.randn(batch, channels, height // WINDOW, width // WINDOW, device=device)
            for backward in (False, True):
                args = (x.clone().requires_grad_() if backward else x, g)
                make = _softpool_backward if backward else _softpool_forward
                with torch.inference_mode(not backward):
                    times = {impl: _median(make(impl), args, *timing) for impl in ("reference", "fused")}
                shape = f"({batch}, {channels}, {height}, {width})"
                yield _row("softpool2d", shape, "fwd+bwd" if backward else "forward", times)


def model_rows(device, threads, min_run_time):
    torch.manual_seed(0)
    model = create_model("fthnet_s").eval().to(device)
    images = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(0)).to(device)
    times, scores = {}, {}
    for mode in ("reference", "fused"):
        with use_kernels(mode), torch.inference_mode():
            scores[mode] = 100 * model(images).item()
            times[mode] = _median(model, (images,), threads, min_run_time, device)
    yield _row("FTHNet-S (whole model)", "(1, 3, 384, 384)", "forward", times)
    yield (
        "\nFTHNet-S 100 q (the score before clamping to 0-100; untrained seeded weights): "
        f"reference {scores['reference']:.6f}, "
        f"fused {scores['fused']:.6f}, difference {abs(scores['reference'] - scores['fused']):.2e}"
    )


def main() -> None:
    parser = timing_parser(__doc__)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        isas = ", ".join(f"{side} {isa}" for side, isa in cpu_instructions().items())
        where = f"{platform.processor() or platform.machine()} ({isas})"
    print(f"torch {torch.__version__}, {args.threads} thread(s), {where}, float32, median of repeated timings\n")
    print("| op | input | pass | reference (ms) | fused (ms) | SDPA (ms) | fused vs reference | fused vs SDPA |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    timing = (device, args.threads, args.min_run_time)
    for rows in (attention_rows(*timing), softpool_rows(*timing), model_rows(*timing)):
        for row in rows:
            print(row, flush=True)


if __name__ == "__main__":
    main()
