"""DSI scheduling with fake in-process workers: whatever the latencies, rejections and failures,
the committed text is exactly the target's own greedy text."""
import queue
import random
import threading
import time

import pytest

from mlx_spec.drafters.base import Drafter
from mlx_spec.dsi.orchestrator import Failure, Orchestrator, Result
from mlx_spec.errors import MlxSpecError
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


def run(pool, drafter, prompt=(3, 5, 8), n=60, lookahead=4, **kwargs):
    orch = Orchestrator(pool, drafter, lookahead=lookahead, **kwargs)
    out = []
    for commit in orch.generate(list(prompt), n, GREEDY):
        out.extend(commit.tokens)
    pool.close()
    return out, orch


@pytest.mark.parametrize("latencies", [[0.001], [0.002, 0.0], [0.003, 0.001, 0.0]])
@pytest.mark.parametrize("lookahead", [1, 3, 6])
def test_exact_output_with_injected_rejections(latencies, lookahead):
    drafter = OracleDrafter(wrong=lambda p: p % 7 == 2 or p % 11 == 0)
    out, orch = run(FakePool(latencies), drafter, lookahead=lookahead)
    assert out == target_text((3, 5, 8), 60)
    c = orch.counters
    assert c.jobs_applied < 60  # speculation bought more than one token per applied job
    assert c.accepted > 0


def test_perfect_drafter_needs_few_jobs():
    out, orch = run(FakePool([0.001, 0.001]), OracleDrafter(), lookahead=5, n=60)
    assert out == target_text((3, 5, 8), 60)
    # each applied job commits its 5 drafts and confirms the next root: 6 tokens
    assert orch.counters.jobs_applied <= 60 // 6 + 2
    assert orch.counters.jobs_cancelled == 0


def test_hopeless_drafter_is_plain_decoding():
    out, orch = run(FakePool([0.0, 0.0]), OracleDrafter(wrong=lambda p: True), n=25)
    assert out == target_text((3, 5, 8), 25)
    assert orch.counters.accepted == 0


def test_drafter_with_nothing_to_propose():
    out, _ = run(FakePool([0.0]), OracleDrafter(stop_after=0), n=20)
    assert out == target_text((3, 5, 8), 20)


def test_eos_and_limits():
    prompt = (3, 5, 8)
    expected = target_text(prompt, 40)
    eos = expected[17]
    first = expected.index(eos)
    orch = Orchestrator(FakePool([0.0, 0.0]), OracleDrafter(), lookahead=4)
    commits = list(orch.generate(list(prompt), 40, GREEDY, eos_token_ids={eos}))
    assert [t for c in commits for t in c.tokens] == expected[:first]
    assert commits[-1].finish == "stop"
    commits = list(orch.generate(list(prompt), 40, GREEDY, context_length=len(prompt) + 9))
    assert [t for c in commits for t in c.tokens] == expected[:9]
    assert commits[-1].finish == "context"


def test_dead_worker_jobs_are_reissued():
    told = []
    pool = FakePool([0.001, 0.001], die_after={1: 3})
    out, orch = run(pool, OracleDrafter(wrong=lambda p: p % 5 == 0),
                    on_failure=lambda w, why: told.append((w, why)))
    assert out == target_text((3, 5, 8), 60)
    assert told == [(1, "connection lost")]
    assert orch.live == [2] and 1 in pool.abandoned


def test_hung_worker_times_out_and_jobs_are_reissued():
    told = []
    pool = FakePool([0.001, 0.001], hang_after={2: 0})  # worker 2 gets the second job, at once
    out, orch = run(pool, OracleDrafter(wrong=lambda p: p % 9 == 4), job_timeout=1.0,
                    on_failure=lambda w, why: told.append(w))
    assert out == target_text((3, 5, 8), 60)
    assert told == [2] and orch.live == [1]
    assert "hung" in orch.counters.failures[0]


def test_every_worker_failing_is_an_error():
    pool = FakePool([0.0], die_after={1: 2})
    with pytest.raises(MlxSpecError, match="every DSI worker failed"):
        run(pool, OracleDrafter())


def test_stale_replies_from_a_finished_request_are_ignored():
    pool = FakePool([0.01, 0.0])
    orch = Orchestrator(pool, OracleDrafter(wrong=lambda p: p % 4 == 1), lookahead=3)
    for prompt in [(1, 2), (9, 9, 4), (1, 2)]:
        out = [t for c in orch.generate(list(prompt), 15, GREEDY) for t in c.tokens]
        assert out == target_text(prompt, 15)
    pool.close()


def test_reply_deadline_adapts_to_observed_reply_times():
    orch = Orchestrator(FakePool([0.0]), OracleDrafter(), job_timeout=120.0, min_job_timeout=2.0)
    assert orch.reply_deadline() == 120.0  # nothing seen yet: first jobs load and prefill
    orch.replies, orch.reply_s = 10, 0.2     # 20 ms per reply
    assert orch.reply_deadline() == 2.0
    orch.reply_s = 10 * 0.5                  # 0.5 s per reply
    assert orch.reply_deadline() == 25.0
    orch.pool.close()
