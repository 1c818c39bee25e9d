"""Which paths the daemon looks at: inside the watched folder, not hidden, not a temporary file.

All paths leaving this module are real paths (symlinks resolved) under the
watched folder's real path; a symlink leading out of the folder is never
followed, so nothing outside the folder is ever read.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from typing import Iterator, Sequence

log = logging.getLogger(__name__)

# Names camera software and copy tools give files they are still writing (renamed when done).
DEFAULT_IGNORES: tuple[str, ...] = (
    "*.tmp", "*.temp", "*.part", "*.partial", "*.crdownload", "*.download", "*.filepart", "*.swp", "*~", "~$*",
    "Thumbs.db", "desktop.ini",
)  # fmt: skip


class PathFilter:
    def __init__(
        self,
        root: str,
        *,
        recursive: bool,
        ignore: Sequence[str] = (),
        excluded: Sequence[str] = (),
    ) -> None:
        self.root = os.path.realpath(root)
        self.recursive = recursive
        self.globs = tuple(glob.lower() for glob in (*DEFAULT_IGNORES, *ignore))
        # State or sidecar folders that were allowed inside the watched folder: never our input.
        self.excluded = tuple(os.path.realpath(path) for path in excluded)

    def relative(self, path: str) -> str | None:
        """``path`` relative to the folder, or None when it is the folder itself or outside it."""
        relative = os.path.relpath(path, self.root)
        if relative == "." or relative == ".." or relative.startswith(".." + os.sep):
            return None
        return relative

    def accepts(self, path: str) -> bool:
        """Name-level checks, no file-system access: inside, deep enough, not hidden or ignored."""
        relative = self.relative(path)
        if relative is None:
            return False
        parts = relative.split(os.sep)
        if not self.recursive and len(parts) > 1:
            return False
        if any(part.startswith(".") for part in parts):
            return False
        name, lowered = parts[-1].lower(), relative.lower()
        if any(fnmatch.fnmatchcase(name, glob) or fnmatch.fnmatchcase(lowered, glob) for glob in self.globs):
            return False
        return not any(path == ex or path.startswith(ex + os.sep) for ex in self.excluded)

    def resolve(self, path: str) -> str | None:
        """The real path of an accepted file, or None when it is filtered or leads out of the folder."""
        if not self.accepts(path):
            return None
        real = os.path.realpath(path)
        if real != path and not self.accepts(real):
            log.debug("not following a link out of the watched folder (or to an ignored name)")
            return None
        return real

    def walk(self) -> Iterator[str]:
        """Every accepted file path under the folder (symlinked directories are not entered)."""
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as entries:
                    found = list(entries)
            except OSError as exc:
                log.warning("cannot list a folder during the scan: %s", exc.strerror or exc)
                continue
            for entry in found:
                if not self.accepts(entry.path):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if self.recursive:
                            stack.append(entry.path)
                    elif entry.is_file():
                        yield entry.path
                except OSError:
                    continue  # vanished between listing and looking: nothing to do
