"""Where pyfundus keeps files it fetches or derives (never inside the source tree)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Return the pyfundus cache folder, creating it on demand.

    ``$PYFUNDUS_HOME`` if set, else ``$XDG_CACHE_HOME/pyfundus``, else
    ``~/.cache/pyfundus``.
    """
    explicit = os.environ.get("PYFUNDUS_HOME")
    if explicit:
        root = Path(explicit).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
        root = base / "pyfundus"
    root.mkdir(parents=True, exist_ok=True)
    return root
