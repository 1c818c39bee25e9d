"""Images/s of `pyfundus score`: the local engine, then the Ray engine with 1 and 2 actors, in one run.

Each configuration is the command a user would type, run as a process of its own on the same captures:
camera-sized JPEGs (2304x1728, synthetic fundi, made once; distinct ones repeat when more are asked for).
Wall time runs from the command's start to its exit: Python, the model, Ray and its actors included. For
the Ray engine the run's summary also gives the pipeline's own images/s, from Ray being up to the last row
(the actors' start-up, loading the model, counts). Ray runs as the command starts it without
--ray-address: a private instance, here in a temporary folder, stopped by the command; the script checks
that no process of it is left. Every actor has one CPU (Ray sets OMP_NUM_THREADS=1: one torch thread); the
local engine runs twice, with torch's default threads (every core) and with one thread, as an actor does.

    python benchmarks/ray_throughput.py [--images 120] [--actors 1 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pyfundus.data.synth import generate_fundus
from pyfundus.io import encode_jpeg
from pyfundus.runtime_bench import header

DISTINCT = 24  # captures generated; more are copies (nothing is cached between files, so copies cost the same)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="captures to score (default: 120)")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="Ray actor pool sizes (default: 1 2)")
    parser.add_argument("--json", action="store_true", help="print {header, rows} as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pfbench-", dir="/tmp") as work:  # short: Ray's sockets go under it
        work = Path(work)
        folder = make_captures(work / "captures", args.images)
        env = {**os.environ, "RAY_TMPDIR": str(work / "ray"), "RAY_USAGE_STATS_ENABLED": "0"}
        (work / "ray").mkdir()
        score = [sys.executable, "-m", "pyfundus.cli", "score", str(folder), "--json", "--no-progress"]
        rows = [run("local", "torch's default threads (every core)", score, env),
                run("local", "1 thread (OMP_NUM_THREADS=1, as an actor)", score, {**env, "OMP_NUM_THREADS": "1"})]
        for actors in args.actors:
            output = work / f"ray-{actors}.parquet"
            command = [*score, "--engine", "ray", "--actors", str(actors), "--output", str(output)]
            rows.append(run("ray", f"{actors} actor(s), 1 CPU each", command, env))
        left = subprocess.run(["pgrep", "-f", str(work / "ray")], capture_output=True, text=True).stdout.split()
        if left:
            raise SystemExit(f"Ray processes left running: {left}")
    info = header(None, "cpu", None)
    try:
        info["versions"]["ray"] = version("ray")
    except PackageNotFoundError:
        info["versions"]["ray"] = "not installed"
    if args.json:
        json.dump({"header": info, "rows": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"# {info['date']}; {info['cpu']}, {info['cores']} cores; CPU kernels: "
          + ", ".join(f"{side} {isa}" for side, isa in info["cpu_instructions"].items()))  # fmt: skip
    print("# " + ", ".join(f"{name} {version}" for name, version in info["versions"].items() if version != "not installed"))
    print("| engine | workers | images | scored | wall s | images/s (wall) | images/s (pipeline) | load before -> after |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        pipeline = f"{r['pipeline_images_per_s']:.2f}" if r["pipeline_images_per_s"] else "-"
        print(f"| {r['engine']} | {r['workers']} | {r['images']} | {r['scored']} | {r['wall_s']:.1f} | "
              f"{r['images'] / r['wall_s']:.2f} | {pipeline} | {r['load_before']:.1f} -> {r['load_after']:.1f} |")
    return 0


def make_captures(folder: Path, count: int) -> Path:
    folder.mkdir()
    distinct = [encode_jpeg(generate_fundus(seed, size=1024)[0]) for seed in range(min(count, DISTINCT))]
    for n in range(count):
        (folder / f"capture_{n:05d}.jpg").write_bytes(distinct[n % len(distinct)])
    return folder


def run(engine: str, workers: str, command: list[str], env: dict[str, str]) -> dict:
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout)
    if engine == "local":
        images, scored, pipeline = len(out), sum(r["state"] == "scored" for r in out), None
    else:
        images, scored, pipeline = out["captures"], out["scored"], out["images_per_second"]
    return {"engine": engine, "workers": workers, "images": images, "scored": scored, "wall_s": wall,
            "pipeline_images_per_s": pipeline, "load_before": load_before, "load_after": os.getloadavg()[0]}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
