"""Joining a Ray cluster (or starting a private one on this machine), and the model each Ray worker loads."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import UsageError

INSTALL_HINT = 'pip install "pyfundus[ray]"'


def import_ray() -> Any:
    """Ray, or a usage error that says how to install it (it is an optional extra)."""
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] extra: pyarrow and friends)
    except ImportError as exc:
        raise UsageError(f"the Ray engine needs Ray, which is not installed ({exc}); install it with: {INSTALL_HINT}") from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Connected to the cluster at ``address`` (``ray start --head`` prints it), or to a private Ray instance
    started here for this run and stopped after it.

    The private instance runs no dashboard. It cannot be bound to loopback: on Linux Ray replaces
    127.0.0.1 with the machine's routable address and its gRPC services listen on every interface. What
    guards it is Ray's token authentication, which Ray turns on for a new local instance (with a token in
    ~/.ray/auth_token) unless RAY_AUTH_MODE says otherwise.
    """
    ray = import_ray()
    quiet = {"logging_level": logging.WARNING, "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(include_dashboard=False, **quiet)
    except (ConnectionError, OSError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UsageError(f"cannot connect to {where}: {exc}") from exc
    try:
        _quiet_ray_data(ray)
        yield ray
    finally:
        ray.shutdown()


def _quiet_ray_data(ray: Any) -> None:
    """pyfundus draws its own progress bar (images/s); Ray Data's bars and banners would interleave with it."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": we know


def placement(ray: Any, device: str) -> tuple[str, int | None]:
    """The device each Ray worker scores on (``auto``: CUDA when the cluster has a GPU) and the GPUs it asks for."""
    if device == "auto":
        device = "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"
    return device, (1 if device.startswith("cuda") else None)


@dataclass(frozen=True)
class ModelSpec:
    """The model a Ray worker (an archive actor, a Serve replica) loads, as ``load_model``'s arguments:
    the options of ``pyfundus score`` travel to the workers, and each loads through the one loader."""

    name: str | None = None
    device: str = "cpu"
    backend: str | None = None
    precision: str | None = None
    compile: bool = False
    reject_below: float | None = None
    good_from: float | None = None

    def load(self) -> Any:
        from ..api import load_model

        thresholds = {"reject_below": self.reject_below, "good_from": self.good_from}
        return load_model(self.name, device=self.device, backend=self.backend, precision=self.precision,
                          compile=self.compile, thresholds=thresholds)  # fmt: skip
