"""The kernel benchmark scripts run end to end and print complete tables (their figures: benchmarks/RESULTS.md).

Run with tiny timing budgets: these check what the scripts compute and print, never how fast anything is.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RATIO = re.compile(r"\*\*(\d+\.\d\d)x\*\*")


def _run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--threads", "1", "--min-run-time", "0.01", *args],
                          capture_output=True, text=True, check=True, timeout=600)  # fmt: skip
    return done.stdout


def test_ops_benchmark_checks_every_shape_and_prints_every_row():
    out = _run("ops.py")
    rows = [line for line in out.splitlines() if line.startswith("| ") and RATIO.search(line)]
    # Attention: 4 stages x (forward, fwd+bwd) at batch 1 + 4 forwards at batch 16; SoftPool: 4 shapes x 2 passes
    # x 2 batches; the whole model.
    assert sum("window attention" in row for row in rows) == 12
    assert sum("softpool2d" in row for row in rows) == 16
    assert sum("FTHNet-S (whole model)" in row for row in rows) == 1
    for row in rows:  # each ratio is its row's reference over fused, up to the cells' rounding (0.0005 ms)
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        reference, fused, ratio = float(cells[3]), float(cells[4]), float(RATIO.search(row).group(1))
        slack = reference / fused * (0.0005 / fused + 0.0005 / reference) + 0.005
        assert abs(ratio - reference / fused) <= slack, row
    # The script asserts fused == reference at each attention shape before timing; the whole model's scores too:
    difference = float(re.search(r"difference (\S+)", out).group(1))
    assert difference < 1e-3


def test_timing_method_prints_both_methods_for_both_ops():
    lines = _run("timing_method.py").splitlines()
    assert len(lines) == 4
    for op, method in [("softpool2d", "a block per call"), ("softpool2d", "one block"),
                       ("window attention", "a block per call"), ("window attention", "one block")]:  # fmt: skip
        line = next(line for line in lines if line.startswith(op) and method in line)
        found = re.search(r"reference +(\S+) us, fused +(\S+) us, (\S+)x$", line)
        reference, fused, ratio = (float(v) for v in found.groups())
        assert abs(ratio - reference / fused) <= reference / fused * (0.05 / fused + 0.05 / reference) + 0.005, line


def test_dispatch_prints_the_three_paths_it_checked():
    lines = _run("dispatch.py").splitlines()
    paths = ["through torch.ops.pyfundus.softpool2d", "eager inference path", "the kernel alone"]
    assert len(lines) == len(paths)
    for line, path in zip(lines, paths):
        assert path in line
        assert float(re.search(r"(\d+\.\d) us$", line).group(1)) > 0


def test_gpu_check_says_so_and_stops_without_a_gpu(tmp_path):
    """benchmarks/gpu_check.sh runs on a GPU machine; elsewhere it must stop at once, building nothing."""
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run the script itself (it builds and times for minutes)")
    script = BENCHMARKS / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    done = subprocess.run(["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr
    assert not (tmp_path / "out" / "build.log").exists()
