"""``pyfundus demo``: a simulated camera into a temporary folder, verdicts live, a summary at the end."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

from daemon_helpers import BrightnessScorer

from pyfundus.daemon.demo import captures, run_demo
from pyfundus.io import CAMERA_FRAME

VERDICT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  (IMG_\d{4}\.(?:jpg|dcm)) ", re.MULTILINE)


def test_camera_writes_2304x1728_jpegs_both_ways():
    from PIL import Image

    first = list(zip(range(4), captures()))
    assert [capture.name for _, capture in first] == ["IMG_0001.jpg", "IMG_0002.jpg", "IMG_0003.jpg", "IMG_0004.jpg"]
    assert {capture.chunked for _, capture in first} == {True, False}
    for _, capture in first:
        image = Image.open(io.BytesIO(capture.data))
        assert image.format == "JPEG" and image.size == CAMERA_FRAME
    assert len({capture.data for _, capture in first}) == 4


def test_demo_with_a_stub_scorer_and_the_operator_page(tmp_path):
    out = io.StringIO()
    scorer = BrightnessScorer()
    assert run_demo(count=4, interval=0.3, web=True, port=0, scorer=scorer, out=out) == 0
    text = out.getvalue()
    assert re.search(r"^operator page: http://127\.0\.0\.1:\d+", text, re.MULTILINE)
    assert sorted(VERDICT_LINE.findall(text)) == [f"IMG_000{n}.jpg" for n in range(1, 5)]
    assert text.count("camera: IMG_") == 4 and len(scorer.scored) == 4
    assert "demo summary: 4 capture(s) written, 4 verdict(s)" in text


def test_pyfundus_demo_runs_to_completion_with_the_default_model_in_under_a_minute():
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pyfundus.cli", "demo", "--count", "4", "--no-web"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(VERDICT_LINE.findall(done.stdout)) == [f"IMG_000{n}.jpg" for n in range(1, 5)]
    assert "demo summary: 4 capture(s) written, 4 verdict(s)" in done.stdout
    assert "untrained model" not in done.stdout  # it runs the shipped, trained weights
    print(f"pyfundus demo --count 4: {time.monotonic() - started:.1f} s")
