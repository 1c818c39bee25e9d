"""Name -> factory registry, in the manner of timm (networks) and pyiqa (classical metrics too)."""

from __future__ import annotations

from typing import Any, Callable

_FACTORIES: dict[str, Callable[..., Any]] = {}
_CLASSICAL: set[str] = set()


def register_model(factory: Callable[..., Any] | None = None, *, classical: bool = False):
    """Decorator: make a factory reachable by its function name.

    ``classical=True`` marks a model that is not a network but is fitted on labelled data
    (``model.fit(records)``, saved as .json), such as the BRISQUE baseline.
    """

    def register(factory: Callable[..., Any]) -> Callable[..., Any]:
        name = factory.__name__
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is registered twice")
        _FACTORIES[name] = factory
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
