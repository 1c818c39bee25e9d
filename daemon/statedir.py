"""The state directory: where it is, whether it is usable, and the single-instance lock in it."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from .errors import AlreadyRunning, StateDirError

LEDGER_NAME = "ledger.sqlite3"
LOCK_NAME = "pyfundusd.lock"
LOG_NAME = "pyfundusd.log"

# Below this the ledger and the log cannot be trusted to keep growing through a clinic day.
MIN_FREE_BYTES = 16 * 2**20


def default_state_dir() -> Path:
    """``$PYFUNDUS_STATE_DIR``, else ``$XDG_STATE_HOME/pyfundus``, else ``~/.local/state/pyfundus``."""
    explicit = os.environ.get("PYFUNDUS_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    # The XDG spec says a relative XDG_STATE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "pyfundus"


def prepare_state_dir(path: Path) -> None:
    """Create the directory and prove it takes writes, so a bad one fails at start, not mid-clinic."""
    advice = "fix its permissions or free space, or choose another with --state-dir"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        raise StateDirError(f"state directory {path} is not writable ({exc.strerror or exc}); {advice}") from exc
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise StateDirError(f"state directory {path} has only {free // 2**20} MiB free; {advice}")


class InstanceLock:
    """An flock on a file in the state directory: two daemons sharing one ledger would score twice.

    The kernel drops the lock when the process dies, even by SIGKILL, so a
    crash never leaves a stale lock behind.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateDirError(f"cannot create the lock file {self.path} ({exc.strerror or exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another pyfundus watch (pid {holder}) is already running with the state directory "
                f"{self.path.parent}; stop it first, or give this one its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
