"""Errors every command line of pyfundus shares (``pyfundus`` and ``pyfundusd``)."""

from __future__ import annotations

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad arguments or an unusable model: the command prints the message and exits with EXIT_USAGE."""
