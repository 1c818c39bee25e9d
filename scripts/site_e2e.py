"""The daemon end to end with the real model: an unfamiliar camera, the operator's marks, adapt, a restart.

    python scripts/site_e2e.py --photo S/PALM_TR_P0185.png --camera "Example FC-1" --out runs/e2e

1. ``pyfundus watch`` (the shipped model, the operator page on a free port) on a fresh folder; a camera
   writes ``--captures`` clean captures: the photo turned by up to 15 degrees and flipped at random, as
   JPEGs whose EXIF names ``--camera`` (only one photo of such a camera is at hand: these stand in for
   its captures). If most are graded below Good, the daemon must raise the unfamiliar-camera notice.
2. The operator marks them "Fine as it is" through the page's own API (as key F does).
3. The daemon stops; ``pyfundus adapt --from-ledger STATE --camera CAMERA`` writes a site model.
4. The daemon restarts with ``--camera-model CAMERA=site.safetensors``; the camera writes fresh clean
   captures (new turns). They must be graded Good or Usable.

Prints what happened at each step (``--json`` for the whole record). Evaluation only when the photo is
from DRIVE or PALM: nothing written here ships.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def captures(photo: Path, camera: str, n: int, seed: int) -> list[bytes]:
    """``n`` JPEGs of the photo turned and flipped at random, EXIF Make/Model naming ``camera``."""
    from pyfundus.io import read_image

    rgb = read_image(photo).pixels
    maker, _, model = camera.partition(" ")
    out = []
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        h, w = rgb.shape[:2]
        turn = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), float(rng.uniform(-15, 15)), 1.0)
        image = cv2.warpAffine(rgb, turn, (w, h), flags=cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = maker, model or maker
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=92, exif=exif)
        out.append(buffer.getvalue())
    return out


class Daemon:
    """``pyfundus watch`` in a subprocess: its stdout JSON lines, its page's port."""

    def __init__(self, folder: Path, state: Path, extra: list[str]) -> None:
        self.log = open(state.parent / f"watch-{int(time.time() * 1000)}.log", "w")
        args = [sys.executable, "-m", "pyfundus.cli", "watch", str(folder), "--state-dir", str(state), "--json",
                "--web-port", "0", *extra]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.port = None
        deadline = time.monotonic() + 300
        while self.port is None and time.monotonic() < deadline:  # the page's address is in the log
            time.sleep(0.5)
            found = re.search(r"operator page: http://127\.0\.0\.1:(\d+)/", Path(self.log.name).read_text())
            self.port = int(found.group(1)) if found else None
            if self.process.poll() is not None:
                raise RuntimeError(f"pyfundus watch ended: {Path(self.log.name).read_text()[-2000:]}")

    def verdicts(self, n: int, timeout: float = 600) -> list[dict]:
        got, deadline = [], time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.strip():
                got.append(json.loads(line))
        return got

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Origin": f"http://127.0.0.1:{self.port}", "Content-Type": "application/json"}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=120)
        self.log.close()
        return code


def write(folder: Path, name: str, data: bytes) -> None:
    temporary = folder / f".{name}.part"
    temporary.write_bytes(data)
    os.replace(temporary, folder / name)  # as cameras that write then rename do


def grades(records: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record["class"] or "Failed"] = counts.get(record["class"] or "Failed", 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", type=Path, required=True)
    parser.add_argument("--camera", required=True, help="the camera's maker and model, as its EXIF will say")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--captures", type=int, default=8)
    parser.add_argument("--adapt-minutes", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    folder, state = args.out / "camera", args.out / "state"
    folder.mkdir(parents=True, exist_ok=True)
    record: dict = {"photo": args.photo.name, "camera": args.camera}

    daemon = Daemon(folder, state, [])
    for k, data in enumerate(captures(args.photo, args.camera, args.captures, seed=1)):
        write(folder, f"before_{k:02d}.jpg", data)
    before = daemon.verdicts(args.captures)
    _, latest = daemon.request("GET", "/api/latest")
    record["before"] = {"grades": grades(before), "scores": [r["score"] for r in before],
                        "cameras": sorted({r["camera"] for r in before}), "notices": latest["notices"]}  # fmt: skip
    marked = [daemon.request("POST", "/api/feedback", {"id": r["sha256"], "label": "fine"})[0] for r in before]
    record["marks"] = {"sent": len(marked), "accepted": marked.count(200)}
    record["first_exit"] = daemon.stop()

    site = args.out / "site.safetensors"
    started = time.monotonic()
    adapt = subprocess.run(
        [sys.executable, "-m", "pyfundus.cli", "adapt", "--from-ledger", str(state), "--camera", args.camera,
         "--out", str(site), "--minutes", str(args.adapt_minutes), "--json", "--no-progress"],
        capture_output=True, text=True,
    )  # fmt: skip
    record["adapt"] = {"exit": adapt.returncode, "seconds": round(time.monotonic() - started, 1),
                       "report": json.loads(adapt.stdout) if adapt.stdout.strip() else adapt.stderr[-2000:]}  # fmt: skip

    daemon = Daemon(folder, state, ["--camera-model", f"{args.camera}={site}"])
    for k, data in enumerate(captures(args.photo, args.camera, args.captures, seed=2)):
        write(folder, f"after_{k:02d}.jpg", data)
    after = daemon.verdicts(args.captures)
    record["after"] = {"grades": grades(after), "scores": [r["score"] for r in after],
                       "models": sorted({r["model_sha256"][:12] for r in after if r["model_sha256"]})}  # fmt: skip
    record["second_exit"] = daemon.stop()
    (args.out / "e2e.json").write_text(json.dumps(record, indent=2))
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"camera {args.camera!r}, fresh captures of {args.photo.name}")
    print(f"before adapt: {record['before']['grades']}, notice: {bool(record['before']['notices'])}")
    print(f"marks accepted: {record['marks']['accepted']} of {record['marks']['sent']}")
    print(f"adapt: exit {record['adapt']['exit']} in {record['adapt']['seconds']:.0f} s")
    print(f"after adapt and a restart: {record['after']['grades']} (models {record['after']['models']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
