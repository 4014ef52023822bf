"""DSI messages over MLX's own distributed layer (mx.distributed: ring over TCP, or any backend
with point-to-point send/recv).

Messages are token blocks. A job is one fixed-size int32 message: header fields, then the token
delta (the context the worker lacks, then the chain) when it fits, else the delta follows as a
second message; for sampled drafts only, the drafter's probabilities of the chain follow. A reply
is one fixed-size message: fields and the tokens the target chose. recv needs the shape up front,
hence fixed sizes; one message per direction per job because on a busy machine every message
costs a process wake-up (measured here: 0.3 to 8 ms per small ping-pong under load).

Failure detection, and why it looks like this: mx.distributed.recv blocks with no timeout, and a
blocked recv occupies the stream it runs on. So each worker gets a receiver thread with its own
CPU stream (streams are per thread in MLX) that blocks in recv and puts replies on a queue; the
orchestrator waits on that queue with a deadline. A worker that dies closes its socket: the ring
backend raises "connection to a peer was lost" in that thread, reported as a Failure at once. A
worker that hangs keeps its socket open: only the orchestrator's deadline catches it; its
receiver thread stays blocked (a daemon) and the worker is never sent to again. Measured on this
machine: after a peer dies, traffic with the other peers continues normally.
"""
from __future__ import annotations

import queue
import threading
from typing import Optional

import mlx.core as mx
import numpy as np

from ..engine import _common_prefix
from ..sampling import SamplingParams
from .orchestrator import Event, Failure, Job, Result

JOB_FIELDS, JOB_SIZE = 12, 256      # [kind, job id, keep, tail length, chain length, vocab, seed,
                                    #  top_k, temperature, top_p, min_p (bits), 0], then tokens
REPLY_FIELDS, REPLY_SIZE = 4, 64    # [kind, job id, token count, accepted drafts], then tokens
JOB, RESULT, SHUTDOWN, ERROR = 1, 2, 3, 4


def frame(fields: list[int], payload: list[int], size: int) -> tuple[list[int], Optional[list[int]]]:
    """The fixed-size first message, and the payload to send after it if it does not fit."""
    room = size - len(fields)
    if len(payload) <= room:
        return fields + payload + [0] * (room - len(payload)), None
    return fields + [0] * room, payload


def unframe(message: list[int], n_fields: int, length: int, recv_rest) -> tuple[list[int], list[int]]:
    fields = message[:n_fields]
    if length <= len(message) - n_fields:
        return fields, message[n_fields:n_fields + length]
    return fields, recv_rest(length)


def encode_sampling(params: SamplingParams) -> list[int]:
    floats = np.array([params.temperature, params.top_p, params.min_p], dtype=np.float32)
    return [params.top_k, *floats.view(np.int32).tolist()]


def decode_sampling(fields: list[int]) -> SamplingParams:
    temperature, top_p, min_p = np.array(fields[1:4], dtype=np.int32).view(np.float32).tolist()
    return SamplingParams(temperature=temperature, top_p=top_p, top_k=int(fields[0]), min_p=min_p)


class _ThreadStreams(threading.local):
    """MLX streams belong to the thread that made them: one CPU stream per thread."""

    def get(self):
        if not hasattr(self, "stream"):
            self.stream = mx.new_stream(mx.cpu)
        return self.stream


class RingPool:
    """The orchestrator's side: rank 0 of `group`; ranks 1.. are workers."""

    def __init__(self, group):
        self.group = group
        self.worker_ids = list(range(1, group.size()))
        self.events: "queue.Queue[Event]" = queue.Queue()
        self.cached: dict[int, list[int]] = {w: [] for w in self.worker_ids}  # mirrors worker caches
        self.abandoned: set[int] = set()
        self.on_abandon = None  # set by whoever can stop a worker (local processes: kill it)
        self._streams = _ThreadStreams()
        self._threads = [threading.Thread(target=self._receive, args=(worker,), daemon=True,
                                          name=f"dsi-recv-{worker}") for worker in self.worker_ids]
        for thread in self._threads:
            thread.start()

    # -- sending --------------------------------------------------------------------------------
    def _send(self, array: mx.array, worker: int) -> None:
        mx.eval(mx.distributed.send(array, worker, group=self.group, stream=self._streams.get()))

    def submit(self, worker: int, job: Job, sampling: SamplingParams) -> None:
        keep = _common_prefix(self.cached[worker], job.context)
        tail = job.context[keep:] + job.chain
        vocab = int(job.draft_probs.shape[-1]) if job.draft_probs is not None else 0
        fields = [JOB, job.id, keep, len(tail), len(job.chain), vocab, job.seed,
                  *encode_sampling(sampling), 0]
        message, rest = frame(fields, tail, JOB_SIZE)
        try:
            self._send(mx.array(message, dtype=mx.int32), worker)
            if rest is not None:
                self._send(mx.array(rest, dtype=mx.int32), worker)
            if vocab:
                self._send(job.draft_probs.astype(mx.float32), worker)
        except RuntimeError as exc:  # the connection is gone: the worker failed
            self.events.put(Failure(worker, str(exc)))
            return
        self.cached[worker] = job.context + job.chain

    def abandon(self, worker: int) -> None:
        self.abandoned.add(worker)
        if self.on_abandon is not None:
            self.on_abandon(worker)

    def post(self, event) -> None:
        self.events.put(event)

    def close(self, timeout: float = 5.0) -> None:
        """Ask every live worker to stop and wait for their acknowledgements."""
        for worker in self.worker_ids:
            if worker not in self.abandoned:
                try:
                    self._send(mx.array(frame([SHUTDOWN], [], JOB_SIZE)[0], dtype=mx.int32), worker)
                except RuntimeError:
                    self.abandoned.add(worker)
        for worker, thread in zip(self.worker_ids, self._threads):
            if worker not in self.abandoned:  # an abandoned (hung) worker never acknowledges
                thread.join(timeout)

    # -- receiving ------------------------------------------------------------------------------
    def wait(self, timeout: Optional[float]) -> Optional[Event]:
        try:
            if timeout == 0:
                return self.events.get_nowait()
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def _recv(self, shape, dtype, worker: int) -> mx.array:
        array = mx.distributed.recv(shape, dtype, worker, group=self.group,
                                    stream=self._streams.get())
        mx.eval(array)
        return array

    def _receive(self, worker: int) -> None:
        try:
            while True:
                message = self._recv((REPLY_SIZE,), mx.int32, worker).tolist()
                kind, job_id, n, accepted = message[:REPLY_FIELDS]
                if kind == RESULT:
                    _, tokens = unframe(message, REPLY_FIELDS, n, lambda length: self._recv(
                        (length,), mx.int32, worker).tolist())
                    self.events.put(Result(worker, job_id, tokens, accepted))
                elif kind == SHUTDOWN:
                    return
                else:
                    self.events.put(Failure(worker, f"worker reported an error on job {job_id}"))
                    return
        except RuntimeError as exc:
            self.events.put(Failure(worker, str(exc)))
