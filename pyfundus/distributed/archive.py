"""Archive QC on Ray Data: ``pyfundus score SRC... --engine ray --output results.parquet [--resume]``.

The driver lists the inputs as the local engine does (``pyfundus.inputs.collect_inputs``), leaves out what the output already
holds (``--resume``) and hands the rest to a Ray Data pipeline: blocks of paths -> ``map_batches`` over a pool
of actors that each hold one loaded model (:class:`ArchiveScorer`: the same ``load_model`` and
``QualityModel.score`` as the local engine, so each file is read, hashed and scored exactly as there) -> back
to the driver, which keeps one row per capture and commits Parquet parts as results arrive.

The actors read the files themselves, rather than a Ray Data read stage: the model's reader hashes exactly
the bytes it decodes and turns any unreadable file into an error row, where a Ray read task that cannot
open one file fails the whole job. So every node needs the archive at the same path (a shared mount), as
Ray's own readers would.

Resume is keyed by path + size + mtime, as the daemon's intake skips a file it has hashed: the sha256 would
be the exact key, but knowing it means reading every byte of the archive again before skipping anything.
A file whose size or mtime changed since its row was written is scored again and its old row dropped.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import pyarrow as pa

from ..errors import EXIT_NOTHING_SCORED, EXIT_SOME_FAILED, UsageError
from ..progress import progress_bar
from ..verdicts import FAILED_STATE, SCORED, ScoreResult
from ..version import __version__
from .cluster import ModelSpec, placement, ray_session
from .parquet import ResultsFolder, Stat, records_table

log = logging.getLogger(__name__)

# Images per actor call, at most, in units of the model's batch: big enough that Ray's per-task cost
# (milliseconds) vanishes next to the scoring (a second or more), small enough that work spreads evenly.
BATCHES_PER_TASK = 4


@dataclass
class ArchiveRun:
    """What a run did. ``captures``: the inputs, each with one row in the output; ``scored``/``failed``:
    their rows' states, this run's and those kept from before; ``skipped``: rows kept from before
    (--resume); ``rescored``: of the inputs with a row from before, those scored again because their file
    changed; ``images_per_second``: this run's captures over the time from the pipeline's start to its end."""

    output: str
    captures: int = 0
    scored: int = 0
    failed: int = 0
    skipped: int = 0
    rescored: int = 0
    actors: int = 0
    untrained: int = 0  # this run's rows scored by a model without trained weights
    seconds: float = 0.0
    images_per_second: float | None = None
    scored_by: dict[str, int] = field(default_factory=dict)

    @property
    def exit_status(self) -> int:
        """As ``pyfundus score``: 0 all scored, 1 some failed, 3 nothing scored."""
        if self.scored == 0:
            return EXIT_NOTHING_SCORED
        return EXIT_SOME_FAILED if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ArchiveScorer:
    """One actor of the pool: loads the model once, then scores the batches of paths Ray Data hands it."""

    def __init__(self, spec: ModelSpec, batch_size: int, driver_version: str) -> None:
        import ray

        if __version__ != driver_version:  # a node with another pyfundus would score with other code
            raise RuntimeError(f"this node runs pyfundus {__version__}, the driver {driver_version}: "
                               "install the same version on every node")  # fmt: skip
        self.model = spec.load()
        self.model.warn_untrained = False  # the driver says it once
        self.batch_size = batch_size
        node = ray.get_runtime_context().get_node_id()
        address = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node)
        self.scored_by = f"ray:{address}/{node[:8]}"  # the node's address as Ray knows it, and which node there

    def __call__(self, batch: Any) -> Any:
        paths = batch["path"].to_pylist()
        results = self.model.score(paths, batch_size=self.batch_size)
        for result in results:
            result.scored_by = self.scored_by
        stats = list(zip(batch["file_size"].to_pylist(), batch["file_mtime_ns"].to_pylist()))
        return records_table([r.to_dict() for r in results], [None if s[0] is None else s for s in stats])


def score_archive(
    entries: Sequence[tuple[str, str | None]],
    output: str | os.PathLike[str],
    *,
    spec: ModelSpec = ModelSpec(),
    batch_size: int = 8,
    actors: int | None = None,
    address: str | None = None,
    resume: bool = False,
    progress: bool = False,
    checkpoint_rows: int = 10_000,
    checkpoint_seconds: float = 60.0,
) -> ArchiveRun:
    """Score ``entries`` (``collect_inputs(...).entries`` pairs: a path, and why it cannot be scored or None) into the
    Parquet folder ``output``; see the module's docstring. ``actors``: the pool's size (default: one per
    CPU of the cluster, or per GPU on CUDA). A part is committed every ``checkpoint_rows`` rows or
    ``checkpoint_seconds`` seconds, whichever comes first: what a crash can cost. ``progress``: a progress
    bar (images/s) on stderr."""
    try:
        results = ResultsFolder(output, resume=resume)
    except (FileExistsError, OSError) as exc:
        raise UsageError(str(exc)) from exc
    run = ArchiveRun(output=str(output), captures=len(entries))
    done = results.index() if resume else {}
    tally: Counter[str] = Counter()
    problems: list[dict[str, Any]] = []
    todo: list[tuple[str, Stat]] = []
    stale: set[str] = set()  # rows from before whose inputs are scored again
    for path, problem in entries:
        stat = None if problem else _stat(path)
        before = done.get(path)
        if before is not None and before[0] is not None and before[0] == stat:  # the same file: its row stands
            run.skipped += 1
            tally[before[1]] += 1
            continue
        if before is not None:
            stale.add(path)
        if problem:
            problems.append(ScoreResult(path=path, error=f"{path}: {problem}").to_dict())
        else:
            todo.append((path, stat))
    run.rescored = results.drop(stale)
    if problems:
        results.add(records_table(problems, [None] * len(problems)))
        tally.update(record["state"] for record in problems)
    if todo:
        states = _run_pipeline(todo, results, spec=spec, batch_size=batch_size, actors=actors, address=address,
                               progress=progress, run=run, checkpoint_rows=checkpoint_rows,
                               checkpoint_seconds=checkpoint_seconds)  # fmt: skip
        run.images_per_second = len(todo) / run.seconds
        for by, counts in states.items():
            if by is not None:
                run.scored_by[by] = sum(counts.values())
            tally.update(counts)
    run.scored, run.failed = tally[SCORED], tally[FAILED_STATE]
    return run


def _run_pipeline(todo, results, *, spec, batch_size, actors, address, progress, run, checkpoint_rows,
                  checkpoint_seconds) -> dict[str, Counter]:  # fmt: skip
    with ray_session(address) as ray:
        device, gpus = placement(ray, spec.device)
        available = ray.cluster_resources().get("GPU" if gpus else "CPU", 1)
        run.actors = actors or max(1, int(available))
        per_task = max(1, min(BATCHES_PER_TASK * batch_size, math.ceil(len(todo) / (4 * run.actors))))
        paths = pa.table({
            "path": [path for path, _ in todo],
            "file_size": pa.array([None if s is None else s[0] for _, s in todo], pa.int64()),
            "file_mtime_ns": pa.array([None if s is None else s[1] for _, s in todo], pa.int64()),
        })  # fmt: skip
        blocks = [paths.slice(start, per_task) for start in range(0, len(todo), per_task)]
        started = time.monotonic()  # Ray is up; the actors' start-up (loading the model) counts
        scored = ray.data.from_arrow(blocks).map_batches(
            ArchiveScorer,
            fn_constructor_args=(replace(spec, device=device), batch_size, __version__),
            batch_size=None,  # one block, one call
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=run.actors),
            num_cpus=1,
            num_gpus=gpus,
        )
        try:
            return _collect(scored, results, expected={path for path, _ in todo}, progress=progress, run=run,
                            ray=ray, checkpoint_rows=checkpoint_rows, checkpoint_seconds=checkpoint_seconds)  # fmt: skip
        finally:
            run.seconds = time.monotonic() - started


def _collect(dataset, results, *, expected, progress, run, ray, checkpoint_rows, checkpoint_seconds):
    """Commit each capture's first row (a retried task may deliver one again), a part at a time."""
    written: set[str] = set()
    states: dict[str | None, Counter] = {}  # row states by scored_by
    pending: list[pa.Table] = []
    last_commit = time.monotonic()

    def commit() -> None:
        nonlocal pending, last_commit
        if pending:
            results.add(pa.concat_tables(pending))
        pending, last_commit = [], time.monotonic()

    with progress_bar(len(expected), desc="scoring", unit="img", enabled=progress and len(expected) > 1) as bar:
        try:
            for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                fresh = [i for i, path in enumerate(table["path"].to_pylist()) if path not in written]
                if len(fresh) < table.num_rows:
                    log.info("%d row(s) delivered twice (a retried task): kept once", table.num_rows - len(fresh))
                table = table.take(fresh)
                written.update(table["path"].to_pylist())
                for by, state in zip(table["scored_by"].to_pylist(), table["state"].to_pylist()):
                    states.setdefault(by, Counter())[state] += 1
                run.untrained += table["trained"].to_pylist().count(False)
                pending.append(table)
                if sum(t.num_rows for t in pending) >= checkpoint_rows or time.monotonic() - last_commit >= checkpoint_seconds:
                    commit()
                bar.update(table.num_rows)
        except ray.exceptions.RayError as exc:
            commit()  # what arrived is kept: --resume continues from it
            raise UsageError(f"the Ray job failed; results so far are in {results.path} (--resume continues): "
                             f"{_cause(exc)}") from exc  # fmt: skip
    missing = sorted(expected - written)
    if missing:  # never seen; but a capture without its row would be a silent hole in the output
        log.error("the Ray job returned no result for %d capture(s); they get error rows", len(missing))
        lost = [ScoreResult(path=path, scored_by=None, error=f"{path}: the Ray job returned no result for it").to_dict()
                for path in missing]  # fmt: skip
        states.setdefault(None, Counter())[FAILED_STATE] += len(lost)
        pending.append(records_table(lost, [None] * len(lost)))  # no stat: --resume scores them again
    commit()
    return states


def _stat(path: str) -> Stat:
    try:
        st = os.stat(path)
    except OSError:
        return None  # the actor's read says what is wrong
    return st.st_size, st.st_mtime_ns


def _cause(exc: BaseException) -> str:
    """The original error at the end of the traceback Ray wraps around it."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
