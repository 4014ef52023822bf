"""Running the drafter beside the orchestrator, so that a worker's reply is acted on at once even
while a token is being drafted (the drafter never blocks verification, and a rejection restarts
drafting without waiting for a stale draft to finish being used).

A runner takes one drafting step at a time (`start`) and posts the result as a `Drafted` event on
the pool's event stream, tagged with the speculation version it was asked for: results for a
version that a rejection has since replaced are dropped by the orchestrator.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import mlx.core as mx

from ..drafters.base import Drafter, StepContext
from ..errors import MlxSpecError


@dataclass
class Drafted:
    version: int
    tokens: list[int]
    probs: list          # per drafted token, the drafter's distribution (mx.array) or None
    asked: int
    seconds: float


def draft_once(drafter: Drafter, ctx: StepContext, version: int, restart: Optional[list[int]]) -> Drafted:
    t0 = time.perf_counter()
    if restart is not None:
        # drafters expect their context to only grow (pld's index does): a rejection rolled the
        # speculation back, which to them is a request starting from the committed text
        drafter.begin(restart)
    tree = drafter.propose(ctx)
    drafter.while_verifying(ctx)
    if not tree.is_chain:
        raise MlxSpecError("dsi needs a drafter that proposes chains (draft, pld, adaedl)")
    tokens = [int(t) for t in tree.tokens[1:ctx.max_drafts + 1]]
    probs = [tree.draft_probs[i + 1] if tree.draft_probs is not None else None
             for i in range(len(tokens))]
    if tree.draft_probs is not None:
        mx.eval(tree.draft_probs)
    return Drafted(version, tokens, probs, ctx.max_drafts, time.perf_counter() - t0)


class InlineDrafting:
    """Drafts in the caller's thread (fakes and simple tests)."""

    def __init__(self, drafter: Drafter, post: Callable[[object], None]):
        self.drafter, self.post = drafter, post

    def begin(self, prompt: list[int]) -> None:
        self.drafter.begin(prompt)

    def end(self) -> None:
        self.drafter.end()

    def start(self, version: int, ctx: StepContext, restart: Optional[list[int]] = None) -> None:
        self.post(draft_once(self.drafter, ctx, version, restart))


class ThreadedDrafting:
    """Drafts on its own thread (with its own MLX stream: streams belong to threads)."""

    def __init__(self, drafter: Drafter, post: Callable[[object], None]):
        self.drafter, self.post = drafter, post
        self.requests: "queue.Queue" = queue.Queue()
        self.idle = threading.Event()
        self.idle.set()
        threading.Thread(target=self._serve, daemon=True, name="dsi-drafter").start()

    def _serve(self) -> None:
        with mx.stream(mx.new_stream(mx.cpu)):
            while True:
                call = self.requests.get()
                try:
                    result = call()
                except BaseException as exc:  # noqa: BLE001  (handed to the orchestrator)
                    result = exc
                self.idle.set()
                if result is not None:
                    self.post(result)

    def _run(self, call) -> None:
        self.idle.clear()
        self.requests.put(call)

    def _run_and_wait(self, fn) -> None:
        box = {}
        self._run(lambda: box.update(error=_call(fn)))  # returns None: nothing is posted
        self.idle.wait()
        if box.get("error") is not None:
            raise box["error"]

    def begin(self, prompt: list[int]) -> None:
        self.idle.wait()
        self._run_and_wait(lambda: self.drafter.begin(prompt))

    def end(self) -> None:
        self.idle.wait()
        self._run_and_wait(self.drafter.end)

    def start(self, version: int, ctx: StepContext, restart: Optional[list[int]] = None) -> None:
        self._run(lambda: draft_once(self.drafter, ctx, version, restart))


def _call(fn) -> Optional[BaseException]:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001
        return exc
    return None
