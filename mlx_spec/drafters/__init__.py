"""Drafting methods, by name. Adding a method is one file that calls `register`."""
from __future__ import annotations

import inspect
from typing import Callable

from ..errors import MlxSpecError
from .base import Drafter, StepContext

_REGISTRY: dict[str, Callable[..., Drafter]] = {}


def register(name: str):
    def decorate(factory):
        _REGISTRY[name] = factory
        factory.name = name
        return factory
    return decorate


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def create(name: str, model, **options) -> Drafter:
    """Build the drafter `name` for a loaded SpecModel; unknown options are a clear error."""
    _load_builtin()
    if name not in _REGISTRY:
        raise MlxSpecError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    factory = _REGISTRY[name]
    try:
        inspect.signature(factory).bind(model, **options)
    except TypeError as exc:
        raise MlxSpecError(f"bad options for method {name!r}: {exc}") from None
    try:
        return factory(model, **options)
    except ValueError as exc:
        raise MlxSpecError(f"method {name!r}: {exc}") from None


def _load_builtin() -> None:
    from . import autoregressive, pld  # noqa: F401  (registration happens on import)


__all__ = ["Drafter", "StepContext", "register", "available", "create"]
