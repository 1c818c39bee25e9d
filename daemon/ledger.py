"""The ledger: one SQLite row per capture, keyed by content hash, plus every path it was seen at.

Why SQLite in WAL mode: a crash or SIGKILL never loses a committed row,
readers (``pyfundus results export``, the operator page) never block
the daemon, and transactions stay short. ``synchronous=NORMAL`` can lose the
last commits on power loss only, which the pending-row protocol tolerates.

The pending-row protocol: a capture is inserted as ``pending`` when it is
queued, before it is scored, and updated to ``scored`` or ``failed`` after.
At start-up, rows left pending are scored again; ``attempts`` counts scoring
starts, so the scorer can tell a capture it was scoring when the daemon died
(scored again alone) and one that keeps killing it (failed, and said so, instead
of crashing the daemon forever).

A second path with the same content is a sighting marked ``duplicate``: it
resolves to the same verdict and is never scored again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import LedgerError
from .records import FileStat, Verdict, WorkItem

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS captures (
        sha256 TEXT PRIMARY KEY,
        path TEXT NOT NULL,                 -- where the content was first seen
        first_seen REAL NOT NULL,           -- unix time
        size INTEGER,
        state TEXT NOT NULL CHECK (state IN ('pending', 'scored', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        score REAL,
        quality_class TEXT,
        probabilities TEXT,                 -- JSON
        reason TEXT,
        causes TEXT,                        -- JSON
        eye TEXT,
        patient_id TEXT,
        study_uid TEXT,
        sop_instance_uid TEXT,
        same_instance_as TEXT,              -- an earlier capture with this SOPInstanceUID
        model TEXT,
        trained INTEGER,
        backend TEXT,
        timing_ms TEXT,                     -- JSON
        warnings TEXT,                      -- JSON
        error TEXT,
        scored_at REAL,
        reject_copy TEXT,                   -- where --reject-action copied or moved it
        camera TEXT,                        -- maker and model, from DICOM or EXIF
        model_sha256 TEXT,                  -- the weights that scored it
        feedback TEXT,                      -- the operator's latest word: fine or retake (history in labels)
        feedback_at REAL,
        scored_by TEXT                      -- local, or the scoring server's URL (watch --remote)
    )""",
    """CREATE TABLE IF NOT EXISTS labels (
        sha256 TEXT NOT NULL REFERENCES captures (sha256) ON DELETE CASCADE,
        label TEXT NOT NULL CHECK (label IN ('fine', 'retake')),
        at REAL NOT NULL                    -- unix time of the click; every click is kept
    )""",
    "CREATE INDEX IF NOT EXISTS labels_by_capture ON labels (sha256)",
    """CREATE TABLE IF NOT EXISTS sightings (
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL REFERENCES captures (sha256) ON DELETE CASCADE,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        duplicate INTEGER NOT NULL,         -- 1: another path had this content first
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        PRIMARY KEY (path, sha256)
    )""",
    "CREATE INDEX IF NOT EXISTS sightings_by_capture ON sightings (sha256)",
    "CREATE INDEX IF NOT EXISTS captures_by_state ON captures (state)",
    "CREATE INDEX IF NOT EXISTS captures_by_instance ON captures (sop_instance_uid) WHERE sop_instance_uid IS NOT NULL",
)

_VERDICT_COLUMNS = (
    "state", "score", "quality_class", "probabilities", "reason", "causes", "camera", "eye", "patient_id",
    "study_uid", "sop_instance_uid", "model", "model_sha256", "trained", "backend", "scored_by", "timing_ms",
    "warnings", "error", "scored_at",
)  # fmt: skip
# Columns added after the first release: a ledger from before gets them on its first read-write open.
_ADDED_COLUMNS = {"reject_copy": "TEXT", "camera": "TEXT", "model_sha256": "TEXT", "feedback": "TEXT",
                  "feedback_at": "REAL", "scored_by": "TEXT"}  # fmt: skip
_JSON_COLUMNS = ("probabilities", "causes", "timing_ms", "warnings")

# Claim outcomes.
NEW, KNOWN, DUPLICATE = "new", "known", "duplicate"


class Ledger:
    """Thread-safe: each thread gets its own connection; writers serialise on SQLite's write lock."""

    def __init__(self, path: Path, *, readonly: bool = False, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        if readonly:
            with self._reading("open"):
                self._conn().execute("SELECT 1 FROM captures LIMIT 1")
            return
        with self._reading("open"):
            mode = self._conn().execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("the ledger could not use WAL mode (%s): is the state directory on a network share?", mode)
        with self._transaction("create the schema") as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version} is newer than this pyfundus understands")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            columns = {row["name"] for row in conn.execute("PRAGMA table_info(captures)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in columns:
                    conn.execute(f"ALTER TABLE captures ADD COLUMN {column} {kind}")

    # ---- intake -------------------------------------------------------------

    def knows(self, path: str, stat: FileStat) -> bool:
        """Whether this path was already hashed with exactly this size and mtime."""
        with self._reading("look up a file") as conn:
            row = conn.execute(
                "SELECT 1 FROM sightings WHERE path = ? AND size = ? AND mtime_ns = ? LIMIT 1",
                (path, stat.size, stat.mtime_ns),
            ).fetchone()
        return row is not None

    def known_files(self) -> dict[str, FileStat]:
        """Each path's most recent sighting: the reconcile scan skips files that still match it."""
        with self._reading("list known files") as conn:
            rows = conn.execute("SELECT path, size, mtime_ns FROM sightings ORDER BY last_seen").fetchall()
        return {row["path"]: FileStat(row["size"], row["mtime_ns"]) for row in rows}

    def claim(self, sha256: str, path: str, stat: FileStat, now: float) -> tuple[str, Verdict | None]:
        """Record a sighting. NEW: a pending capture was inserted, queue it. KNOWN: this path
        already had this content. DUPLICATE: a second name; the capture's verdict so far is returned."""
        with self._transaction("claim a capture") as conn:
            capture = conn.execute("SELECT * FROM captures WHERE sha256 = ?", (sha256,)).fetchone()
            if capture is None:
                conn.execute(
                    "INSERT INTO captures (sha256, path, first_seen, size, state) VALUES (?, ?, ?, ?, 'pending')",
                    (sha256, path, now, stat.size),
                )
                _insert_sighting(conn, path, sha256, now, stat, duplicate=False)
                return NEW, None
            updated = conn.execute(
                "UPDATE sightings SET last_seen = ?, size = ?, mtime_ns = ? WHERE path = ? AND sha256 = ?",
                (now, stat.size, stat.mtime_ns, path, sha256),
            )
            if updated.rowcount:
                return KNOWN, None
            _insert_sighting(conn, path, sha256, now, stat, duplicate=True)
            return DUPLICATE, _verdict(capture, path, duplicate_of=capture["path"])

    # ---- scoring ------------------------------------------------------------

    def begin_attempts(self, shas: Sequence[str]) -> None:
        if not shas:
            return
        with self._transaction("count a scoring attempt") as conn:
            conn.executemany("UPDATE captures SET attempts = attempts + 1 WHERE sha256 = ?", [(s,) for s in shas])

    def record(self, done: Sequence[tuple[WorkItem, Verdict]]) -> list[Verdict]:
        """Store verdicts in one transaction; returns the verdict of every path each capture has.

        An upsert, so it also stores verdicts of captures whose pending row could
        not be written (the ledger was failing when they were queued).
        """
        placeholders = ", ".join("?" for _ in _VERDICT_COLUMNS)
        updates = ", ".join(f"{column} = excluded.{column}" for column in _VERDICT_COLUMNS)
        upsert = (
            f"INSERT INTO captures (sha256, path, first_seen, size, {', '.join(_VERDICT_COLUMNS)}) "
            f"VALUES (?, ?, ?, ?, {placeholders}) ON CONFLICT (sha256) DO UPDATE SET {updates}"
        )
        out: list[Verdict] = []
        with self._transaction("store verdicts") as conn:
            for item, verdict in done:
                conn.execute(
                    upsert, (item.sha256, item.path, verdict.first_seen, item.stat.size, *_row_values(verdict))
                )
                others = conn.execute(
                    "SELECT 1 FROM sightings WHERE sha256 = ? AND path != ? LIMIT 1", (item.sha256, item.path)
                ).fetchone()
                conn.execute(
                    "INSERT INTO sightings (path, sha256, first_seen, last_seen, duplicate, size, mtime_ns) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path, sha256) DO NOTHING",
                    (item.path, item.sha256, verdict.scored_at, verdict.scored_at, others is not None,
                     item.stat.size, item.stat.mtime_ns),
                )  # fmt: skip
                if verdict.sop_instance_uid:
                    _link_same_instance(conn, item.sha256, verdict.sop_instance_uid)
                out.extend(_verdicts_of(conn, item.sha256))
        return out

    def note_reject_copy(self, sha256: str, path: str | None) -> bool:
        """Record where a rejected capture was copied or moved (None: nowhere after all).

        False when the capture has no committed verdict: a file is never moved on a verdict the ledger lacks.
        """
        with self._transaction("record a reject copy") as conn:
            updated = conn.execute(
                "UPDATE captures SET reject_copy = ? WHERE sha256 = ? AND state != 'pending'", (path, sha256)
            )
        return updated.rowcount == 1

    def release(self, item: WorkItem) -> WorkItem | None:
        """Drop a sighting whose file changed after it was hashed (that content is gone from there).

        Returns another path with the same content to score instead, or None
        (then the pending capture is deleted: nobody can see that content now).
        """
        with self._transaction("release a changed file") as conn:
            conn.execute("DELETE FROM sightings WHERE sha256 = ? AND path = ?", (item.sha256, item.path))
            other = conn.execute(
                "SELECT path, size, mtime_ns FROM sightings WHERE sha256 = ? ORDER BY first_seen LIMIT 1",
                (item.sha256,),
            ).fetchone()
            if other is None:
                conn.execute("DELETE FROM captures WHERE sha256 = ? AND state = 'pending'", (item.sha256,))
                return None
            conn.execute("UPDATE captures SET path = ? WHERE sha256 = ?", (other["path"], item.sha256))
            conn.execute(
                "UPDATE sightings SET duplicate = 0 WHERE sha256 = ? AND path = ?", (item.sha256, other["path"])
            )
        stat = FileStat(other["size"], other["mtime_ns"])
        return WorkItem(item.sha256, other["path"], stat, detected_at=item.detected_at)

    # ---- start-up -----------------------------------------------------------

    def pending(self) -> list[WorkItem]:
        """Captures left pending by the last run, oldest first; ``interrupted``: their scoring attempts so far."""
        with self._reading("list pending captures") as conn:
            rows = conn.execute(
                "SELECT c.sha256, c.path, c.attempts, s.size, s.mtime_ns FROM captures c "
                "JOIN sightings s ON s.sha256 = c.sha256 AND s.path = c.path "
                "WHERE c.state = 'pending' ORDER BY c.first_seen"
            ).fetchall()
        return [
            WorkItem(r["sha256"], r["path"], FileStat(r["size"], r["mtime_ns"]), detected_at=0.0,
                     interrupted=r["attempts"])  # fmt: skip
            for r in rows
        ]

    # ---- reading ------------------------------------------------------------

    def add_feedback(self, sha256: str, label: str, now: float) -> Verdict | None:
        """Record the operator's word on a capture's verdict ("fine" or "retake"); every click is kept in
        ``labels``, the latest is the capture's. None when the capture has no verdict to speak of."""
        with self._transaction("record feedback") as conn:
            updated = conn.execute(
                "UPDATE captures SET feedback = ?, feedback_at = ? WHERE sha256 = ? AND state != 'pending'",
                (label, now, sha256),
            )
            if not updated.rowcount:
                return None
            conn.execute("INSERT INTO labels (sha256, label, at) VALUES (?, ?, ?)", (sha256, label, now))
            row = conn.execute("SELECT * FROM captures WHERE sha256 = ?", (sha256,)).fetchone()
        return _verdict(row, row["path"])

    def labels(self) -> list[tuple[str, str, float]]:
        """Every feedback click, oldest first: (sha256, "fine" or "retake", unix time)."""
        with self._reading("read labels") as conn:
            return [tuple(row) for row in conn.execute("SELECT sha256, label, at FROM labels ORDER BY at, rowid")]

    def captures(self) -> list[tuple[Verdict, list[str]]]:
        """Every capture's verdict (under its first path) and all the paths it was seen at."""
        with self._reading("read captures") as conn:
            rows = conn.execute("SELECT * FROM captures ORDER BY first_seen").fetchall()
            paths: dict[str, list[str]] = {}
            for sighting in conn.execute("SELECT sha256, path FROM sightings ORDER BY first_seen"):
                paths.setdefault(sighting["sha256"], []).append(sighting["path"])
        return [(_verdict(row, row["path"]), paths.get(row["sha256"], [row["path"]])) for row in rows]

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # ---- plumbing -----------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE). check_same_thread=False
            # only so close() may run on another thread; each connection is used by the thread that opened it.
            options = {"timeout": self.busy_timeout, "isolation_level": None, "check_same_thread": False}
            if self.readonly:
                conn = sqlite3.connect(f"file:{urllib.parse.quote(str(self.path))}?mode=ro", uri=True, **options)
            else:
                conn = sqlite3.connect(self.path, **options)
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front: a read-then-write transaction can
        # then never fail halfway with SQLITE_BUSY.
        conn = None
        try:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise LedgerError(f"ledger {self.path}: could not {what} ({exc})") from exc
        except BaseException:
            _rollback(conn)
            raise

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        try:
            yield self._conn()
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: could not {what} ({exc})") from exc


def _rollback(conn: sqlite3.Connection | None) -> None:
    if conn is not None and conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _insert_sighting(
    conn: sqlite3.Connection, path: str, sha256: str, now: float, stat: FileStat, *, duplicate: bool
) -> None:
    conn.execute(
        "INSERT INTO sightings (path, sha256, first_seen, last_seen, duplicate, size, mtime_ns) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (path, sha256, now, now, duplicate, stat.size, stat.mtime_ns),
    )


def _link_same_instance(conn: sqlite3.Connection, sha256: str, sop_instance_uid: str) -> None:
    """The same DICOM instance re-sent with different bytes (re-export, other transfer syntax)."""
    earlier = conn.execute(
        "SELECT sha256 FROM captures WHERE sop_instance_uid = ? AND sha256 != ? ORDER BY first_seen LIMIT 1",
        (sop_instance_uid, sha256),
    ).fetchone()
    if earlier is not None:
        conn.execute("UPDATE captures SET same_instance_as = ? WHERE sha256 = ?", (earlier["sha256"], sha256))
        log.warning("a DICOM instance arrived again with different bytes; its verdicts are linked in the ledger")


def _verdicts_of(conn: sqlite3.Connection, sha256: str) -> list[Verdict]:
    capture = conn.execute("SELECT * FROM captures WHERE sha256 = ?", (sha256,)).fetchone()
    if capture is None:
        return []
    sightings = conn.execute(
        "SELECT path, duplicate FROM sightings WHERE sha256 = ? ORDER BY duplicate, first_seen", (sha256,)
    ).fetchall()
    return [_verdict(capture, s["path"], duplicate_of=capture["path"] if s["duplicate"] else None) for s in sightings]


def _row_values(verdict: Verdict) -> list[Any]:
    values = []
    for column in _VERDICT_COLUMNS:
        value = getattr(verdict, column)
        values.append(json.dumps(value) if column in _JSON_COLUMNS and value is not None else value)
    return values


def _verdict(row: sqlite3.Row, path: str, duplicate_of: str | None = None) -> Verdict:
    values = {column: _optional(row, column) for column in _VERDICT_COLUMNS}
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column]) if values[column] is not None else None
    values["timing_ms"] = values["timing_ms"] or {}
    values["warnings"] = values["warnings"] or []
    values["trained"] = None if values["trained"] is None else bool(values["trained"])
    return Verdict(
        path=path,
        sha256=row["sha256"],
        first_seen=row["first_seen"],
        duplicate_of=duplicate_of,
        same_instance_as=row["same_instance_as"],
        reject_copy=row["reject_copy"],
        feedback=_optional(row, "feedback"),
        feedback_at=_optional(row, "feedback_at"),
        **values,
    )


def _optional(row: sqlite3.Row, column: str) -> Any:
    """A column a ledger from before it existed lacks (read-only readers cannot add it): None there."""
    return row[column] if column in row.keys() else None
