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


class _Workers:
    """The target workers as the scheduler sees them: who is alive, which job each computes, how
    long replies take (hence when a worker counts as hung), and the pool that carries the jobs."""

    def __init__(self, pool: WorkerPool, job_timeout: float, min_job_timeout: float,
                 on_failure: Optional[Callable[[int, str], None]], clock: Callable[[], float]):
        self.pool = pool
        self.live = list(pool.worker_ids)      # workers not known to have failed
        self.assigned: dict[int, Job] = {}      # worker -> the job it is computing (maybe cancelled)
        self.next_job_id = 1                    # unique across requests: stale replies are ignored
        self.job_timeout, self.min_job_timeout = job_timeout, min(min_job_timeout, job_timeout)
        self.on_failure = on_failure
        self.clock = clock                      # the simulator runs the scheduler on a virtual one
        self.replies, self.reply_s = 0, 0.0     # over the orchestrator's life (deadlines), but
        self.replied: set[int] = set()          # each worker's first reply: it loads the model

    def free(self) -> list[int]:
        return [w for w in self.live if w not in self.assigned]

    def new_job_id(self) -> int:
        self.next_job_id += 1
        return self.next_job_id - 1

    def send(self, job: Job, worker: int, sampling: SamplingParams, counters: DsiCounters) -> None:
        job.worker, job.sent_at, job.rerouted = worker, self.clock(), False
        self.assigned[worker] = job
        counters.jobs_sent += 1
        self.pool.submit(worker, job, sampling)

    def reply_deadline(self) -> float:
        """How long a worker may take before it is declared hung: `job_timeout` until replies
        have been seen (the first jobs load models and prefill), then 50 times the mean reply
        time, at least min_job_timeout, at most job_timeout. Each worker's first reply is left
        out of the mean: its model's loading (seconds) would hold the deadline at 50 times it."""
        if self.replies < 5:
            return self.job_timeout
        return min(self.job_timeout, max(self.min_job_timeout, 50 * self.reply_s / self.replies))

    def deadline_in(self, drafter_busy: bool) -> Optional[float]:
        """Seconds until the oldest job in flight is late (None: wait for the drafter)."""
        if not self.assigned:
            return None if drafter_busy else 1.0  # (1.0: nothing in flight; never hang)
        oldest = min(job.sent_at for job in self.assigned.values())
        return max(0.0, oldest + self.reply_deadline() - self.clock())

    def late(self) -> list[tuple[int, Job]]:
        """Workers whose job is past the deadline; those that travel through relays
        (transport.py) may only be stuck behind a hung relay, so their job is first re-sent
        another way (pool.reroute) with a new deadline and is not returned."""
        now, deadline = self.clock(), self.reply_deadline()
        reroute = getattr(self.pool, "reroute", None)
        late = []
        for worker, job in list(self.assigned.items()):
            if now - job.sent_at <= deadline:
                continue
            if reroute is not None and not job.rerouted and reroute(worker):
                job.rerouted, job.sent_at = True, now
                continue
            late.append((worker, job))
        return late

    def receive(self, result: Result, counters: DsiCounters) -> Optional[Job]:
        """The job a reply answers (None: a reply from a worker already declared failed)."""
        job = self.assigned.get(result.worker)
        if job is None or job.id != result.job_id:
            return None
        del self.assigned[result.worker]
        elapsed = self.clock() - job.sent_at
        counters.replies += 1
        counters.reply_s += elapsed
        if result.worker in self.replied:
            self.replies += 1
            self.reply_s += elapsed
        self.replied.add(result.worker)
        return job

    def fail(self, worker: int, reason: str, counters: DsiCounters) -> Optional[Job]:
        """Drop a worker; returns the job it was computing (to be re-issued), if any."""
        if worker not in self.live:
            return None
        self.live.remove(worker)
        self.pool.abandon(worker)
        job = self.assigned.pop(worker, None)
        counters.failures.append(f"DSI worker {worker} failed ({reason}); its jobs go to the "
                                 "other workers")
        if self.on_failure is not None:
            self.on_failure(worker, reason)
        if not self.live:
            raise MlxSpecError(f"every DSI worker failed; the last: {reason}")
        return job


class _DraftLane:
    """The drafter running beside the scheduler: the speculation version it drafts for (a
    rejection starts a new one), whether a drafting step is in flight, and its pace."""

    def __init__(self, drafting, clock: Callable[[], float]):
        self.drafting = drafting
        self.clock = clock
        self.busy = False
        self.version = 0
        self.started = 0.0
        self.drafted, self.seconds = 0, 0.0  # drafter pace as the scheduler sees it

    def start(self, ctx: StepContext, restart: Optional[list[int]]) -> None:
        self.busy, self.started = True, self.clock()
        self.drafting.start(self.version, ctx, restart)

    def finished(self, event: Drafted, counters: DsiCounters) -> bool:
        """A drafting step ended; True when its tokens extend the current speculation."""
        self.busy = False
        counters.draft_s += event.seconds
        if event.tokens:
            self.drafted += len(event.tokens)
            self.seconds += self.clock() - self.started
        return event.version == self.version

    def seconds_per_token(self) -> Optional[float]:
        return self.seconds / self.drafted if self.drafted >= 3 else None


class Orchestrator:
    def __init__(self, pool: WorkerPool, drafter: Drafter, block: int = 4,
                 job_timeout: float = 60.0, on_failure: Optional[Callable[[int, str], None]] = None,
                 draft_chunk: int = 1, drafting=None, min_job_timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if block < 1 or draft_chunk < 1:
            raise MlxSpecError(f"block and draft_chunk must be >= 1, got {block}, {draft_chunk}")
        self.block = block
        # tokens per drafting step: small steps keep the speculation close to what workers need
        # and waste little when a rejection makes the step in progress useless
        self.draft_chunk = draft_chunk
        self.workers = _Workers(pool, job_timeout, min_job_timeout, on_failure, clock)
        self.lane = _DraftLane(drafting if drafting is not None else InlineDrafting(drafter, pool.post),
                               clock)
        self.counters = DsiCounters()
        self.accepted_total, self.rejections_total = 0, 0  # the acceptance rate so far

    @property
    def live(self) -> list[int]:
        return self.workers.live

    @property
    def pool(self) -> WorkerPool:
        return self.workers.pool

    def reply_deadline(self) -> float:
        return self.workers.reply_deadline()

    def worth_waiting(self, have: int) -> bool:
        """Should a job wait for its block to fill (block drafts) rather than leave with
        `have`? Yes when the drafts still to come are expected to be accepted more often than
        plain decoding would produce tokens while waiting for them: sum of a^i over the missing
        positions i > (missing drafts x drafter pace) / target reply time. Unknown paces: no."""
        pace, w = self.lane.seconds_per_token(), self.workers
        if w.replies < 3 or pace is None:
            return False
        a = self.accepted_total / max(1, self.accepted_total + self.rejections_total)
        gain = sum(a ** i for i in range(have + 1, self.block + 1))
        wait = (self.block - have) * pace
        return gain > wait / (w.reply_s / w.replies)

    # -- public ---------------------------------------------------------------------------------
    def prefill(self, prompt: list[int], sampling: SamplingParams) -> None:
        """Bring every idle worker's cache to the prompt (its last token is the first root), the
        analogue of the target's prefill, so that decoding time measures decoding."""
        run = _Run(self, list(prompt), 0, sampling, frozenset(), None, 0)
        warming = []
        for worker in self.workers.free():
            job = Job(self.workers.new_job_id(), 0, list(prompt[:-1]), list(prompt[-1:]), None,
                      seed=0)
            self.workers.send(job, worker, sampling, self.counters)
            warming.append(job)
        while any(self.workers.assigned.get(job.worker) is job for job in warming):
            run.handle_events(block=True)
        self.counters = DsiCounters(failures=self.counters.failures)

    def generate(self, prompt: list[int], max_tokens: int, sampling: SamplingParams,
                 eos_token_ids=frozenset(), context_length: Optional[int] = None,
                 seed: int = 0) -> Iterator[Commit]:
        self.counters = DsiCounters(failures=self.counters.failures)
        run = _Run(self, list(prompt), max_tokens, sampling, frozenset(eos_token_ids),
                   context_length, seed)
        self._settle_drafter(run)
        self.lane.drafting.begin(list(prompt))
        try:
            yield from run.loop()
        finally:
            self._settle_drafter(run)
            self.lane.drafting.end()

    def _settle_drafter(self, run: "_Run") -> None:
        """Wait for a drafting step still running from an earlier request (its result is stale)."""
        while self.lane.busy:
            run.handle_events(block=True)


class _Run:
    """One request: the committed text, the speculation after it and the jobs verifying it. It
    reads the orchestrator's settings and acts on its workers and drafter lane through their
    methods; the request's own state is here."""

    def __init__(self, orch: Orchestrator, prompt, max_tokens, sampling, eos, context_length, seed):
        self.orch, self.workers, self.lane, self.counters = orch, orch.workers, orch.lane, orch.counters
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
        self.lane.version += 1
        self.out: list[Commit] = []
        self.finish: Optional[str] = None

    # -- main loop ------------------------------------------------------------------------------
    def loop(self) -> Iterator[Commit]:
        if self.limit <= 0:
            yield Commit([], self.limit_reason)
            return
        while self.finish is None:
            self._dispatch()
            if not self.lane.busy and self._wants_drafts():
                self._start_draft()
            self.handle_events(block=True)
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
        depth_cap = (self.orch.block + 1) * (len(self.workers.live) + 1)
        return len(self.spec) < depth_cap

    def _start_draft(self) -> None:
        needed = self.orch.block - (len(self.spec) - self._next_first())
        m = max(1, min(needed, self.orch.draft_chunk, self._room()))
        self.key, draft_key = mx.random.split(self.key)
        ctx = StepContext(tokens=self.committed + self.spec, max_drafts=m, sampling=self.sampling,
                          key=draft_key)
        restart, self.restart_from = self.restart_from, None
        self.lane.start(ctx, restart)

    def _drafted(self, event: Drafted) -> None:
        if not self.lane.finished(event, self.counters):
            return  # drafted after speculation that a rejection has since discarded
        self.spec.extend(event.tokens)
        self.spec_probs.extend(event.probs)
        self.counters.drafted += len(event.tokens)
        if len(event.tokens) < event.asked:
            self.stalled = True

    # -- dispatching ----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        free = self.workers.free()
        for job in self.jobs:  # re-issue jobs whose worker failed, oldest first
            if job.worker is None and free:
                self.workers.send(job, free.pop(0), self.sampling, self.counters)
        while free:
            job = self._make_job()
            if job is None:
                return
            self.jobs.append(job)
            self.workers.send(job, free.pop(0), self.sampling, self.counters)

    def _make_job(self) -> Optional[Job]:
        first = self._next_first()
        available = len(self.spec) - first
        if available < 0:
            return None  # the root itself is not drafted yet
        block = self.orch.block
        if available < block and not self.stalled and self._room() > 0:
            # a short job leaves only when nothing is in flight (the target must not idle), and
            # not when the missing drafts are worth their wait (see worth_waiting)
            if self.jobs or self.orch.worth_waiting(available):
                return None
        n = min(available, block)
        root = self.committed[-1] if first == 0 else self.spec[first - 1]
        context = self.committed[:-1] if first == 0 else self.committed + self.spec[:first - 1]
        chain = [root] + self.spec[first:first + n]
        probs = None
        if not self.sampling.greedy and n and self.spec_probs[first] is not None:
            rows = self.spec_probs[first:first + n]
            probs = mx.stack([mx.zeros_like(rows[0]), *rows])
        job_id = self.workers.new_job_id()
        return Job(job_id, first, context, chain, probs,
                   seed=(self.seed * 1_000_003 + job_id) % (1 << 31))

    # -- events ---------------------------------------------------------------------------------
    def handle_events(self, block: bool) -> None:
        timeout = self.workers.deadline_in(self.lane.busy) if block else 0.0
        t0 = time.perf_counter()
        event = self.workers.pool.wait(timeout)
        self.counters.wait_s += time.perf_counter() - t0
        while event is not None:
            self._apply(event)
            event = self.workers.pool.wait(0.0)
        for worker, _ in self.workers.late():
            self._fail(worker, f"no reply within {self.workers.reply_deadline():.3g} s (hung)")
        self._resolve()

    def _apply(self, event: Event) -> None:
        if isinstance(event, BaseException):  # the drafter failed
            self.lane.busy = False
            raise event
        if isinstance(event, Drafted):
            self._drafted(event)
            return
        if isinstance(event, Failure):
            self._fail(event.worker, event.reason)
            return
        job = self.workers.receive(event, self.counters)
        if job is None:
            return  # a reply from a worker already declared failed
        if any(j is job for j in self.jobs):
            job.result = (event.tokens, event.accepted)
        else:
            self.counters.jobs_cancelled += 1

    def _fail(self, worker: int, reason: str) -> None:
        job = self.workers.fail(worker, reason, self.counters)
        if job is not None and job.result is None:
            job.worker = None  # re-issued by _dispatch to a live worker

    # -- committing -----------------------------------------------------------------------------
    def _resolve(self) -> None:
        while self.finish is None and self.jobs and self.jobs[0].result is not None:
            job = self.jobs.pop(0)
            tokens, accepted = job.result
            self.counters.jobs_applied += 1
            self.counters.accepted += accepted
            self.orch.accepted_total += accepted
            self.orch.rejections_total += accepted < job.n_drafts
            n = job.n_drafts
            if accepted < n:
                new, restart = self.spec[:accepted] + [tokens[-1]], True
            elif len(self.spec) > n and self.spec[n] == tokens[-1]:
                new, restart = self.spec[:n + 1], False  # the next job's root is confirmed
            else:
                new, restart = self.spec[:n] + [tokens[-1]], True
            self._commit(new)
            if restart:
                self.counters.jobs_cancelled += sum(1 for j in self.jobs if j.worker is not None)
                self.jobs.clear()
                self.spec, self.spec_probs, self.stalled = [], [], False
                self.lane.version += 1
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
