"""Methods by name. A method is a factory of decoders: anything with

    method: str                                   its name
    target: Optional[Target]                      the Target it decodes through (None: its own caches)
    generate(prompt_tokens, limits, sampling, seed=None) -> Iterator[engine.Step]
    reset()                                       forget the conversation (caches, drafter state)
    reusable(prompt_tokens) -> int                prompt tokens its caches already hold

A drafting method (one file in drafters/ that calls `drafters.register`) is wrapped in the engine's
Decoder, with a BackOff to plain decoding where drafting measures slower (option backoff=False
turns it off). A method with a decoder of its own is one line in DECODERS (imported when first used,
so that this module imports nothing from the layers that provide them). Methods bring their own
`mlxspec generate` flags (drafters.register(flags=...), DECODER_FLAGS).
"""
from __future__ import annotations

import importlib
from typing import Optional

from . import drafters
from .drafters.shared import shared, target_cost
from .engine import BackOff, Decoder
from .errors import MlxSpecError
from .sampling import is_whole
from .target import Target

DEFAULT = "auto"  # the method of generate, chat, the server and the app when none is named

DECODERS = {  # name -> "module:factory(model, kv_bits=None, **options)"
    "dsi": "mlx_spec.dsi.decoder:make_dsi_decoder",
    "mlx-lm": "mlx_spec.bench.baselines.mlx_lm_speculative:make_decoder",
}
DECODER_FLAGS = {  # the command-line flags those methods bring to `mlxspec generate`
    "dsi": [drafters.CliFlag("--workers", "workers", int, "dsi: target worker processes to start.")],
}


def available() -> list[str]:
    return sorted(set(drafters.available()) | set(DECODERS))


def cli_flags() -> list:
    """Every method's own flags for `mlxspec generate` (drafters.CliFlag), in method order."""
    return drafters.cli_flags() + [f for name in sorted(DECODER_FLAGS) for f in DECODER_FLAGS[name]]


def check_name(name: str) -> None:
    if name not in available():
        raise MlxSpecError(f"unknown method {name!r}; available: {', '.join(available())}")


def check_options(method: str, /, **options) -> None:
    """Refuse an unknown method, options it does not take and values of the wrong kind, without
    a model (drafters.check_options): a bench checks its whole list before it loads and runs.
    `kv_bits` is make_decoder's own, for every method (checked when the cache is made)."""
    check_name(method)
    kv_bits = options.pop("kv_bits", None)
    if kv_bits is not None and not is_whole(kv_bits):
        raise MlxSpecError(f"bad options for method {method!r}: kv_bits must be a whole number, "
                           f"got {kv_bits!r}")
    if method in DECODERS:
        drafters.check_options(method, _factory(method), None, kv_bits=None, **options)
    else:
        options.pop("backoff", None)
        drafters.check_options(method, drafters.factory(method), None, **options)


def _factory(name: str):
    module, attribute = DECODERS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def _backoff(model, method: str, options: dict) -> Optional[BackOff]:
    """One BackOff per loaded model, method and options (drafters/shared.py): what it measured
    carries over to the next request and decoder (each request still probes drafting early)."""
    if method == "ar":
        return None
    backoffs = shared(model).backoffs
    key = (method, repr(sorted(options.items())))
    if key not in backoffs:
        backoffs[key] = BackOff(target_cost(model).relative)
    return backoffs[key]


def make_decoder(model, method: str, kv_bits: Optional[int] = None, **options):
    """A decoder of `method` for a loaded SpecModel; unknown methods and options are clear errors."""
    check_name(method)
    if method not in DECODERS:
        wanted = options.pop("backoff", True)
        drafter = drafters.create(method, model, **options)
        backoff = _backoff(model, method, options) if wanted else None
        if backoff is not None:  # its pauses follow the clock, so no seed reproduces a sampled
            drafter.keep_learning()  # text anyway: draft sizes learned while sampling carry over
        return Decoder(Target(model.model, kv_bits=kv_bits), drafter, method=method,
                       backoff=backoff)
    factory = _factory(method)
    drafters.check_options(method, factory, model, kv_bits=kv_bits, **options)
    return factory(model, kv_bits=kv_bits, **options)
