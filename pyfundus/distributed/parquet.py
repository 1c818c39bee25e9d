"""The verdict record as Parquet: one column per field of :data:`pyfundus.verdicts.RECORD_FIELDS`.

Nested fields keep their structure: ``probabilities`` is a struct (Good, Usable, Reject), ``causes`` and
``timing_ms`` are maps of string to double, ``warnings`` and ``other_paths`` lists of strings; ``trained``
is a boolean, ``score`` a double, every other field a string (times in ISO 8601, as in JSON).

An output is a folder of parts (``part-00000.parquet``, ...), each written to a temporary name and renamed
whole, so a run killed at any moment leaves only complete parts (and perhaps a ``.tmp`` file, removed on
resume). Pandas, pyarrow, DuckDB and Ray read such a folder as one table. Each part also records, in its
file metadata, the size and mtime of every row's file when it was listed: what ``--resume`` compares (a row
without them, such as a path that did not exist, is looked at again).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..verdicts import CLASSES, RECORD_FIELDS

# (size, mtime_ns) of a file when it was listed; None when it could not be looked at.
Stat = tuple[int, int] | None

_STRINGS = pa.list_(pa.string())
_TYPES = {
    "score": pa.float64(),
    "probabilities": pa.struct([(name, pa.float64()) for name in CLASSES]),
    "causes": pa.map_(pa.string(), pa.float64()),
    "trained": pa.bool_(),
    "timing_ms": pa.map_(pa.string(), pa.float64()),
    "warnings": _STRINGS,
    "other_paths": _STRINGS,
}
SCHEMA = pa.schema([(name, _TYPES.get(name, pa.string())) for name in RECORD_FIELDS])
_MAPS = [name for name, kind in _TYPES.items() if isinstance(kind, pa.MapType)]

# Columns that travel with the records through the pipeline and end up in each part's metadata.
STAT_COLUMNS = ("file_size", "file_mtime_ns")
_STATS_KEY = b"pyfundus.file_stats"
_PART = re.compile(r"part-(\d{5,})\.parquet")


def records_table(records: Sequence[dict[str, Any]], stats: Sequence[Stat]) -> pa.Table:
    """Records (``ScoreResult.to_dict()``) and their files' stats as one Arrow table."""
    table = pa.Table.from_pylist(list(records), schema=SCHEMA)
    sizes = pa.array([None if s is None else s[0] for s in stats], pa.int64())
    mtimes = pa.array([None if s is None else s[1] for s in stats], pa.int64())
    return table.append_column(STAT_COLUMNS[0], sizes).append_column(STAT_COLUMNS[1], mtimes)


def table_records(table: pa.Table) -> list[dict[str, Any]]:
    """The records of a table read back, as ``pyfundus score --json`` prints them (maps as dicts)."""
    records = table.select(list(RECORD_FIELDS)).to_pylist()
    for record in records:
        for name in _MAPS:
            if record[name] is not None:
                record[name] = dict(record[name])
    return records


def read_records(output: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of an output folder (its complete parts), in the order they were written."""
    return [record for part in ResultsFolder.parts_of(Path(output)) for record in table_records(pq.read_table(part))]


class ResultsFolder:
    """The output folder of an archive run: complete parts only, each written whole."""

    def __init__(self, path: str | os.PathLike[str], *, resume: bool) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"{self.path} exists and is not an output folder of Parquet parts")
        if self.path.exists() and not resume and any(self.path.iterdir()):
            raise FileExistsError(f"{self.path} already holds results: pass --resume to continue that run, "
                                  "or choose another --output")  # fmt: skip
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in self.path.glob("*.tmp"):  # a part a killed run was writing: never committed
            leftover.unlink()
        parts = self.parts_of(self.path)
        self._next = int(_PART.fullmatch(parts[-1].name).group(1)) + 1 if parts else 0

    @staticmethod
    def parts_of(path: Path) -> list[Path]:
        numbered = [(int(match.group(1)), p) for p in path.iterdir() if (match := _PART.fullmatch(p.name))]
        return [p for _, p in sorted(numbered)]

    def index(self) -> dict[str, tuple[Stat, str]]:
        """Each path already in the output: the stat its file had when listed, and the row's state."""
        done: dict[str, tuple[Stat, str]] = {}
        for part in self.parts_of(self.path):
            table = pq.read_table(part, columns=["path", "state"])
            for path, state, stat in zip(table["path"].to_pylist(), table["state"].to_pylist(), _stats_of(part)):
                done[path] = (stat, state)
        return done

    def drop(self, paths: set[str]) -> int:
        """Remove the rows of these paths (their files changed since they were scored); returns how many."""
        dropped = 0
        for part in self.parts_of(self.path) if paths else []:
            table = pq.read_table(part)
            keep = [i for i, path in enumerate(table["path"].to_pylist()) if path not in paths]
            if len(keep) == table.num_rows:
                continue
            stats = _stats_of(part)
            self._write(table.take(keep), [stats[i] for i in keep], part)
            dropped += table.num_rows - len(keep)
        return dropped

    def add(self, table: pa.Table) -> Path:
        """Commit a table from :func:`records_table` as the next part."""
        stats = list(zip(*(table[name].to_pylist() for name in STAT_COLUMNS)))
        part = self.path / f"part-{self._next:05d}.parquet"
        self._write(table.drop_columns(list(STAT_COLUMNS)), [None if s[0] is None else s for s in stats], part)
        self._next += 1
        return part

    def _write(self, table: pa.Table, stats: Iterable[Stat], part: Path) -> None:
        metadata = {_STATS_KEY: json.dumps([None if s is None else list(s) for s in stats]).encode()}
        temporary = part.with_name(part.name + ".tmp")
        pq.write_table(table.replace_schema_metadata(metadata), temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())  # the rename below must never publish a part whose bytes are not on disk
        os.replace(temporary, part)


def _stats_of(part: Path) -> list[Stat]:
    metadata = pq.read_schema(part).metadata or {}
    if _STATS_KEY not in metadata:  # a part rewritten by another tool: its files are looked at again
        return [None] * pq.read_metadata(part).num_rows
    return [None if s is None else (s[0], s[1]) for s in json.loads(metadata[_STATS_KEY])]
