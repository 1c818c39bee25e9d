"""Errors and exit statuses every command line of pyfundus shares (``pyfundus`` and ``pyfundusd``).

The statuses follow the tools admins script around (ls, rsync): 0 means all is
well, and each kind of trouble has its own number, so a nightly job can tell
"a few captures were unreadable" from "the share was not mounted".
"""

from __future__ import annotations

EXIT_OK = 0  # every input was scored (or the command did what it was asked)
EXIT_SOME_FAILED = 1  # some inputs could not be scored; their records say why
EXIT_USAGE = 2  # bad options, or a model that cannot be loaded
# Nothing to score (a path that does not exist, a pattern that matches nothing, a folder with no
# captures) or nothing scored (every file failed).
EXIT_NOTHING_SCORED = 3
EXIT_REFUSED = 4  # pyfundus adapt: the site model checks worse than the base model, so it was not written


class UsageError(Exception):
    """Bad arguments or an unusable model: the command prints the message and exits with EXIT_USAGE."""


class NothingToScore(ValueError):
    """An input named on the command line gave nothing to score, or nothing could be scored:
    the command prints the message and exits with EXIT_NOTHING_SCORED."""
