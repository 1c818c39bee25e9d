"""The daemon latency benchmark, run small with the stub scorer (the real figures: benchmarks/RESULTS.md)."""

from __future__ import annotations

from daemon_helpers import BrightnessScorer

from pyfundus.daemon.config import WatchConfig
from pyfundus.daemon.latency_bench import format_table, run_daemon_bench, unique_jpeg


def test_unique_jpeg_changes_the_bytes_not_the_pixels():
    import io

    import numpy as np
    from PIL import Image

    from pyfundus.io import encode_jpeg

    frame = encode_jpeg(np.full((64, 64, 3), 120, np.uint8))
    a, b = unique_jpeg(frame, 1), unique_jpeg(frame, 2)
    assert a != b != frame
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(a))), np.asarray(Image.open(io.BytesIO(frame))))


def test_bench_rows_native_burst_polling():
    rows = run_daemon_bench(BrightnessScorer(), count=3, interval_s=0.3, burst=6, polling=True, poll_interval_s=0.3)
    native, burst, polling = rows
    assert [row["mode"] for row in rows] == ["native", "burst", "polling"]
    for row in rows:
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["max_ms"]
    assert burst["lost"] == 0 and burst["images"] == 6 and burst["throughput_img_s"] > 0
    settle_ms = WatchConfig.settle * 1000  # the class default: what the bench runs with
    # Close-write needs no stability wait; polling must still take two looks a settle apart.
    assert native["p50_ms"] < settle_ms <= polling["p50_ms"]
    assert polling["added_p50_ms"] == round(polling["p50_ms"] - native["p50_ms"], 1)
    table = format_table(rows)
    assert table.splitlines()[0].split()[:2] == ["mode", "images"] and "lost 0" in table


def test_close_write_and_moves_from_outside_skip_the_waits(tmp_path):
    """The latency fixes: no debounce after close-write, and a file renamed in from elsewhere is complete
    (before, it waited ``incomplete_grace`` for a close-write that never comes)."""
    import os
    import time

    from daemon_helpers import png_bytes, write
    from live_daemon import running

    slow = dict(debounce=3.0, settle=3.0, incomplete_grace=6.0)  # any wait would show
    (tmp_path / "outside").mkdir()
    with running(tmp_path, **slow) as h:
        write(h.folder / "warm.png", png_bytes(1))
        h.wait_done(h.folder / "warm.png")  # the stub's first call imports the reader
        closed = write(h.folder / "closed.png", png_bytes(2))
        started = time.monotonic()
        h.wait_done(closed)
        close_write_s = time.monotonic() - started
        outside = write(tmp_path / "outside" / "moved.png", png_bytes(3))
        started = time.monotonic()
        os.rename(outside, h.folder / "moved.png")
        h.wait_done(h.folder / "moved.png")
        moved_s = time.monotonic() - started
    assert close_write_s < 2.0 and moved_s < 2.0, (close_write_s, moved_s)
