"""Name -> factory registry, in the manner of timm (networks) and pyiqa (classical metrics too)."""

from __future__ import annotations

from typing import Any, Callable

_FACTORIES: dict[str, Callable[..., Any]] = {}
_CLASSICAL: set[str] = set()
_TASKS: dict[str, str] = {}
# What a model's output means, so each loader takes only its own kind: load_model the quality scorers,
# load_enhancer the enhancers, load_grader the DR graders; "quality_class" is CLEAQ-DR's 3-class IQA.
TASKS = ("quality", "enhance", "grade", "quality_class")


def register_model(factory: Callable[..., Any] | None = None, *, classical: bool = False, task: str = "quality"):
    """Decorator: make a factory reachable by its function name.

    ``classical=True`` marks a model that is not a network but is fitted on labelled data
    (``model.fit(records)``, saved as .json), such as the BRISQUE baseline. ``task``: one of TASKS.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def register(factory: Callable[..., Any]) -> Callable[..., Any]:
        name = factory.__name__
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is registered twice")
        _FACTORIES[name] = factory
        _TASKS[name] = task
        if classical:
            _CLASSICAL.add(name)
        return factory

    return register if factory is None else register(factory)


def create_model(name: str, **kwargs) -> Any:
    """Build a registered model by name; keyword arguments override its defaults."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        known = ", ".join(sorted(_FACTORIES))
        raise ValueError(f"unknown model {name!r}; registered models: {known}") from None
    return factory(**kwargs)


def list_models() -> list[str]:
    return sorted(_FACTORIES)


def is_model(name: str) -> bool:
    return name in _FACTORIES


def is_classical(name: str) -> bool:
    """Whether ``name`` is a registered classical model, fitted on data rather than trained by gradient."""
    return name in _CLASSICAL


def model_task(name: str) -> str:
    """What the registered model ``name`` does (one of TASKS)."""
    if name not in _TASKS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(_FACTORIES))}")
    return _TASKS[name]
