"""The daemon: wires watcher -> intake -> work queue -> scorer -> ledger and sinks, and supervises them.

Start-up order: state directory check, single-instance lock, ledger, model,
then the threads. Captures the last run left pending are queued first; the
first reconcile scan (immediately) then queues the backlog, the files present
but not in the ledger. The supervisor thread restarts a dead observer, copes
with the folder disappearing, and rescans every ``reconcile_interval``: the
scan, not the events, is the source of truth.

Stopping drains: no new intake, the scorer finishes the queue (bounded by
``drain_timeout``), commits, and only then is the ledger closed and the lock
released. The daemon never writes, moves or deletes anything in the folder.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Sequence

from watchdog.observers.api import BaseObserver

from .alerts import Alerts
from .cameras import CameraWatch
from .config import WatchConfig
from .enhanced import EnhanceUsable
from .errors import LedgerError, StartupError
from .filters import PathFilter
from .intake import Intake
from .ledger import Ledger
from .logs import Redactor
from .records import FileStat, WorkItem
from .rejects import RejectAction
from .scoring import Scorer, ScoringWorker, load_models
from .sinks import Sink, SinkHub
from .statedir import LEDGER_NAME, InstanceLock, prepare_state_dir
from .systemd import Notifier
from .watcher import Watcher, native_observer
from .web import OperatorWeb

log = logging.getLogger(__name__)


class Daemon:
    def __init__(
        self,
        config: WatchConfig,
        scorer: Scorer | None = None,
        *,
        sinks: Sequence[Sink] = (),
        make_native_observer: Callable[[], BaseObserver] = native_observer,
    ) -> None:
        self.config = config
        self.root = os.path.realpath(config.folder)
        self._roots = [self.root, os.path.abspath(config.folder)]
        self.names = Redactor(self._roots, enabled=config.redact_identifiers)
        self.sinks = SinkHub(sinks)
        self.systemd = Notifier()
        outputs = (config.state_dir, config.sidecars, config.reject_folder, config.enhance_usable)
        excluded = [str(path) for path in outputs if path is not None]
        self.paths = PathFilter(self.root, recursive=config.recursive, ignore=config.ignore, excluded=excluded)
        self._scorer = scorer
        self._make_native_observer = make_native_observer
        self._lock = InstanceLock(config.state_dir)
        self._stopping = threading.Event()
        self._scan_requested = threading.Event()
        self._folder_missing = False
        self._supervisor: threading.Thread | None = None
        self.ledger: Ledger | None = None
        self.intake: Intake | None = None
        self.scoring: ScoringWorker | None = None
        self.watcher: Watcher | None = None
        self.work: queue.Queue[WorkItem] | None = None
        self.web: OperatorWeb | None = None
        self.cameras: CameraWatch | None = None

    # ---- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Raises StartupError (a subclass says which) when the daemon cannot run."""
        config = self.config
        config.validate()
        prepare_state_dir(config.state_dir)
        self._lock.acquire()
        try:
            try:
                self.ledger = Ledger(config.state_dir / LEDGER_NAME)
                initial = self._recover()
            except LedgerError as exc:
                raise StartupError(f"{exc}; is the state directory full, read-only or damaged?") from exc
            scorer = self._scorer if self._scorer is not None else load_models(config, self.root)
            self._add_actions()
            self._start_web()
            self._watch_cameras(scorer)
            self.work = work = queue.Queue(maxsize=config.queue_size)
            self.intake = Intake(
                paths=self.paths, ledger=self.ledger, work=work, sinks=self.sinks, names=self.names,
                debounce=config.debounce, settle=config.settle, incomplete_grace=config.incomplete_grace,
                initial=initial,
            )  # fmt: skip
            self.scoring = ScoringWorker(
                scorer=scorer, work=work, ledger=self.ledger, sinks=self.sinks, names=self.names,
                batch_size=config.batch_size, recheck=self.intake.notify,
            )  # fmt: skip
            self.watcher = Watcher(
                self.root, recursive=config.recursive, poll=config.poll, on_file=self.intake.notify,
                on_folder=self.request_reconcile, make_native=self._make_native_observer,
            )  # fmt: skip
            try:
                self.watcher.start()
            except OSError as exc:
                raise StartupError(f"cannot watch {config.folder}: {exc.strerror or exc}") from exc
            self.scoring.start()
            self.intake.start()
            self._supervisor = threading.Thread(target=self._supervise, name="pyfundus-supervisor", daemon=True)
            self._supervisor.start()
        except BaseException:
            self._shutdown()
            raise
        log.info(
            "watching %s (%s events, %s); %d capture(s) left pending by the last run go first",
            "the folder" if config.redact_identifiers else self.root, self.watcher.mode,
            "recursive" if config.recursive else "top level only", len(initial),
        )  # fmt: skip

    def stop(self) -> None:
        """Drain and stop; safe to call more than once."""
        if self._stopping.is_set():
            return
        log.info("stopping: finishing queued captures, then committing")
        self.systemd.stopping()
        self._stopping.set()
        self._scan_requested.set()
        self._shutdown()
        log.info("stopped")

    def hurry(self) -> None:
        """A second stop request: leave queued captures pending for the next start."""
        if self.scoring is not None:
            self.scoring.hurry()

    def request_reconcile(self) -> None:
        self._scan_requested.set()

    def status(self) -> dict[str, Any]:
        """A snapshot for health checks and the operator page (counts, not file names)."""
        return {
            "events": self.watcher.mode if self.watcher else "stopped",
            "folder_present": not self._folder_missing,
            "observer_restarts": self.watcher.restarts if self.watcher else 0,
            "settling": self.intake.settling if self.intake else 0,
            "queued": (self.work.qsize() if self.work else 0) + (self.scoring.held if self.scoring else 0),
            "unsaved_verdicts": self.scoring.unsaved if self.scoring else 0,
            "observer_alive": self.watcher is not None and not self._folder_missing and self.watcher.problem() is None,
            "model": getattr(self.scoring.scorer, "name", None) if self.scoring else None,
            "backend": self.scoring.backend if self.scoring else None,
        }

    def _add_actions(self) -> None:
        """Reject actions run before the other outputs (they report where the file went), alerts after them."""
        config = self.config
        if config.reject_action != "off":
            assert self.ledger is not None and config.reject_folder is not None
            action = RejectAction(config.reject_action, config.reject_folder, root=self.root, ledger=self.ledger,
                                  names=self.names)  # fmt: skip
            self.sinks.add(action, first=True)
        alerts = Alerts(config, names=self.names, payload_names=Redactor(self._roots, enabled=config.alert_redact))
        if alerts.enabled:
            self.sinks.add(alerts)
        if config.enhance_usable is not None:
            self.sinks.add(EnhanceUsable(config.enhance_usable, root=self.root, names=self.names,
                                         on_done=lambda sha256, path: self.web and self.web.enhanced_copy(sha256, path)))  # fmt: skip

    def _watch_cameras(self, scorer: Scorer) -> None:
        """Say when a camera the model does not know starts sending captures (see cameras.py)."""
        assert self.ledger is not None
        taught = getattr(scorer, "mapped_cameras", set())
        on_notice = self.web.board.notice if self.web is not None else (lambda notice: None)
        self.cameras = CameraWatch(state_dir=str(self.config.state_dir), taught=taught, on_notice=on_notice)
        try:
            self.cameras.seed(verdict for verdict, _ in self.ledger.captures())
        except LedgerError as exc:
            log.error("cannot count the cameras' first captures: %s", exc)
        for notice in self.cameras.notices.values():  # known from before this start: said again, once
            log.warning("%s", notice.message)
            on_notice(notice)
        self.sinks.add(self.cameras)

    def _start_web(self) -> None:
        """The operator page, /healthz and /metrics; a verdict output too, closed with the others."""
        config = self.config
        if config.web:
            assert self.ledger is not None
            self.web = OperatorWeb(host=config.web_host, port=config.web_port, root=self.root,
                                   state_dir=config.state_dir, status=self.status,
                                   enhancing=config.enhance_usable is not None)  # fmt: skip
            self.web.start(self.ledger)
            self.sinks.add(self.web)

    def _shutdown(self) -> None:
        # Order matters: no new events, no new claims, then the scorer empties the queue.
        started = time.monotonic()
        if self._supervisor is not None:
            self._supervisor.join()
        if self.watcher is not None:
            self.watcher.stop()
        if self.intake is not None and self.intake.is_alive():
            self.intake.stop()
            self.intake.join()
        if self.scoring is not None and self.scoring.is_alive():
            self.scoring.drain(self.config.drain_timeout)
            self.scoring.join()
        # Alerts still queued get what is left of the drain time, and at least one try each.
        self.sinks.close(max(self.config.alert_timeout, started + self.config.drain_timeout - time.monotonic()))
        if self.ledger is not None:
            self.ledger.close()
        self._lock.release()

    def _recover(self) -> list[WorkItem]:
        """Pending rows from the last run, for the scorer to take first (it decides what a crash means)."""
        assert self.ledger is not None
        initial = self.ledger.pending()
        for item in initial:
            item.detected_at = time.monotonic()
        return initial

    # ---- supervision --------------------------------------------------------

    def _supervise(self) -> None:
        next_scan = time.monotonic()  # the first scan finds the backlog
        ready = False
        while not self._stopping.is_set():
            try:
                self._check_watcher()
                if self._scan_requested.is_set() or time.monotonic() >= next_scan:
                    self._scan_requested.clear()
                    self.reconcile()
                    next_scan = time.monotonic() + self.config.reconcile_interval
                if not ready:  # start-up is over once the backlog has been found and handed to intake
                    ready = True
                    self.systemd.ready(self._status_line())
                self._report_health()
            except Exception:
                log.exception("supervisor check failed; trying again")
            timeout = min(self.config.liveness_interval, max(0.0, next_scan - time.monotonic()))
            self._scan_requested.wait(timeout)

    def _report_health(self) -> None:
        """systemd's watchdog is fed only while the observer, intake and scorer threads all work."""
        assert self.watcher is not None and self.intake is not None and self.scoring is not None
        observing = self._folder_missing or self.watcher.problem() is None  # a missing folder is waited out
        if observing and self.intake.is_alive() and self.scoring.is_alive():
            self.systemd.ping()
        self.systemd.status(self._status_line())

    def _status_line(self) -> str:
        status = self.status()
        if not status["folder_present"]:
            return "waiting for the watched folder to come back"
        return f"watching ({status['events']} events): {status['settling']} settling, {status['queued']} queued"

    def _check_watcher(self) -> None:
        assert self.watcher is not None
        if not os.path.isdir(self.root):
            if not self._folder_missing:
                self._folder_missing = True
                log.error("the watched folder has disappeared; waiting for it to come back")
                self.watcher.stop()
            return
        if self._folder_missing:
            log.warning("the watched folder is back; watching it again")
            self._restart_watcher()
            self._folder_missing = False
            return
        problem = self.watcher.problem()
        if problem is not None:
            log.error("the file-event observer stopped (%s); restarting it and rescanning", problem)
            self._restart_watcher()

    def _restart_watcher(self) -> None:
        assert self.watcher is not None
        self.watcher.restart()  # an OSError here propagates: the next check tries again
        self._scan_requested.set()  # events were missed while it was down

    def reconcile(self) -> int:
        """Scan the folder and hand intake every file the ledger does not have; returns how many.

        Runs every ``reconcile_interval`` on the supervisor thread; safe to call from any thread.
        """
        if self._folder_missing:
            return 0
        assert self.ledger is not None and self.intake is not None
        try:
            known = self.ledger.known_files()
        except LedgerError as exc:
            log.error("reconcile scan skipped: %s", exc)
            return 0
        offered = 0
        for path in self.paths.walk():
            real = self.paths.resolve(path)
            if real is None:
                continue
            try:
                stat = FileStat.of(os.stat(real))
            except OSError:
                continue
            if known.get(real) != stat and self.intake.notify(real, stat=stat):
                offered += 1
        if offered:
            log.info("reconcile scan: %d file(s) to look at", offered)
        return offered
