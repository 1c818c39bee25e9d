"""Errors every command line of pyfundus shares (``pyfundus`` and ``pyfundusd``)."""

from __future__ import annotations

EXIT_USAGE = 2
# pyfundus score: 0 every capture scored, 1 some could not be scored, 3 none could.
EXIT_SOME_FAILED = 1
EXIT_NOTHING_SCORED = 3


class UsageError(Exception):
    """Bad arguments or an unusable model: the command prints the message and exits with EXIT_USAGE."""
