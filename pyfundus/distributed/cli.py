"""The Ray engine on the command line: ``pyfundus score --engine ray``.

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
