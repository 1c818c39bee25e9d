"""scripts/chaos.py runs its whole scenario in a tiny configuration and finds nothing wrong.

The stub scorer instead of the model, six ordinary captures, no near-cap PNGs: the kills, restarts,
hostile files and the trickling webhook are all there. Its figures come from the default run (README,
"Reliability"); this checks what it counts, never how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys

from script_helpers import SCRIPTS


def test_a_tiny_chaos_run_loses_duplicates_and_leaks_nothing():
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "chaos.py"), "--stub", "--captures", "6", "--idle", "3", "--near-cap", "0",
         "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    tally = report["tally"]
    # 3 idle + 5 distinct ordinary (the sixth is a second name) + 8 hostile (truncated, text as .jpg, a DICOM in
    # five appends, five odd names); the text file is not a capture.
    assert tally["captures"] == 16
    assert (tally["lost"], tally["duplicated"], tally["spurious"], tally["crashed"], tally["pending_left"]) == (0,) * 5
    assert tally["failed"] == 5, "the truncated JPEGs (one plain, three with odd names) and text under a .jpg name"
    assert tally["leaks"] == [] and tally["forged_lines"] == 0
    assert tally["daemon_starts"] == 4 and report["sigterm_exit_code"] == 0
    assert tally["webhook_posts"] >= 1, "alerts reached the trickling webhook"
    assert len(report["idle_latencies_s"]) == 3 and report["idle_p95_s"] >= report["idle_p50_s"] > 0
