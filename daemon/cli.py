"""``pyfundus watch`` and ``pyfundus results export``; also the ``pyfundusd`` command.

Nothing heavy is imported until a command runs, so ``pyfundus --help`` stays
instant. The watch command prints one line per verdict on stdout (the only
prints in the daemon); everything else goes to the log.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

from pyfundus.errors import EXIT_USAGE, UsageError

from .config import (
    CONFIG_KEYS,
    OPTION_GROUPS,
    OPTIONS,
    model_rule,
    port_number,
    positive_count,
    positive_seconds,
    score_value,
    split_command,
)

log = logging.getLogger(__name__)

_FLAG_TYPES = {
    "path": Path, "seconds": positive_seconds, "count": positive_count, "port": port_number, "score": score_value,
    "text": str,
    "command": split_command,
}  # fmt: skip


def add_commands(subparsers: Any) -> None:
    """Register ``watch``, ``results`` and ``demo`` on an ``add_subparsers()`` object."""
    _add_watch(subparsers)
    _add_results(subparsers)
    _add_demo(subparsers)


def main(argv: list[str] | None = None, *, scorer: Any = None) -> int:
    """``pyfundusd``. ``scorer``: a model-like object used instead of loading one (tests, embedding)."""
    from pyfundus.version import __version__

    parser = argparse.ArgumentParser(prog="pyfundusd", description="The pyfundus hot-folder quality gate.")
    parser.add_argument("--version", action="version", version=f"pyfundusd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="also show informational log lines on stderr")
    parser.add_argument("--print-systemd-unit", action="store_true",
                        help="print the systemd unit file to install pyfundusd as a service, and exit")  # fmt: skip
    add_commands(parser.add_subparsers(title="commands", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if args.print_systemd_unit:
        from .systemd import unit_text

        sys.stdout.write(unit_text())
        return 0
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.scorer = scorer
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"pyfundusd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


# ---- watch ----------------------------------------------------------------------


def _add_watch(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "watch",
        help="grade captures as they arrive in a folder (the quality-gate daemon)",
        description="Watch a camera's output folder and score every new capture once: one line per verdict on "
        "stdout, every verdict in a ledger in the state directory. Runs until SIGTERM or Ctrl-C, then finishes "
        "what is queued. Flags override the --config file.",
        epilog="exit status: 0 stopped by SIGTERM or Ctrl-C once the queue was drained; 2 could not start (bad "
        "options or config file, a model that cannot load, another daemon holds the state directory, the page's "
        "port is taken)",
    )
    p.add_argument("folder", nargs="?", type=Path, default=argparse.SUPPRESS, metavar="FOLDER",
                   help="the folder the camera writes to (or set folder in the config file)")  # fmt: skip
    p.add_argument("--config", type=Path, metavar="FILE.toml", help="TOML file with any of the options below")
    groups = {key: p.add_argument_group(title) for key, title in OPTION_GROUPS.items()}
    for option in OPTIONS:
        kwargs: dict[str, Any] = {"help": option.help, "default": argparse.SUPPRESS, "dest": option.name}
        if option.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif option.kind == "models":
            kwargs.update(action="append", type=model_rule, metavar=option.metavar)
        elif option.kind == "globs":
            kwargs.update(action="append", metavar=option.metavar)
        elif option.kind == "classes":
            kwargs.update(action="append", metavar=option.metavar, choices=option.choices)
        elif option.kind == "choice":
            kwargs["choices"] = option.choices
        else:
            kwargs.update(type=_FLAG_TYPES[option.kind], metavar=option.metavar)
        groups[option.group].add_argument(*option.flags, **kwargs)
    p.set_defaults(run=_run_watch)


def _run_watch(args: argparse.Namespace) -> int:
    from .config import load_config
    from .errors import StartupError
    from .logs import daemon_logging
    from .service import Daemon
    from .sinks import SidecarWriter, VerdictPrinter
    from .statedir import prepare_state_dir

    try:
        config = load_config({k: v for k, v in vars(args).items() if k in CONFIG_KEYS}, args.config)
        prepare_state_dir(config.state_dir)  # the log file goes there: check it first
    except StartupError as exc:
        raise UsageError(str(exc)) from exc
    daemon = Daemon(config, scorer=getattr(args, "scorer", None))
    daemon.sinks.add(VerdictPrinter(sys.stdout, names=daemon.names, json_lines=config.json))
    if config.sidecars is not None:
        daemon.sinks.add(SidecarWriter(config.sidecars, daemon.root))
    verbose = getattr(args, "verbose", False)
    with daemon_logging(config.state_dir, level=config.log_level, verbose=verbose, redactor=daemon.names):
        try:
            daemon.start()
        except StartupError as exc:
            log.info("not started: %s", exc)  # stderr gets it once, from the usage error below
            raise UsageError(str(exc)) from exc
        # stderr, not only the log: whoever started it sees what runs, and the page's address (a free port is random)
        for line in startup_lines(daemon):
            print(line, file=sys.stderr, flush=True)
        return _serve(daemon)


def startup_lines(daemon: Any) -> list[str]:
    """What a started daemon runs: the folder, each model with its thresholds, the backend, the state
    directory, and (last, where the eye lands) the operator page's address."""
    from .watcher import FALLBACK_POLL_SECONDS

    config = daemon.config
    folder = "the folder" if config.redact_identifiers else str(config.folder)
    how = "file events" if daemon.watcher.mode == "native" else f"polling every {config.poll or FALLBACK_POLL_SECONDS:g} s"
    reach = "with sub-folders" if config.recursive else "top level only"
    lines = [f"watching {folder} ({how}, {reach})"]
    scorer = daemon.scoring.scorer
    default = getattr(scorer, "default", scorer)  # a ModelRouter speaks for several models
    lines.append(f"model: {_model_line(default, getattr(default, 'name', type(default).__name__))}")
    for kind, key, model in getattr(scorer, "rules", ()):
        lines.append(f"{kind} {key!r}: {_model_line(model, str(getattr(model, 'file', None) or model))}")
    lines.append(f"backend: {daemon.scoring.backend}")
    lines.append(f"ledger and log: {config.state_dir}")
    if daemon.web is not None:
        lines.append(f"operator page: {daemon.web.url}")
    return lines


def _model_line(model: Any, label: str) -> str:
    thresholds = getattr(model, "thresholds", None)
    untrained = "" if getattr(model, "trained", True) else " (UNTRAINED: its grades are meaningless)"
    return label + untrained + (f"; {thresholds.describe()}" if thresholds is not None else "")


def _serve(daemon: Any) -> int:
    """Run until SIGTERM/SIGINT, then drain. A second signal stops without waiting for the queue."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            log.warning("second stop request: leaving queued captures for the next start")
            daemon.hurry()
        else:
            log.info("%s received", signal.Signals(signum).name)
            stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        daemon.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


# ---- demo -----------------------------------------------------------------------


def _add_demo(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="watch a simulated camera: captures arrive about once a second and are graded live",
        description="Start the daemon on a temporary folder and play a fundus camera into it: synthetic fundi, "
        "clean and with defects made to be graded Good, Usable or Reject (and the real sample photos, when "
        "`pyfundus data fetch-samples` has fetched them), written the way cameras write. Prints each verdict, "
        "serves the operator page and prints a summary. On a terminal the page then stays open until Ctrl-C; "
        "otherwise (a script) the demo ends after the summary. Works offline; everything it writes is removed "
        "at the end.",
        epilog="exit status: 0 every capture got its verdict; 1 a capture got none",
    )
    p.add_argument("--port", type=port_number, default=0, help="operator page port (default: a free one)")
    p.add_argument("--no-web", dest="web", action="store_false", help="no operator page")
    p.add_argument("--duration", type=positive_seconds, metavar="S",
                   help="stop the camera after S seconds (it takes new captures until then), then end after the "
                   "summary, also on a terminal")  # fmt: skip
    p.add_argument("--count", type=positive_count, metavar="N",
                   help="captures to take (default: one pass over the demo's shots)")  # fmt: skip
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    keep_open = sys.stdout.isatty() and args.duration is None  # a person is watching: leave the page up for them
    return run_demo(count=args.count, duration=args.duration, web=args.web, port=args.port, keep_open=keep_open,
                    scorer=getattr(args, "scorer", None))  # fmt: skip


# ---- results --------------------------------------------------------------------


def _add_results(subparsers: Any) -> None:
    p = subparsers.add_parser("results", help="read the daemon's ledger")
    actions = p.add_subparsers(title="results commands", metavar="ACTION")
    p.set_defaults(run=partial(_help, p))
    export = actions.add_parser(
        "export",
        help="every capture's verdict as JSON or CSV",
        description="One record per capture (a second file name with the same content is listed under "
        "other_paths). Safe while the daemon runs.",
    )
    export.add_argument(
        "--state-dir", type=Path, metavar="DIR",
        help="the daemon's state directory (default: $PYFUNDUS_STATE_DIR or ~/.local/state/pyfundus)",
    )  # fmt: skip
    export.add_argument("--format", choices=("json", "csv"), default="json", help="default: json")
    export.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout")
    export.set_defaults(run=_run_export)


def _help(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _run_export(args: argparse.Namespace) -> int:
    from .errors import LedgerError
    from .results import export
    from .statedir import default_state_dir

    state_dir = args.state_dir or default_state_dir()
    try:
        if args.output is None:
            export(state_dir, args.format, sys.stdout)
        else:
            with open(args.output, "w", newline="", encoding="utf-8") as f:
                count = export(state_dir, args.format, f)
            print(f"{count} capture(s) written to {args.output}", file=sys.stderr)
    except (FileNotFoundError, LedgerError) as exc:
        raise UsageError(str(exc)) from exc
    return 0


if __name__ == "__main__":
    sys.exit(main())
