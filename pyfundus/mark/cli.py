"""``pyfundus mark``: serve the rating page, manage raters, import, aggregate, export.

Registered on the ``pyfundus`` command by :func:`add_commands`. Nothing heavy
is imported until a command runs; only ``serve --order uncertain`` loads a model.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import signal
import sys
import threading
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Iterator

from ..errors import EXIT_USAGE, UsageError
from ..progress import progress_bar
from .aggregate import DEFAULT_SD_THRESHOLD, RATER_LEVELS

DATASET_HELP = "the dataset folder (default: the current folder)"


def add_commands(subparsers: Any) -> None:
    """Register ``mark`` and its actions on an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "mark",
        help="rate captures in a browser and build an FQS-style dataset (MOS, classes) from them",
        description="A local rating app for a folder of captures: raters score each image 0-100 and grade it "
        "Good / Usable / Reject against reference images, blind to each other; the opinions aggregate to a mean "
        "opinion score (2 x senior + 1 x junior) and export in the FQS layout for pyfundus train and calibrate.",
    )
    p.set_defaults(run=partial(_help, p))
    actions = p.add_subparsers(title="mark commands", metavar="ACTION")
    _add_serve(actions)
    _add_user(actions)
    _add_status(actions)
    _add_imports(actions)
    _add_aggregate(actions)
    _add_disagreements(actions)
    _add_export(actions)
    _add_audit(actions)


def _help(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _dataset_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset", type=Path, default=Path("."), metavar="DIR", help=DATASET_HELP)


def _open(dataset: Path, *, create: bool = False):
    from .store import MarkError, Store

    try:
        return Store(dataset, create=create)
    except MarkError as exc:
        raise UsageError(str(exc)) from exc


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _scan(store: Any, enabled: bool) -> Any:
    files = store.image_files()
    with progress_bar(len(files), desc="scanning", unit="file", enabled=enabled and len(files) > 1) as bar:
        return store.scan(files, progress=bar.update)


# ---- serve ------------------------------------------------------------------------------


def _add_serve(actions: Any) -> None:
    from .order import ORDERS
    from .server import DEFAULT_PORT

    p = actions.add_parser(
        "serve",
        help="serve the rating page for a folder of captures",
        description="Register the folder's images (state in DATASET_DIR/.pyfundus-mark/), then serve the rating "
        "page until Ctrl-C. Listens on 127.0.0.1 only by default: the page shows patient photographs.",
    )
    p.add_argument("dataset", type=Path, metavar="DATASET_DIR", help="the folder of captures to rate")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; another address lets anyone who can reach it "
                   "try to log in, over plain HTTP)")  # fmt: skip
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--order", choices=ORDERS, default="random",
                   help="random (each rater's own shuffle) or uncertain (the model's least certain images first; "
                   "scores the images without a score from --model first) (default: random)")  # fmt: skip
    p.add_argument("-m", "--model", default=None, help="the model for --order uncertain (default: the shipped model)")
    p.add_argument("--device", default="cpu", help="for --order uncertain (default: cpu)")
    p.add_argument("--sd-threshold", type=float, default=DEFAULT_SD_THRESHOLD,
                   help=f"raters' SD above which an image is queued for discussion (default: {DEFAULT_SD_THRESHOLD:g})")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from .server import MarkServer
    from .store import MarkError

    store = _open(args.dataset, create=True)
    try:
        if not any(r.admin and r.can_log_in for r in store.raters()):
            raise UsageError(f"{args.dataset} has no admin who can log in; add one first: pyfundus mark user add "
                             f"NAME --level senior --admin --dataset {args.dataset}")  # fmt: skip
        print(_scan(store, not args.no_progress), file=sys.stderr)
        if args.order == "uncertain":
            _score_for_order(store, args)
        server = MarkServer(store, host=args.host, port=args.port, order=args.order, sd_threshold=args.sd_threshold)
        with _stop_on_signals() as stop:  # before the address is printed: a stop request may follow at once
            try:
                server.start()
            except MarkError as exc:
                raise UsageError(str(exc)) from exc
            print(f"rating page: {server.url}  (Ctrl-C stops)", file=sys.stderr, flush=True)
            if not server.loopback_only:
                print(f"WARNING: listening on {args.host}: anyone who can reach this port can try to log in, and "
                      "passwords and photographs cross the network unencrypted", file=sys.stderr)  # fmt: skip
            while not stop.wait(0.5):
                pass
        server.close()
    finally:
        store.close()
    return 0


def _score_for_order(store: Any, args: argparse.Namespace) -> None:
    from ..api import load_model
    from .order import score_unscored

    try:
        model = load_model(args.model, device=args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise UsageError(str(exc)) from exc
    todo = len(store.rating_set())
    with progress_bar(todo, desc=f"scoring with {model.name}", unit="img", enabled=not args.no_progress) as bar:
        scored, failures = score_unscored(store, model, progress=bar.update)
    print(f"{scored} image(s) scored with {model.name} for the uncertain-first order", file=sys.stderr)
    for failure in failures:
        print(f"  not scored (goes last): {failure}", file=sys.stderr)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (the previous handlers come back after)."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---- user -----------------------------------------------------------------------------


def _add_user(actions: Any) -> None:
    p = actions.add_parser("user", help="rater accounts: add, list, edit")
    p.set_defaults(run=partial(_help, p))
    users = p.add_subparsers(title="user commands", metavar="ACTION")
    add = users.add_parser(
        "add", help="add a rater (the password is prompted, or read from the first line of stdin)",
        description="Add a rater account. The password is asked for twice on a terminal, or read from the first "
        "line of standard input (echo \"$PW\" | pyfundus mark user add ...). Stored as an scrypt hash.",
    )  # fmt: skip
    add.add_argument("name", help="login name: letters, digits, '.', '_', '-'")
    add.add_argument("--level", choices=RATER_LEVELS, required=True,
                     help="senior (weight 2 in the MOS) or junior (weight 1)")  # fmt: skip
    add.add_argument("--admin", action="store_true",
                     help="may see the disagreement queue, adjust scores and edit the reference images")  # fmt: skip
    _dataset_option(add)
    add.set_defaults(run=_run_user_add)
    listing = users.add_parser("list", help="list the raters and their progress")
    _dataset_option(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_run_user_list)
    edit = users.add_parser("edit", help="change a rater's level, admin right, access or password")
    edit.add_argument("name")
    edit.add_argument("--level", choices=RATER_LEVELS, help="a new level: re-weights all the rater's opinions")
    edit.add_argument("--admin", action=argparse.BooleanOptionalAction, default=None)
    edit.add_argument("--active", action=argparse.BooleanOptionalAction, default=None,
                      help="--no-active: the rater cannot log in (their opinions stay)")  # fmt: skip
    edit.add_argument("--password", action="store_true", help="set a new password (prompted, or from stdin)")
    _dataset_option(edit)
    edit.set_defaults(run=_run_user_edit)


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise UsageError("the two passwords differ")
        return first
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise UsageError("no password on standard input (give it on the first line)")
    return line


def _run_user_add(args: argparse.Namespace) -> int:
    from .store import MarkError, cli_actor

    store = _open(args.dataset, create=True)
    try:
        rater = store.add_rater(args.name, args.level, _read_password(args.name), admin=args.admin, actor=cli_actor())
    except MarkError as exc:
        raise UsageError(str(exc)) from exc
    finally:
        store.close()
    print(f"rater {rater.name} added ({rater.level}{', admin' if rater.admin else ''}) to {store.dataset}")
    return 0


def _run_user_list(args: argparse.Namespace) -> int:
    store = _open(args.dataset)
    try:
        raters = {r.name: r.to_dict() for r in store.raters()}
        rows = [{**raters[p["name"]], "scored": p["scored"]} for p in store.progress()]
    finally:
        store.close()
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'rater':<20} {'level':<7} {'admin':<5} {'login':<8} scored")
    for r in rows:
        login = "yes" if r["can_log_in"] and r["active"] else "disabled" if r["can_log_in"] else "no"
        print(f"{r['name']:<20} {r['level']:<7} {'yes' if r['admin'] else '':<5} {login:<8} {r['scored']}")
    return 0


def _run_user_edit(args: argparse.Namespace) -> int:
    from .store import MarkError, cli_actor

    store = _open(args.dataset)
    try:
        password = _read_password(args.name) if args.password else None
        rater = store.edit_rater(args.name, actor=cli_actor(), level=args.level, admin=args.admin,
                                 active=args.active, password=password)  # fmt: skip
    except MarkError as exc:
        raise UsageError(str(exc)) from exc
    finally:
        store.close()
    print(f"rater {rater.name}: {rater.level}{', admin' if rater.admin else ''}"
          f"{'' if rater.active else ', cannot log in'}")  # fmt: skip
    return 0


# ---- status -----------------------------------------------------------------------------


def _add_status(actions: Any) -> None:
    p = actions.add_parser("status", help="rescan the folder; images, raters' progress, what needs discussion")
    _dataset_option(p)
    p.add_argument("--sd-threshold", type=float, default=DEFAULT_SD_THRESHOLD)
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    from .export import collect

    store = _open(args.dataset)
    try:
        scan = _scan(store, not args.no_progress and not args.json)
        collected = collect(store)
        report = {
            "dataset": str(store.dataset),
            "images": len(store.rating_set()),
            "references": len(store.anchors()),
            "gone": scan.gone,
            "rated": len(collected.results),
            "disagreements": sum(r.disputed(args.sd_threshold) for r in collected.results),
            "adjusted": len(collected.adjustments),
            "raters": store.progress(),
        }
    finally:
        store.close()
    if args.json:
        _print_json(report)
        return 0
    print(f"{report['dataset']}: {scan}; {report['references']} reference image(s)")
    print(f"{report['rated']} image(s) have an opinion; {report['disagreements']} to discuss "
          f"(SD above {args.sd_threshold:g} or classes differ); {report['adjusted']} adjusted")  # fmt: skip
    for r in report["raters"]:
        print(f"  {r['name']:<20} {r['level']:<7} {r['scored']} / {report['images']}")
    return 0


# ---- imports ----------------------------------------------------------------------------


def _add_imports(actions: Any) -> None:
    ratings = actions.add_parser(
        "import-ratings",
        help="import existing opinions from a CSV (file_name,rater,rater_level,score,level)",
        description="Store every opinion of a long-format CSV (the format pyfundus mark aggregate reads). Raters "
        "without an account get one that cannot log in; file_name must be an image of the dataset. The whole file "
        "is checked before anything is stored; a rater's opinion already there is replaced (and audited).",
    )
    ratings.add_argument("table", type=Path, metavar="RATINGS.csv")
    _dataset_option(ratings)
    ratings.add_argument("--json", action="store_true")
    ratings.set_defaults(run=_run_import_ratings)
    ledger = actions.add_parser(
        "import-ledger",
        help="queue the daemon's scored captures for rating (copies them into the dataset folder)",
        description="Copy each capture pyfundus watch scored, whose file still holds the scored bytes, into the "
        "dataset folder, with the daemon model's score (shown to a rater only after they commit, and used by "
        "--order uncertain). The operator's clicks on the operator page (Fine as it is: Good, Retake anyway: "
        "Reject) become hints shown after commit.",
    )
    ledger.add_argument("state_dir", type=Path, nargs="?", metavar="STATE_DIR",
                        help="the daemon's state directory (default: $PYFUNDUS_STATE_DIR or ~/.local/state/pyfundus)")  # fmt: skip
    ledger.add_argument("--since", type=_date, metavar="YYYY-MM-DD", help="only captures first seen on or after this day")
    _dataset_option(ledger)
    ledger.add_argument("--json", action="store_true")
    ledger.add_argument("--no-progress", action="store_true")
    ledger.set_defaults(run=_run_import_ledger)


def _date(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _run_import_ratings(args: argparse.Namespace) -> int:
    from .importing import import_ratings
    from .store import MarkError, cli_actor

    store = _open(args.dataset, create=True)
    try:
        _scan(store, False)
        counts = import_ratings(store, args.table, actor=cli_actor())
    except (MarkError, ValueError) as exc:  # a RatingsError names the file and line
        raise UsageError(str(exc)) from exc
    finally:
        store.close()
    if args.json:
        _print_json(counts)
    else:
        print(f"{counts['opinions']} opinion(s) from {args.table}: {counts['added']} new, {counts['changed']} changed, "
              f"{counts['unchanged']} unchanged" + (f"; new raters (cannot log in until given a password): "
              f"{', '.join(counts['new_raters'])}" if counts["new_raters"] else ""))  # fmt: skip
    return 0


def _run_import_ledger(args: argparse.Namespace) -> int:
    from ..daemon.statedir import default_state_dir
    from .importing import import_ledger, read_ledger
    from .store import MarkError, cli_actor

    store = _open(args.dataset, create=True)
    try:
        ledger = read_ledger(args.state_dir or default_state_dir())
        _scan(store, False)
        enabled = not args.no_progress and not args.json
        with progress_bar(len(ledger.captures), desc="importing", unit="capture", enabled=enabled) as bar:
            counts = import_ledger(store, ledger, actor=cli_actor(), since=args.since, progress=bar.update)
    except MarkError as exc:
        raise UsageError(str(exc)) from exc
    finally:
        store.close()
    if args.json:
        _print_json(counts)
        return 0
    print(f"{counts['captures']} capture(s) in the ledger: {counts['added']} copied into {store.dataset} and queued, "
          f"{counts['already']} already there, {counts['not_scored']} not scored, {counts['older']} before --since, "
          f"{counts['file_gone']} whose file is gone or changed; {counts['hints']} operator hint(s)")  # fmt: skip
    return 0


# ---- aggregate, disagreements, export, audit --------------------------------------------------


def _add_aggregate(actions: Any) -> None:
    p = actions.add_parser(
        "aggregate",
        help="MOS, class, SD per image from a CSV of opinions; histograms",
        description="Read opinions (file_name,rater,rater_level,score,level) and write OUT/mos.csv "
        "(file_name,meanOpinionScore,qualityLevel,sd,n_raters), mos_histogram.png and sd_histogram.png. "
        "MOS: weighted mean, 2 per senior and 1 per junior opinion; class: weighted majority vote, a tie goes to "
        "the lower quality; sd: sample SD of the raw scores.",
    )
    p.add_argument("table", type=Path, metavar="RATINGS.csv")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--paper-formula", action="store_true",
                   help="MOS = 0.22 x (sum of 3 senior scores) + 0.11 x (sum of 3 junior scores), as FQS; "
                   "every image must have exactly 3 + 3 opinions")  # fmt: skip
    p.add_argument("--sd-threshold", type=float, default=DEFAULT_SD_THRESHOLD,
                   help=f"marked on the SD histogram and counted as disagreements (default: {DEFAULT_SD_THRESHOLD:g})")  # fmt: skip
    p.add_argument("--no-plots", action="store_true", help="only mos.csv (the plots need matplotlib)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=_run_aggregate)


def _run_aggregate(args: argparse.Namespace) -> int:
    from .aggregate import aggregate, plot_histograms, read_ratings, summary, write_mos

    try:
        results = aggregate(read_ratings(args.table), paper_formula=args.paper_formula)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "mos.csv", "w", newline="", encoding="utf-8") as f:
        write_mos(results, f)
    written = [args.out / "mos.csv"]
    if not args.no_plots:
        try:
            written += plot_histograms(results, args.out, args.sd_threshold)
        except RuntimeError as exc:
            raise UsageError(f"{exc} (or pass --no-plots)") from exc
    report = {**summary(results, args.sd_threshold), "formula": "paper" if args.paper_formula else "weighted",
              "written": [str(p) for p in written]}  # fmt: skip
    if args.json:
        _print_json(report)
        return 0
    classes = ", ".join(f"{n} {level}" for level, n in report["classes"].items())
    median = "-" if report["median_sd"] is None else f"{report['median_sd']:.2f}"
    print(f"{report['images']} images, {report['opinions']} opinions from {report['raters']} raters: {classes}; "
          f"median SD {median}; {report['disagreements']} to discuss")  # fmt: skip
    for path in written:
        print(f"  {path}")
    return 0


def _add_disagreements(actions: Any) -> None:
    p = actions.add_parser("disagreements", help="the images to discuss: SD above a threshold, or classes that differ")
    _dataset_option(p)
    p.add_argument("--sd-threshold", type=float, default=DEFAULT_SD_THRESHOLD,
                   help=f"(default: {DEFAULT_SD_THRESHOLD:g})")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_run_disagreements)


def _run_disagreements(args: argparse.Namespace) -> int:
    from .aggregate import disagreements
    from .export import collect

    store = _open(args.dataset)
    try:
        collected = collect(store)
    finally:
        store.close()
    rows = []
    for r in disagreements(collected.results, args.sd_threshold):
        rows.append({"file_name": collected.images[r.file_name].path, "mos": round(r.mos, 2), "level": r.level,
                     "sd": None if r.sd is None else round(r.sd, 2), "n_raters": r.n_raters,
                     "opinions": [{"rater": o.rater, "rater_level": o.rater_level, "score": o.score, "level": o.level}
                                  for o in r.opinions],
                     "adjusted": collected.adjustments.get(r.file_name)})  # fmt: skip
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        sd = "-" if row["sd"] is None else f"{row['sd']:.2f}"
        opinions = ", ".join(f"{o['rater']} {o['score']} {o['level']}" for o in row["opinions"])
        adjusted = f"  adjusted: {row['adjusted']['score']:g} {row['adjusted']['level']}" if row["adjusted"] else ""
        print(f"{row['file_name']}  MOS {row['mos']:.2f} {row['level']}  SD {sd}  ({opinions}){adjusted}")
    print(f"{len(rows)} image(s) to discuss (SD above {args.sd_threshold:g} or classes differ); "
          "adjust them on the rating page's Admin tab")  # fmt: skip
    return 0


def _add_export(actions: Any) -> None:
    p = actions.add_parser(
        "export",
        help="write the rated images in the FQS layout, for pyfundus train, calibrate and adapt",
        description="OUT/labels.csv (FQS layout: file_name, meanOpinionScore, qualityLevel; the admin's adjustments "
        "applied) with OUT/images/, OUT/good/ usable/ reject/ (the images per class), ratings.csv (every opinion), "
        "mos.csv (the raters' aggregate), adjustments.csv and the histograms. Images are hard links where possible.",
    )
    _dataset_option(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new or empty folder outside the dataset")
    p.add_argument("--min-raters", type=int, default=1, help="only images with at least this many opinions (default: 1)")
    p.add_argument("--paper-formula", action="store_true", help="the FQS sum for the MOS (3 senior + 3 junior per image)")
    p.add_argument("--sd-threshold", type=float, default=DEFAULT_SD_THRESHOLD,
                   help=f"marked on the SD histogram (default: {DEFAULT_SD_THRESHOLD:g})")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .export import export_dataset
    from .store import MarkError

    store = _open(args.dataset)
    try:
        _scan(store, False)
        total = len(store.rating_set())
        with progress_bar(total, desc="exporting", unit="img", enabled=not args.no_progress and not args.json) as bar:
            report = export_dataset(store, args.out, min_raters=args.min_raters, paper_formula=args.paper_formula,
                                    sd_threshold=args.sd_threshold, progress=bar.update)  # fmt: skip
    except (MarkError, ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from exc
    finally:
        store.close()
    if args.json:
        _print_json(report)
        return 0
    classes = ", ".join(f"{n} {level}" for level, n in report["classes"].items())
    print(f"{report['images']} images ({classes}; {report['adjusted']} adjusted after discussion) from "
          f"{report['opinions']} opinions written to {report['out']} ({report['files']} of the images)")  # fmt: skip
    print("use:")
    for command in report["use"]:
        print(f"  {command}")
    return 0


def _add_audit(actions: Any) -> None:
    p = actions.add_parser("audit", help="the audit trail: every change, newest first (read-only)")
    _dataset_option(p)
    p.add_argument("-n", "--limit", type=int, default=50, help="newest N entries; 0 for all (default: 50)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_run_audit)


def _run_audit(args: argparse.Namespace) -> int:
    from ..verdicts import iso_time

    store = _open(args.dataset)
    try:
        rows = store.audit_trail(args.limit or None)
    finally:
        store.close()
    for row in rows:
        row["at"] = iso_time(row["at"])
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        print(f"{row['at']}  {row['actor']:<16} {row['action']:<16} {row['image'] or '-'}  {json.dumps(row['detail'])}")
    return 0
