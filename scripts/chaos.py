"""A chaos run against a real ``pyfundus watch``: does every capture end with exactly one verdict?

The daemon runs as a subprocess (the shipped model by default; ``--stub``: the
tests' brightness scorer, for a quick run) with ``--json --redact-identifiers``,
its operator page on a free loopback port and its webhook pointed at a loopback
server that answers one byte every 2 s. Everything stays on 127.0.0.1 and in a
temporary folder. The run, in order:

1. idle latency: single JPEGs, each written after the previous verdict; the
   time from the writer's close() to the verdict line on stdout;
2. near-cap: ``--near-cap`` PNGs of 10000x9999 RGBA (a few hundred KB each,
   400 MB decoded) and one ordinary capture written together; the daemon's
   RSS while they are scored and the ordinary capture's latency;
3. chaos: a camera thread writes ``--captures`` captures in five ways
   (direct, streamed in chunks, renamed from a .part file, copied, a second
   name for an earlier capture) with hostile files among them (a truncated
   JPEG, text under a .jpg name, a text file, names with quotes, colons, a
   newline and a forged verdict line, CJK (the first three truncated, so
   their failure messages carry the path), a DICOM written by open-append-
   close five times 0.4 s apart); meanwhile the daemon is killed with SIGKILL
   three times (mid-burst; during the next start-up; just after the restart
   announces its first verdict) and restarted, and finally sent SIGTERM.

Then the ledger and every stdout line are checked: captures (distinct final
contents), lost (no verdict in the ledger), duplicated (announced more than
once), spurious (a verdict for content that is no capture's final content, e.g.
a partial write), unannounced (in the ledger, never printed: a kill between
commit and print), crashed (a daemon that died without being killed), leaks
(a fragment of an odd name in stdout, the log or the webhook payloads), peak
RSS (the highest VmHWM of any daemon process). ``--json`` prints it all.

    python scripts/chaos.py            # about 2-3 minutes on two cores
    python scripts/chaos.py --stub --captures 6 --idle 3 --near-cap 0 --json   # the test's quick run
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STUB_DAEMON = ROOT / "tests" / "daemon_helpers.py"  # pyfundusd with the tests' brightness scorer
PYFUNDUS = "import sys; from pyfundus.cli import main; sys.exit(main(sys.argv[1:]))"  # the `pyfundus` command
FORGED = "2026-12-02 12:00:00  FORGED_capture.jpg   95.0  Good     R  -"
# Hostile names, each with a fragment that must never leave the daemon with --redact-identifiers on. The first
# three are truncated JPEGs, as in issue 17: a failure's message starts with the path.
ODD_NAMES = {
    "O'Brien_Mary_OD.jpg": "Brien",
    ":30 SMITH JOHN OS.jpg": "SMITH",
    '"Jane" OD.jpg': "Jane",
    f"a\n{FORGED}\nb.jpg": "FORGED",
    "眼底_山田太郎_右.jpg": "山田",
}
TRUNCATED_ODD_NAMES = 3
WEBHOOK_BYTE_EVERY = 2.0  # seconds between the bytes of the webhook's answer


class Trickle:
    """A loopback webhook that takes the whole request, then answers one byte every WEBHOOK_BYTE_EVERY s."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                reader = conn.makefile("rb")
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.payloads.append(reader.read(length))
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                    if self.stop.wait(WEBHOOK_BYTE_EVERY):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return  # the daemon gave up on it: what the deadline is for

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


class Daemon:
    """One ``pyfundus watch`` process: its stdout verdict lines with arrival times, its memory."""

    def __init__(self, argv: list[str], name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self.text: list[str] = []
        self.ready = threading.Event()
        self.rss_samples: list[tuple[float, int]] = []  # (monotonic time, VmRSS bytes)
        self.peak_rss = 0  # VmHWM: the process's own high-water mark
        self.signalled = False
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=self._sample_memory, daemon=True).start()

    def _read_stdout(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self.text.append(line)
            if line.startswith("{"):
                self.lines.append((time.monotonic(), json.loads(line)))

    def _read_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.text.append(line)
            if line.startswith("operator page:"):
                self.ready.set()

    def _sample_memory(self) -> None:
        status = Path(f"/proc/{self.proc.pid}/status")
        while self.proc.poll() is None:
            try:
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
                rss, hwm = (int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM"))
            except (OSError, KeyError, ValueError):
                return
            self.rss_samples.append((time.monotonic(), rss))
            self.peak_rss = max(self.peak_rss, hwm)
            time.sleep(0.05)

    def announced(self, sha256: str) -> float | None:
        """When the first (non-duplicate) verdict line for this content arrived."""
        for arrived, record in list(self.lines):
            if record["sha256"] == sha256 and record["duplicate_of"] is None:
                return arrived
        return None

    def kill(self) -> None:
        self.signalled = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM; the exit status (None: still running after ``timeout``, then killed) and how long it took."""
        self.signalled = True
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        return code, time.monotonic() - started

    @property
    def crashed(self) -> bool:
        return self.proc.poll() is not None and not self.signalled


class Run:
    """The folder, the daemons started on it, the captures written and the contents expected to get a verdict."""

    def __init__(self, workspace: Path, args: argparse.Namespace, webhook: str) -> None:
        self.folder, self.state, self.staging = (workspace / name for name in ("camera", "state", "staging"))
        for folder in (self.folder, self.staging):
            folder.mkdir()
        self.args = args
        self.deadline = time.monotonic() + args.time_limit
        program = [sys.executable, str(STUB_DAEMON)] if args.stub else [sys.executable, "-c", PYFUNDUS]
        self.argv = [
            *program, "watch", str(self.folder), "--state-dir", str(self.state), "--json", "--redact-identifiers",
            "--web-port", "0", "--alert-webhook", webhook, "--drain-timeout", "10",
        ]  # fmt: skip
        self.daemons: list[Daemon] = []
        self.expected: dict[str, str] = {}  # sha256 of a capture's final content -> its label
        self.closed: dict[str, float] = {}  # sha256 -> when its writer closed it
        self.lock = threading.Lock()

    @property
    def daemon(self) -> Daemon:
        return self.daemons[-1]

    def start(self) -> Daemon:
        daemon = Daemon(self.argv, f"run {len(self.daemons) + 1}")
        self.daemons.append(daemon)
        return daemon

    def wait(self, condition: Callable[[], object], what: str, limit: float | None = None) -> None:
        end = self.deadline if limit is None else min(self.deadline, time.monotonic() + limit)
        while not condition():
            if time.monotonic() > end:
                raise TimeoutError(f"gave up waiting for {what}")
            if self.daemon.crashed:
                raise RuntimeError(f"the daemon ({self.daemon.name}) died on its own while waiting for {what}")
            time.sleep(0.05)

    def expect(self, data: bytes, label: str) -> str:
        digest = hashlib.sha256(data).hexdigest()
        with self.lock:
            self.expected.setdefault(digest, label)
        return digest

    def write(self, name: str, data: bytes, how: str = "direct") -> str:
        """Write one capture the way ``how`` says; returns the sha256 of its final content."""
        target = self.folder / name
        if how == "chunked":  # one open, five writes: inotify says "closed" once, at the end
            with open(target, "wb") as f:
                for part in np.array_split(np.frombuffer(data, np.uint8), 5):
                    f.write(part.tobytes())
                    f.flush()
                    time.sleep(0.1)
        elif how == "append":  # open-append-close five times: five close-writes, the DICOM of issue 17
            for part in np.array_split(np.frombuffer(data, np.uint8), 5):
                with open(target, "ab") as f:
                    f.write(part.tobytes())
                time.sleep(0.4)
        elif how == "rename":
            temporary = self.folder / f"{name}.part"
            temporary.write_bytes(data)
            os.replace(temporary, target)
        elif how == "copy":
            (self.staging / "copy").write_bytes(data)
            shutil.copyfile(self.staging / "copy", target)
        else:
            target.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        with self.lock:
            self.closed.setdefault(digest, time.monotonic())
        return digest

    def ledger(self) -> dict[str, str]:
        """sha256 -> state of every capture in the ledger, read as an outside tool would."""
        path = self.state / "ledger.sqlite3"
        if not path.exists():
            return {}
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return dict(conn.execute("SELECT sha256, state FROM captures").fetchall())
        except sqlite3.OperationalError:
            return {}
        finally:
            conn.close()

    def all_done(self) -> bool:
        states = self.ledger()
        with self.lock:
            return all(states.get(digest) in ("scored", "failed") for digest in self.expected)


# ---- captures ----------------------------------------------------------------------------


def fundus_jpegs(count: int) -> list[bytes]:
    from pyfundus.daemon.latency_bench import camera_frames

    return camera_frames(count)


def unique_jpeg(frame: bytes, n: int) -> bytes:
    from pyfundus.daemon.latency_bench import unique_jpeg as unique

    return unique(frame, n)


def fundus_png(n: int) -> bytes:
    from PIL import Image, PngImagePlugin

    from pyfundus.data.synth import generate_fundus

    info = PngImagePlugin.PngInfo()
    info.add_text("capture", str(n))
    buffer = io.BytesIO()
    Image.fromarray(generate_fundus(n, size=512)[0]).save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


def fundus_tiff(n: int) -> bytes:
    from PIL import Image

    from pyfundus.data.synth import generate_fundus

    buffer = io.BytesIO()
    Image.fromarray(generate_fundus(n, size=512)[0]).save(buffer, format="TIFF")
    return buffer.getvalue()


def fundus_dicom(n: int) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from pyfundus.data.synth import generate_fundus

    pixels = generate_fundus(n, size=768)[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("capture.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.ImageLaterality = f"CHAOS-{n}", "R"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def near_cap_pngs(count: int, width: int = 10_000, height: int = 9_999) -> list[bytes]:
    """RGBA PNGs just under the 100 MP cap: a disc on black (a field of view to find), 400 MB decoded, a few
    hundred KB on disk. One compressed image; each copy differs by a text chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(6)
    parts, row = [], np.zeros((width, 4), np.uint8)
    radius = 0.45 * min(width, height)
    for y in range(height):
        row[:] = (0, 0, 0, 255)
        half = radius**2 - (y - height / 2) ** 2
        if half > 0:
            left, right = int(width / 2 - half**0.5), int(width / 2 + half**0.5)
            row[left:right, :3] = (170, 80, 40)
        parts.append(compressor.compress(b"\0" + row.tobytes()))
    parts.append(compressor.flush())
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
    tail = chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    return [head + chunk(b"tEXt", f"capture\0near-cap {n}".encode()) + tail for n in range(count)]


# ---- the phases -------------------------------------------------------------------------------


def idle_latencies(run: Run, frames: list[bytes], count: int) -> list[float]:
    """Close -> verdict line, in seconds, for captures written one at a time to an idle daemon."""
    latencies = []
    for n in range(count):
        data = unique_jpeg(frames[n % len(frames)], 10_000 + n)
        digest = run.expect(data, "idle")
        run.write(f"idle-{n:02d}.jpg", data)
        run.wait(lambda: run.daemon.announced(digest), f"the verdict of idle capture {n}", 60)
        latencies.append(run.daemon.announced(digest) - run.closed[digest])
        time.sleep(0.3)
    return latencies


def near_cap(run: Run, frames: list[bytes], count: int) -> dict[str, Any]:
    """``count`` near-cap PNGs and one ordinary capture written together: RSS while they are scored, the
    ordinary one's latency. Measured from the samples of this phase only."""
    images = near_cap_pngs(count)
    good = unique_jpeg(frames[0], 20_000)
    started = time.monotonic()
    rss_before = max(rss for _, rss in run.daemon.rss_samples[-20:])
    digests = [run.expect(data, "near-cap") for data in images] + [run.expect(good, "ordinary, with near-cap")]
    for n, data in enumerate(images):
        run.write(f"near-cap-{n}.png", data)
    run.write("ordinary-with-near-cap.jpg", good)
    run.wait(lambda: all(run.daemon.announced(digest) for digest in digests), "the near-cap verdicts", 120)
    finished = time.monotonic()
    during = [rss for at, rss in run.daemon.rss_samples if started <= at <= finished]
    return {
        "images": count,
        "rss_before_gb": round(rss_before / 1e9, 3),
        "peak_rss_gb": round(max(during) / 1e9, 3),
        "ordinary_capture_latency_s": round(run.daemon.announced(digests[-1]) - run.closed[digests[-1]], 3),
        "all_scored_s": round(finished - started, 1),
    }


def camera(run: Run, frames: list[bytes], count: int, written: list[str]) -> None:
    """The chaos burst: ``count`` ordinary captures in five ways, hostile files among them."""
    ways = ("direct", "chunked", "rename", "copy", "second name")
    hostile = [
        lambda: run.write("cut-short.jpg", _keep(run, unique_jpeg(frames[1], 30_000)[:40_000], "truncated JPEG")),
        lambda: run.write("notes.jpg", _keep(run, b"operator notes, saved under an image name", "text as .jpg")),
        lambda: run.write("notes.txt", b"not an image: ignored, never in the ledger"),
        lambda: run.write("chunked.dcm", _keep(run, fundus_dicom(31), "DICOM, open-append-close x5"), "append"),
        *(lambda name=name, n=n: run.write(name, _keep(run, _odd_capture(frames[2], n), "odd name"))
          for n, name in enumerate(ODD_NAMES)),
    ]  # fmt: skip
    previous = None
    for n in range(count):
        way = ways[n % len(ways)]
        if way == "second name" and previous is not None:
            run.write(f"burst-{n:03d}-second-name.jpg", previous)  # the same content: no new verdict
        else:
            data = fundus_png(n) if way == "rename" else fundus_tiff(n) if way == "copy" else \
                unique_jpeg(frames[n % len(frames)], 40_000 + n)  # fmt: skip
            extension = {"rename": "png", "copy": "tif"}.get(way, "jpg")
            run.write(f"burst-{n:03d}-{way}.{extension}", _keep(run, data, way), "chunked" if way == "chunked" else
                      "rename" if way == "rename" else "copy" if way == "copy" else "direct")  # fmt: skip
            previous = data
        written.append(way)
        if hostile and n % 2 == 1:
            hostile.pop(0)()
            written.append("hostile")
        time.sleep(0.15)
    for write in hostile:
        write()
        written.append("hostile")


def _odd_capture(frame: bytes, n: int) -> bytes:
    data = unique_jpeg(frame, 31_000 + n)
    return data[:40_000] if n < TRUNCATED_ODD_NAMES else data


def _keep(run: Run, data: bytes, label: str) -> bytes:
    run.expect(data, label)
    return data


def chaos(run: Run, frames: list[bytes], count: int) -> dict[str, Any]:
    """The burst with three SIGKILLs at different moments, restarts, then SIGTERM once everything is in."""
    written: list[str] = []
    writer = threading.Thread(target=camera, args=(run, frames, count, written), daemon=True)
    announced_before = len(run.daemon.lines)
    writer.start()
    # 1: mid-burst, while the scorer is busy.
    run.wait(lambda: len(run.daemon.lines) - announced_before >= max(2, count // 3), "verdicts of the burst")
    run.daemon.kill()
    # 2: during the next start-up (the model is loading, pending rows untouched).
    run.start()
    time.sleep(0.5)
    during_start_up = not run.daemon.ready.is_set()
    run.daemon.kill()
    # 3: just after the restart announces its first verdict: it is scoring what the kills left pending
    # (or, when the camera is done and nothing is left, as soon as it is up).
    run.start()
    run.wait(lambda: run.daemon.lines or (run.daemon.ready.is_set() and run.all_done()), "a restart's first verdict")
    run.daemon.kill()
    run.start()
    writer.join(max(0.0, run.deadline - time.monotonic()))
    run.wait(run.all_done, "a verdict for every capture")
    run.wait(lambda: _queue_empty(run.daemon), "the queue to empty", 30)
    code, seconds = run.daemon.terminate(timeout=60)
    return {"sigterm_exit_code": code, "sigterm_exit_s": round(seconds, 1), "written": len(written),
            "second_kill_during_start_up": during_start_up}  # fmt: skip


def _queue_empty(daemon: Daemon) -> bool:
    """The last daemon's /healthz says nothing is settling or queued."""
    import urllib.error
    import urllib.request

    page = next((line for line in daemon.text if line.startswith("operator page:")), None)
    if page is None:
        return False
    try:
        with urllib.request.urlopen(page.split()[-1] + "healthz", timeout=5) as response:
            health = json.load(response)
    except urllib.error.HTTPError as exc:  # 503 (unhealthy) still reports the queue
        health = json.load(exc)
    except OSError:
        return False
    return health.get("queue_depth") == 0 and health.get("settling") == 0


# ---- the report ---------------------------------------------------------------------------------


def tally(run: Run, trickle: Trickle) -> dict[str, Any]:
    states = run.ledger()
    announcements: dict[str, int] = {}
    for daemon in run.daemons:
        for _, record in daemon.lines:
            if record["duplicate_of"] is None:
                announcements[record["sha256"]] = announcements.get(record["sha256"], 0) + 1
    expected = set(run.expected)
    printed = "".join(line for daemon in run.daemons for line in daemon.text)
    log_text = "".join(path.read_text(errors="replace") for path in sorted(run.state.glob("pyfundusd.log*")))
    outside = printed + log_text + b"".join(trickle.payloads).decode(errors="replace")
    return {
        "captures": len(expected),
        "lost": sum(states.get(digest) not in ("scored", "failed") for digest in expected),
        "duplicated": sum(count > 1 for count in announcements.values()),
        "spurious": len((set(states) | set(announcements)) - expected),
        "unannounced": sum(digest in states and digest not in announcements for digest in expected),
        "failed": sum(states.get(digest) == "failed" for digest in expected),
        "pending_left": sum(state == "pending" for state in states.values()),
        "crashed": sum(daemon.crashed for daemon in run.daemons),
        "daemon_starts": len(run.daemons),
        "leaks": sorted({fragment for fragment in ODD_NAMES.values() if fragment in outside}),
        "forged_lines": sum(line.startswith(FORGED) for line in (printed + log_text).splitlines()),
        "log_tracebacks": log_text.count("Traceback"),
        "webhook_posts": len(trickle.payloads),
        "peak_rss_gb": round(max(daemon.peak_rss for daemon in run.daemons) / 1e9, 3),
    }


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def format_table(report: dict[str, Any]) -> str:
    t, near = report["tally"], report.get("near_cap")
    rows = [
        ("captures", t["captures"]), ("lost", t["lost"]), ("duplicated", t["duplicated"]),
        ("spurious verdicts", t["spurious"]), ("unannounced", t["unannounced"]), ("crashed", t["crashed"]),
        ("peak RSS", f"{t['peak_rss_gb']:.2f} GB"),
        ("idle latency p50 / p95", f"{report['idle_p50_s']:.2f} s / {report['idle_p95_s']:.2f} s"
         if report["idle_p50_s"] is not None else "-"),
    ]  # fmt: skip
    if near:
        rows += [
            (f"near-cap x{near['images']}: peak RSS", f"{near['peak_rss_gb']:.2f} GB (before: {near['rss_before_gb']:.2f})"),
            ("near-cap: ordinary capture latency", f"{near['ordinary_capture_latency_s']:.2f} s"),
        ]  # fmt: skip
    rows += [
        ("failed (expected: hostile)", t["failed"]), ("leaks of odd names", ", ".join(t["leaks"]) or "none"),
        ("SIGTERM", f"exit {report['sigterm_exit_code']} after {report['sigterm_exit_s']:.1f} s"),
        ("daemon starts / SIGKILLs", f"{t['daemon_starts']} / {t['daemon_starts'] - 1}"),
        ("webhook posts (none answered)", t["webhook_posts"]), ("tracebacks in the log", t["log_tracebacks"]),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append(f"model: {report['model']}; {report['elapsed_s']:.0f} s in all")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stub", action="store_true", help="the tests' brightness scorer instead of the shipped model")
    parser.add_argument("--captures", type=int, default=30, help="ordinary captures in the chaos burst (default: 30)")
    parser.add_argument("--idle", type=int, default=10, help="captures for the idle latency (default: 10)")
    parser.add_argument("--near-cap", type=int, default=4, help="near-cap PNGs written together; 0: none (default: 4)")
    parser.add_argument("--time-limit", type=float, default=300.0, help="give up after this many seconds")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()
    trickle = Trickle()
    with tempfile.TemporaryDirectory(prefix="pyfundus-chaos-") as workspace:
        run = Run(Path(workspace), args, trickle.url)
        try:
            frames = fundus_jpegs(4)
            run.start()
            run.wait(run.daemon.ready.is_set, "the daemon to start", 120)
            latencies = idle_latencies(run, frames, args.idle)
            near = near_cap(run, frames, args.near_cap) if args.near_cap else None
            ending = chaos(run, frames, args.captures)
            report = {
                "model": "stub (brightness)" if args.stub else "shipped default (fthnet_s)",
                "idle_p50_s": percentile(latencies, 50), "idle_p95_s": percentile(latencies, 95),
                "idle_latencies_s": [round(value, 3) for value in latencies],
                "near_cap": near, **ending, "tally": tally(run, trickle),
                "elapsed_s": round(time.monotonic() - started, 1),
            }  # fmt: skip
        finally:
            trickle.close()
            for daemon in run.daemons:
                if daemon.proc.poll() is None:
                    daemon.kill()
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_table(report))
    t = report["tally"]
    clean = not (t["lost"] or t["duplicated"] or t["spurious"] or t["crashed"] or t["leaks"] or t["forged_lines"])
    return 0 if clean and report["sigterm_exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
