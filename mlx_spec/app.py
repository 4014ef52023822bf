"""Generation for apps: load once, generate on one background thread, stream into a UI, cancel.

    worker = Worker(mlx_spec.load())              # one thread owns every MLX call
    generation = worker.submit("Once upon a time", max_tokens=200)
    for chunk in generation:                       # the UI thread reads chunks as they arrive
        show(chunk.text)
    generation.cancel()                            # from any thread; takes effect between steps
    result = generation.wait()                     # GenerationResult; finish_reason "cancelled"

Generations submitted to one Worker run in order, one at a time, and share one Decoder per method,
so the target's KV cache (a shared prompt prefix is not prefilled again) and the drafters' state
(tries, draft-model caches) carry over from one generation to the next.
"""
from __future__ import annotations

import atexit
import queue
import threading
from typing import Iterable, Iterator, Optional, Sequence, Union

import mlx.core as mx

from .api import GenerationChunk, GenerationResult, collect, make_decoder, stream_generate
from .engine import Decoder
from .methods import DEFAULT as DEFAULT_METHOD
from .loading import SpecModel
from .target import Target

CANCELLED = "cancelled"
_END = object()  # queue sentinel: the generation is over (its result or error is set)


class DecoderPool:
    """One decoder per (method, options) for one model, made on first use and kept, so drafter
    state (tries, draft-model caches) persists across requests. The engine's decoders all share
    one Target, that is one cache with the tokens it holds (kv.TokenCache), so a switch of method
    does not prefill the conversation again. (A decoder of another kind, such as dsi's, keeps its
    own caches.)"""

    def __init__(self, model: SpecModel):
        self.model = model
        self.target = Target(model.model)
        self._decoders: dict[tuple, Decoder] = {}
        self._foreign = False  # a decoder of another kind (dsi) was made

    def get(self, method: str, **options) -> Decoder:
        key = (method, tuple(sorted(options.items())))
        decoder = self._decoders.get(key)
        if decoder is None:
            decoder = make_decoder(self.model, method, **options)
            if decoder.target is not None:  # decodes through a Target: share the pool's one
                decoder.target = self.target
            else:  # its own caches (dsi's workers, the mlx-lm baseline)
                self._foreign = True
            self._decoders[key] = decoder
        return decoder

    def clear(self) -> None:
        """Drop every decoder: the KV cache and all drafter state are released, and MLX's cache
        of freed buffers is returned to the system."""
        for decoder in self._decoders.values():
            decoder.reset()
        self._decoders.clear()
        if not self._foreign:  # dsi's transport threads block in MLX; clearing would deadlock
            mx.clear_cache()


class Generation:
    """A handle on one generation running on a Worker's thread. Iterate it (from one thread) to
    receive GenerationChunks as they are produced; cancel() and wait() may be called from any."""

    def __init__(self, method: str = ""):
        self.method = method
        self._chunks: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._result: Optional[GenerationResult] = None
        self._error: Optional[BaseException] = None

    # -- the UI side ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[GenerationChunk]:
        while True:
            item = self._chunks.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item

    def cancel(self) -> None:
        """Ask the generation to stop; it stops before its next decoding step."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> GenerationResult:
        """Block until the generation is over; return what it produced (re-raise its error)."""
        if not self._done.wait(timeout):
            raise TimeoutError("the generation is still running")
        if self._error is not None:
            raise self._error
        return self._result

    # -- the worker side ---------------------------------------------------------------------------
    def _run(self, chunks: Iterable[GenerationChunk]) -> None:
        try:
            result = collect(self._forward(chunks), self.method)
            if self.cancelled and result.finish_reason is None:
                result.finish_reason = CANCELLED
            self._result = result
        except Exception as exc:  # handed to the UI thread, which re-raises it
            self._error = exc
        finally:
            self._done.set()
            self._chunks.put(_END)

    def _forward(self, chunks: Iterable[GenerationChunk]) -> Iterator[GenerationChunk]:
        """Pass chunks to the queue, checking for cancellation before each decoding step."""
        iterator = iter(chunks)
        try:
            while not self.cancelled:
                chunk = next(iterator, _END)
                if chunk is _END:
                    return
                self._chunks.put(chunk)
                yield chunk
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a stopped generator runs its cleanup now, on this thread


_open_workers: set = set()


@atexit.register
def _close_open_workers() -> None:
    """A Worker left open would end with the process, its MLX streams alive: stop it cleanly."""
    for worker in list(_open_workers):
        worker.close(cancel=True, timeout=10)


class Worker:
    """One background thread that runs generations for one model, in submission order."""

    def __init__(self, model: SpecModel, method: str = DEFAULT_METHOD, **method_options):
        self.model = model
        self.method = method
        self.method_options = method_options
        self.decoders = DecoderPool(model)
        self._jobs: queue.Queue = queue.Queue()
        self._current: Optional[Generation] = None
        self._thread = threading.Thread(target=self._serve, name="mlx-spec-worker", daemon=True)
        self._thread.start()
        _open_workers.add(self)

    def submit(self, prompt: Union[str, Sequence[int]], method: Optional[str] = None,
               method_options: Optional[dict] = None, **generate_options) -> Generation:
        """Queue a generation (mlx_spec.stream_generate options: max_tokens, temperature, seed,
        raw, stop, ...). Without `method_options`, the Worker's method options apply to its own
        method and another method named here runs with its defaults."""
        method = method or self.method
        options = method_options if method_options is not None else (
            self.method_options if method == self.method else {})

        def chunks():
            decoder = self.decoders.get(method, **options)
            yield from stream_generate(self.model, prompt, method=method, decoder=decoder,
                                       **generate_options)
        return self.run(chunks(), method)

    def run(self, chunks: Iterable[GenerationChunk], method: str = "") -> Generation:
        """Queue any lazy stream of chunks (e.g. a ChatSession turn) to run on the worker thread."""
        generation = Generation(method)
        self._jobs.put((generation, chunks))
        return generation

    def close(self, cancel: bool = False, timeout: Optional[float] = None) -> None:
        """Finish (or with cancel=True, cancel) the queued generations, then stop the thread."""
        if cancel:
            with self._jobs.mutex:
                pending = [job[0] for job in self._jobs.queue if job is not None]
            for generation in pending + [self._current]:
                if generation is not None:
                    generation.cancel()
        self._jobs.put(None)
        self._thread.join(timeout)
        _open_workers.discard(self)

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _serve(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                self._current, chunks = job
                self._current._run(chunks)
        finally:
            # MLX needs a thread's streams destroyed before the thread ends, or the process may
            # abort at exit ("terminate called without an active exception")
            mx.clear_streams()
