"""DSI scheduling (speculation parallelism), independent of how jobs reach the target workers.

The drafter runs ahead of verification. The speculated tokens after the committed text are cut
into jobs; a job is a chain [root, d1 .. dk] that a free worker verifies conditioned on everything
before the root (committed text plus earlier speculation). Jobs cover consecutive stretches: the
next job's root is the token right after this job's last draft, so one job's bonus prediction
checks the next job's root and no position is verified twice.

Results may arrive in any order; they are applied in order. For the oldest job:
- a rejected draft commits the accepted drafts plus the target's token, cancels every later job
  (built on the rejected suffix) and restarts drafting after the new token;
- all drafts accepted: the target's bonus token is compared with the next job's root; equal, the
  root commits too and the next job becomes the oldest; different (or no root drafted yet), the
  bonus commits and drafting restarts there.
Every committed token was chosen by the target (greedy argmax, or mlx_spec.accept's exact rule), so
the output equals the target's own. A bonus compared with an already-drafted root is the target's
own sample at that position, so matching it (rather than rejection sampling) stays exact.

Never slower than plain decoding: when no job is in flight, a free worker gets the next job at once,
even with no drafts (then it is one autoregressive step), so the target never waits for the drafter;
and the drafter runs beside the scheduler (drafting.py), one token per step, so a reply is acted on
as soon as it arrives.

Workers that fail (a lost connection, or no reply by a deadline: `job_timeout` at first, then 50x
the mean reply time, at least `min_job_timeout`) are dropped; their job goes
to another worker and `on_failure` tells the user. The pool interface (`submit`, `wait`,
`abandon`; optionally `reroute`) is all the transport must provide; tests drive it with in-process
fakes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Protocol, Sequence, Union

import mlx.core as mx

from ..drafters.base import Drafter, StepContext
from ..errors import MlxSpecError
from ..sampling import SamplingParams
from .drafting import Drafted, InlineDrafting


@dataclass
class Job:
    id: int
    first: int                      # index in the speculation of this job's first draft
    context: list[int]              # every token before the root: what the worker's cache holds
    chain: list[int]                # root, then drafts
    draft_probs: Optional[mx.array]  # [len(chain), V] (row 0 unused) for sampled drafts, else None
    seed: int
    worker: Optional[int] = None
    sent_at: float = 0.0
    result: Optional[tuple[list[int], int]] = None  # (accepted drafts + target token, n accepted)
    rerouted: bool = False          # re-sent another way round after missing its deadline

    @property
    def n_drafts(self) -> int:
        return len(self.chain) - 1


@dataclass
class Result:
    worker: int
    job_id: int
    tokens: list[int]   # accepted drafts, then the target's token
    accepted: int


@dataclass
class Failure:
    worker: int
    reason: str


Event = Union[Result, Failure, Drafted]


class WorkerPool(Protocol):
    worker_ids: Sequence[int]

    def submit(self, worker: int, job: Job, sampling: SamplingParams) -> None: ...

    def wait(self, timeout: Optional[float]) -> Optional[Event]: ...

    def abandon(self, worker: int) -> None: ...

    def post(self, event: Event) -> None:
        """Add an event to the stream `wait` reads (the drafter's results travel this way)."""


@dataclass
class Commit:
    tokens: list[int]
    finish: Optional[str]   # None, "stop", "length", "context"


@dataclass
class DsiCounters:
    jobs_sent: int = 0
    jobs_applied: int = 0       # results that decided committed tokens
    jobs_cancelled: int = 0     # sent, then made useless by an earlier rejection
    drafted: int = 0
    accepted: int = 0
    failures: list[str] = field(default_factory=list)
    draft_s: float = 0.0
    wait_s: float = 0.0
    replies: int = 0            # results received (used or not) and their total round-trip time:
    reply_s: float = 0.0        # the target latency as the orchestrator sees it (compute + messages)


class Orchestrator:
    def __init__(self, pool: WorkerPool, drafter: Drafter, lookahead: int = 4,
                 job_timeout: float = 60.0, on_failure: Optional[Callable[[int, str], None]] = None,
                 draft_chunk: int = 1, drafting=None, min_job_timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if lookahead < 1 or draft_chunk < 1:
            raise MlxSpecError(f"lookahead and draft_chunk must be >= 1, got {lookahead}, {draft_chunk}")
        self.pool, self.lookahead = pool, lookahead
        # tokens per drafting step: small steps keep the speculation close to what workers need
        # and waste little when a rejection makes the step in progress useless
        self.draft_chunk = draft_chunk
        self.drafting = drafting if drafting is not None else InlineDrafting(drafter, pool.post)
        self.job_timeout, self.min_job_timeout = job_timeout, min(min_job_timeout, job_timeout)
        self.on_failure = on_failure
        self.live = list(pool.worker_ids)      # workers not known to have failed
        self.assigned: dict[int, Job] = {}      # worker -> the job it is computing (maybe cancelled)
        self.next_job_id = 1                    # unique across requests: stale replies are ignored
        self.drafter_busy = False
        self.version = 0                        # speculation version; a rejection starts a new one
        self.counters = DsiCounters()
        self.clock = clock                      # the simulator runs the scheduler on a virtual one
        self.replies, self.reply_s = 0, 0.0     # over this orchestrator's life (deadlines)
        self.drafted_total, self.drafting_s = 0, 0.0  # drafter pace as the scheduler sees it
        self.accepted_total, self.rejections_total = 0, 0  # the acceptance rate so far
        self.draft_started = 0.0

    def worth_waiting(self, have: int) -> bool:
        """Should a job wait for its block to fill (lookahead drafts) rather than leave with
        `have`? Yes when the drafts still to come are expected to be accepted more often than
        plain decoding would produce tokens while waiting for them: sum of a^i over the missing
        positions i > (missing drafts x drafter pace) / target reply time. Unknown paces: no."""
        if self.replies < 3 or self.drafted_total < 3:
            return False
        a = self.accepted_total / max(1, self.accepted_total + self.rejections_total)
        gain = sum(a ** i for i in range(have + 1, self.lookahead + 1))
        wait = (self.lookahead - have) * self.drafting_s / self.drafted_total
        return gain > wait / (self.reply_s / self.replies)

    def reply_deadline(self) -> float:
        """How long a worker may take before it is declared hung: `job_timeout` until replies
        have been seen (the first jobs load models and prefill), then 50 times the mean reply
        time, at least min_job_timeout, at most job_timeout."""
        if self.replies < 5:
            return self.job_timeout
        return min(self.job_timeout, max(self.min_job_timeout, 50 * self.reply_s / self.replies))

    # -- public ---------------------------------------------------------------------------------
    def prefill(self, prompt: list[int], sampling: SamplingParams) -> None:
        """Bring every idle worker's cache to the prompt (its last token is the first root), the
        analogue of the target's prefill, so that decoding time measures decoding."""
        run = _Run(self, list(prompt), 0, sampling, frozenset(), None, 0)
        warming = []
        for worker in [w for w in self.live if w not in self.assigned]:
            job = Job(self.next_job_id, 0, list(prompt[:-1]), list(prompt[-1:]), None, seed=0)
            self.next_job_id += 1
            run._send(job, worker)
            warming.append(job)
        while any(self.assigned.get(job.worker) is job for job in warming):
            run._handle_events(block=True)
        self.counters = DsiCounters(failures=self.counters.failures)

    def generate(self, prompt: list[int], max_tokens: int, sampling: SamplingParams,
                 eos_token_ids=frozenset(), context_length: Optional[int] = None,
                 seed: int = 0) -> Iterator[Commit]:
        self.counters = DsiCounters(failures=self.counters.failures)
        run = _Run(self, list(prompt), max_tokens, sampling, frozenset(eos_token_ids),
                   context_length, seed)
        self._settle_drafter(run)
        self.drafting.begin(list(prompt))
        try:
            yield from run.loop()
        finally:
            self._settle_drafter(run)
            self.drafting.end()

    def _settle_drafter(self, run: "_Run") -> None:
        """Wait for a drafting step still running from an earlier request (its result is stale)."""
        while self.drafter_busy:
            run._handle_events(block=True)


class _Run:
    """One request: the committed text, the speculation after it and the jobs verifying it."""

    def __init__(self, orch: Orchestrator, prompt, max_tokens, sampling, eos, context_length, seed):
        self.o = orch
        self.committed = prompt
        self.limit, self.limit_reason = max_tokens, "length"
        if context_length and context_length - len(prompt) < max_tokens:
            self.limit, self.limit_reason = context_length - len(prompt), "context"
        self.generated = 0
        self.sampling, self.eos = sampling, eos
        self.key = mx.random.key(seed)
        self.seed = seed
        self.spec: list[int] = []             # speculated tokens after committed[-1]
        self.spec_probs: list = []            # per speculated token: the drafter's distribution
        self.jobs: list[Job] = []             # in order of `first`; front = oldest
        self.stalled = False                  # the drafter proposed fewer tokens than asked
        self.restart_from: Optional[list[int]] = None  # the drafter must start over from these
        orch.version += 1
        self.out: list[Commit] = []
        self.finish: Optional[str] = None

    # -- main loop ------------------------------------------------------------------------------
    def loop(self) -> Iterator[Commit]:
        if self.limit <= 0:
            yield Commit([], self.limit_reason)
            return
        while self.finish is None:
            self._dispatch()
            if not self.o.drafter_busy and self._wants_drafts():
                self._start_draft()
            self._handle_events(block=True)
            yield from self._flush()
        yield from self._flush()

    def _flush(self) -> Iterator[Commit]:
        out, self.out = self.out, []
        yield from out

    # -- drafting -------------------------------------------------------------------------------
    def _next_first(self) -> int:
        """Index in spec of the first draft of the next job (its root sits just before)."""
        if not self.jobs:
            return 0
        last = self.jobs[-1]
        return last.first + last.n_drafts + 1

    def _room(self) -> int:
        """Tokens that may still be speculated without passing the generation limit."""
        return self.limit - self.generated - len(self.spec)

    def _wants_drafts(self) -> bool:
        if self.stalled or self._room() <= 0:
            return False
        depth_cap = (self.o.lookahead + 1) * (len(self.o.live) + 1)
        return len(self.spec) < depth_cap

    def _start_draft(self) -> None:
        needed = self.o.lookahead - (len(self.spec) - self._next_first())
        m = max(1, min(needed, self.o.draft_chunk, self._room()))
        self.key, draft_key = mx.random.split(self.key)
        ctx = StepContext(tokens=self.committed + self.spec, max_drafts=m, sampling=self.sampling,
                          key=draft_key)
        self.o.drafter_busy = True
        self.o.draft_started = self.o.clock()
        restart, self.restart_from = self.restart_from, None
        self.o.drafting.start(self.o.version, ctx, restart)

    def _drafted(self, event: Drafted) -> None:
        self.o.drafter_busy = False
        self.o.counters.draft_s += event.seconds
        if event.tokens:
            self.o.drafted_total += len(event.tokens)
            self.o.drafting_s += self.o.clock() - self.o.draft_started
        if event.version != self.o.version:
            return  # drafted after speculation that a rejection has since discarded
        self.spec.extend(event.tokens)
        self.spec_probs.extend(event.probs)
        self.o.counters.drafted += len(event.tokens)
        if len(event.tokens) < event.asked:
            self.stalled = True

    # -- dispatching ----------------------------------------------------------------------------
    def _free_workers(self) -> list[int]:
        return [w for w in self.o.live if w not in self.o.assigned]

    def _dispatch(self) -> None:
        free = self._free_workers()
        for job in self.jobs:  # re-issue jobs whose worker failed, oldest first
            if job.worker is None and free:
                self._send(job, free.pop(0))
        while free:
            job = self._make_job()
            if job is None:
                return
            self.jobs.append(job)
            self._send(job, free.pop(0))

    def _make_job(self) -> Optional[Job]:
        first = self._next_first()
        available = len(self.spec) - first
        if available < 0:
            return None  # the root itself is not drafted yet
        if available < self.o.lookahead and not self.stalled and self._room() > 0:
            # a short job leaves only when nothing is in flight (the target must not idle), and
            # not when the missing drafts are worth their wait (see worth_waiting)
            if self.jobs or self.o.worth_waiting(available):
                return None
        n = min(available, self.o.lookahead)
        root = self.committed[-1] if first == 0 else self.spec[first - 1]
        context = self.committed[:-1] if first == 0 else self.committed + self.spec[:first - 1]
        chain = [root] + self.spec[first:first + n]
        probs = None
        if not self.sampling.greedy and n and self.spec_probs[first] is not None:
            rows = self.spec_probs[first:first + n]
            probs = mx.stack([mx.zeros_like(rows[0]), *rows])
        job = Job(self.o.next_job_id, first, context, chain, probs,
                  seed=(self.seed * 1_000_003 + self.o.next_job_id) % (1 << 31))
        self.o.next_job_id += 1
        return job

    def _send(self, job: Job, worker: int) -> None:
        job.worker, job.sent_at, job.rerouted = worker, self.o.clock(), False
        self.o.assigned[worker] = job
        self.o.counters.jobs_sent += 1
        self.o.pool.submit(worker, job, self.sampling)

    # -- events ---------------------------------------------------------------------------------
    def _handle_events(self, block: bool) -> None:
        timeout = self._deadline_in() if block else 0.0
        t0 = time.perf_counter()
        event = self.o.pool.wait(timeout)
        self.o.counters.wait_s += time.perf_counter() - t0
        while event is not None:
            self._apply(event)
            event = self.o.pool.wait(0.0)
        self._expire_hung_workers()
        self._resolve()

    def _deadline_in(self) -> Optional[float]:
        if not self.o.assigned:
            return None if self.o.drafter_busy else 1.0  # (1.0: nothing in flight; never hang)
        oldest = min(job.sent_at for job in self.o.assigned.values())
        return max(0.0, oldest + self.o.reply_deadline() - self.o.clock())

    def _expire_hung_workers(self) -> None:
        now, deadline = self.o.clock(), self.o.reply_deadline()
        # a worker reached through relays (transport.py) may only be stuck behind a hung relay:
        # its job is first re-sent another way (pool.reroute) with a new deadline
        reroute = getattr(self.o.pool, "reroute", None)
        for worker, job in list(self.o.assigned.items()):
            if now - job.sent_at <= deadline:
                continue
            if reroute is not None and not job.rerouted and reroute(worker):
                job.rerouted, job.sent_at = True, now
                continue
            self._fail(worker, f"no reply within {deadline:.3g} s (hung)")

    def _apply(self, event: Event) -> None:
        if isinstance(event, BaseException):  # the drafter failed
            self.o.drafter_busy = False
            raise event
        if isinstance(event, Drafted):
            self._drafted(event)
            return
        if isinstance(event, Failure):
            self._fail(event.worker, event.reason)
            return
        job = self.o.assigned.get(event.worker)
        if job is None or job.id != event.job_id:
            return  # a reply from a worker already declared failed
        del self.o.assigned[event.worker]
        elapsed = self.o.clock() - job.sent_at
        self.o.counters.replies += 1
        self.o.counters.reply_s += elapsed
        self.o.replies += 1
        self.o.reply_s += elapsed
        if any(j is job for j in self.jobs):
            job.result = (event.tokens, event.accepted)
        else:
            self.o.counters.jobs_cancelled += 1

    def _fail(self, worker: int, reason: str) -> None:
        if worker not in self.o.live:
            return
        self.o.live.remove(worker)
        self.o.pool.abandon(worker)
        job = self.o.assigned.pop(worker, None)
        if job is not None and job.result is None:
            job.worker = None  # re-issued by _dispatch to a live worker
        message = f"DSI worker {worker} failed ({reason}); its jobs go to the other workers"
        self.o.counters.failures.append(message)
        if self.o.on_failure is not None:
            self.o.on_failure(worker, reason)
        if not self.o.live:
            raise MlxSpecError(f"every DSI worker failed; the last: {reason}")

    # -- committing -----------------------------------------------------------------------------
    def _resolve(self) -> None:
        while self.finish is None and self.jobs and self.jobs[0].result is not None:
            job = self.jobs.pop(0)
            tokens, accepted = job.result
            self.o.counters.jobs_applied += 1
            self.o.counters.accepted += accepted
            self.o.accepted_total += accepted
            self.o.rejections_total += accepted < job.n_drafts
            n = job.n_drafts
            if accepted < n:
                new, restart = self.spec[:accepted] + [tokens[-1]], True
            elif len(self.spec) > n and self.spec[n] == tokens[-1]:
                new, restart = self.spec[:n + 1], False  # the next job's root is confirmed
            else:
                new, restart = self.spec[:n] + [tokens[-1]], True
            self._commit(new)
            if restart:
                self.o.counters.jobs_cancelled += sum(1 for j in self.jobs if j.worker is not None)
                self.jobs.clear()
                self.spec, self.spec_probs, self.stalled = [], [], False
                self.o.version += 1
                self.restart_from = list(self.committed)
            else:
                del self.spec[:len(new)], self.spec_probs[:len(new)]
                for later in self.jobs:
                    later.first -= len(new)

    def _commit(self, new: list[int]) -> None:
        room = self.limit - self.generated
        for i, token in enumerate(new):
            if token in self.eos:
                new, self.finish = new[:i], "stop"
                break
        if self.finish is None and len(new) >= room:
            new, self.finish = new[:room], self.limit_reason
        self.committed.extend(new)
        self.generated += len(new)
        self.out.append(Commit(new, self.finish))
