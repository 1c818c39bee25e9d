"""Model architectures. Importing this package registers every architecture."""

from . import fthnet  # noqa: F401  (registers fthnet_* factories)
from .registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "is_model", "list_models", "register_model"]
