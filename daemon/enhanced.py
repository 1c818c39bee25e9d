"""``--enhance-usable DIR``: an enhanced copy of each capture graded Usable, for the operator and the grader.

A Usable capture can be graded but is not good; CLEAQ-DR's enhancer (``pyfundus enhance``, the shipped
``cleaq_iqe_cpu`` unless a model is given) makes a clearer copy of it at the capture's own resolution, written
into DIR (outside the watched folder; the camera's files are never touched) under the capture's relative path,
JPEG for JPEG captures and PNG otherwise. The operator page shows the copy beside the capture.

Enhancement takes about a second on two CPU cores, so it runs on a thread of its own behind a queue of 32
(a full queue drops its oldest capture, logged): scoring never waits for it. The enhancer loads on that thread,
on the first Usable capture. A capture whose file changed since it was scored is not enhanced.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Callable

from pyfundus.paths import sha256_file

from .logs import Redactor
from .records import Verdict

log = logging.getLogger(__name__)

QUEUE_SIZE = 32


class EnhanceUsable:
    def __init__(
        self,
        folder: Path,
        *,
        root: str,
        names: Redactor,
        on_done: Callable[[str, str], None] = lambda sha256, path: None,
        model: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.root = root
        self.names = names
        self.on_done = on_done
        self.model = model
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._enhancer = None
        self._thread = threading.Thread(target=self._work, name="pyfundus-enhance", daemon=True)
        self._thread.start()

    def __call__(self, verdict: Verdict) -> None:
        if verdict.state != "scored" or verdict.quality_class != "Usable" or verdict.duplicate_of is not None:
            return
        while True:
            try:
                self._queue.put_nowait((verdict.path, verdict.sha256))
                return
            except queue.Full:
                try:
                    dropped = self._queue.get_nowait()
                    if dropped is not None:
                        log.warning("enhancement queue full: %s not enhanced", self.names.label(dropped[0]))
                except queue.Empty:
                    pass

    def close(self, timeout: float) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            path, sha256 = item
            try:
                self._enhance(path, sha256)
            except Exception:  # an enhancement problem must never stop the daemon
                log.exception("enhancing %s failed", self.names.label(path))

    def _enhance(self, path: str, sha256: str) -> None:
        label = self.names.label(path)
        if sha256_file(path) != sha256:
            log.warning("%s changed since it was scored: not enhanced", label)
            return
        if self._enhancer is None:
            from pyfundus.api import load_enhancer

            self._enhancer = load_enhancer(self.model)
            log.info("enhancing Usable captures into %s with %s", self.folder, self._enhancer.name)
        target = self.folder / os.path.dirname(os.path.relpath(path, self.root))
        (result,) = self._enhancer.enhance([path], out_dir=target)
        if result.error:
            log.error("cannot enhance %s: %s", label, self.names.scrub(result.error, [path]))
            return
        log.info("enhanced copy of %s written (%.1f s)", label, result.timing_ms["total"] / 1000)
        self.on_done(sha256, result.output)
