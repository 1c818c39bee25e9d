"""The CLEAQ-DR side of the ``pyfundus`` command line: ``enhance``, ``grade``, ``data build-pairs``, and the
``--task iqe|iqa|dr|joint`` options of ``train`` and ``eval`` (pyfundus.cli hands those over here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from .errors import UsageError
from .paths import printable
from .progress import progress_bar

TRAIN_TASKS = ("iqe", "iqa", "dr", "joint")
INIT_PARTS = ("iqe", "iqa", "dr", "model")


def add_commands(commands) -> None:
    _add_enhance(commands)
    _add_grade(commands)


# ---- pyfundus enhance ---------------------------------------------------------------


def _add_enhance(commands) -> None:
    p = commands.add_parser(
        "enhance",
        help="enhance fundus photographs at their own resolution (CLEAQ-DR's enhancer)",
        description="Write an enhanced copy of each capture into --out, at the capture's own size: the enhancer "
        "predicts its correction at model size (512 px) and the correction is applied to the full-resolution "
        "field of view; the frame outside it is left as it was. JPEG inputs give JPEGs, others PNGs.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns (quote globs)")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for the enhanced copies (made if missing)")
    p.add_argument("-m", "--model", default=None,
                   help="enhancer: registered name, .safetensors (pyfundus train --task iqe) or .onnx "
                   "(default: the shipped cleaq_iqe_cpu)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for the model (default: torch's)")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--json", action="store_true", help="print one JSON array of records")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_enhance)


def _run_enhance(args) -> int:
    from .api import load_enhancer
    from .enhance import EnhanceResult

    try:
        enhancer = load_enhancer(args.model, args.device, threads=args.threads)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise UsageError(str(exc)) from exc
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    results = _each_input(
        args, "enhancing",
        run=lambda files, progress: enhancer.enhance(files, out_dir=args.out, progress=progress),
        failed=lambda path, error: EnhanceResult(path=path, model=enhancer.name, error=error),
    )  # fmt: skip
    if args.json:
        _print_json(results)
    else:
        for r in results:
            note = r.error or f"-> {r.output} ({r.width}x{r.height}, {r.timing_ms.get('total', 0) / 1000:.2f} s)"
            print(printable(f"{r.path}  {note}"))
    return 0


# ---- pyfundus grade -------------------------------------------------------------------


def _add_grade(commands) -> None:
    p = commands.add_parser(
        "grade",
        help="grade diabetic retinopathy with a grader you trained (none is shipped)",
        description="Grade each photo's diabetic retinopathy with a model from pyfundus train --task dr or "
        "--task joint. pyfundus ships no grader: without --model this says how to train one and grades nothing.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns (quote globs)")
    p.add_argument("-m", "--model", default=None, help="your grader: .safetensors or .onnx (required)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("-b", "--batch-size", type=int, default=8)
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--json", action="store_true", help="print one JSON array of records")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_grade)


def _run_grade(args) -> int:
    from .api import load_grader
    from .dr_grader import GradeResult

    try:
        grader = load_grader(args.model, args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise UsageError(str(exc)) from exc
    results = _each_input(
        args, "grading",
        run=lambda files, progress: grader.grade(files, batch_size=args.batch_size, progress=progress),
        failed=lambda path, error: GradeResult(path=path, model=grader.name, error=error),
    )  # fmt: skip
    if args.json:
        _print_json(results)
    else:
        for r in results:
            if r.error:
                print(printable(f"{r.path}  {r.error}"))
                continue
            quality = f"  quality {r.quality}" if r.quality else ""
            print(printable(f"{r.path}  grade {r.grade} ({r.grade_name}, p={r.probabilities[r.grade_name]:.2f}){quality}"))
    return 0


def _each_input(args, desc: str, run: Callable, failed: Callable) -> list:
    """``run(files, progress)`` over the files the arguments name, with a progress bar; one result per input in
    argument order, ``failed(path, error)`` for an argument that names nothing to read."""
    from .inputs import collect_inputs

    entries = collect_inputs(args.paths, recursive=args.recursive).entries
    targets = [path for path, problem in entries if problem is None]
    with progress_bar(len(targets), desc=desc, unit="img", enabled=not args.no_progress and len(targets) > 1) as bar:
        done = {r.path: r for r in run(targets, bar.update)}
    return [done[path] if problem is None else failed(path, f"{path}: {problem}") for path, problem in entries]


def _print_json(results: list) -> None:
    json.dump([r.to_dict() for r in results], sys.stdout, indent=2)
    sys.stdout.write("\n")


# ---- pyfundus data build-pairs ----------------------------------------------------------


def add_data_commands(sub) -> None:
    p = sub.add_parser(
        "build-pairs",
        help="write degrade-restore pairs (and the synthetic DR proxy) for CLEAQ-DR training",
        description="Each source (real photos, synthetic fundi) is cropped to its field of view at 512 px and "
        "rendered by random cameras; each rendering is degraded by one or two (CLEAQ-DR's op1) or all three (op2) "
        "cofe-Net degradations, or left clean. Writes cleaq.csv with the low-quality image, its clean target, a "
        "vessel mask (exact for synthetic fundi, Frangi for photos) and the quality class. --dr-proxy gives the "
        "synthetic fundi DR lesions and their grade (pyfundus.data.cleaq.synthetic_dr_grade).",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--photos", nargs="*", default=[], metavar="PATH", help="real source photos (use licence-clear ones)")
    p.add_argument("--synthetic", type=int, default=0, help="number of synthetic source fundi (default 0)")
    p.add_argument("--dr-proxy", action="store_true", help="synthetic fundi with DR lesions and grades 0-3")
    p.add_argument("--variants", type=int, default=10, help="pairs per source (default 10)")
    p.add_argument("--clean-fraction", type=float, default=0.15, help="share of pairs left undegraded (default 0.15)")
    p.add_argument("--no-camera-looks", dest="camera_looks", action="store_false",
                   help="keep each source's own rendering (default: a random camera per pair)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_build_pairs)


def _run_build_pairs(args) -> int:
    from collections import Counter

    from .data.cleaq import build_pairs

    if not args.photos and not args.synthetic:
        raise UsageError("give --photos and/or --synthetic N")
    missing = [p for p in args.photos if not Path(p).is_file()]
    if missing:
        raise UsageError(f"no such photo: {', '.join(missing)}")
    dataset = build_pairs(
        args.photos, args.out, synthetic=args.synthetic, variants=args.variants, seed=args.seed,
        clean_fraction=args.clean_fraction, dr_proxy=args.dr_proxy, camera_looks=args.camera_looks,
        workers=args.workers, progress=not args.no_progress,
    )  # fmt: skip
    quality = Counter(r.quality for r in dataset.records)
    grades = Counter(r.dr_grade for r in dataset.records if r.dr_grade is not None)
    line = f"{len(dataset.records)} pairs in {args.out}: " + ", ".join(f"{quality[c]} {c}" for c in ("Good", "Usable", "Reject"))
    if grades:
        line += "; DR grades " + ", ".join(f"{g}: {grades[g]}" for g in sorted(grades))
    print(line)
    return 0


# ---- pyfundus train --task ---------------------------------------------------------------


def add_train_options(p) -> None:
    g = p.add_argument_group("CLEAQ-DR (with --task iqe, iqa, dr or joint)")
    g.add_argument("--task", choices=("quality", *TRAIN_TASKS), default="quality",
                   help="quality: the FTHNet quality score (default); iqe: pre-train the enhancer; iqa: pre-train the "
                   "quality classifier; dr: the DR grader alone; joint: grader, enhancer and quality network "
                   "together (CLEAQ-DR's third stage)")  # fmt: skip
    g.add_argument("--setting", choices=("paper", "cpu"),
                   help="network sizes: paper (512 px, full widths; for a GPU) or cpu (the reduced setting) "
                   "(default: paper on CUDA, cpu otherwise)")  # fmt: skip
    g.add_argument("--img-size", type=int, help="input size of every part, instead of the setting's")
    g.add_argument("--width", type=float, help="the ResNets' width multiplier, instead of the setting's")
    g.add_argument("--crop", type=int, help="iqe: train on random crops of this side (default: whole images)")
    g.add_argument("--dice-weight", type=float, default=0.1, help="weight of the vessel Dice in L_IQE (default 0.1)")
    g.add_argument("--lqi-weight", type=float, default=1.0, help="weight of the LQI reconstruction in L_IQA (default 1)")
    g.add_argument("--constant-fraction", type=float, default=0.4,
                   help="share of the steps at the full lr before poly decay (default 0.4, the paper's 60 of 150 epochs)")
    for flag, what in (
        ("segmentation", "the Seg-IQE vessel branch"), ("lqi", "the LQI-IQA reconstruction branch"),
        ("iqe", "joint: the enhancer"), ("iqa", "joint: the quality network"),
        ("gradient-reversal", "joint: the gradient reversal between IQA and IQE"),
        ("dynamic-weights", "joint: the dynamic task weights (all 1 without)"),
        ("quality-fusion", "joint: the grader reading IQA's quality features"),
    ):  # fmt: skip
        g.add_argument(f"--no-{flag}", dest=flag.replace("-", "_"), action="store_false", help=f"without {what}")


def run_train(args) -> int:
    from .collab import CleaqTrainConfig, train_cleaq

    device = args.device
    setting = args.setting or ("paper" if str(device).startswith("cuda") else "cpu")
    init: dict[str, str] = {}
    for item in args.init:
        part, sep, path = item.partition("=")
        init[part] = path if sep and part in INIT_PARTS else item
        if not (sep and part in INIT_PARTS):
            init["model"] = init.pop(part)
    try:
        config = CleaqTrainConfig(
            task=args.task, data=args.data, out=args.out, setting=setting, img_size=args.img_size, width=args.width,
            steps=args.steps, batch_size=args.batch_size or 8, lr=args.lr or 1e-3,
            constant_fraction=args.constant_fraction, crop=args.crop, dice_weight=args.dice_weight,
            lqi_weight=args.lqi_weight, segmentation=args.segmentation, lqi=args.lqi, iqe=args.iqe, iqa=args.iqa,
            gradient_reversal=args.gradient_reversal, dynamic_weights=args.dynamic_weights,
            quality_fusion=args.quality_fusion, init=init, val_data=args.val_data, val_fraction=args.val_fraction,
            split_seed=args.split_seed, eval_every=args.eval_every, seed=args.seed,
            amp="auto" if args.amp is None else args.amp, device=device,
        )  # fmt: skip
        path = train_cleaq(config, resume=args.resume, progress=not args.no_progress, stop_at=args.stop_at)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    print(path)
    return 0


# ---- pyfundus eval --task ------------------------------------------------------------------


def add_eval_options(p) -> None:
    g = p.add_argument_group("CLEAQ-DR (with --task enhance, iqa or dr)")
    g.add_argument("--task", choices=("quality", "enhance", "iqa", "dr"), default="quality",
                   help="quality: the quality score (default); enhance: PSNR/SSIM/vessel Dice/FTHNet score against "
                   "CLAHE, unsharp masking and IETK-Ret on fresh degradations of --photos; iqa: a quality "
                   "classifier next to FTHNet and their ensemble; dr: a grader's accuracy and kappa")  # fmt: skip
    g.add_argument("--photos", nargs="+", metavar="PATH",
                   help="enhance: clean held-out photos (never used to train the enhancer)")  # fmt: skip
    g.add_argument("--draws", type=int, default=3, help="enhance: fresh degradations per photo and family (default 3)")
    g.add_argument("--quality-model", default=None, help="enhance, iqa: the FTHNet model to compare with (default: shipped)")
    g.add_argument("--baselines", nargs="+", default=None, metavar="NAME",
                   help="enhance: which baselines (default: degraded clahe unsharp ietk)")  # fmt: skip
    g.add_argument("--ietk-python", metavar="PYTHON",
                   help="enhance: the interpreter of an environment with IETK-Ret (default: $PYFUNDUS_IETK_PYTHON; "
                   "see pyfundus/ietk_baseline.py)")  # fmt: skip


def run_eval(args) -> int:
    from . import cleaq_eval

    try:
        if args.task == "enhance":
            if not args.photos:
                raise UsageError("--task enhance needs --photos (clean, held-out photos)")
            summary = cleaq_eval.evaluate_enhancement(
                args.photos, args.out, enhancer=args.model, quality_model=args.quality_model, draws=args.draws,
                seed=args.seed, baselines=args.baselines, ietk_python=args.ietk_python, progress=not args.no_progress,
            )  # fmt: skip
        elif not args.data or not args.model:
            raise UsageError(f"--task {args.task} needs --data and --model (the model file to evaluate)")
        elif args.task == "iqa":
            summary = cleaq_eval.evaluate_iqa(args.model, args.data, args.out, quality_model=args.quality_model,
                                              device=args.device, progress=not args.no_progress)  # fmt: skip
        else:
            summary = cleaq_eval.evaluate_grader(args.model, args.data, args.out, device=args.device,
                                                 progress=not args.no_progress)  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    if args.json:
        json.dump(summary, sys.stdout, indent=2, default=float)
        sys.stdout.write("\n")
    else:
        print(cleaq_eval.format_summary(summary))
        print(f"report written to {args.out}")
    return 0
