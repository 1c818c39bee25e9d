"""The scorer thread: batches what is queued, scores it, checks it scored the content it was given, commits.

The model is any object with ``score(paths, batch_size=...)`` returning one
ScoreResult-like object per path (``pyfundus.load_model`` gives one; tests
inject a stub). Each result's sha256 is that of the bytes the scorer actually
read: a result for other bytes than the work item's (the file was rewritten or
swapped since it was hashed, even keeping its size and mtime) is not that
capture's verdict; the file goes back to intake, where its new content gets a
claim of its own. A failure because the file is unfinished (a DICOM or TIFF
still being written; they have no end marker for intake to check) is no
verdict either: back to intake, which waits for the rest, unless intake
already waited and the file stopped changing.

Heavy captures (over HEAVY_PIXELS by their header) are decoded on a thread of
their own, one at a time, and join a batch once decoded: the captures behind
a huge image are scored while it decodes, never after it.

A batch that makes the scorer raise is retried image by image, so one bad
file costs only its own verdict; a capture that keeps killing the process
(GIVE_UP_AFTER_INTERRUPTIONS) gets a failed verdict, announced like any other.
When the ledger cannot take a verdict, the verdict is still shown (sinks) and
held in memory, and the commit is retried until it succeeds or the daemon stops.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import queue
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Protocol, Sequence

from pyfundus.io import FundusImage, ImageReadError, declared_size, read_image, source_name
from pyfundus.version import __version__

from .errors import LedgerError, StartupError
from .ledger import Ledger
from .logs import Redactor
from .records import Hint, Verdict, WorkItem
from .sinks import SinkHub

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
# Larger captures take longer to decode than a model call takes (a 100 MP PNG: seconds): decoded aside.
HEAVY_PIXELS = 16_000_000
# A capture the daemon died scoring is scored again alone at the next start, and once more alone after a second
# death: a crash from outside (power, an OOM kill, an operator) must not cost a healthy capture its verdict.
# Only a third death in a row, the last two while it was scored alone, blames the capture.
GIVE_UP_AFTER_INTERRUPTIONS = 3
KEEPS_CRASHING = (
    "the daemon died three times while scoring this capture, the last two times while scoring it alone: "
    "not tried again; check the file with `pyfundus score`"
)


class Scorer(Protocol):
    def score(self, inputs: Sequence[str], *, batch_size: int = ...) -> list[Any]: ...


def load_scorer(
    model: str | None,
    device: str,
    backend: str | None = None,
    *,
    precision: str | None = None,
    compile: bool = False,
    reject_below: float | None = None,
    good_from: float | None = None,
) -> Scorer:
    """Load the model once, at start-up; a bad name, file, device, backend, precision or threshold is a
    start-up error.

    ``reject_below``/``good_from`` replace the thresholds stored with the model (a site's own calibration).
    """
    from pyfundus.api import load_model

    try:
        thresholds = {"reject_below": reject_below, "good_from": good_from}
        scorer = load_model(model, device=device, backend=backend, precision=precision, compile=compile,
                            thresholds=thresholds)  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as exc:
        raise StartupError(f"cannot load the model: {exc}") from exc
    log.info("scoring with %s", scorer.backend_description)
    # The same words as the start-up lines and pyfundus score's summary; a model file without thresholds
    # grades with the defaults, which are not calibrated (not "set by hand").
    moved = reject_below is not None or good_from is not None
    log.info("thresholds: %s%s", scorer.thresholds.describe(), "; set for this site" if moved else "; the model's")
    if not scorer.trained:
        log.warning("model %s has NO trained weights: every score is meaningless (plumbing only)", scorer.name)
        # Said once here, for this model only; each verdict also records trained=false.
        scorer.warn_untrained = False
    if compile:
        log.info("compiling the model for one image and for batches (about a minute)")
    warm_up(scorer, batches=compile)
    return scorer


def load_models(config: Any, root: str) -> Scorer:
    """The default model, and a :class:`~.routing.ModelRouter` over it when the config maps cameras or
    sub-folders to models of their own. Each model file is loaded once; the hand-set thresholds
    (``reject_below``/``good_from``) apply to the default model, a site model keeps those it was fitted with.
    With a scoring server (``remote``), the default model is its fallback (:class:`~.remote.RemoteScorer`):
    the server stands in for the default model, never for a camera's own model."""
    from .routing import ModelRouter, Route, describe_routes

    options = {"device": config.device, "backend": config.backend, "precision": config.precision,
               "compile": config.compile}  # fmt: skip
    default = load_scorer(config.model, **options, reject_below=config.reject_below, good_from=config.good_from)
    if config.remote:
        default = remote_scorer(config.remote, default, timeout=config.remote_timeout)
    if not config.camera_models and not config.folder_models:
        return default
    loaded: dict[str, Scorer] = {}

    def site_model(path: Path) -> Scorer:
        key = os.path.realpath(path)
        if key not in loaded:
            loaded[key] = load_scorer(str(path), **options)
        return loaded[key]

    routes = [Route("camera", key, site_model(path)) for key, path in config.camera_models.items()]
    routes += [Route("folder", key, site_model(path)) for key, path in config.folder_models.items()]
    for line in describe_routes(routes):
        log.info("route: %s", line)
    return ModelRouter(default, routes, root)


def remote_scorer(url: str, local: Scorer, *, timeout: float) -> Scorer:
    """The scoring server at ``url`` with ``local`` as its fallback; says where captures go and whether the
    server's model is the fallback's (verdicts would otherwise differ by where they were scored)."""
    from .remote import RemoteScorer, is_loopback

    scorer = RemoteScorer(url, local, timeout=timeout)
    if not is_loopback(url):
        log.warning("each capture's bytes (patient data) are sent to %s%s", url,
                    "" if url.startswith("https://") else ", unencrypted: use https:// beyond a network you trust")
    server = scorer.describe_server()
    if server is not None:
        log.info("scoring server %s: %s, %s (pyfundus %s)", url, server.get("model"), server.get("backend"),
                 server.get("version"))  # fmt: skip
        if server.get("model_sha256") != getattr(local, "sha256", None):
            log.warning("the scoring server's model (%s, sha256 %s) is not the local fallback %s: a capture's "
                        "verdict depends on where it was scored", server.get("model"), server.get("model_sha256"),
                        local.name)  # fmt: skip
    return scorer


def warm_up(scorer: Scorer, *, batches: bool = False) -> None:
    """Score one drawn fundus-like disc: the first forward pass is several times slower than the next
    (allocations, kernel selection), and that cost belongs to start-up, not to the first patient.

    ``batches``: also score a batch of two. A compiled model compiles again for the first batch size
    after 1, then once for every size (torch.compile marks the batch dimension dynamic), so with this
    no capture ever waits on a compile."""
    import cv2
    import numpy as np

    disc = np.zeros((512, 512, 3), np.uint8)
    cv2.circle(disc, (256, 256), 220, (170, 80, 40), -1)
    scorer.score([disc], batch_size=1)
    if batches:
        scorer.score([disc, disc], batch_size=2)


def describe_backend(scorer: Scorer) -> str:
    if hasattr(scorer, "backend_description"):  # a QualityModel: runtime, precision, device
        return f"pyfundus {__version__}, {scorer.backend_description}"
    device = getattr(scorer, "device", None)
    torch = sys.modules.get("torch")
    engine = f"torch {torch.__version__} on {device}" if device is not None and torch else type(scorer).__name__
    return f"pyfundus {__version__}, {engine}"


class ScoringWorker(threading.Thread):
    def __init__(
        self,
        *,
        scorer: Scorer,
        work: queue.Queue[WorkItem],
        ledger: Ledger,
        sinks: SinkHub,
        names: Redactor,
        batch_size: int,
        recheck: Callable[..., object],  # Intake.notify
    ) -> None:
        super().__init__(name="pyfundus-scorer", daemon=True)
        self.scorer = scorer
        self.work = work
        self.ledger = ledger
        self.sinks = sinks
        self.names = names
        self.batch_size = batch_size
        self.recheck = recheck
        self.backend = describe_backend(scorer)
        # Items to take before the queue: a solo item that ended the previous batch, a re-targeted capture.
        self._front: collections.deque[WorkItem] = collections.deque()
        self._heavy = _HeavyReader(ledger, min_side=getattr(getattr(scorer, "input", None), "size", None))
        self._unsaved: list[tuple[WorkItem, Verdict]] = []
        self._next_retry = 0.0
        self._draining = threading.Event()
        self._deadline = math.inf

    def drain(self, timeout: float) -> None:
        """Finish what is queued (at most ``timeout`` seconds more), commit, stop."""
        self._deadline = time.monotonic() + timeout
        self._draining.set()

    def hurry(self) -> None:
        """Stop after the batch in hand; what is still queued stays pending for the next start."""
        self._deadline = 0.0
        self._draining.set()

    @property
    def unsaved(self) -> int:
        return len(self._unsaved)

    @property
    def held(self) -> int:
        """Captures taken from the queue but not scored yet: held back for the next batch, or heavy."""
        return len(self._front) + self._heavy.pending

    def run(self) -> None:
        self._heavy.start()
        try:
            while not self._should_stop():
                batch = self._next_batch()
                if batch:
                    try:
                        self._process(batch)
                    except Exception:
                        log.exception("unexpected failure while scoring a batch; its captures stay pending")
                elif self._unsaved and time.monotonic() >= self._next_retry:
                    self._commit([])
        finally:
            self._finish()

    def _should_stop(self) -> bool:
        if not self._draining.is_set():
            return False
        return time.monotonic() >= self._deadline or (not self.held and self.work.empty())

    def _next_batch(self) -> list[WorkItem]:
        batch: list[WorkItem] = []
        while len(batch) < self.batch_size:
            item = self._take(wait=not batch)
            if item is None:
                break
            if self._is_heavy(item):
                self._heavy.give(item)
                continue
            if item.solo and batch:
                self._front.appendleft(item)
                break
            batch.append(item)
            if item.solo:
                break
        return batch

    def _take(self, *, wait: bool) -> WorkItem | None:
        """A held-back item first, then a decoded heavy one, then the queue."""
        if self._front:
            return self._front.popleft()
        decoded = self._heavy.take()
        if decoded is not None:
            return decoded
        try:
            if not wait:
                return self.work.get_nowait()
            return self.work.get(timeout=0.05 if self._heavy.pending else 0.2)  # a decoded one waits 50 ms at most
        except queue.Empty:
            return None

    def _is_heavy(self, item: WorkItem) -> bool:
        if item.decoded is not None or item.interrupted >= GIVE_UP_AFTER_INTERRUPTIONS:
            return False
        size = declared_size(item.path)
        return size is not None and size[0] * size[1] > HEAVY_PIXELS

    def _process(self, batch: list[WorkItem]) -> None:
        if batch[0].interrupted >= GIVE_UP_AFTER_INTERRUPTIONS:  # a solo item: the batch is only it
            self._give_up(batch[0])
            return
        try:  # a heavy capture's attempt was counted when its decode began
            self.ledger.begin_attempts([item.sha256 for item in batch if item.claimed and item.decoded is None])
        except LedgerError as exc:
            log.error("%s", exc)
        readable = [item for item in batch if not isinstance(item.decoded, ImageReadError)]
        from_model = iter(self._score([item.decoded or item.path for item in readable]) if readable else [])
        results = [_failed_read(item.decoded) if isinstance(item.decoded, ImageReadError) else next(from_model)
                   for item in batch]  # fmt: skip
        for item in batch:
            item.decoded = None  # scored: its pixels need not outlive the batch (held verdicts keep the item)
        now = time.time()
        done = []
        for item, result in zip(batch, results):
            read = getattr(result, "sha256", None)  # None: nothing was read (file gone, scorer crash)
            if read is not None and read != item.sha256:
                self._release(item, Hint.CHANGED, "holds other bytes than were hashed: not scored as that capture")
            elif getattr(result, "incomplete", False) and not item.stalled:
                self._release(item, Hint.INCOMPLETE, "looks unfinished: waiting for the rest of it")
            else:
                done.append((item, Verdict.from_result(item, result, backend=self._backend_of(result), now=now)))
        self._commit(done)

    def _backend_of(self, result: Any) -> str:
        """What computed this result: its own runtime when it says (several models may score), else the scorer's."""
        runtime = getattr(result, "backend", None)
        return f"pyfundus {__version__}, {runtime}" if runtime else self.backend

    def _give_up(self, item: WorkItem) -> None:
        log.error("%s: %s", self.names.label(item.path), KEEPS_CRASHING)
        result = SimpleNamespace(path=item.path, error=f"{item.path}: {KEEPS_CRASHING}")
        self._commit([(item, Verdict.from_result(item, result, backend=self.backend, now=time.time()))])

    def _score(self, inputs: list[str | FundusImage]) -> list[Any]:
        """One result per input: a path, or a heavy capture's decoded image."""
        try:
            results = list(self.scorer.score(inputs, batch_size=self.batch_size))
            if len(results) == len(inputs):
                return results
            log.error("the scorer returned %d results for %d images; scoring them one by one", len(results), len(inputs))
        except Exception:
            log.exception("the scorer failed on a batch of %d; scoring them one by one", len(inputs))
        return [self._score_one(one) for one in inputs]

    def _score_one(self, one: str | FundusImage) -> Any:
        path = source_name(one)
        try:
            results = list(self.scorer.score([one], batch_size=1))
            if len(results) == 1:
                return results[0]
            raise RuntimeError(f"{len(results)} results for one image")
        except Exception as exc:
            log.exception("the scorer failed on %s", self.names.label(path))
            return SimpleNamespace(path=path, error=f"{path}: the scorer failed ({type(exc).__name__}: {exc})")

    def _release(self, item: WorkItem, hint: Hint, why: str) -> None:
        """No verdict for this work item: drop its claim and let intake look at the file again."""
        log.info("%s %s", self.names.label(item.path), why)
        if item.claimed:
            try:
                other = self.ledger.release(item)
            except LedgerError as exc:
                log.error("%s; the capture stays pending until the next start", exc)
                other = None
            if other is not None:
                self._front.append(other)  # the same content is still under another name
        self.recheck(item.path, hint=hint)

    def _commit(self, done: list[tuple[WorkItem, Verdict]]) -> None:
        batch = self._unsaved + done
        if not batch:
            return
        try:
            stored = self.ledger.record(batch)
        except LedgerError as exc:
            self._unsaved = batch
            self._next_retry = time.monotonic() + RETRY_SECONDS
            log.error(
                "VERDICTS NOT SAVED: %s. %d verdict(s) held in memory, retrying every %g s",
                exc, len(batch), RETRY_SECONDS,
            )  # fmt: skip
            self.sinks.emit(verdict for _, verdict in done)
            return
        if self._unsaved:
            log.warning("the ledger takes writes again: %d held verdict(s) saved", len(self._unsaved))
        self._unsaved = []
        new = {item.sha256 for item, _ in done}
        self.sinks.emit(verdict for verdict in stored if verdict.sha256 in new)

    def _finish(self) -> None:
        self._heavy.stop()
        left = self.held + self.work.qsize()
        if left:
            log.warning("%d queued capture(s) not scored before the drain deadline: scored at the next start", left)
        self._commit([])
        for _, verdict in self._unsaved:
            # Last resort: the log (stderr included) is the only place left. The hash identifies the file.
            log.critical("VERDICT LOST FROM THE LEDGER: %s", json.dumps(self.names.record(verdict)))


def _failed_read(exc: ImageReadError) -> SimpleNamespace:
    """The result of a heavy capture its reader could not decode, as the scorer would have given it."""
    return SimpleNamespace(path=exc.path, error=str(exc), sha256=exc.sha256, incomplete=exc.incomplete)


class _HeavyReader(threading.Thread):
    """Decodes heavy captures one at a time (one near-cap image in memory at once), off the scorer thread.

    ``give`` and ``take`` are for the scorer thread only; ``pending`` counts what was given and not yet
    taken back. The attempt is counted in the ledger before the decode starts: a decode that kills the
    process is an interrupted scoring like any other.
    """

    def __init__(self, ledger: Ledger, *, min_side: int | None) -> None:
        super().__init__(name="pyfundus-heavy-reader", daemon=True)
        self.ledger = ledger
        self.min_side = min_side  # what the model needs: the reader may decode a reduced picture
        self.pending = 0
        self._todo: queue.Queue[WorkItem | None] = queue.Queue()  # None: wake up to stop
        self._done: collections.deque[WorkItem] = collections.deque()
        self._stopping = threading.Event()

    def give(self, item: WorkItem) -> None:
        self.pending += 1
        self._todo.put(item)

    def stop(self) -> None:
        """After the decode in hand, if any: what is still to decode stays pending in the ledger."""
        self._stopping.set()
        self._todo.put(None)

    def take(self) -> WorkItem | None:
        try:
            item = self._done.popleft()
        except IndexError:
            return None
        self.pending -= 1
        return item

    def run(self) -> None:
        while (item := self._todo.get()) is not None and not self._stopping.is_set():
            if item.claimed:
                try:
                    self.ledger.begin_attempts([item.sha256])
                except LedgerError as exc:
                    log.error("%s", exc)
            try:
                item.decoded = read_image(item.path, min_side=self.min_side)
            except ImageReadError as exc:
                item.decoded = exc
            except Exception as exc:  # a decoder bug costs this capture only
                log.exception("unexpected failure while decoding a heavy capture")
                item.decoded = ImageReadError(item.path, f"unexpected error while reading ({type(exc).__name__}: {exc})")
            self._done.append(item)
