"""Model architectures. Importing this package registers every architecture."""

from . import brisque, cleaq, cleaq_dr, cleaq_iqa, cleaq_iqe, fthnet  # noqa: F401  (each registers its models)
from .registry import TASKS, create_model, is_classical, is_model, list_models, model_task, register_model

__all__ = ["TASKS", "create_model", "is_classical", "is_model", "list_models", "model_task", "register_model"]
