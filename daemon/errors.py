"""What can stop the daemon: start-up problems (the CLI turns them into exit code 2) and ledger failures."""

from __future__ import annotations


class DaemonError(Exception):
    """Base class of the daemon's own errors."""


class StartupError(DaemonError):
    """The daemon cannot start; the message says why and what to do about it."""


class ConfigError(StartupError):
    """A flag or config-file value is missing, mistyped or contradicts another."""


class StateDirError(StartupError):
    """The state directory cannot be created or written (read-only, full, not a folder)."""


class AlreadyRunning(StartupError):
    """Another daemon holds the state directory's lock."""


class LedgerError(DaemonError):
    """A ledger read or write failed (disk full, read-only file system, I/O error)."""
