"""Files on disk: where pyfundus keeps what it fetches or derives (never inside the source tree),
safe file names, content hashes, and the commands' PATH arguments expanded into files."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def cache_root() -> Path:
    """The pyfundus cache folder, whether or not it exists yet.

    ``$PYFUNDUS_HOME`` if set, else ``$XDG_CACHE_HOME/pyfundus``, else
    ``~/.cache/pyfundus``.
    """
    explicit = os.environ.get("PYFUNDUS_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "pyfundus"


def cache_dir() -> Path:
    """Return the pyfundus cache folder (:func:`cache_root`), creating it on demand."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def safe_file_stem(name: str) -> str:
    """``name`` with every character but letters, digits and ``-_.`` replaced by ``_``: safe in a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def expand_paths(arguments: list[str], recursive: bool = False) -> list[tuple[str, str | None]]:
    """(path, problem) pairs in argument order; problem is None for a file to score.

    Folders contribute every non-hidden regular file (sorted), so a stray
    non-image shows up in the output as an error rather than vanishing.
    """
    entries: list[tuple[str, str | None]] = []
    for argument in arguments:
        if os.path.isdir(argument):
            entries.extend((path, None) for path in _folder_files(Path(argument), recursive))
        elif os.path.lexists(argument):
            entries.append((argument, None))
        elif glob.has_magic(argument):
            files = [m for m in sorted(glob.glob(argument, recursive=True)) if os.path.isfile(m)]
            entries.extend((path, None) for path in files)
            if not files:
                entries.append((argument, "no files match this pattern"))
        else:
            entries.append((argument, "no such file or directory"))
    return list(dict.fromkeys(entries))


def _folder_files(folder: Path, recursive: bool) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    return found
