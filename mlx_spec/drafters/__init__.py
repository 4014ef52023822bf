"""Drafting methods, by name. Adding a method is one file that calls `register`."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import MlxSpecError
from ..sampling import is_number, is_whole
from .base import Drafter, StepContext

_REGISTRY: dict[str, Callable[..., Drafter]] = {}


@dataclass(frozen=True)
class CliFlag:
    """A command-line flag of `mlxspec generate` that a method brings for one of its options."""
    flag: str      # e.g. "--stop-rule"
    option: str    # the factory's keyword, e.g. "stop_rule"
    kind: type     # str, int, float
    help: str


def register(name: str, flags: tuple = ()):
    """Register a drafter factory under `name`, with the CliFlags it offers `mlxspec generate`."""
    def decorate(factory):
        _REGISTRY[name] = factory
        factory.name = name
        factory.cli_flags = tuple(flags)
        return factory
    return decorate


def cli_flags() -> list[CliFlag]:
    _load_builtin()
    return [flag for name in sorted(_REGISTRY) for flag in _REGISTRY[name].cli_flags]


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def check_name(name: str) -> None:
    if name not in available():
        raise MlxSpecError(f"unknown method {name!r}; available: {', '.join(available())}")


def factory(name: str) -> Callable:
    """What builds drafter `name` (a class or function of (model, **options))."""
    check_name(name)
    return _REGISTRY[name]


def create(name: str, model, /, **options) -> Drafter:
    """Build the drafter `name` for a loaded SpecModel; unknown options are a clear error."""
    make = factory(name)
    check_options(name, make, model, **options)
    try:
        return make(model, **options)
    except ValueError as exc:
        raise MlxSpecError(f"method {name!r}: {exc}") from None


def check_options(name: str, factory, /, *args, **options) -> None:
    """Refuse, as a clear error, options that method `name`'s `factory` does not take, and values
    of another kind than the option's default (a word for a whole number: a TypeError deep in
    the drafter otherwise). Options without a typed default (None) are the factory's to check."""
    signature = inspect.signature(factory)
    try:
        signature.bind(*args, **options)
    except TypeError as exc:
        raise MlxSpecError(f"bad options for method {name!r}: {exc}") from None
    for key, value in options.items():
        parameter = signature.parameters.get(key)
        default = parameter.default if parameter is not None else None
        kind = next((k for k in (bool, int, float) if isinstance(default, k)), None)
        fits = kind is None or _KINDS[kind](value)
        if not fits:
            raise MlxSpecError(f"bad options for method {name!r}: {key} must be "
                               f"{_KIND_NAMES[kind]}, got {value!r}")


# what an option whose default is of each kind takes (numpy's values too)
_KINDS = {bool: lambda value: isinstance(value, (bool, np.bool_)), int: is_whole,
          float: is_number}
_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number"}


def _load_builtin() -> None:
    """Import every module of this package once; each registers its methods on import."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["CliFlag", "Drafter", "StepContext", "register", "available", "check_name",
           "check_options", "cli_flags", "create", "factory"]
