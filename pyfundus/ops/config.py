"""Which implementation the ops use: the fused C++/CUDA kernels or plain torch.

The environment variable ``PYFUNDUS_KERNELS`` selects it and is read on every
call: unset, empty or ``auto`` -> fused, ``fused``, ``reference``. Tests and
benchmarks override it in-process with :func:`use_kernels`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["ENV_VAR", "kernel_mode", "use_kernels"]

ENV_VAR = "PYFUNDUS_KERNELS"
_MODES = {"auto": "fused", "fused": "fused", "reference": "reference"}

# Set by use_kernels(); process-wide (not per thread) so that worker threads
# started inside the block see it too.
_override: str | None = None


def _resolve(value: str, source: str) -> str:
    try:
        return _MODES[value.strip().lower()]
    except KeyError:
        allowed = ", ".join(repr(m) for m in _MODES)
        raise ValueError(f"{source} must be one of {allowed}, got {value!r}") from None


def kernel_mode() -> str:
    """``"fused"`` or ``"reference"``: the in-process override, else ``$PYFUNDUS_KERNELS``."""
    if _override is not None:
        return _override
    value = os.environ.get(ENV_VAR, "")
    return _resolve(value, ENV_VAR) if value.strip() else "fused"


@contextlib.contextmanager
def use_kernels(mode: str) -> Iterator[None]:
    """Use ``mode`` (``auto``, ``fused`` or ``reference``) inside the block, whatever the
    environment says. Blocks nest; the previous setting comes back on exit."""
    global _override
    previous, _override = _override, _resolve(mode, "use_kernels(mode)")
    try:
        yield
    finally:
        _override = previous
