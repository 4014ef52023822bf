"""DSI messages over MLX's own distributed layer (mx.distributed's ring backend over TCP), any
number of workers: packets to ranks that are not rank 0's ring neighbours are relayed by the
workers in between (ring.py).

Messages are token blocks. A job packet carries header fields, then the token delta (the context
the worker lacks, then the chain), then, for sampled drafts only, the drafter's probabilities of
the chain. A reply carries the job id, the number of accepted drafts and the tokens the target
chose. One message per hop for token blocks: on a busy machine every message costs a process
wake-up (measured here: 0.3 to 8 ms per small ping-pong under load).

Failure detection, and why it looks like this: mx.distributed.recv blocks with no timeout, so
each rank listens to each ring neighbour on its own thread and replies reach the orchestrator
through a queue that it waits on with a deadline. A worker that dies closes its sockets: its ring
neighbours' recv raises "connection to a peer was lost"; rank 0 sees that directly for its own
neighbours, and a worker that loses a neighbour tells rank 0 (the other way round the ring). A
worker that hangs keeps its sockets open: only the orchestrator's deadline catches it.

Relays make two more things necessary. Packets that were inside a relay when it died are lost:
when a worker is abandoned, every live worker whose jobs travelled through it gets its job in
flight again (same id) by the other way round, with its cache mirror reset (the job carries the
whole context) and a new epoch; the worker drops any older-epoch job that arrives late, so its
cache always matches the mirror. A relay that hangs looks like a hang of every worker behind it:
a late job that went through relays is first re-sent another way (`reroute`, those relays avoided
from then on), and only a second miss fails the worker. Shutdown goes farthest worker first, so every acknowledgement
still has live relays on its way back.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Optional

import mlx.core as mx
import numpy as np

from ..kv import common_prefix
from ..sampling import SamplingParams
from .orchestrator import Event, Failure, Job, Result
from .ring import JOB, PEER_LOST, RESULT, SHUTDOWN, RingNode, closing_order

# job payload: [job id, keep, tail length, chain length, vocab, seed, top_k, temperature, top_p,
#               min_p (float bits), epoch], then the tail tokens, then the probabilities' bits
JOB_FIELDS = 11


def encode_sampling(params: SamplingParams) -> list[int]:
    floats = np.array([params.temperature, params.top_p, params.min_p], dtype=np.float32)
    return [params.top_k, *floats.view(np.int32).tolist()]


def decode_sampling(fields: list[int]) -> SamplingParams:
    temperature, top_p, min_p = np.array(fields[1:4], dtype=np.int32).view(np.float32).tolist()
    return SamplingParams(temperature=temperature, top_p=top_p, top_k=int(fields[0]), min_p=min_p)


def encode_job(job: Job, keep: int, tail: list[int], sampling: SamplingParams, epoch: int) -> np.ndarray:
    vocab = int(job.draft_probs.shape[-1]) if job.draft_probs is not None else 0
    fields = [job.id, keep, len(tail), len(job.chain), vocab, job.seed, *encode_sampling(sampling),
              epoch]
    parts = [np.array(fields + list(tail), dtype=np.int32)]
    if vocab:
        parts.append(np.array(job.draft_probs.astype(mx.float32)).view(np.int32).ravel())
    return np.concatenate(parts)


def decode_job(payload: np.ndarray) -> dict:
    fields = payload[:JOB_FIELDS].tolist()
    job_id, keep, n_tail, n_chain, vocab, seed = fields[:6]
    tail = payload[JOB_FIELDS:JOB_FIELDS + n_tail].tolist()
    probs = None
    if vocab:
        bits = payload[JOB_FIELDS + n_tail:JOB_FIELDS + n_tail + n_chain * vocab]
        probs = mx.array(bits.view(np.float32).reshape(n_chain, vocab))
    return dict(job_id=job_id, keep=keep, tail=tail, n_chain=n_chain, seed=seed,
                sampling=decode_sampling(fields[6:10]), epoch=fields[10], probs=probs)


class RingPool:
    """The orchestrator's side: rank 0 of `group`; ranks 1.. are workers."""

    def __init__(self, group):
        self.worker_ids = list(range(1, group.size()))
        self.events: "queue.Queue[Event]" = queue.Queue()
        self.cached: dict[int, list[int]] = {w: [] for w in self.worker_ids}  # mirrors worker caches
        self.epoch = {w: 0 for w in self.worker_ids}
        self.relays: dict[int, list[int]] = {w: [] for w in self.worker_ids}  # of the last job
        self.in_flight: dict[int, tuple[Job, SamplingParams]] = {}
        self.abandoned: set[int] = set()
        self.suspects: set[int] = set()   # relays avoided since a job through them was late
        self.closing: set[int] = set()
        self.acknowledged: set[int] = set()
        self.on_abandon = None  # set by whoever can stop a worker (local processes: kill it)
        self._lock = threading.Lock()
        self.node = RingNode(group, self._deliver, self._link_lost)

    # -- sending --------------------------------------------------------------------------------
    def submit(self, worker: int, job: Job, sampling: SamplingParams) -> None:
        way = (self.node.toward(worker, avoid=self.abandoned | self.suspects)
               or self.node.toward(worker, avoid=self.abandoned))
        if way is None:
            self.events.put(Failure(worker, "no way to it round the ring (workers on both "
                                    "sides failed)"))
            return
        via, relays = way
        keep = common_prefix(self.cached[worker], job.context)
        tail = job.context[keep:] + job.chain
        with self._lock:
            self.in_flight[worker] = (job, sampling)
            self.relays[worker] = relays
        # (a send that fails reports its link as lost: a Failure of that neighbour)
        self.node.send(worker, JOB, encode_job(job, keep, tail, sampling, self.epoch[worker]), via)
        self.cached[worker] = job.context + job.chain

    def reroute(self, worker: int) -> bool:
        """The worker's job is late and went through relays: maybe a relay hangs, not the worker.
        Avoid those relays from now on and re-send the job another way (False: no other way)."""
        with self._lock:
            relays, pending = self.relays[worker], self.in_flight.get(worker)
        if not relays or pending is None:
            return False
        if self.node.toward(worker, avoid=self.abandoned | self.suspects | set(relays)) is None:
            return False
        self.suspects.update(relays)
        self._resend(worker, *pending)
        return True

    def _resend(self, worker: int, job: Job, sampling: SamplingParams) -> None:
        """Again with the whole context and a new epoch: the first copy may be lost or late."""
        self.cached[worker] = []
        self.epoch[worker] += 1
        self.submit(worker, job, sampling)

    def abandon(self, worker: int) -> None:
        self.abandoned.add(worker)
        if self.on_abandon is not None:
            self.on_abandon(worker)
        with self._lock:
            stranded = [(w, job, sampling) for w, (job, sampling) in self.in_flight.items()
                        if worker in self.relays[w] and w not in self.abandoned]
            self.in_flight.pop(worker, None)
        for w, job, sampling in stranded:  # its packets may have died inside the relay
            self._resend(w, job, sampling)

    def post(self, event) -> None:
        self.events.put(event)

    def close(self, timeout: float = 5.0) -> None:
        """Ask every live worker to stop, farthest first, and wait for each acknowledgement, then
        for the listeners to take their neighbours' goodbyes (none may be inside MLX at exit)."""
        size = len(self.worker_ids) + 1
        for worker in sorted(self.worker_ids, key=lambda w: closing_order(w, size), reverse=True):
            way = self.node.toward(worker, avoid=self.abandoned)
            if worker in self.abandoned or worker in self.closing or way is None:
                continue  # (closing: asked already; close may run twice, e.g. again at exit)
            self.closing.add(worker)
            self.node.send(worker, SHUTDOWN, [], way[0])
            deadline = time.monotonic() + timeout
            while (worker not in self.acknowledged and way[0] not in self.node.lost
                   and time.monotonic() < deadline):
                time.sleep(0.002)
        self.node.wait_listeners(timeout, skip=self.abandoned)

    # -- receiving (listener threads) -----------------------------------------------------------
    def wait(self, timeout: Optional[float]) -> Optional[Event]:
        try:
            if timeout == 0:
                return self.events.get_nowait()
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def _deliver(self, src: int, kind: int, payload: np.ndarray, via: int) -> None:
        if kind == RESULT:
            job_id, accepted = payload[:2].tolist()
            with self._lock:
                if src in self.in_flight and self.in_flight[src][0].id == job_id:
                    del self.in_flight[src]
            self.events.put(Result(src, job_id, payload[2:].tolist(), accepted))
        elif kind == SHUTDOWN:
            self.acknowledged.add(src)
        elif kind == PEER_LOST:
            lost = int(payload[0])
            if lost not in self.closing:
                self.events.put(Failure(lost, f"connection lost (seen by worker {src})"))
        else:
            self.events.put(Failure(src, f"worker reported an error on job {int(payload[0])}"))

    def _link_lost(self, neighbour: int, reason: str) -> None:
        if neighbour not in self.closing:
            self.events.put(Failure(neighbour, reason))
