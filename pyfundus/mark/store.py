"""The rating app's state: one SQLite file in the dataset's state folder (DATASET/.pyfundus-mark/mark.sqlite3).

What it holds: rater accounts (senior or junior, optionally admin; passwords
as scrypt hashes with a per-user salt), login sessions (only a hash of each
token), the dataset's images (by sha256, with where the file is now), every
rater's current opinion of each image, the admin's adjusted scores, the
reference images with the site's comments, model scores and operator hints,
and an audit trail of every change.

The audit trail and the adjustments are append-only: SQLite triggers refuse
UPDATE and DELETE on them, so neither the page nor a bug can rewrite history.
WAL mode, as the daemon's ledger: the web server's threads and a command line
run beside it (an import while raters work) never block each other for long.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..io import is_probably_image
from ..paths import sha256_file
from ..verdicts import CLASSES
from .aggregate import RATER_LEVELS, Opinion

STATE_DIR_NAME = ".pyfundus-mark"
DB_NAME = "mark.sqlite3"
SCHEMA_VERSION = 1
SESSION_IDLE_SECONDS = 12 * 3600  # a working day; an idle login ends after it
MIN_PASSWORD_LENGTH = 8
# scrypt at n=2**14, r=8, p=1 (the parameters Python's docs and RFC 7914 use for interactive logins): 16 MiB
# and some tens of milliseconds per attempt.
SCRYPT_PARAMETERS = {"n": 2**14, "r": 8, "p": 1}

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS raters (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        level TEXT NOT NULL CHECK (level IN ('senior', 'junior')),
        admin INTEGER NOT NULL DEFAULT 0,
        active INTEGER NOT NULL DEFAULT 1,
        password TEXT,                      -- 'scrypt$n$r$p$salt_hex$hash_hex'; NULL: cannot log in (imported)
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS sessions (
        token_sha256 TEXT PRIMARY KEY,      -- the cookie's token is never stored, only its hash
        rater_id INTEGER NOT NULL REFERENCES raters (id),
        created_at REAL NOT NULL,
        last_seen REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS images (
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,
        path TEXT NOT NULL,                 -- relative to the dataset folder, '/'-separated
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        present INTEGER NOT NULL DEFAULT 1, -- 0: no file in the dataset holds this content any more
        source TEXT NOT NULL,               -- 'folder' or 'ledger'
        added_at REAL NOT NULL,
        model TEXT,                         -- the model behind model_score (a ledger's, or --order uncertain's)
        model_score REAL,
        model_level TEXT,
        model_probabilities TEXT            -- JSON {class: p}
    )""",
    """CREATE TABLE IF NOT EXISTS hints (
        image_id INTEGER NOT NULL REFERENCES images (id),
        source TEXT NOT NULL,               -- e.g. 'operator'
        level TEXT,
        note TEXT,
        at REAL
    )""",
    """CREATE TABLE IF NOT EXISTS opinions (
        rater_id INTEGER NOT NULL REFERENCES raters (id),
        image_id INTEGER NOT NULL REFERENCES images (id),
        score INTEGER NOT NULL CHECK (score BETWEEN 0 AND 100),
        level TEXT NOT NULL CHECK (level IN ('Good', 'Usable', 'Reject')),
        blind INTEGER,                      -- 1: given before the rater saw any other opinion; NULL: unknown (imported)
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (rater_id, image_id)
    )""",
    """CREATE TABLE IF NOT EXISTS reveals (
        rater_id INTEGER NOT NULL REFERENCES raters (id),
        image_id INTEGER NOT NULL REFERENCES images (id),
        at REAL NOT NULL,
        PRIMARY KEY (rater_id, image_id)
    )""",
    """CREATE TABLE IF NOT EXISTS adjustments (
        id INTEGER PRIMARY KEY,
        image_id INTEGER NOT NULL REFERENCES images (id),
        score REAL NOT NULL CHECK (score BETWEEN 0 AND 100),
        level TEXT NOT NULL CHECK (level IN ('Good', 'Usable', 'Reject')),
        reason TEXT NOT NULL,
        rater_id INTEGER NOT NULL REFERENCES raters (id),
        at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS anchors (
        image_id INTEGER PRIMARY KEY REFERENCES images (id),
        score INTEGER NOT NULL CHECK (score BETWEEN 0 AND 100),
        level TEXT NOT NULL CHECK (level IN ('Good', 'Usable', 'Reject')),
        comment TEXT NOT NULL DEFAULT '',
        rater_id INTEGER NOT NULL REFERENCES raters (id),
        at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,                -- a rater's name, or 'cli:<user>' for the command line
        action TEXT NOT NULL,
        image TEXT,                         -- the image's path, when the change concerns one
        detail TEXT NOT NULL                -- JSON: what changed (old and new values)
    )""",
    "CREATE INDEX IF NOT EXISTS opinions_by_image ON opinions (image_id)",
    "CREATE INDEX IF NOT EXISTS adjustments_by_image ON adjustments (image_id, id)",
)
_APPEND_ONLY = ("audit", "adjustments")


class MarkError(ValueError):
    """A request the rating app refuses; the message says why and what to do instead."""


@dataclass(frozen=True)
class Rater:
    id: int
    name: str
    level: str
    admin: bool
    active: bool
    can_log_in: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "level": self.level, "admin": self.admin, "active": self.active,
                "can_log_in": self.can_log_in}  # fmt: skip


@dataclass(frozen=True)
class Image:
    id: int
    sha256: str
    path: str  # relative to the dataset folder
    present: bool
    model: str | None
    model_score: float | None
    model_level: str | None
    model_probabilities: dict[str, float] | None

    def model_view(self) -> dict[str, Any] | None:
        """What the model said, for the view after a rater's commit (None when no model has scored it)."""
        if self.model_score is None:
            return None
        return {"model": self.model, "score": round(self.model_score, 1), "level": self.model_level}


@dataclass
class ScanReport:
    added: int = 0
    moved: int = 0
    gone: int = 0
    duplicates: int = 0
    total: int = 0

    def __str__(self) -> str:
        extra = [f"{n} {what}" for n, what in ((self.added, "new"), (self.moved, "moved or renamed"),
                                               (self.gone, "no longer in the folder"),
                                               (self.duplicates, "duplicate file(s) skipped")) if n]  # fmt: skip
        return f"{self.total} image(s) in the dataset" + (f" ({', '.join(extra)})" if extra else "")


class Store:
    """Thread-safe: each thread has its own connection; writes take SQLite's write lock up front."""

    def __init__(self, dataset: str | Path, *, create: bool = True) -> None:
        self.dataset = Path(dataset).resolve()
        if not self.dataset.is_dir():
            raise MarkError(f"{dataset}: no such dataset folder")
        self.path = self.dataset / STATE_DIR_NAME / DB_NAME
        if not create and not self.path.exists():
            raise MarkError(
                f"{self.dataset} has no rating database ({self.path}); add a rater first: "
                f"pyfundus mark user add NAME --level senior --admin --dataset {dataset}"
            )
        self.path.parent.mkdir(exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._conn().execute("PRAGMA journal_mode=WAL")
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise MarkError(f"{self.path}: schema version {version} is newer than this pyfundus understands")
            for statement in _SCHEMA:
                conn.execute(statement)
            for table in _APPEND_ONLY:
                for event in ("UPDATE", "DELETE"):
                    conn.execute(
                        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{event.lower()} BEFORE {event} ON {table} "
                        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                    )
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def release_thread(self) -> None:
        """Close this thread's connection (the web server runs each request on a thread of its own)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            with self._lock:
                if conn in self._connections:  # close() may have closed it already (a request at shutdown)
                    self._connections.remove(conn)
            conn.close()

    # ---- raters ---------------------------------------------------------------------

    def add_rater(self, name: str, level: str, password: str | None, *, admin: bool = False, actor: str) -> Rater:
        """A new account; ``password`` None makes one that cannot log in (opinions imported from a CSV)."""
        _check_name(name)
        _check_level(level)
        stored = None if password is None else hash_password(password)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM raters WHERE name = ?", (name,)).fetchone():
                raise MarkError(f"a rater named {name!r} already exists (pyfundus mark user edit changes one)")
            conn.execute(
                "INSERT INTO raters (name, level, admin, password, created_at) VALUES (?, ?, ?, ?, ?)",
                (name, level, int(admin), stored, time.time()),
            )
            _audit(conn, actor, "rater.add", None, {"name": name, "level": level, "admin": admin,
                                                     "can_log_in": password is not None})  # fmt: skip
        return self.rater(name)

    def edit_rater(self, name: str, *, actor: str, level: str | None = None, admin: bool | None = None,
                   active: bool | None = None, password: str | None = None) -> Rater:  # fmt: skip
        """Change an account; every change is audited (a level change re-weights the rater's opinions)."""
        rater = self.rater(name)
        changes: dict[str, Any] = {}
        if level is not None and level != rater.level:
            _check_level(level)
            changes["level"] = [rater.level, level]
        if admin is not None and admin != rater.admin:
            changes["admin"] = [rater.admin, admin]
        if active is not None and active != rater.active:
            changes["active"] = [rater.active, active]
        with self._write() as conn:
            for column in ("level", "admin", "active"):
                if column in changes:
                    conn.execute(f"UPDATE raters SET {column} = ? WHERE id = ?", (changes[column][1], rater.id))
            if password is not None:
                conn.execute("UPDATE raters SET password = ? WHERE id = ?", (hash_password(password), rater.id))
                changes["password"] = "changed"
            if "active" in changes or password is not None:
                conn.execute("DELETE FROM sessions WHERE rater_id = ?", (rater.id,))  # log them out everywhere
            if changes:
                _audit(conn, actor, "rater.edit", None, {"name": rater.name, **changes})
        return self.rater(name)

    def rater(self, name: str) -> Rater:
        row = self._conn().execute("SELECT * FROM raters WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise MarkError(f"no rater named {name!r} (pyfundus mark user list shows them)")
        return _rater(row)

    def raters(self) -> list[Rater]:
        return [_rater(row) for row in self._conn().execute("SELECT * FROM raters ORDER BY name")]

    def check_password(self, name: str, password: str) -> Rater | None:
        """The rater, if ``password`` is theirs and the account is active; every attempt is audited."""
        row = self._conn().execute("SELECT * FROM raters WHERE name = ?", (name,)).fetchone()
        ok = bool(row and row["active"] and row["password"] and verify_password(password, row["password"]))
        if row is None:
            verify_password(password, _DUMMY_HASH)  # the same time for a wrong name as for a wrong password
        with self._write() as conn:
            _audit(conn, row["name"] if row else name[:64], "login" if ok else "login.failed", None, {})
        return _rater(row) if ok else None

    # ---- sessions ---------------------------------------------------------------------

    def open_session(self, rater: Rater) -> str:
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._write() as conn:
            conn.execute("DELETE FROM sessions WHERE last_seen < ?", (now - SESSION_IDLE_SECONDS,))
            conn.execute(
                "INSERT INTO sessions (token_sha256, rater_id, created_at, last_seen) VALUES (?, ?, ?, ?)",
                (_token_hash(token), rater.id, now, now),
            )
        return token

    def session_rater(self, token: str) -> Rater | None:
        """The logged-in rater for a cookie's token (None when unknown, expired or the account is disabled)."""
        now = time.time()
        row = self._conn().execute(
            "SELECT r.*, s.last_seen FROM sessions s JOIN raters r ON r.id = s.rater_id WHERE s.token_sha256 = ?",
            (_token_hash(token),),
        ).fetchone()
        if row is None or not row["active"] or row["last_seen"] < now - SESSION_IDLE_SECONDS:
            return None
        if now - row["last_seen"] > 60:  # one write a minute at most per session, not one per request
            with self._write() as conn:
                conn.execute("UPDATE sessions SET last_seen = ? WHERE token_sha256 = ?", (now, _token_hash(token)))
        return _rater(row)

    def close_session(self, token: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM sessions WHERE token_sha256 = ?", (_token_hash(token),))

    # ---- images -----------------------------------------------------------------------

    def image_files(self) -> list[str]:
        """The dataset folder's image files, relative and sorted (hidden folders, like the state folder, skipped)."""
        return sorted(_image_files(self.dataset))

    def scan(self, files: Sequence[str] | None = None, progress: Callable[[int], None] | None = None) -> ScanReport:
        """Register the dataset folder's images (``files`` from :meth:`image_files`; listed here when None).

        A file whose size and modification time are unchanged is not read again;
        a new or changed file is hashed, so a renamed image keeps its opinions.
        ``progress`` is called after each file.
        """
        files = self.image_files() if files is None else files
        report = ScanReport()
        conn = self._conn()
        known = {row["path"]: row for row in conn.execute("SELECT * FROM images WHERE present = 1")}
        seen_ids: set[int] = set()
        for relative in files:
            full = self.dataset / relative
            stat = full.stat()
            row = known.get(relative)
            if row is not None and (row["size"], row["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
                seen_ids.add(row["id"])
            else:
                image_id, outcome = self._register(full, relative, stat, "folder")
                if outcome == "duplicate":
                    report.duplicates += 1
                    continue
                seen_ids.add(image_id)
                if outcome != "unchanged":
                    setattr(report, outcome, getattr(report, outcome) + 1)
            if progress is not None:
                progress(1)
        with self._write() as conn:
            for row in conn.execute("SELECT id, path FROM images WHERE present = 1").fetchall():
                if row["id"] not in seen_ids:
                    conn.execute("UPDATE images SET present = 0 WHERE id = ?", (row["id"],))
                    _audit(conn, cli_actor(), "image.gone", row["path"], {})
                    report.gone += 1
        report.total = len(seen_ids)
        return report

    def register_file(self, full: Path, source: str) -> tuple[int, str]:
        """Register one file inside the dataset folder: its image id and 'added', 'moved', 'unchanged' or 'duplicate'."""
        relative = full.resolve().relative_to(self.dataset).as_posix()
        return self._register(full, relative, full.stat(), source)

    def _register(self, full: Path, relative: str, stat: os.stat_result, source: str) -> tuple[int, str]:
        sha = sha256_file(full)
        with self._write() as conn:
            row = conn.execute("SELECT * FROM images WHERE sha256 = ?", (sha,)).fetchone()
            if row is None:
                cursor = conn.execute(
                    "INSERT INTO images (sha256, path, size, mtime_ns, source, added_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (sha, relative, stat.st_size, stat.st_mtime_ns, source, time.time()),
                )
                _audit(conn, cli_actor(), "image.add", relative, {"sha256": sha, "source": source})
                return cursor.lastrowid, "added"
            if row["present"] and row["path"] != relative and (self.dataset / row["path"]).is_file():
                return row["id"], "duplicate"  # the same picture twice in the folder: rated once
            conn.execute(
                "UPDATE images SET path = ?, size = ?, mtime_ns = ?, present = 1 WHERE id = ?",
                (relative, stat.st_size, stat.st_mtime_ns, row["id"]),
            )
            if row["path"] != relative or not row["present"]:
                _audit(conn, cli_actor(), "image.move", relative, {"from": row["path"], "sha256": sha})
                return row["id"], "moved"
            return row["id"], "unchanged"  # touched, same content

    def images(self) -> list[Image]:
        """Every image whose file is in the dataset folder, references included."""
        return [_image(row) for row in self._conn().execute("SELECT * FROM images WHERE present = 1 ORDER BY path")]

    def image(self, image_id: int) -> Image:
        row = self._conn().execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise MarkError(f"no image {image_id}")
        return _image(row)

    def rating_set(self) -> list[Image]:
        """The images raters are asked to score: present, and not a reference image."""
        rows = self._conn().execute(
            "SELECT * FROM images WHERE present = 1 AND id NOT IN (SELECT image_id FROM anchors) ORDER BY path"
        )
        return [_image(row) for row in rows]

    def set_model_scores(self, model: str, scores: Sequence[tuple[int, float, str, dict[str, float] | None]]) -> None:
        """(image id, score, class, probabilities) from ``model``, for the uncertain-first order and the
        view after a commit."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE images SET model = ?, model_score = ?, model_level = ?, model_probabilities = ? WHERE id = ?",
                [(model, score, level, json.dumps(p) if p else None, image_id) for image_id, score, level, p in scores],
            )

    def add_hint(self, image_id: int, source: str, level: str | None, note: str | None, at: float | None) -> bool:
        """Keep a hint (an operator's label) for the view after commit; False when it is already there."""
        values = (image_id, source, level, note, at)
        with self._write() as conn:
            # IS, not =, so that two hints without a note (NULL) are the same hint: importing twice adds nothing.
            if conn.execute("SELECT 1 FROM hints WHERE image_id = ? AND source = ? AND level IS ? AND note IS ? "
                            "AND at IS ?", values).fetchone():  # fmt: skip
                return False
            conn.execute("INSERT INTO hints (image_id, source, level, note, at) VALUES (?, ?, ?, ?, ?)", values)
        return True

    def hints(self, image_id: int) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT source, level, note, at FROM hints WHERE image_id = ? ORDER BY at",
                                    (image_id,))  # fmt: skip
        return [dict(row) for row in rows]

    # ---- opinions ---------------------------------------------------------------------

    def set_opinion(self, rater: Rater, image_id: int, score: int, level: str, *, actor: str | None = None,
                    imported: bool = False) -> bool:  # fmt: skip
        """Store (or revise) a rater's opinion; False when it is unchanged. Every change is audited.

        The opinion is marked blind when the rater had not yet been shown another
        opinion of this image (one revised after seeing them is not blind);
        ``imported`` opinions came from elsewhere, so whether they were blind is unknown.
        """
        if level not in CLASSES:
            raise MarkError(f"level {level!r} is not one of {', '.join(CLASSES)}")
        _check_score(score)
        image = self.image(image_id)
        now = time.time()
        with self._write() as conn:
            old = conn.execute("SELECT score, level FROM opinions WHERE rater_id = ? AND image_id = ?",
                               (rater.id, image_id)).fetchone()  # fmt: skip
            if old is not None and (old["score"], old["level"]) == (score, level):
                return False
            revealed = conn.execute("SELECT 1 FROM reveals WHERE rater_id = ? AND image_id = ?",
                                    (rater.id, image_id)).fetchone()  # fmt: skip
            blind = None if imported else revealed is None
            conn.execute(
                "INSERT INTO opinions (rater_id, image_id, score, level, blind, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rater_id, image_id) DO UPDATE SET "
                "score = excluded.score, level = excluded.level, blind = excluded.blind, updated_at = excluded.updated_at",
                (rater.id, image_id, score, level, blind, now, now),
            )
            detail = {"rater": rater.name, "score": score, "level": level, "blind": blind}
            if old is not None:
                detail["was"] = {"score": old["score"], "level": old["level"]}
            _audit(conn, actor or rater.name, "opinion.set", image.path, detail)
        return True

    def opinion(self, rater: Rater, image_id: int) -> dict[str, Any] | None:
        row = self._conn().execute(
            "SELECT score, level, blind, updated_at FROM opinions WHERE rater_id = ? AND image_id = ?",
            (rater.id, image_id),
        ).fetchone()
        return dict(row) if row else None

    def opinions_of(self, rater: Rater) -> dict[int, dict[str, Any]]:
        rows = self._conn().execute("SELECT image_id, score, level FROM opinions WHERE rater_id = ?", (rater.id,))
        return {row["image_id"]: {"score": row["score"], "level": row["level"]} for row in rows}

    def others_opinions(self, rater: Rater, image_id: int) -> list[dict[str, Any]]:
        """The other raters' opinions of an image, for a rater who has committed theirs (recorded as revealed)."""
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO reveals (rater_id, image_id, at) VALUES (?, ?, ?)",
                         (rater.id, image_id, time.time()))  # fmt: skip
            rows = conn.execute(
                "SELECT r.name, r.level AS rater_level, o.score, o.level FROM opinions o "
                "JOIN raters r ON r.id = o.rater_id WHERE o.image_id = ? AND o.rater_id != ? ORDER BY r.name",
                (image_id, rater.id),
            ).fetchall()
        return [dict(row) for row in rows]

    def reveal(self, rater: Rater, image_ids: Sequence[int]) -> None:
        """Record that ``rater`` was shown other raters' opinions of these images (the admin's queue)."""
        with self._write() as conn:
            conn.executemany("INSERT OR IGNORE INTO reveals (rater_id, image_id, at) VALUES (?, ?, ?)",
                             [(rater.id, i, time.time()) for i in image_ids])  # fmt: skip

    def all_opinions(self) -> list[tuple[Image, Opinion, dict[str, Any]]]:
        """Every opinion of an image still in the rating set, with its image and (blind, updated_at)."""
        rows = self._conn().execute(
            "SELECT i.*, r.name AS rater, r.level AS rater_level, o.score, o.level, o.blind, o.updated_at "
            "FROM opinions o JOIN raters r ON r.id = o.rater_id JOIN images i ON i.id = o.image_id "
            "WHERE i.present = 1 AND i.id NOT IN (SELECT image_id FROM anchors) ORDER BY i.path, r.name"
        ).fetchall()
        return [
            (_image(row), Opinion(row["path"], row["rater"], row["rater_level"], row["score"], row["level"]),
             {"blind": row["blind"], "updated_at": row["updated_at"]})
            for row in rows
        ]  # fmt: skip

    def progress(self) -> list[dict[str, Any]]:
        """Per rater: how many images of the rating set they have scored."""
        rows = self._conn().execute(
            "SELECT r.name, r.level, r.admin, COUNT(o.image_id) AS scored FROM raters r "
            "LEFT JOIN opinions o ON o.rater_id = r.id AND o.image_id IN "
            "(SELECT id FROM images WHERE present = 1 AND id NOT IN (SELECT image_id FROM anchors)) "
            "GROUP BY r.id ORDER BY r.name"
        )
        return [{**dict(row), "admin": bool(row["admin"])} for row in rows]

    # ---- adjustments (after discussion) --------------------------------------------------------

    def adjust(self, rater: Rater, image_id: int, score: float, level: str, reason: str) -> None:
        if not rater.admin:
            raise MarkError("only an admin can adjust a score")
        if level not in CLASSES:
            raise MarkError(f"level {level!r} is not one of {', '.join(CLASSES)}")
        if not 0 <= score <= 100:
            raise MarkError(f"score {score} is outside 0-100")
        if not reason.strip():
            raise MarkError("say why the score is adjusted (the reason is kept with it)")
        image = self.image(image_id)
        with self._write() as conn:
            conn.execute("INSERT INTO adjustments (image_id, score, level, reason, rater_id, at) VALUES (?, ?, ?, ?, ?, ?)",
                         (image_id, score, level, reason.strip(), rater.id, time.time()))  # fmt: skip
            _audit(conn, rater.name, "adjust", image.path, {"score": score, "level": level, "reason": reason.strip()})

    def adjustments(self) -> dict[int, dict[str, Any]]:
        """The latest adjustment of each image (earlier ones stay in the table and the audit trail)."""
        rows = self._conn().execute(
            "SELECT a.image_id, a.score, a.level, a.reason, a.at, r.name AS by_rater FROM adjustments a "
            "JOIN raters r ON r.id = a.rater_id WHERE a.id IN (SELECT MAX(id) FROM adjustments GROUP BY image_id)"
        )
        return {row["image_id"]: dict(row) for row in rows}

    # ---- reference images ---------------------------------------------------------------------

    def set_anchor(self, rater: Rater, image_id: int, score: int, level: str, comment: str) -> None:
        """Make an image a reference with the site's score, class and comment (it leaves the rating set)."""
        if not rater.admin:
            raise MarkError("only an admin can edit the reference images")
        if level not in CLASSES:
            raise MarkError(f"level {level!r} is not one of {', '.join(CLASSES)}")
        _check_score(score)
        image = self.image(image_id)
        with self._write() as conn:
            old = conn.execute("SELECT score, level, comment FROM anchors WHERE image_id = ?", (image_id,)).fetchone()
            conn.execute(
                "INSERT INTO anchors (image_id, score, level, comment, rater_id, at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (image_id) DO UPDATE SET score = excluded.score, level = excluded.level, "
                "comment = excluded.comment, rater_id = excluded.rater_id, at = excluded.at",
                (image_id, score, level, comment.strip(), rater.id, time.time()),
            )
            detail = {"score": score, "level": level, "comment": comment.strip()}
            if old is not None:
                detail["was"] = dict(old)
            _audit(conn, rater.name, "reference.set", image.path, detail)

    def remove_anchor(self, rater: Rater, image_id: int) -> None:
        if not rater.admin:
            raise MarkError("only an admin can edit the reference images")
        image = self.image(image_id)
        with self._write() as conn:
            old = conn.execute("SELECT score, level, comment FROM anchors WHERE image_id = ?", (image_id,)).fetchone()
            if old is None:
                raise MarkError(f"{image.path} is not a reference image")
            conn.execute("DELETE FROM anchors WHERE image_id = ?", (image_id,))
            _audit(conn, rater.name, "reference.remove", image.path, {"was": dict(old)})

    def anchors(self) -> list[dict[str, Any]]:
        """Reference images, best score first."""
        rows = self._conn().execute(
            "SELECT a.image_id AS id, i.path AS name, a.score, a.level, a.comment FROM anchors a "
            "JOIN images i ON i.id = a.image_id WHERE i.present = 1 ORDER BY a.score DESC, i.path"
        )
        return [dict(row) for row in rows]

    # ---- audit -------------------------------------------------------------------

    def audit_trail(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        query = "SELECT * FROM audit ORDER BY id DESC" + (" LIMIT ?" if limit else "")
        rows = self._conn().execute(query, (limit,) if limit else ())
        return [{**dict(row), "detail": json.loads(row["detail"])} for row in rows]

    def note(self, actor: str, action: str, image: str | None, detail: dict[str, Any]) -> None:
        """An audit row for a change made outside this class (an import's summary)."""
        with self._write() as conn:
            _audit(conn, actor, action, image, detail)

    # ---- plumbing ---------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


# ---- passwords ----------------------------------------------------------------------


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise MarkError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    salt = secrets.token_bytes(16)
    p = SCRYPT_PARAMETERS
    digest = hashlib.scrypt(password.encode(), salt=salt, **p, dklen=32)
    return f"scrypt${p['n']}${p['r']}${p['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    kind, n, r, p, salt, digest = stored.split("$")
    if kind != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                               dklen=len(digest) // 2)  # fmt: skip
    return hmac.compare_digest(candidate.hex(), digest)


_DUMMY_HASH = "scrypt${n}${r}${p}${salt}${digest}".format(**SCRYPT_PARAMETERS, salt="00" * 16, digest="00" * 32)


# ---- helpers ----------------------------------------------------------------------


def _audit(conn: sqlite3.Connection, actor: str, action: str, image: str | None, detail: dict[str, Any]) -> None:
    conn.execute("INSERT INTO audit (at, actor, action, image, detail) VALUES (?, ?, ?, ?, ?)",
                 (time.time(), actor, action, image, json.dumps(detail, sort_keys=True)))  # fmt: skip


def cli_actor() -> str:
    """Who a command-line change is audited as: the operating-system user."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_name(name: str) -> None:
    if not (0 < len(name) <= 64 and all(c.isalnum() or c in "._-" for c in name)):
        raise MarkError(f"rater name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")


def _check_level(level: str) -> None:
    if level not in RATER_LEVELS:
        raise MarkError(f"rater level {level!r} is not senior or junior")


def _check_score(score: Any) -> None:
    if type(score) is not int or not 0 <= score <= 100:  # not bool, not 72.5: raters score whole points
        raise MarkError(f"score {score!r} is not a whole number 0-100")


def _rater(row: sqlite3.Row) -> Rater:
    return Rater(row["id"], row["name"], row["level"], bool(row["admin"]), bool(row["active"]),
                 row["password"] is not None)  # fmt: skip


def _image(row: sqlite3.Row) -> Image:
    probabilities = json.loads(row["model_probabilities"]) if row["model_probabilities"] else None
    return Image(row["id"], row["sha256"], row["path"], bool(row["present"]), row["model"], row["model_score"],
                 row["model_level"], probabilities)  # fmt: skip


def _image_files(dataset: Path) -> Iterator[str]:
    for root, dirs, files in os.walk(dataset):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            full = Path(root, name)
            if not name.startswith(".") and full.is_file() and is_probably_image(full):
                yield full.relative_to(dataset).as_posix()
