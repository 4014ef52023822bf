"""In-process fakes for DSI scheduling tests: an oracle target (its greedy text is known), a
drafter that follows it with injected mistakes, and a pool of fake workers with set latencies."""
import queue
import random
import threading
import time

from mlx_spec.drafters.base import Drafter
from mlx_spec.dsi.orchestrator import Failure, Orchestrator, Result
from mlx_spec.sampling import SamplingParams
from mlx_spec.tree import Tree

VOCAB = 50
GREEDY = SamplingParams()


def oracle(context):
    """The fake target's greedy next token."""
    return (context[-1] * 31 + (context[-2] if len(context) > 1 else 7) * 17 + len(context)) % VOCAB


def target_text(prompt, n):
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(oracle(tokens))
    return tokens[len(prompt):]


def verify(context, chain):
    """Greedy acceptance of chain = [root, drafts...] after context."""
    seq = context + chain[:1]
    for i, draft in enumerate(chain[1:]):
        want = oracle(seq)
        if draft != want:
            return chain[1:i + 1] + [want], i
        seq.append(draft)
    return chain[1:] + [oracle(seq)], len(chain) - 1


class OracleDrafter(Drafter):
    """Agrees with the target except at positions picked by `wrong(position)`."""

    def __init__(self, wrong=lambda position: False, stop_after=None):
        self.wrong, self.stop_after = wrong, stop_after
        self.calls = 0

    def propose(self, ctx):
        self.calls += 1
        tokens = list(ctx.tokens)
        n = ctx.max_drafts if self.stop_after is None else min(ctx.max_drafts, self.stop_after)
        for _ in range(n):
            token = oracle(tokens)
            if self.wrong(len(tokens)):
                token = (token + 1) % VOCAB
            tokens.append(token)
        return Tree.from_chain(ctx.tokens[-1], tokens[len(ctx.tokens):])


class FakePool:
    """Each worker is a thread with its own latency; `die_after` / `hang_after` jobs it stops."""

    def __init__(self, latencies, die_after=None, hang_after=None):
        self.worker_ids = list(range(1, len(latencies) + 1))
        self.events = queue.Queue()
        self.inboxes = {w: queue.Queue() for w in self.worker_ids}
        self.die_after, self.hang_after = die_after or {}, hang_after or {}
        self.jobs_done = {w: 0 for w in self.worker_ids}
        self.abandoned = set()
        for w, latency in zip(self.worker_ids, latencies):
            threading.Thread(target=self._serve, args=(w, latency), daemon=True).start()

    def _serve(self, w, latency):
        while True:
            job = self.inboxes[w].get()
            if job is None:
                return
            if self.jobs_done[w] == self.die_after.get(w):
                self.events.put(Failure(w, "connection lost"))
                return
            if self.jobs_done[w] == self.hang_after.get(w):
                return  # never replies
            time.sleep(latency * random.uniform(0.5, 1.5))
            tokens, accepted = verify(list(job.context), list(job.chain))
            self.jobs_done[w] += 1
            self.events.put(Result(w, job.id, tokens, accepted))

    def submit(self, worker, job, sampling):
        assert worker not in self.abandoned
        self.inboxes[worker].put(job)

    def wait(self, timeout):
        try:
            return self.events.get(timeout=timeout) if timeout != 0 else self.events.get_nowait()
        except queue.Empty:
            return None

    def abandon(self, worker):
        self.abandoned.add(worker)

    def post(self, event):
        self.events.put(event)

    def close(self):
        for inbox in self.inboxes.values():
            inbox.put(None)


def run(pool, drafter, prompt=(3, 5, 8), n=60, block=4, **kwargs):
    orch = Orchestrator(pool, drafter, block=block, **kwargs)
    out = []
    for commit in orch.generate(list(prompt), n, GREEDY):
        out.extend(commit.tokens)
    pool.close()
    return out, orch
