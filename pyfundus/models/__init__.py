"""Model architectures. Importing this package registers every architecture."""

from . import brisque, fthnet  # noqa: F401  (registers fthnet_* and the brisque baseline)
from .registry import create_model, is_classical, is_model, list_models, register_model

__all__ = ["create_model", "is_classical", "is_model", "list_models", "register_model"]
