"""The public Python API: load, generate, stream_generate."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

from . import methods
from .engine import Decoder, Limits, check_request
from .errors import MlxSpecError
from .loading import SpecModel
from .sampling import SamplingParams, check_seed, is_whole
from .stats import GenerationStats


@dataclass
class GenerationChunk:
    text: str                      # new text since the previous chunk
    token_ids: list[int]           # new token ids since the previous chunk
    finish_reason: Optional[str]   # None while generating; "stop", "length" or "context" at the end
    stats: GenerationStats


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: Optional[str]
    stats: GenerationStats

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids,
                "finish_reason": self.finish_reason, "stats": self.stats.to_dict()}


def encode_prompt(model: SpecModel, prompt: Union[str, Sequence[int]], raw: bool = False) -> list[int]:
    """raw=True tokenizes exactly as mlx_lm.generate does a plain string; raw=False first applies
    the tokenizer's chat template when it has one. Token ids are checked against the model's
    vocabulary (check_tokens)."""
    if not isinstance(prompt, str):
        try:  # token ids: ints, numpy's or mlx's (not bytes: their values are not token ids)
            if isinstance(prompt, (bytes, bytearray)):
                raise TypeError
            prompt = list(prompt)  # (read once: it may be a generator)
            if any(isinstance(t, bool) for t in prompt):
                raise TypeError
            tokens = [operator.index(t) for t in prompt]
        except TypeError:
            raise MlxSpecError(f"the prompt must be text or token ids (whole numbers), got "
                               f"{prompt!r:.60}") from None
        return check_tokens(model, tokens)
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:  # (a file's invalid bytes reach argv as lone surrogates)
        raise MlxSpecError(f"the prompt is not valid UTF-8 text ({exc.reason} at character "
                           f"{exc.start})") from None
    tokenizer = model.tokenizer
    if uses_chat_template(model, prompt, raw):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                               tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    return check_tokens(model, list(tokenizer.encode(
        prompt, add_special_tokens=bos is None or not prompt.startswith(bos))))


def check_tokens(model: SpecModel, tokens: list[int]) -> list[int]:
    """`tokens`, refused with a clear error where one is an id outside the model's vocabulary (the
    embedding lookup reads past its table: on the CPU the process died of a segmentation
    fault). (No tokens at all: engine.check_request.)"""
    vocab = model.vocab_size
    if vocab is not None:
        bad = next((t for t in tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise MlxSpecError(f"prompt token id {bad} is outside the model's vocabulary "
                               f"(0..{vocab - 1})")
    return tokens


def uses_chat_template(model: SpecModel, prompt, raw: bool) -> bool:
    return isinstance(prompt, str) and not raw and bool(getattr(model.tokenizer, "chat_template", None))


def _seam_space(tokenizer, last_prompt_token: int, first_token: int) -> str:
    """SentencePiece streaming detokenizers drop the space before the first generated word (they
    treat it as the start of a text); in a plain continuation that space belongs to the output.
    After a special token such as BOS the text does start there, so no space is added."""
    if last_prompt_token in set(getattr(tokenizer, "all_special_ids", []) or []):
        return ""
    alone = tokenizer.decode([first_token])
    before = tokenizer.decode([last_prompt_token])
    joined = tokenizer.decode([last_prompt_token, first_token])
    return " " if joined[len(before):].startswith(" ") and not alone.startswith(" ") else ""


def make_decoder(model: SpecModel, method: str = methods.DEFAULT, kv_bits: Optional[int] = None,
                 **method_options) -> Decoder:
    """A conversation with `model` using `method`; reuse it across requests to keep caches.
    (Any decoder of mlx_spec.methods' protocol: the engine's Decoder for drafting methods.)"""
    return methods.make_decoder(model, method, kv_bits=kv_bits, **method_options)


def stream_generate(model: SpecModel, prompt: Union[str, Sequence[int]], method: str = methods.DEFAULT,
                    max_tokens: int = 256, temperature: float = 0.0, seed: Optional[int] = None,
                    raw: bool = False, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0,
                    stop: Optional[Sequence[str]] = None, decoder: Optional[Decoder] = None,
                    ignore_eos: bool = False, **method_options) -> Iterator[GenerationChunk]:
    """Stream `prompt`'s continuation in chunks (one per decoding step). `ignore_eos` decodes
    past end-of-sequence tokens to max_tokens (benchmarks: every method writes as many tokens).
    Bad arguments raise here, at the call, not at the first chunk: a caller that shows the prompt
    before the reply (mlxspec generate) shows nothing of a request that cannot run."""
    if not is_whole(max_tokens):
        raise MlxSpecError(f"max_tokens must be a whole number, got {max_tokens!r}")
    sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p)
    check_seed(seed)
    stop = [stop] if isinstance(stop, str) else list(stop or [])  # one string: that string
    if not all(isinstance(s, str) for s in stop):                # (as the server reads it)
        raise MlxSpecError(f"stop must be a string or a list of strings, got {stop!r}")
    prompt_tokens = encode_prompt(model, prompt, raw)
    limits = Limits(max_tokens=max_tokens, context_length=model.context_length,
                    eos_token_ids=frozenset() if ignore_eos else model.eos_token_ids)
    check_request(prompt_tokens, limits)  # (before a decoder loads a draft model or workers)
    if decoder is None:
        decoder = make_decoder(model, method, **method_options)
    elif method_options:
        raise MlxSpecError("method options go to make_decoder when a decoder is passed")
    continuation = not uses_chat_template(model, prompt, raw)
    return _stream(model, decoder, prompt_tokens, limits, sampling, seed,
                   _Stops([s for s in stop if s]), continuation)


def _stream(model: SpecModel, decoder: Decoder, prompt_tokens: list[int], limits: Limits,
            sampling: SamplingParams, seed: Optional[int], stops: "_Stops",
            continuation: bool) -> Iterator[GenerationChunk]:
    """stream_generate's chunks, once its arguments are checked: the decoder's steps as text."""
    detokenizer = model.tokenizer.detokenizer
    detokenizer.reset()
    seam = None
    for step in decoder.generate(prompt_tokens, limits, sampling, seed=seed):
        for token in step.token_ids:
            detokenizer.add_token(token)
        if step.finish_reason is not None:
            detokenizer.finalize()
        segment = detokenizer.last_segment
        if seam is None and step.token_ids:
            seam = _seam_space(model.tokenizer, prompt_tokens[-1], step.token_ids[0]) if continuation else ""
            segment = seam + segment
        finish = step.finish_reason
        segment, cut = stops.feed(segment, last=finish is not None)
        if cut:
            finish = "stop"
        yield GenerationChunk(segment, step.token_ids, finish, step.stats)
        if finish is not None:
            return


class _Stops:
    """Cuts the streamed text before the first stop string to complete. Text that may begin one is
    held back until the next steps tell: text once yielded cannot be taken back, and a stop
    string that began in one chunk and ended in the next left its first characters in the reply
    (stop "da" on "edamon..." gave "ed"). The held text goes out with the final step; a reply
    cancelled before it (app.Generation.cancel) ends without it (fewer characters than the
    longest stop string has), though its token ids are all there."""

    def __init__(self, stops: Sequence[str]):
        self.stops, self.held = list(stops), ""

    def feed(self, segment: str, last: bool) -> tuple[str, bool]:
        """(the text to yield now, whether a stop string completed); `last`: the final step,
        whose held text goes out."""
        text = self.held + segment
        # the stop string that completes first (as if the text came a character at a time, so
        # the cut does not depend on how the steps split it), the longest of those that do there
        hits = [(at + len(s), at) for s in self.stops for at in [text.find(s)] if at >= 0]
        if hits:
            self.held = ""
            return text[:min(hits)[1]], True
        # the longest end of the text that begins some stop string (nothing yielded can, since
        # every such end was held back)
        keep = 0 if last else max((k for s in self.stops
                                   for k in range(1, min(len(s), len(text) + 1))
                                   if s.startswith(text[len(text) - k:])), default=0)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep], False


def collect(chunks: Iterator[GenerationChunk], method: str = "") -> GenerationResult:
    """Drain a stream into one result."""
    text, ids, finish, stats = [], [], None, GenerationStats(method=method)
    for chunk in chunks:
        text.append(chunk.text)
        ids.extend(chunk.token_ids)
        finish, stats = chunk.finish_reason, chunk.stats
    return GenerationResult("".join(text), ids, finish, stats)


def generate(model: SpecModel, prompt: Union[str, Sequence[int]], method: str = methods.DEFAULT,
             max_tokens: int = 256, temperature: float = 0.0, seed: Optional[int] = None,
             raw: bool = False, **options) -> GenerationResult:
    return collect(stream_generate(model, prompt, method=method, max_tokens=max_tokens,
                                   temperature=temperature, seed=seed, raw=raw, **options), method)
