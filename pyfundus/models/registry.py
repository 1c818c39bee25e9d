"""Name -> factory registry, in the manner of timm."""

from __future__ import annotations

from typing import Callable

from torch import nn

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register_model(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make a factory reachable by its function name."""
    name = factory.__name__
    if name in _FACTORIES:
        raise ValueError(f"model {name!r} is registered twice")
    _FACTORIES[name] = factory
    return factory


def create_model(name: str, **kwargs) -> nn.Module:
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
