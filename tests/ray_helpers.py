"""A real Ray cluster on this machine for the tests: ``ray start --head`` and worker nodes.

Each node is a ``ray start --block`` child in a session of its own, with one CPU and a small object store,
all under a private temporary folder, with Ray's token authentication on and a token of its own (``env``
holds what a driver needs to join). A node is killed with its whole process group (as a machine that dies
takes everything on it); ``stop`` ends every node it started the same way, by process group id, and then
any process left that names the cluster's private folder, by process id. It never runs ``ray stop``, which
would stop every Ray process of the user, other people's included.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import skip_or_fail

# The `ray` command of this interpreter's Ray, wherever pip put the script.
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
OBJECT_STORE_BYTES = 200 * 1024 * 1024
# Ray notices a dead node after this many missed health checks, one a second (default: 5 x 3 s).
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def ray_or_skip():
    try:
        import ray
        import ray.data  # noqa: F401
        import ray.serve  # noqa: F401
    except ImportError as exc:
        skip_or_fail(f'Ray is not installed ({exc}): pip install "pyfundus[ray]"')
    return ray


class LocalCluster:
    def __init__(self) -> None:
        # Short: Ray's unix sockets live under it, and a socket path has a 107-byte limit.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="pfray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        self._starting: list[tuple[subprocess.Popen, Path]] = []  # launched, not yet known to be up
        self._logs = itertools.count()
        token = self.temp_dir / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(token), **FAST_FAILURE_DETECTION}  # fmt: skip

    def start(self, workers: int = 1) -> LocalCluster:
        """Launch the head and the workers together (a worker waits for the head's GCS); :meth:`ready` waits
        for them, so a test can do other work while they start."""
        self._launch("--head", f"--port={self.port}", "--include-dashboard=false", "--disable-usage-stats")
        for _ in range(workers):
            self.add_worker()
        return self

    def add_worker(self) -> None:
        self._launch(f"--address={self.address}")

    def ready(self, timeout: float = 120.0) -> LocalCluster:
        """Until every node launched says it is up (its raylet has joined the cluster)."""
        deadline = time.monotonic() + timeout
        while self._starting:
            node, log = self._starting[0]
            if b"Ray runtime started" in log.read_bytes():
                self._starting.pop(0)
            elif node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"a Ray node did not start: {log.read_text(errors='replace')[-2000:]}")
            else:
                time.sleep(0.2)
        return self

    def kill(self, node: subprocess.Popen) -> None:
        """The node dies at once, with everything on it: its raylet, its workers, its actors."""
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()
        self.nodes.remove(node)
        self._starting = [(n, log) for n, log in self._starting if n is not node]

    def stop(self) -> None:
        """Every node at once, as :meth:`kill` does one (a test cluster keeps nothing worth a graceful stop);
        then any process still naming this cluster's private folder (a worker that left the group)."""
        for node in list(self.nodes):
            self.kill(node)
        for pid in pids_naming(str(self.temp_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _launch(self, *args: str) -> None:
        command = [*RAY, "start", "--block", "--num-cpus=1", f"--object-store-memory={OBJECT_STORE_BYTES}",
                   f"--temp-dir={self.temp_dir}", *args]  # fmt: skip
        log = self.temp_dir / f"node-{next(self._logs)}.log"
        with open(log, "wb") as out:
            node = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(node)
        self._starting.append((node, log))


def pids_naming(text: str) -> list[int]:
    """The processes whose command line holds ``text`` (a private folder of ours: only our processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
