"""Files on disk: where pyfundus keeps what it fetches or derives (never inside the source tree),
safe file names, content hashes, and the commands' PATH arguments expanded into files."""

from __future__ import annotations

import hashlib
import os
import re
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


# What can rewrite a reader's screen or log: C0/C1 controls (newline, carriage return, escape), line and
# paragraph separators, bidirectional overrides, and the lone surrogates that undecodable file-name bytes become.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with its control characters as visible escapes (``\\n``, ``\\x1b``, ``\\u202e``)."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape", "backslashreplace").decode(), text)
