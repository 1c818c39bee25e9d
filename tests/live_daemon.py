"""A running daemon for the operations tests (alerts, reject actions, systemd): stub scorer, real everything else."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from daemon_helpers import BrightnessScorer, LedgerView, png_bytes, wait_for

from pyfundus.daemon.config import WatchConfig
from pyfundus.daemon.records import Verdict
from pyfundus.daemon.service import Daemon

FAST = dict(debounce=0.05, settle=0.15, incomplete_grace=0.8, liveness_interval=0.1, drain_timeout=10.0, web=False)
WAIT = 30.0  # generous for a loaded two-core machine; waits end as soon as the outcome is there

# BrightnessScorer grades by brightness: png_bytes(seed) has a flat brightness of 20 + seed.
DARK, BRIGHT = 10, 200  # Reject, Good


def dark_png(n: int = 0) -> bytes:
    return png_bytes(DARK + n)


def bright_png(n: int = 0) -> bytes:
    return png_bytes(BRIGHT + n)


@dataclass
class Running:
    daemon: Daemon
    verdicts: list[Verdict]
    ledger: LedgerView
    folder: Path

    def wait_done(self, *paths: Path) -> None:
        wait_for(lambda: all(self.ledger.is_done(p) for p in paths), WAIT, f"verdicts for {[p.name for p in paths]}")


@contextmanager
def running(tmp_path: Path, **overrides) -> Iterator[Running]:
    folder = tmp_path / "camera"
    folder.mkdir(parents=True, exist_ok=True)
    config = WatchConfig(folder=folder, state_dir=tmp_path / "state", **{**FAST, **overrides})
    verdicts: list[Verdict] = []
    daemon = Daemon(config, BrightnessScorer(), sinks=[verdicts.append])
    daemon.start()
    try:
        yield Running(daemon, verdicts, LedgerView(config.state_dir), folder)
    finally:
        daemon.stop()
