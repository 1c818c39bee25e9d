"""The Ray engine on the command line: ``pyfundus score --engine ray`` and ``pyfundus serve``.

Only argparse here: Ray is imported when a command that needs it runs, so ``pyfundus --help`` stays instant
and a machine without Ray only learns it lacks Ray when it asks for it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from ..daemon.config import positive_count
from ..errors import UsageError

_RAY_ONLY = ("output", "resume", "ray_address", "actors")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """``pyfundus score``'s options for scoring an archive on a Ray cluster."""
    group = p.add_argument_group('scaling out on Ray (needs pip install "pyfundus[ray]")')
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this process (default); ray: a Ray Data pipeline with a pool of actors, each "
                       "holding one model, writing Parquet (--output)")  # fmt: skip
    group.add_argument("--ray-address", metavar="ADDR",
                       help="the Ray cluster to run on (the address `ray start --head` printed, e.g. "
                       "10.0.0.5:6379); default: a Ray instance on this machine, for this run only")  # fmt: skip
    group.add_argument("--output", metavar="DIR",
                       help="the Parquet output, a folder of parts (e.g. results.parquet): one row per capture, "
                       "the fields of --json")  # fmt: skip
    group.add_argument("--resume", action="store_true",
                       help="continue the run that left --output: captures already in it (same path, size and "
                       "mtime) are skipped, the others scored")  # fmt: skip
    group.add_argument("--actors", type=positive_count, metavar="N",
                       help="models scoring in parallel, one per actor (default: one per CPU of the cluster, or "
                       "one per GPU with --device cuda)")  # fmt: skip


def refuse_ray_options(args: argparse.Namespace) -> None:
    """The local engine: options that only the Ray engine understands are a usage error, not ignored."""
    given = [f"--{name.replace('_', '-')}" for name in _RAY_ONLY if getattr(args, name)]
    if given:
        raise UsageError(f"{', '.join(given)} need --engine ray")


def score_on_ray(args: argparse.Namespace, entries: Sequence[tuple[str, str | None]]) -> int:
    """``pyfundus score --engine ray``: the exit status is ``pyfundus score``'s (0, 1, 3; 2 for usage)."""
    from .cluster import ModelSpec, import_ray

    import_ray()  # the install hint, before anything else is looked at
    if args.csv:
        raise UsageError("--engine ray writes Parquet (--output); --csv is for --engine local")
    if not args.output:
        raise UsageError("--engine ray needs --output DIR: the records are written there as Parquet")
    from .archive import score_archive

    spec = ModelSpec(name=args.model, device=args.device, backend=args.backend, precision=args.precision,
                     compile=args.compile, reject_below=args.reject_below, good_from=args.good_from)  # fmt: skip
    run = score_archive(entries, args.output, spec=spec, batch_size=args.batch_size, actors=args.actors,
                        address=args.ray_address, resume=args.resume, progress=not args.no_progress)  # fmt: skip
    if run.untrained:
        print(f"WARNING: {run.untrained} capture(s) were scored by a model without trained weights; "
              "those scores are meaningless.", file=sys.stderr)  # fmt: skip
    if args.json:
        json.dump(run.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_summary(run))
    return run.exit_status


def _summary(run: Any) -> str:
    lines = [f"{run.output}: {run.captures} capture(s), {run.scored} scored, {run.failed} could not be scored"]
    if run.skipped or run.rescored:
        lines.append(f"  kept from before: {run.skipped}; scored again (file changed): {run.rescored}")
    if run.images_per_second is not None:
        lines.append(f"  this run: {sum(run.scored_by.values())} capture(s) in {run.seconds:.1f} s, "
                     f"{run.images_per_second:.2f} images/s with {run.actors} actor(s)")  # fmt: skip
    lines.extend(f"  scored by {by}: {count}" for by, count in sorted(run.scored_by.items()))
    return "\n".join(lines)


# ---- pyfundus serve ---------------------------------------------------------------


def add_commands(commands: Any) -> None:
    """Register ``serve`` on the ``pyfundus`` sub-parsers."""
    p = commands.add_parser(
        "serve",
        help="serve the scorer over HTTP for many cameras (Ray Serve, batched, replicated)",
        description="Deploy the scorer with Ray Serve: POST a capture's bytes to http://HOST:PORT/score and the "
        "answer is its verdict record (JSON, the fields of pyfundus score --json; path is null: no file name is "
        "sent). Requests are batched across cameras (--max-batch-size, --batch-wait-ms) and spread over "
        "--replicas models. pyfundus watch --remote URL sends captures here. Runs until SIGTERM or Ctrl-C. "
        "Listens on 127.0.0.1 unless --host says otherwise: the bytes of a capture are patient data.",
    )
    p.add_argument("--engine", choices=("ray",), default="ray", help="ray (Ray Serve; the only engine so far)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="deploy on this Ray cluster (default: a Ray instance on this machine, stopped on exit)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the HTTP endpoint listens on (default: 127.0.0.1, this machine only; any other "
                   "address lets every machine that reaches it send captures and read their verdicts, over "
                   "plain HTTP)")  # fmt: skip
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    p.add_argument("--replicas", type=positive_count, default=1, help="models serving in parallel (default: 1)")
    p.add_argument("--max-batch-size", type=positive_count, default=8,
                   help="most captures one replica scores in one model call (default: 8)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a replica waits for more captures to fill a batch (default: 10)")
    p.add_argument("-m", "--model", default=None, help="registered model name or model file (default: shipped model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu); cuda: one GPU per replica")
    p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt", "auto"), help="runtime (default: torch)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="default: fp32 on CPU, fp16 on CUDA")
    p.add_argument("--reject-below", type=float, help="override the model's Reject threshold (score)")
    p.add_argument("--good-from", type=float, help="override the model's Good threshold (score)")
    p.add_argument("--json", action="store_true", help="once serving, print one JSON line: url, replicas, model")
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from .cluster import ModelSpec, import_ray

    import_ray()
    from .serve import serve_until_stopped

    spec = ModelSpec(name=args.model, device=args.device, backend=args.backend, precision=args.precision,
                     reject_below=args.reject_below, good_from=args.good_from)  # fmt: skip
    return serve_until_stopped(spec, address=args.ray_address, host=args.host, port=args.port,
                               replicas=args.replicas, max_batch_size=args.max_batch_size,
                               batch_wait_s=args.batch_wait_ms / 1000.0, json_line=args.json)  # fmt: skip
