"""What the command lines read: files, folders and glob patterns, turned into the captures to score.

A folder (or a glob pattern) gives every regular file it holds, sorted, except
hidden files and files that sit beside captures but never are one (a camera's
metadata export, a manifest, an OS's thumbnail cache: ``NON_CAPTURE_NAMES``)
unless their content is an image after all. Those are skipped and counted, not
reported one by one. A file named on the command line is always read: naming it
asks for its verdict. An argument that gives nothing to score (no such path, a
pattern that matches nothing, a folder without captures) is an entry of its own
with the reason, so the output says what was missing.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass, field

from .io import SUPPORTED_EXTENSIONS, is_probably_image

# Lower-case globs of file names that are never a capture. Image extensions are never among them,
# and a listed name whose content is an image is scored all the same.
NON_CAPTURE_NAMES: tuple[str, ...] = (
    "*.json", "*.txt", "*.csv", "*.tsv", "*.xml", "*.ini", "*.log", "*.md", "*.htm", "*.html", "*.pdf",
    "*.sha256", "*.md5", "thumbs.db", "desktop.ini",
)  # fmt: skip


@dataclass
class Inputs:
    """``entries``: (path, problem) in argument order, one per file to score (problem None) and one per
    argument that gave nothing to score (the problem says why). ``skipped``: files left out quietly."""

    entries: list[tuple[str, str | None]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return [path for path, problem in self.entries if problem is None]

    @property
    def nothing_found(self) -> list[tuple[str, str]]:
        """The arguments that gave nothing to score, with the reason."""
        return [(path, problem) for path, problem in self.entries if problem is not None]


def collect_inputs(arguments: list[str], recursive: bool = False) -> Inputs:
    """Expand files, folders (``recursive``: with their sub-folders) and glob patterns."""
    inputs = Inputs()
    for argument in arguments:
        if os.path.isdir(argument):
            files, skipped = _captures_among(_folder_files(argument, recursive))
            inputs.skipped += skipped
            inputs.entries += [(path, None) for path in files] or [(argument, _empty_reason("folder", skipped))]
        elif os.path.lexists(argument):
            inputs.entries.append((argument, None))
        elif glob.has_magic(argument):
            matches = [m for m in sorted(glob.glob(argument, recursive=True)) if os.path.isfile(m)]
            files, skipped = _captures_among(matches)
            inputs.skipped += skipped
            inputs.entries += [(path, None) for path in files] or [(argument, _empty_reason("pattern", skipped))]
        else:
            inputs.entries.append((argument, "no such file or directory"))
    inputs.entries = list(dict.fromkeys(inputs.entries))
    inputs.skipped = list(dict.fromkeys(inputs.skipped))
    return inputs


def is_non_capture(path: str) -> bool:
    """A hidden file, or a file named like one that is never a capture and whose content is no image."""
    name = os.path.basename(path)
    if name.startswith("."):
        return True
    lowered = name.lower()
    if lowered.endswith(SUPPORTED_EXTENSIONS) or not any(fnmatch.fnmatchcase(lowered, g) for g in NON_CAPTURE_NAMES):
        return False
    return not is_probably_image(path)


def _captures_among(paths: list[str]) -> tuple[list[str], list[str]]:
    captures, skipped = [], []
    for path in paths:
        (skipped if is_non_capture(path) else captures).append(path)
    return captures, skipped


def _folder_files(folder: str, recursive: bool) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found.extend(os.path.join(root, f) for f in sorted(files))
    return found


def _empty_reason(kind: str, skipped: list[str]) -> str:
    if kind == "pattern" and not skipped:
        return "no files match this pattern"
    where = "in this folder" if kind == "folder" else "match this pattern"
    if not skipped:
        return f"no files {where}"
    names = ", ".join(os.path.basename(p) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    return f"no captures {where}: {len(skipped)} other file(s) skipped ({names})"
