"""pyfundus: a real-time quality gate for fundus photographs.

Importing the package is cheap on purpose (the daemon and the CLI start fast):
torch, the model and the weights load only when first asked for.
"""

from __future__ import annotations

from .version import __version__

__all__ = ["__version__", "load_enhancer", "load_grader", "load_model", "list_models", "read_image", "ScoreResult"]


def __getattr__(name: str):
    # PEP 562 lazy attributes: nothing heavy is imported until it is used.
    if name in ("load_model", "load_enhancer", "load_grader"):
        from . import api

        return getattr(api, name)
    if name == "ScoreResult":
        from .verdicts import ScoreResult

        return ScoreResult
    if name == "list_models":
        from .models import list_models

        return list_models
    if name == "read_image":
        from .io import read_image

        return read_image
    raise AttributeError(f"module 'pyfundus' has no attribute {name!r}")
