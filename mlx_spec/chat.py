"""A multi-turn conversation with one model, whose KV cache is reused from turn to turn.

Each turn's prompt tokens are the previous turn's prompt tokens, then the reply's own token ids,
then only the new text encoded: so the Decoder (which keeps the longest cached prefix) prefills
just the new tokens. Re-encoding the whole conversation text instead would not do: a reply's text
does not always encode back to the ids the model produced, and one changed id early on would force
a prefill from there.

With a chat template, the new text is what the template adds after the last reply (end of turn,
the user's message, the assistant header). Without one (the embedded story model) the conversation
is plain text continued by each message. When the conversation no longer fits the model's context,
the oldest turns are dropped with a note, and the prompt is encoded afresh.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from . import methods
from .api import GenerationChunk, encode_prompt, stream_generate
from .app import CANCELLED, DecoderPool
from .engine import Decoder
from .errors import MlxSpecError
from .loading import SpecModel
from .sampling import SEEDS, SamplingParams, check_seed
from .stats import GenerationStats


@dataclass
class TurnStats:
    method: str
    prompt_tokens: int        # the whole conversation sent this turn
    prefilled_tokens: int     # of which not already in the KV cache
    generated_tokens: int
    target_calls: int
    mean_accepted: float
    tokens_per_s: float
    finish_reason: Optional[str]


def continue_text(before: str, text: str) -> str:
    """Plain continuation (a model without a chat template): a message follows the text, with a
    space between words."""
    if _ends_with_space(before) or text[:1].isspace():
        return before + text
    return before + " " + text


def _ends_with_space(text: str) -> bool:
    return not text or text[-1].isspace()


class ChatSession:
    def __init__(self, model: SpecModel, method: str = methods.DEFAULT, temperature: float = 0.0,
                 max_tokens: int = 256, seed: Optional[int] = None, system: Optional[str] = None,
                 method_options: Optional[dict] = None, on_note: Callable[[str], None] = print):
        if max_tokens < 1:
            raise MlxSpecError(f"max_tokens must be >= 1, got {max_tokens}")
        check_seed(seed)
        self.model = model
        self.max_tokens = max_tokens
        self.seed = seed
        self.system = system
        self.on_note = on_note
        self.uses_template = bool(getattr(model.tokenizer, "chat_template", None))
        self.decoders = DecoderPool(model)
        self.method_options: dict[str, dict] = {}
        self.temperature = 0.0
        self.set_temperature(temperature)
        self._forget()
        self.method = ""
        self.set_method(method, **(method_options or {}))

    # -- settings ------------------------------------------------------------------------------
    def set_method(self, method: str, **options) -> None:
        """Switch method (its decoder is made now, so bad options fail here); the conversation's
        KV cache carries over, and the drafter left behind keeps its state."""
        methods.check_name(method)
        if options:
            self.method_options[method] = options
        self.decoders.get(method, **self.method_options.get(method, {}))
        self.method = method

    def set_temperature(self, temperature: float) -> None:
        SamplingParams(temperature=temperature)  # validates
        self.temperature = float(temperature)

    @property
    def decoder(self) -> Decoder:
        return self.decoders.get(self.method, **self.method_options.get(self.method, {}))

    def reset(self) -> None:
        """Forget the conversation and release every cache (KV caches and drafter state)."""
        self.decoders.clear()
        self._forget()

    def _forget(self) -> None:
        self.messages: list[dict] = []  # what the model sees: the turns that fit the context
        self.log: list[dict] = []       # every message of the conversation, for the transcript
        self.turns: list[TurnStats] = []
        self._tokens: list[int] = []   # the conversation so far: last prompt + reply ids
        self._rendered = ""            # with a template: the text those tokens stand for

    # -- a turn --------------------------------------------------------------------------------
    def send(self, text: str) -> Iterator[GenerationChunk]:
        """Add a user message and return the reply's stream. The prompt is built now (an
        over-long message raises MlxSpecError here); decoding runs as the stream is read, on
        whichever thread reads it. The reply joins the history when the stream ends or is closed
        (a stopped reply is kept as far as it got)."""
        if not text.strip():
            raise MlxSpecError("the message is empty")
        prompt, rendered, kept = self._prompt_for(text)
        return self._reply(text, prompt, rendered, kept)

    def _reply(self, text: str, prompt: list[int], rendered: str,
               kept: int) -> Iterator[GenerationChunk]:
        decoder = self.decoder
        reused = decoder.reusable(prompt)
        seed = None if self.seed is None else (self.seed + len(self.turns)) % SEEDS
        parts, ids, last = [], [], None
        try:
            for chunk in stream_generate(self.model, prompt, method=self.method, decoder=decoder,
                                         max_tokens=self.max_tokens, temperature=self.temperature,
                                         seed=seed):
                parts.append(chunk.text)
                ids.extend(chunk.token_ids)
                last = chunk
                yield chunk
        except Exception:
            raise  # nothing is recorded; the conversation stays as it was
        except BaseException:  # closed early (GeneratorExit) or Ctrl-C: keep the partial reply
            self._record(text, "".join(parts), prompt, ids, rendered, kept, reused, last)
            raise
        self._record(text, "".join(parts), prompt, ids, rendered, kept, reused, last)

    def _record(self, text, reply, prompt, ids, rendered, kept, reused, last) -> None:
        exchange = [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        self.messages = self.messages[len(self.messages) - kept:] + exchange
        self.log += exchange
        self._tokens = prompt + ids
        # plain text is what the tokens decode to: streamed text can differ at the seams (a
        # sentencepiece detokenizer drops the first token's leading space)
        self._rendered = (rendered + reply if self.uses_template else
                          self.model.tokenizer.decode(self._tokens, skip_special_tokens=True))
        stats = last.stats if last is not None else GenerationStats()
        self.turns.append(TurnStats(
            method=self.method, prompt_tokens=len(prompt), prefilled_tokens=len(prompt) - 1 - reused,
            generated_tokens=stats.generated_tokens, target_calls=stats.target_calls,
            mean_accepted=stats.mean_accepted, tokens_per_s=stats.tokens_per_s,
            finish_reason=(last.finish_reason if last is not None else None) or CANCELLED))

    # -- prompt building ---------------------------------------------------------------------------
    def _prompt_for(self, text: str) -> tuple[list[int], str, int]:
        """(prompt tokens, rendered text, how many past messages it keeps) for the conversation
        plus `text`, dropping the oldest turns until it fits the context."""
        user = {"role": "user", "content": text}
        built = self._extend(user) if self.messages else None
        history = self.messages
        if built is None:
            built = self._encode(history + [user])
        limit = self._prompt_limit()
        if limit is not None and len(built[0]) > limit:
            # drop down to half the limit, not just under it: the turns that follow then extend
            # the cache again for a while instead of each one prefilling the whole prompt
            while len(built[0]) > limit // 2 and len(history) >= 2:
                history = history[2:]
                built = self._encode(history + [user])
        if limit is not None and len(built[0]) > limit:
            raise MlxSpecError(f"the message makes a prompt of {len(built[0])} tokens; with room "
                               f"for the reply the model's context allows {limit}")
        dropped = (len(self.messages) - len(history)) // 2
        if dropped:
            self.on_note(f"dropped the {dropped} oldest turn{'s' * (dropped > 1)} to fit the "
                         f"model's context of {self.model.context_length} tokens")
        return built[0], built[1], len(history)

    def _prompt_limit(self) -> Optional[int]:
        """Most prompt tokens: the context less room for a full reply (at most half of it)."""
        context = self.model.context_length
        if not context:
            return None
        return context - min(self.max_tokens, context // 2)

    def _system(self) -> list[dict]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def _render(self, messages: list[dict]) -> str:
        return self.model.tokenizer.apply_chat_template(
            self._system() + messages, tokenize=False, add_generation_prompt=True)

    def _encode(self, messages: list[dict]) -> tuple[list[int], str]:
        """The whole conversation encoded afresh."""
        if self.uses_template:
            rendered = self._render(messages)
        else:
            rendered = self.system or ""
            for message in messages:
                rendered = continue_text(rendered, message["content"])
        return encode_prompt(self.model, rendered, raw=True), rendered

    def _extend(self, user: dict) -> Optional[tuple[list[int], str]]:
        """The previous tokens plus the new text only; None when the template rewrote history."""
        if self.uses_template:
            rendered = self._render(self.messages + [user])
            if not rendered.startswith(self._rendered):
                return None
        else:
            rendered = continue_text(self._rendered, user["content"])
        new_text = rendered[len(self._rendered):]
        new = self.model.tokenizer.encode(new_text, add_special_tokens=False)
        return self._tokens + list(new), rendered

    # -- reports -------------------------------------------------------------------------------
    def transcript(self) -> dict:
        return {"model": self.model.path, "chat_template": self.uses_template,
                "system": self.system, "method": self.method, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "messages": list(self.log), "in_context": len(self.messages),
                "turns": [asdict(t) for t in self.turns]}

    def save(self, path: str) -> Path:
        target = Path(path).expanduser()
        try:
            target.write_text(json.dumps(self.transcript(), indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise MlxSpecError(f"cannot write {target}: {exc.strerror or exc}") from None
        return target
