"""The ``pyfundus`` command line.

Heavy modules (torch, the model) are imported inside each command so that
``pyfundus --help`` and argument errors answer instantly.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

from .distributed.cli import add_engine_options, refuse_ray_options
from .errors import (
    EXIT_NOTHING_SCORED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    NothingToScore,
    UsageError,
)
from .progress import progress_bar
from .version import __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if not args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"pyfundus: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NothingToScore as exc:
        print(f"pyfundus: {exc}", file=sys.stderr)
        return EXIT_NOTHING_SCORED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyfundus", description="Fundus photograph quality gate.")
    parser.add_argument("--version", action="version", version=f"pyfundus {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_score(commands)
    _add_calibrate(commands)
    _add_adapt(commands)
    _add_data(commands)
    _add_train(commands)
    _add_eval(commands)
    _add_export(commands)
    _add_bench(commands)
    from .daemon.cli import add_commands as add_daemon_commands  # watch, results

    add_daemon_commands(commands)
    from .mark.cli import add_commands as add_mark_commands  # mark

    add_mark_commands(commands)
    from .cleaq_cli import add_commands as add_cleaq_commands  # enhance, grade

    add_cleaq_commands(commands)
    from .distributed.cli import add_commands as add_distributed_commands  # serve

    add_distributed_commands(commands)
    return parser


# ---- pyfundus score -----------------------------------------------------------


def _add_score(commands) -> None:
    shipped = _shipped_thresholds()
    p = commands.add_parser(
        "score",
        help="score fundus photographs (files, folders, globs)",
        description="Score each image 0-100 and grade it Good / Usable / Reject by the model's thresholds"
        + (f" (the shipped model's: {shipped.describe()})" if shipped else "")
        + ". Every file gets one record; a file that cannot be scored gets one with the reason. In folders and "
        "patterns, hidden files and files that are never captures (*.json, *.txt, *.csv, *.xml, Thumbs.db, ...) "
        "are skipped and counted.",
        epilog="exit status: 0 every input scored; 1 some inputs could not be scored (their records say why); "
        "2 usage error (bad options, a model that cannot load); 3 nothing to score or nothing scored (a missing "
        "path, a pattern matching nothing, a folder without captures, every file failed)",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns (quote globs)")
    p.add_argument("-m", "--model", default=None, help="registered model name or .safetensors file (default: shipped model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    _add_backend_options(p)
    p.add_argument("-b", "--batch-size", type=_positive_int, default=8, help="images per model call (default: 8)")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON array of records")
    fmt.add_argument("--csv", action="store_true", help="print CSV with a header row")
    p.add_argument("--reject-below", type=float, metavar="SCORE",
                   help="grade Reject below this score (default: the model's own"
                   + (f"; the shipped model's: {shipped.reject_below:g})" if shipped else ")"))  # fmt: skip
    p.add_argument("--good-from", type=float, metavar="SCORE",
                   help="grade Good from this score up (default: the model's own"
                   + (f"; the shipped model's: {shipped.good_from:g})" if shipped else ")"))  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_engine_options(p)
    p.set_defaults(run=_run_score)


def _shipped_thresholds():
    """The shipped model's thresholds, read from its file's header only (no tensors), so --help stays instant."""
    from .weights import read_config, shipped_weights

    try:
        return read_config(shipped_weights()).thresholds
    except (OSError, ValueError):
        return None  # a broken install: the help says less, loading the model will say why


def _run_score(args) -> int:
    from .inputs import collect_inputs
    from .paths import printable
    from .verdicts import ScoreResult, write_csv

    if args.engine == "ray":
        from .distributed.cli import score_on_ray

        return score_on_ray(args, collect_inputs(args.paths, recursive=args.recursive).entries)
    refuse_ray_options(args)

    model = _load_model_for_cli(
        args.model, args.device, args.reject_below, args.good_from,
        backend=args.backend, precision=args.precision, compile=args.compile,
    )  # fmt: skip
    if args.backend == "auto":
        print(f"backend: {model.backend_description}", file=sys.stderr)
    inputs = collect_inputs(args.paths, recursive=args.recursive)
    targets = inputs.files
    if not model.trained:
        print(f"WARNING: {model.name} has no trained weights; every score below is meaningless.", file=sys.stderr)
        model.warn_untrained = False  # the banner above said it
    with progress_bar(
        len(targets), desc="scoring", unit="img", enabled=not args.no_progress and len(targets) > 1
    ) as bar:
        scored = {r.path: r for r in model.score(targets, batch_size=args.batch_size, progress=bar.update)}
    ordered = [
        scored[path] if problem is None
        else ScoreResult(path=path, model=model.name, trained=model.trained, error=f"{path}: {problem}")
        for path, problem in inputs.entries
    ]
    if args.json:
        json.dump([r.to_dict() for r in ordered], sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.csv:
        write_csv((r.to_dict() for r in ordered), sys.stdout)
    else:
        _write_table(ordered, sys.stdout)
    n_scored = sum(scored[path].score is not None for path in targets)
    n_failed = len(targets) - n_scored
    for path, problem in inputs.nothing_found:
        print(printable(f"pyfundus: {path}: {problem}"), file=sys.stderr)
    print(f"pyfundus: {n_scored} scored, {n_failed} failed, {len(inputs.skipped)} skipped (not captures); "
          f"{model.name}: {model.thresholds.describe()}", file=sys.stderr)  # fmt: skip
    if inputs.nothing_found or n_scored == 0:
        return EXIT_NOTHING_SCORED
    return EXIT_SOME_FAILED if n_failed else EXIT_OK


# ---- pyfundus calibrate ---------------------------------------------------------


def _add_calibrate(commands) -> None:
    p = commands.add_parser(
        "calibrate",
        help="fit Good/Usable/Reject thresholds to your own graded captures",
        description="Score captures your graders have sorted by class and print the thresholds that best reproduce "
        "their grades (quadratic-weighted kappa, then accuracy), next to how the model's stored thresholds do. "
        "Pass them to pyfundus score / pyfundus watch with --reject-below and --good-from.",
        epilog="exit status: 0 thresholds fitted, every capture scored; 1 fitted from the others, some captures "
        "could not be scored (the report lists them); 2 usage error, or fewer than two classes given; 3 a graded "
        "path gives no capture, or fewer than two classes have a capture that could be scored",
    )
    p.add_argument("--good", nargs="+", default=[], metavar="PATH", help="captures graded Good (files or folders)")
    p.add_argument("--usable", nargs="+", default=[], metavar="PATH", help="captures graded Usable")
    p.add_argument("--reject", nargs="+", default=[], metavar="PATH", help="captures graded Reject")
    p.add_argument("-m", "--model", default=None, help="model name or file (default: the shipped model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("-b", "--batch-size", type=_positive_int, default=8)
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_calibrate)


def _run_calibrate(args) -> int:
    from .calibration import calibrate_site

    graded = _graded_captures(args)
    model = _load_model_for_cli(args.model, args.device, None, None)
    total = sum(len(paths) for paths in graded.values())
    with progress_bar(total, desc="scoring", unit="img", enabled=not args.no_progress and total > 1) as bar:
        try:
            report = calibrate_site(model, graded, batch_size=args.batch_size, progress=bar.update)
        except NothingToScore:
            raise
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    status = EXIT_SOME_FAILED if report["failures"] else EXIT_OK
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return status
    print(f"{report['n_scored']} captures scored with {report['model']}")
    for level, r in report["per_class"].items():
        print(f"  {level:<7} n={r['n']:<4} scores {r['min']:5.1f} .. {r['max']:5.1f} (median {r['median']:.1f})")
    for name in ("current", "suggested"):
        fit = report[name]
        print(f"{name:>9}: Reject below {fit['reject_below']:5.1f}, Good from {fit['good_from']:5.1f}: "
              f"accuracy {fit['accuracy']:.2f}, kappa {fit['qwk']:.2f}")  # fmt: skip
    for failure in report["failures"]:
        print(f"  not scored: {failure['error']}")
    if report["few_images"]:
        print(f"note: fewer than 10 captures graded {', '.join(report['few_images'])}: these thresholds rest on few images")
    fit = report["suggested"]
    print(f"use: --reject-below {fit['reject_below']:g} --good-from {fit['good_from']:g} "
          f"(config file: reject_below = {fit['reject_below']:g}, good_from = {fit['good_from']:g})")  # fmt: skip
    return status


def _graded_captures(args) -> dict[str, list[str]]:
    """calibrate's and adapt's --good/--usable/--reject, expanded; an argument that gives no capture
    (a typo, an unmounted share) stops the command before anything is scored."""
    from .inputs import collect_inputs

    graded, nothing = {}, []
    for level, arguments in (("Good", args.good), ("Usable", args.usable), ("Reject", args.reject)):
        inputs = collect_inputs(arguments, args.recursive)
        graded[level] = inputs.files
        nothing += [f"{path} (--{level.lower()}): {problem}" for path, problem in inputs.nothing_found]
    if nothing:
        raise NothingToScore("nothing to score at " + "; ".join(nothing))
    return graded


def _add_backend_options(p) -> None:
    p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt", "auto"),
                   help="runtime: torch, onnxruntime (exported once, cached), tensorrt, or auto (the fastest "
                   "verified one here; says which on stderr) (default: torch; for .onnx/.engine models, "
                   "the file's runtime)")  # fmt: skip
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="default: fp32 on CPU, fp16 on CUDA")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the torch backend: worth it for many images (compiling takes 20-60 s, "
                   "then each image scores faster; see benchmarks/RESULTS.md)")  # fmt: skip


def _load_model_for_cli(name, device, reject_below, good_from, *, backend=None, precision=None, compile=False):
    from .api import load_model
    from .export.tensorrt import TensorRTUnavailable

    try:
        thresholds = {"reject_below": reject_below, "good_from": good_from}
        model = load_model(name, device=device, backend=backend, precision=precision, compile=compile,
                           thresholds=thresholds)  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError, TensorRTUnavailable) as exc:
        raise UsageError(str(exc)) from exc
    return model


def _write_table(results, stream) -> None:
    from .paths import printable  # a file name with a newline must not print a verdict line of its own

    paths = [printable(r.path or "") for r in results]
    width = max(map(display_width, paths), default=4)
    stream.write(f"{_pad('path', width)}  {'score':>6}  {'class':<7}  {'eye':<3}  note\n")
    for path, r in zip(paths, results):
        score = f"{r.score:6.1f}" if r.score is not None else "     -"
        note = printable(r.error or "; ".join(([r.reason] if r.reason else []) + r.warnings))
        stream.write(f"{_pad(path, width)}  {score}  {r.quality_class or '-':<7}  {r.eye or '-':<3}  {note}".rstrip() + "\n")


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: wide (CJK) characters take two, combining marks none."""
    import unicodedata

    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text
    )


def _pad(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


# ---- pyfundus adapt -----------------------------------------------------------


def _add_adapt(commands) -> None:
    p = commands.add_parser(
        "adapt",
        help="teach the gate your camera from your own captures (writes a site model)",
        description="Fine-tune the model on variants of captures your site judges good (one is enough to start; "
        "10-30 is better), made by the degradation simulator in your camera's own look, with some of the base "
        "training data replayed; refit the thresholds; check the result before and after on captures held back; "
        "write a site model (refused if it grades the held-back captures worse than the base model). Then run "
        "`pyfundus watch --model SITE.safetensors` (or map your camera to it in the config file).",
        epilog="exit status: 0 site model written; 2 usage error, or no good capture given; 3 a --good/--usable/"
        "--reject path gives no capture; 4 refused: the site model checks worse than the base model (--force "
        "writes it)",
    )
    p.add_argument("--good", nargs="+", default=[], metavar="PATH", help="captures the site judges good (files or folders)")
    p.add_argument("--usable", nargs="+", default=[], metavar="PATH", help="captures the site judges Usable (optional)")
    p.add_argument("--reject", nargs="+", default=[], metavar="PATH", help="captures the site judges Reject (optional)")
    p.add_argument("--from-ledger", type=Path, metavar="STATE_DIR",
                   help="also the captures the operator marked on the operator page (\"Fine as it is\": good; "
                   "\"Retake anyway\": Reject), from the daemon's state directory")  # fmt: skip
    p.add_argument("--camera", metavar="KEY",
                   help="only captures from this camera (its key as the verdicts and the notice name it)")
    p.add_argument("-o", "--out", type=Path, required=True, help="the site model to write (.safetensors)")
    p.add_argument("-m", "--model", default=None, help="the model to adapt (default: the shipped model)")
    p.add_argument("--minutes", type=float, default=20.0, help="time budget for the whole run (default: 20)")
    p.add_argument("--steps", type=_positive_int, default=300, help="most optimiser steps (default: 300)")
    # Literal defaults keep `pyfundus --help` free of torch; tests/test_adapt.py holds them to AdaptConfig's.
    p.add_argument("--tune", choices=("all", "late", "head"), default="all",
                   help="which layers learn: all, late (the last two stages and the head) or head: distortion "
                   "perception, hypernetwork, target network; with --lr 3e-4 for a camera the model half knows "
                   "(default: all)")  # fmt: skip
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default: 1e-4)")
    p.add_argument("--variants", type=_positive_int, default=320,
                   help="simulated variants of the good captures, in all (default: 320)")
    p.add_argument("--replay", type=float, default=0.25, help="share of each batch from replayed base data (default 0.25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (same captures and settings)")
    p.add_argument("--force", action="store_true", help="write the site model even when it checks worse than the base")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_adapt)


def _run_adapt(args) -> int:
    from .adapt import AdaptConfig, AdaptRefused, adapt, read_captures

    graded = _graded_captures(args)
    if args.from_ledger is not None:
        from .daemon.feedback import graded_from_ledger

        try:
            for level, paths in graded_from_ledger(args.from_ledger, camera=args.camera).items():
                graded[level] = graded[level] + paths
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
    if not graded["Good"]:
        raise UsageError("give at least one capture the site judges good (--good, or --from-ledger)")

    def say(message: str) -> None:
        print(f"adapt: {message}", file=sys.stderr, flush=True)

    captures = read_captures(graded, on_error=lambda message: say(f"skipped: {message}"))
    if args.camera is not None:
        others = sum(c.camera != args.camera for c in captures)
        captures = [c for c in captures if c.camera == args.camera]
        if others:
            say(f"{others} capture(s) from other cameras left out (--camera {args.camera!r})")
    try:
        config = AdaptConfig(
            out=str(args.out), base=args.model, minutes=args.minutes, steps=args.steps, tune=args.tune, lr=args.lr,
            variants=args.variants, replay=args.replay, seed=args.seed, device=args.device, force=args.force,
        )  # fmt: skip
        report = adapt(captures, config, resume=args.resume, progress=not args.no_progress, say=say)
    except AdaptRefused as exc:
        report = json.loads(str(exc))
        _print_adapt(report, args.json)
        return EXIT_REFUSED
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    _print_adapt(report, args.json)
    return 0


def _print_adapt(report: dict, as_json: bool) -> None:
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(f"camera: {report['camera']}; checked on {report['checked_on']}")
    print(f"{'':<28}{'before':>9}{'after':>9}")
    rows = (("clean graded Good or Usable", "clean_good_or_usable", "{:.0%}"), ("clean graded Good", "clean_good", "{:.0%}"),
            ("clean, mean score", "clean_score", "{:.1f}"), ("severe graded Reject", "severe_reject", "{:.0%}"),
            ("within-photo SRCC", "within_photo_srcc", "{:.3f}"), ("kappa (quadratic)", "qwk", "{:.3f}"))  # fmt: skip
    for label, key, form in rows:
        before, after = report["before"][key], report["after"][key]
        print(f"{label:<28}{_fmt(form, before):>9}{_fmt(form, after):>9}")
    thresholds = report["thresholds"]
    print(f"thresholds: Reject below {thresholds['reject_below']:g}, Good from {thresholds['good_from']:g}; "
          f"{report['steps']} steps in {report['seconds']:.0f} s")  # fmt: skip
    if report.get("out"):
        print(f"written: {report['out']}  (pyfundus watch --model {report['out']} ...)")
    else:
        print("NOT written: the adapted model checks worse than the base model (--force writes it anyway)")


def _fmt(form: str, value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else form.format(value)


# ---- pyfundus data ------------------------------------------------------------


def _add_data(commands) -> None:
    p = commands.add_parser("data", help="sample photos and datasets")
    sub = p.add_subparsers(title="data commands", metavar="ACTION")
    fetch = sub.add_parser(
        "fetch-samples",
        help="fetch the real sample fundus photos (pinned PyPI sdist, sha256-checked) into the cache",
        epilog="exit status: 0 fetched (or already there and intact); 1 the fetch failed, and nothing was changed",
    )
    fetch.add_argument("--dest", type=Path, help="folder to put them in (default: the pyfundus cache)")
    fetch.add_argument("--force", action="store_true", help="fetch again even if present and intact")
    fetch.set_defaults(run=_run_fetch_samples)
    proxy = sub.add_parser(
        "build-proxy",
        help="write degraded real and synthetic fundi with a proxy MOS, in the FQS layout",
        description="Degrade each source photo (and synthetic fundi) several times with recorded parameters; "
        "label each image with the proxy MOS defined in pyfundus/data/proxy.py.",
    )
    proxy.add_argument("--out", type=Path, required=True, help="output folder (labels.csv, images/, degradations.jsonl)")
    proxy.add_argument("--photos", nargs="*", default=[], metavar="PATH", help="real source photos")
    proxy.add_argument("--synthetic", type=int, default=0, help="number of synthetic source fundi (default 0)")
    proxy.add_argument("--variants", type=_positive_int, default=10, help="degraded versions per source (default 10)")
    proxy.add_argument("--seed", type=int, default=0, help="seed for the draws (default 0)")
    proxy.add_argument(
        "--clean-fraction", type=float, default=0.15, help="share of variants left undegraded (default 0.15)"
    )
    proxy.add_argument(
        "--no-camera-looks",
        dest="camera_looks",
        action="store_false",
        help="keep each source's own rendering (default: a random camera per variant: colour, tone curve, "
        "optical softness and resolution, storage; label-neutral, see pyfundus.data.camera)",
    )
    proxy.add_argument("--focus", nargs="+", default=[], metavar="TYPE",
                       help="each degraded variant gets exactly one of these types (to teach the families a model "
                       "ranks poorly); default: one to three of any type")
    proxy.add_argument("--workers", type=_positive_int, default=2, help="processes (default 2)")
    proxy.set_defaults(run=_run_build_proxy)
    from .cleaq_cli import add_data_commands  # build-pairs

    add_data_commands(sub)


def _run_fetch_samples(args) -> int:
    from .data.samples import SampleFetchError, fetch_samples, summary

    try:
        folder = fetch_samples(args.dest, force=args.force)
    except SampleFetchError as exc:
        print(f"pyfundus: could not fetch the samples: {exc}", file=sys.stderr)
        return 1
    print(summary(folder))
    return 0


def _run_build_proxy(args) -> int:
    from .data.proxy import build_proxy

    if not args.photos and not args.synthetic:
        raise UsageError("give --photos and/or --synthetic N")
    missing = [p for p in args.photos if not os.path.isfile(p)]
    if missing:
        raise UsageError(f"no such photo: {', '.join(missing)}")
    records = build_proxy(
        args.photos,
        args.out,
        synthetic=args.synthetic,
        variants=args.variants,
        seed=args.seed,
        clean_fraction=args.clean_fraction,
        camera_looks=args.camera_looks,
        focus=args.focus,
        workers=args.workers,
    )
    counts = {level: sum(r.level == level for r in records) for level in ("Good", "Usable", "Reject")}
    print(f"{len(records)} images in {args.out}: " + ", ".join(f"{n} {level}" for level, n in counts.items()))
    return 0


# ---- pyfundus train -----------------------------------------------------------


def _add_train(commands) -> None:
    from_defaults = "(default: %(default)s)"
    p = commands.add_parser(
        "train",
        help="train a quality model on a dataset in the FQS layout",
        description="Adam with warm-up and linear annealing, smooth L1 on MOS/100, flips and random crops, "
        "EMA weights; checkpoints are safetensors. Progress shows the loss and validation SRCC/PLCC.",
    )
    p.add_argument("--data", required=True, nargs="+", metavar="FOLDER",
                   help="one or more folders with labels.csv and images/ (FQS layout), used together")
    p.add_argument("--out", default="runs/train", help=f"output folder {from_defaults}")
    p.add_argument("--model", default="fthnet_s",
                   help=f"registered model: a network, or a classical one such as 'brisque' (fitted, saved as "
                   f"OUT/brisque.json) {from_defaults}")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=JSON",
                   help='architecture argument, e.g. --model-arg shift=false --model-arg "depths=[2,2,2,2]"')
    p.add_argument("--steps", type=_positive_int, default=2000, help=f"optimiser steps {from_defaults}")
    p.add_argument("--batch-size", type=_positive_int, help="(default: 16; CLEAQ-DR tasks 8)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: 1e-4; CLEAQ-DR tasks 1e-3, the paper's)")
    p.add_argument("--warmup-steps", type=int, default=100, help=from_defaults)
    p.add_argument("--hyper-lr-ratio", type=float, default=0.1, help=f"hypernetwork lr / backbone lr {from_defaults}")
    p.add_argument("--loss", choices=("smooth_l1", "l1", "l2"), default="smooth_l1")
    p.add_argument("--class-weight", type=float, default=0.0, help="weight of a 3-way class head (0: no head)")
    p.add_argument("--cause-weight", type=float, default=0.0, help="weight of the cause head (0: no head)")
    p.add_argument("--ema-decay", type=float, default=0.99, help=from_defaults)
    p.add_argument("--amp", choices=("bf16", "off"),
                   help="CPU autocast (default: bf16; CLEAQ-DR tasks: bf16 where the CPU computes it natively)")
    p.add_argument("--val-fraction", type=float, default=0.1, help=f"share of source photos held for validation {from_defaults}")
    p.add_argument("--val-data", nargs="+", default=[], metavar="FOLDER",
                   help="validate on these folders (FQS layout) instead of a split of --data")
    p.add_argument("--split-seed", type=int, default=0,
                   help=f"seed of the train/validation split by source photo {from_defaults}")
    p.add_argument("--eval-every", type=_positive_int, default=200, help=from_defaults)
    p.add_argument("--seed", type=int, default=0, help=from_defaults)
    p.add_argument("--device", default="cpu")
    p.add_argument("--camera-looks", action="store_true",
                   help="render each training image by a fresh random camera each time it is drawn (label-neutral)")
    p.add_argument("--rotations", action="store_true",
                   help="turn each training image by a random angle (label-neutral), so a photo's layout does not identify it")
    p.add_argument("--init", action="append", default=[], metavar="[PART=]WEIGHTS",
                   help="start from these .safetensors weights (same architecture and heads); CLEAQ-DR tasks: "
                   "PART=FILE (iqe, iqa, dr; repeatable) starts that part from a pyfundus model of it, or from your own "
                   "ResNet-34/50 weights (torchvision key names) for its backbone. pyfundus ships no ImageNet weights")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state.safetensors")
    p.add_argument("--stop-at", type=_positive_int, help="end this run at that step, state saved (continue with --resume)")
    p.add_argument("--no-progress", action="store_true")
    from .cleaq_cli import add_train_options

    add_train_options(p)
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from .models import is_classical, is_model

    if args.task != "quality":
        from .cleaq_cli import run_train

        return run_train(args)
    if len(args.init) > 1:
        raise UsageError("--init: one weights file for a quality model")
    if is_model(args.model) and is_classical(args.model):
        return _fit_classical(args)
    from .train import TrainConfig, train

    model_kwargs = {}
    for item in args.model_arg:
        key, _, value = item.partition("=")
        try:
            model_kwargs[key] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--model-arg {item!r}: the value must be JSON ({exc})") from exc
    try:
        config = TrainConfig(
            data=args.data, out=args.out, model=args.model, model_kwargs=model_kwargs, steps=args.steps,
            batch_size=args.batch_size or 16, lr=args.lr or 1e-4, warmup_steps=args.warmup_steps,
            hyper_lr_ratio=args.hyper_lr_ratio, loss=args.loss, class_weight=args.class_weight,
            cause_weight=args.cause_weight, ema_decay=args.ema_decay, amp=args.amp or "bf16",
            val_fraction=args.val_fraction, split_seed=args.split_seed, val_data=args.val_data,
            eval_every=args.eval_every,
            seed=args.seed, device=args.device, init_from=args.init[0] if args.init else None,
            camera_looks=args.camera_looks,
            rotations=args.rotations,
        )  # fmt: skip
        path = train(config, resume=args.resume, progress=not args.no_progress, stop_at=args.stop_at)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    print(path)
    return 0


def _fit_classical(args) -> int:
    """A classical model (the BRISQUE baseline) fits on the same data and split as a network would train."""
    from .data.datasets import load_records, train_val_split
    from .train import fit_classical

    records = [record for folder in args.data for record in load_records(folder)]
    train_set = records if args.val_data else train_val_split(records, args.val_fraction, args.split_seed)[0]
    try:
        _, out = fit_classical(args.model, train_set, args.out, progress=not args.no_progress)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(out)
    return 0


# ---- pyfundus eval ------------------------------------------------------------


def _add_eval(commands) -> None:
    p = commands.add_parser(
        "eval",
        help="evaluate a model (or the BRISQUE baseline) on labelled data",
        description="PLCC, SRCC, RMSE, 3-class accuracy and quadratic-weighted kappa, per-degradation breakdown; "
        "writes report.json, scatter.png and confusion.png.",
    )
    p.add_argument("--model", default=None,
                   help="model name, .safetensors or fitted .json file, or a classical model to fit on each "
                   "round's train side, such as 'brisque' (default: shipped model)")  # fmt: skip
    p.add_argument("--data", help="folder in the FQS layout, or a label CSV (EyeQ or generic); CLEAQ-DR tasks: "
                   "a pyfundus pairs folder or an EyeQ / Messidor / APTOS table (required but for --task enhance)")
    p.add_argument("--out", default="runs/eval", help="report folder (default: runs/eval)")
    p.add_argument("--split", choices=("all", "train", "test", "val"), default="all",
                   help="all images, or one side of the split protocol (default: all). A pretrained model is "
                   "evaluated as it is: use 'all' on data it never saw, or its own split, or its training images leak in")
    p.add_argument("--protocol", choices=("paper", "kfold"), default="paper")
    p.add_argument("--rounds", type=_positive_int, default=1, help="split rounds (the paper used 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-b", "--batch-size", type=_positive_int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=_positive_int, default=2, help="processes for BRISQUE features (default 2)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true")
    from .cleaq_cli import add_eval_options

    add_eval_options(p)
    p.set_defaults(run=_run_eval)


def _run_eval(args) -> int:
    from .evaluate import run_eval

    if args.task != "quality":
        from .cleaq_cli import run_eval as run_cleaq_eval

        return run_cleaq_eval(args)
    if not args.data:
        raise UsageError("--data is required")

    try:
        summary = run_eval(
            args.model or "fthnet_s", args.data, split=None if args.split == "all" else args.split,
            protocol=args.protocol, seed=args.seed, rounds=args.rounds, out_dir=args.out,
            batch_size=args.batch_size, device=args.device, workers=args.workers, progress=not args.no_progress,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    if args.json:
        json.dump(summary, sys.stdout, indent=2, default=float)
        sys.stdout.write("\n")
    else:
        for name, stats in summary["metrics"].items():
            if name.startswith("n"):  # counts
                print(f"{name:>12}: {stats['mean']:g}")
                continue
            spread = f" ± {stats['std']:.4f}" if stats["n_rounds"] > 1 else ""
            print(f"{name:>12}: {stats['mean']:.4f}{spread}")
        print(f"report written to {args.out}")
    return 0


# ---- pyfundus export ----------------------------------------------------------


def _add_export(commands) -> None:
    p = commands.add_parser(
        "export",
        help="export a model to ONNX or a TensorRT engine",
        description="ONNX: dynamic batch, 384x384, standard ops only (fused kernels decomposed), simplified and "
        "checked, with the model's name, thresholds, trained flag and input normalisation in its metadata. "
        "engine: a TensorRT engine built from that ONNX, with a JSON sidecar saying which GPU and TensorRT it is for.",
    )
    p.add_argument("--format", choices=("onnx", "engine"), required=True)
    p.add_argument("-m", "--model", default=None, help="registered model name or .safetensors file (default: shipped model)")
    p.add_argument("-o", "--output", type=Path, help="output file (default: MODEL[-fp16].onnx or .engine here)")
    p.add_argument("--half", action="store_true", help="fp16 (LayerNorm and softmax stay fp32)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default: 17)")
    p.add_argument("--device", default="cuda", help="engine: the GPU to build for (default: cuda)")
    p.add_argument("--batch", type=_positive_int, nargs=3, default=(1, 8, 32), metavar=("MIN", "OPT", "MAX"),
                   help="engine: batch sizes of the optimisation profile (default: 1 8 32)")  # fmt: skip
    p.add_argument("--workspace", type=float, default=4.0, help="engine: builder workspace limit in GiB (default: 4)")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from .export.onnx import OnnxExportError, export_onnx

    model = _load_exportable(args.model)
    precision = "fp16" if args.half else "fp32"
    suffix = "-fp16" if args.half else ""
    try:
        if args.format == "onnx":
            output = args.output or Path(f"{model.name}{suffix}.onnx")
            export_onnx(model.network, model.config, model.name, output, half=args.half, opset=args.opset)
        else:
            from .export.tensorrt import TensorRTUnavailable, build_engine, build_plan, import_tensorrt

            try:
                trt = import_tensorrt()
            except TensorRTUnavailable as exc:
                raise UsageError(str(exc)) from exc
            output = args.output or Path(f"{model.name}{suffix}.engine")
            plan = build_plan(trt.__version__, precision)
            onnx_path = output.with_name(f"{output.stem}.{plan['onnx_precision']}.onnx")
            export_onnx(model.network, model.config, model.name, onnx_path, half=plan["onnx_precision"] == "fp16",
                        opset=args.opset)  # fmt: skip
            build_engine(onnx_path, output, precision=precision, device=args.device, batch=tuple(args.batch),
                         workspace_gib=args.workspace, timing_cache=output.with_suffix(".timing"))  # fmt: skip
    except (ValueError, RuntimeError, ImportError, OnnxExportError) as exc:
        raise UsageError(str(exc)) from exc
    print(output)
    return 0


def _load_exportable(name):
    """The quality model, enhancer or grader ``name`` is, each through its own loader."""
    from .api import load_enhancer, load_grader, task_of

    try:
        kind = task_of(name)
        if kind == "enhance":
            return load_enhancer(name)
        if kind == "grade":
            return load_grader(name)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    return _load_model_for_cli(name, "cpu", None, None)


# ---- pyfundus bench -----------------------------------------------------------


def _add_bench(commands) -> None:
    p = commands.add_parser(
        "bench",
        help="latency and throughput of each runtime backend",
        description="Warm-up, then p50/p95/p99 latency and images/s of the model call, plus an end-to-end row "
        "(2304x1728 JPEG read, decoded, preprocessed, scored) and peak memory, with the speed-up over torch "
        "eager fp32 from the same run. By default a quick look (at most about 2 minutes on two cores): batch 1, "
        "4 s per row, the backends that make sense on this machine. --full times every backend and precision "
        "at batches 1, 8 and 32, 20 s per row (tens of minutes on a small CPU).",
    )
    p.add_argument("-m", "--model", default=None, help="registered model name or .safetensors file (default: shipped model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--full", action="store_true", help="the whole sweep: every backend and precision, batches 1 8 32")
    p.add_argument("--backends", nargs="+", metavar="NAME",
                   choices=("torch", "torch.compile", "torch+graphs", "onnxruntime", "tensorrt"),
                   help="only these: torch, torch.compile, torch+graphs, onnxruntime, tensorrt")  # fmt: skip
    p.add_argument("--precisions", nargs="+", choices=("fp32", "fp16", "bf16"), help="only these")
    p.add_argument("--batch", type=_positive_int, nargs="+", help="batch sizes (default: 1; --full: 1 8 32)")
    p.add_argument("--iters", type=_positive_int, help="timed calls per row, at most (default: 20; --full: 50)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default: 2)")
    p.add_argument("--time-box", type=float,
                   help="seconds per row after which timing stops, at least 3 calls (default: 4; --full: 20)")  # fmt: skip
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch and ONNX Runtime (default: all cores)")
    p.add_argument("--no-end-to-end", action="store_true", help="skip the end-to-end rows")
    p.add_argument("--enhance", action=argparse.BooleanOptionalAction, default=None,
                   help="a row for pyfundus enhance of the 2304x1728 JPEG (default: on unless --backends narrows the sweep)")
    p.add_argument("--daemon", action="store_true",
                   help="also the daemon's close-write to verdict latency (pyfundus.daemon.latency_bench)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print {header, rows} as JSON instead of a table")
    p.set_defaults(run=_run_bench)


def _run_bench(args) -> int:
    from .runtime_bench import format_table, header, run_bench

    rows = run_bench(
        args.model, device=args.device, full=args.full, backends=args.backends, precisions=args.precisions,
        batches=tuple(args.batch or ()), iters=args.iters, warmup=args.warmup, time_box=args.time_box,
        end_to_end=not args.no_end_to_end, enhance=args.enhance, threads=args.threads,
    )  # fmt: skip
    daemon_rows = []
    if args.daemon:
        from .daemon.latency_bench import run_daemon_bench

        daemon_rows = run_daemon_bench(args.model, device=args.device)
    info = header(args.model, args.device, args.threads)
    if args.json:
        json.dump({"header": info, "rows": rows, "daemon": daemon_rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"# pyfundus bench, {info['date']}")
    print(f"# {info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads, load average "
          f"{', '.join(f'{x:.2f}' for x in info['load_average'] or ())}; GPU: {info['gpu'] or 'none'}")  # fmt: skip
    print("# " + ", ".join(f"{name} {version}" for name, version in info["versions"].items()))
    print("# CPU instructions: " + ", ".join(f"{side} {isa}" for side, isa in info["cpu_instructions"].items()))
    print(format_table(rows))
    for row in daemon_rows:
        print(json.dumps(row))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
