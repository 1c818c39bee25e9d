"""File events from watchdog, kept alive.

Native events (inotify on Linux) by default, with close-write as the fast
path; polling when asked (network shares send no events for remote writers)
or when native events cannot be set up (inotify watch or instance limits).
Handlers never raise: watchdog runs them on its observer thread, and one
exception there would kill the thread silently. The daemon's supervisor
still checks ``problem()`` every second and restarts the observer when its
thread or emitter died, or when the folder was replaced by another.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Protocol

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from .records import Hint

try:  # only Linux reports close-write; elsewhere "modified" never promises a close to come
    from watchdog.observers.inotify import InotifyObserver as _ReportsClose
except Exception:  # pragma: no cover - non-Linux
    _ReportsClose = None

log = logging.getLogger(__name__)

# Polling interval when native events had to be given up on.
FALLBACK_POLL_SECONDS = 2.0


class FileCallback(Protocol):
    def __call__(self, path: str, *, hint: Hint) -> object: ...


def native_observer() -> BaseObserver:
    if _ReportsClose is not None:
        # Full events: a file moved in from outside the folder arrives as a move (complete, scored at
        # once) rather than as a create, which would wait for a close-write that never comes.
        return _ReportsClose(generate_full_events=True)
    from watchdog.observers import Observer  # the platform's native observer class

    return Observer()


class _Handler(FileSystemEventHandler):
    def __init__(self, on_file: FileCallback, on_folder: Callable[[], None]) -> None:
        self._on_file = on_file
        self._on_folder = on_folder
        self.reports_close = False  # set per observer: whether a close-write will follow a write

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            super().dispatch(event)
        except Exception:
            log.exception("a file event could not be handled; the reconcile scan will pick the file up")

    def on_closed(self, event: FileSystemEvent) -> None:
        # close-write (inotify only): the writer is done, one look at the file suffices.
        self._on_file(_text(event.src_path), hint=Hint.CLOSED)

    def on_created(self, event: FileSystemEvent) -> None:
        # "created" fires when a write starts: only a hint, the stability check decides.
        if event.is_directory:
            self._on_folder()
        else:
            self._on_file(_text(event.src_path), hint=self._written())

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._on_file(_text(event.src_path), hint=self._written())

    def on_moved(self, event: FileSystemEvent) -> None:
        # A rename is atomic: the destination is complete (the usual "write .tmp, rename" pattern).
        if event.is_directory:
            self._on_folder()
        elif event.dest_path:
            self._on_file(_text(event.dest_path), hint=Hint.CLOSED)

    def _written(self) -> Hint:
        return Hint.WRITING if self.reports_close else Hint.CHANGED


class Watcher:
    def __init__(
        self,
        root: str,
        *,
        recursive: bool,
        poll: float | None,
        on_file: FileCallback,
        on_folder: Callable[[], None],
        make_native: Callable[[], BaseObserver] = native_observer,
    ) -> None:
        self.root = root
        self.recursive = recursive
        self.poll = poll
        self.make_native = make_native
        self.handler = _Handler(on_file, on_folder)
        self.observer: BaseObserver | None = None
        self.watch: ObservedWatch | None = None
        self.mode = "stopped"
        self.restarts = 0
        self._identity: tuple[int, int] | None = None

    def start(self) -> None:
        """Start observing; raises OSError only when even polling cannot start (folder gone)."""
        self._identity = _identity(self.root)
        if self.poll is None:
            try:
                self._launch(self.make_native())
                return
            except OSError as exc:
                log.warning(
                    "native file events unavailable (%s); polling every %g s instead. On Linux, raise "
                    "fs.inotify.max_user_watches / max_user_instances to get instant events back",
                    exc.strerror or exc, FALLBACK_POLL_SECONDS,
                )  # fmt: skip
        self._launch(PollingObserver(timeout=self.poll or FALLBACK_POLL_SECONDS))

    def stop(self) -> None:
        observer, self.observer, self.watch, self.mode = self.observer, None, None, "stopped"
        if observer is not None:
            try:
                observer.stop()
                observer.join(timeout=5)
            except Exception:
                log.exception("the file-event observer did not stop cleanly")

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def problem(self) -> str | None:
        """Why the observer is not doing its job, or None when it is."""
        observer = self.observer
        if observer is None:
            return "not running"
        if not observer.is_alive():
            return "its thread died"
        if not all(emitter.is_alive() for emitter in observer.emitters):
            return "its event source stopped"
        if _identity(self.root) != self._identity:
            return "the folder was replaced"  # events would still come from the old one
        return None

    def _launch(self, observer: BaseObserver) -> None:
        self.handler.reports_close = _ReportsClose is not None and isinstance(observer, _ReportsClose)
        watch = observer.schedule(self.handler, self.root, recursive=self.recursive)
        try:
            observer.start()  # inotify adds its watches here: ENOSPC/EMFILE surface as OSError
        except BaseException:
            with contextlib.suppress(Exception):
                observer.stop()  # also ends the inotify reader thread the constructor started
            raise
        self.observer, self.watch = observer, watch
        self.mode = "polling" if isinstance(observer, PollingObserver) else "native"
        log.info("watching the folder with %s events", self.mode)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _text(path: str | bytes) -> str:
    return os.fsdecode(path)
