"""How long the operator waits: the daemon's latency from close-write to committed verdict.

``run_daemon_bench`` starts a real daemon (default settings, default model,
operator page on a free port) on a temporary folder and writes 2304x1728
JPEGs into it the way a camera does (open, write, close under the final
name). Each capture's latency runs from the moment the writer's ``close()``
returned to the moment its verdict reached the outputs, which happens right
after the ledger commit. Both clocks are this process's ``time.monotonic()``.

Rows (a list of dicts, also printed as a table by ``python -m
pyfundus.daemon.latency_bench``):

- ``native``: ``count`` captures, one every ``interval_s``, inotify events.
  ``first_ms`` is the very first capture after start-up (cold model).
- ``burst``: ``burst`` captures written at once. Nothing may be lost (every
  one is in the ledger as scored); drain time from the first close to the
  last verdict; throughput next to the model's own throughput on the same
  files (``model.score`` called directly, same batch size).
- ``polling`` (``polling=True``): as ``native`` with ``--poll``; the stability
  check then needs two looks ``settle`` apart, so the added latency is about
  half the poll interval + debounce + settle.

Every capture is a distinct file (a JPEG comment makes the bytes unique; the
ledger would otherwise recognise the content and not score it again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import WatchConfig
from .records import Verdict

FRAME_COUNT = 4  # distinct base photos; captures are copies with a unique JPEG comment
WARMUP = 2  # captures scored before timing starts (the first one's latency is reported as first_ms)


class _Clock:
    """The verdict sink that timestamps arrivals."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.verdicts: dict[str, Verdict] = {}
        self._cv = threading.Condition()

    def __call__(self, verdict: Verdict) -> None:
        now = time.monotonic()
        with self._cv:
            self.arrived.setdefault(verdict.path, now)
            self.verdicts.setdefault(verdict.path, verdict)
            self._cv.notify_all()

    def wait(self, paths: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not all(path in self.arrived for path in paths):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sum(path not in self.arrived for path in paths)
                    raise TimeoutError(f"{missing} of {len(paths)} verdict(s) did not arrive within {timeout:g} s")
                self._cv.wait(min(left, 0.5))


def camera_frames(count: int = FRAME_COUNT) -> list[bytes]:
    """Distinct 2304x1728 JPEGs of synthetic fundi, as the camera would save them."""
    from pyfundus.data.synth import generate_fundus
    from pyfundus.io import encode_jpeg

    return [encode_jpeg(generate_fundus(seed, size=768)[0]) for seed in range(count)]


def unique_jpeg(frame: bytes, n: int) -> bytes:
    """``frame`` with a COM segment right after SOI: new bytes (new sha256), the same pixels."""
    comment = f"pyfundus bench capture {n}".encode()
    return frame[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + frame[2:]


def _write(path: Path, data: bytes) -> float:
    with open(path, "wb") as f:
        f.write(data)
    return time.monotonic()  # close() has returned: inotify has queued IN_CLOSE_WRITE


def _percentiles(latencies_ms: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_ms)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p95_ms": round(float(np.percentile(values, 95)), 1),
        "max_ms": round(float(values.max()), 1),
    }


class _Session:
    """One daemon on a temporary folder, and a camera writing into it."""

    def __init__(self, scorer: Any, workspace: Path, *, poll: float | None, batch_size: int) -> None:
        from .service import Daemon

        self.folder = workspace / ("camera-polling" if poll else "camera")
        self.folder.mkdir()
        config = WatchConfig(
            folder=self.folder, state_dir=workspace / f"state-{self.folder.name}", poll=poll, batch_size=batch_size,
            web=True, web_port=0,
        )  # fmt: skip
        self.clock = _Clock()
        self.daemon = Daemon(config, scorer=scorer, sinks=[self.clock])
        self.written = 0

    def __enter__(self) -> _Session:
        self.daemon.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()

    def shoot(self, frames: list[bytes], n: int, *, interval_s: float, timeout: float) -> tuple[list[float], list[str]]:
        """``n`` captures about every ``interval_s`` (0: all at once); returns close times and real paths.

        Each shot is jittered by up to half an interval either way, so arrivals fall at every phase of the
        poll cycle in polling mode (with a fixed period they would all hit the same phase).
        """
        closed, paths = [], []
        start = time.monotonic()
        jitter = np.random.default_rng(self.written).uniform(-0.5, 0.5, size=n)
        for i in range(n):
            time.sleep(max(0.0, start + (i + jitter[i]) * interval_s - time.monotonic()))
            self.written += 1
            path = self.folder / f"IMG_{self.written:05d}.jpg"
            closed.append(_write(path, unique_jpeg(frames[self.written % len(frames)], self.written)))
            paths.append(os.path.realpath(path))
        self.clock.wait(paths, timeout)
        return closed, paths

    def latencies(self, closed: list[float], paths: list[str]) -> dict[str, float]:
        """Percentiles of close -> verdict, and the median time the scorer itself took per image."""
        latencies = [(self.clock.arrived[path] - at) * 1000.0 for at, path in zip(closed, paths)]
        model_ms = [self.clock.verdicts[path].timing_ms.get("total", float("nan")) for path in paths]
        return {**_percentiles(latencies), "scorer_p50_ms": round(float(np.median(model_ms)), 1)}

    def scored_in_ledger(self, paths: list[str]) -> int:
        assert self.daemon.ledger is not None
        states = {verdict.path: verdict.state for verdict, _ in self.daemon.ledger.captures()}
        return sum(states.get(path) == "scored" for path in paths)


def run_daemon_bench(
    model: Any = None,
    count: int = 30,
    interval_s: float = 1.0,
    burst: int = 50,
    polling: bool = False,
    *,
    poll_interval_s: float = 1.0,
    device: str = "cpu",
    precision: str | None = None,
    compile: bool = False,
    batch_size: int = 8,
    timeout_s: float = 300.0,
) -> list[dict[str, Any]]:
    """Measure close-write -> committed verdict latency; see the module docstring for the rows.

    ``model``: None (the default model), a registered name or .safetensors path, or a model-like object
    with ``score(paths, batch_size=)``. ``timeout_s``: the longest wait for any one round's verdicts.
    """
    from .scoring import load_scorer

    named = model is None or isinstance(model, (str, os.PathLike))
    scorer = load_scorer(model and os.fspath(model), device, precision=precision, compile=compile) if named else model
    common = {
        "model": getattr(scorer, "name", type(scorer).__name__),
        "trained": getattr(scorer, "trained", None),
        "device": str(getattr(scorer, "device", device)),
        "backend": getattr(scorer, "backend_description", None),
        "batch_size": batch_size,
    }
    frames = camera_frames()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pyfundus-daemon-bench-") as workspace:
        with _Session(scorer, Path(workspace), poll=None, batch_size=batch_size) as session:
            closed, paths = session.shoot(frames, WARMUP, interval_s=interval_s, timeout=timeout_s)
            first_ms = (session.clock.arrived[paths[0]] - closed[0]) * 1000.0
            closed, paths = session.shoot(frames, count, interval_s=interval_s, timeout=timeout_s)
            rows.append({
                "mode": "native", "images": count, "interval_s": interval_s, **session.latencies(closed, paths),
                "first_ms": round(first_ms, 1), **common,
            })  # fmt: skip
            if burst:
                closed, paths = session.shoot(frames, burst, interval_s=0.0, timeout=timeout_s)
                drain_s = max(session.clock.arrived[path] for path in paths) - closed[0]
                scored = session.scored_in_ledger(paths)
                model_rate = _model_throughput(scorer, paths, batch_size)
                rows.append({
                    "mode": "burst", "images": burst, "interval_s": 0.0, **session.latencies(closed, paths),
                    "lost": burst - scored, "drain_s": round(drain_s, 2),
                    "throughput_img_s": round(burst / drain_s, 2), "model_throughput_img_s": round(model_rate, 2),
                    **common,
                })  # fmt: skip
        if polling:
            with _Session(scorer, Path(workspace), poll=poll_interval_s, batch_size=batch_size) as session:
                config = session.daemon.config
                session.shoot(frames, WARMUP, interval_s=interval_s, timeout=timeout_s)
                closed, paths = session.shoot(frames, count, interval_s=interval_s, timeout=timeout_s)
                row = {"mode": "polling", "images": count, "interval_s": interval_s,
                       **session.latencies(closed, paths), "poll_s": poll_interval_s,
                       "debounce_s": config.debounce, "settle_s": config.settle, **common}  # fmt: skip
                row["added_p50_ms"] = round(row["p50_ms"] - rows[0]["p50_ms"], 1)
                rows.append(row)
    return rows


def _model_throughput(scorer: Any, paths: list[str], batch_size: int) -> float:
    """Images per second of the model alone (read, preprocess, forward) on the same files."""
    started = time.perf_counter()
    scorer.score(paths, batch_size=batch_size)
    return len(paths) / (time.perf_counter() - started)


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'mode':<8} {'images':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'scorer':>8}  notes"]
    for row in rows:
        if row["mode"] == "native":
            note = f"one every {row['interval_s']:g} s; first capture after start-up {row['first_ms']:.0f} ms"
        elif row["mode"] == "burst":
            note = (f"all at once: lost {row['lost']}, drained in {row['drain_s']:.1f} s = "
                    f"{row['throughput_img_s']:.1f} img/s (model alone {row['model_throughput_img_s']:.1f} img/s)")
        else:
            note = (f"--poll {row['poll_s']:g}: +{row['added_p50_ms']:.0f} ms over native at p50 "
                    f"(debounce {row['debounce_s']:g} s + settle {row['settle_s']:g} s + half a poll)")
        lines.append(f"{row['mode']:<8} {row['images']:>6} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} "
                     f"{row['max_ms']:>8.1f} {row['scorer_p50_ms']:>8.1f}  {note}")  # fmt: skip
    first = rows[0]
    lines.append(f"model {first['model']} ({'trained' if first['trained'] else 'untrained'}), "
                 f"{first.get('backend') or first['device']}, "
                 f"batch size {first['batch_size']}; 2304x1728 JPEGs; latency: close-write -> verdict committed; "
                 "scorer: median time the scorer spent per image (read, preprocess, model)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pyfundus.daemon.latency_bench",
        description="Daemon latency: close-write of a 2304x1728 JPEG -> committed verdict.",
    )
    parser.add_argument("--model", help="registered model or .safetensors file (default: the shipped model)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--count", type=int, default=30, help="captures at one per --interval (default: 30)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between captures (default: 1)")
    parser.add_argument("--burst", type=int, default=50, help="captures written at once; 0: no burst (default: 50)")
    parser.add_argument("--polling", action="store_true", help="add the --poll row")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="poll interval for that row (default: 1)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="as the daemon's --precision")
    parser.add_argument("--compile", action="store_true", help="as the daemon's --compile")
    parser.add_argument("-b", "--batch-size", type=int, default=8, help="daemon batch size (default: 8)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = run_daemon_bench(
        args.model, args.count, args.interval, args.burst, args.polling, poll_interval_s=args.poll_interval,
        device=args.device, precision=args.precision, compile=args.compile, batch_size=args.batch_size,
    )  # fmt: skip
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
