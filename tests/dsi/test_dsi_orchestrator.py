"""DSI scheduling with fake in-process workers: whatever the latencies, rejections and failures,
the committed text is exactly the target's own greedy text."""
import pytest

from mlx_spec.dsi.orchestrator import Orchestrator
from mlx_spec.errors import MlxSpecError
from support.dsi_fakes import GREEDY, FakePool, OracleDrafter, run, target_text


@pytest.mark.parametrize("latencies", [[0.001], [0.002, 0.0], [0.003, 0.001, 0.0]])
@pytest.mark.parametrize("block", [1, 3, 6])
def test_exact_output_with_injected_rejections(latencies, block):
    drafter = OracleDrafter(wrong=lambda p: p % 7 == 2 or p % 11 == 0)
    out, orch = run(FakePool(latencies), drafter, block=block)
    assert out == target_text((3, 5, 8), 60)
    c = orch.counters
    assert c.jobs_applied < 60  # speculation bought more than one token per applied job
    assert c.accepted > 0


def test_perfect_drafter_needs_few_jobs():
    out, orch = run(FakePool([0.001, 0.001]), OracleDrafter(), block=5, n=60)
    assert out == target_text((3, 5, 8), 60)
    # each applied job commits its 5 drafts and confirms the next root: 6 tokens (a few more
    # where a stalled drafting thread let a job go out before its block was drafted)
    assert orch.counters.jobs_applied <= 60 // 6 + 4
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
    orch = Orchestrator(FakePool([0.0, 0.0]), OracleDrafter(), block=4)
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
    # worker 1 hangs on the first job, which is always the oldest in flight (worker 2's, the
    # second, could be cancelled by a rejection in the first before its deadline, on a machine
    # slow enough that the first job returned before the second was drafted)
    pool = FakePool([0.001, 0.001], hang_after={1: 0})
    out, orch = run(pool, OracleDrafter(wrong=lambda p: p % 9 == 4), job_timeout=1.0,
                    on_failure=lambda w, why: told.append(w))
    assert out == target_text((3, 5, 8), 60)
    assert told == [1] and orch.live == [2]
    assert "hung" in orch.counters.failures[0]


def test_every_worker_failing_is_an_error():
    pool = FakePool([0.0], die_after={1: 2})
    with pytest.raises(MlxSpecError, match="every DSI worker failed"):
        run(pool, OracleDrafter())


def test_stale_replies_from_a_finished_request_are_ignored():
    pool = FakePool([0.01, 0.0])
    orch = Orchestrator(pool, OracleDrafter(wrong=lambda p: p % 4 == 1), block=3)
    for prompt in [(1, 2), (9, 9, 4), (1, 2)]:
        out = [t for c in orch.generate(list(prompt), 15, GREEDY) for t in c.tokens]
        assert out == target_text(prompt, 15)
    pool.close()


def test_each_workers_first_reply_is_left_out_of_the_deadlines_mean():
    """A worker's first job loads its model: counted, seconds of it held the deadline at 50x."""
    pool = FakePool([0.001, 0.001])
    orch = Orchestrator(pool, OracleDrafter(wrong=lambda p: p % 5 == 0), block=3)
    out = [t for c in orch.generate([3, 5, 8], 30, GREEDY) for t in c.tokens]
    assert out == target_text((3, 5, 8), 30)
    assert orch.workers.replied == {1, 2}
    assert orch.workers.replies == orch.counters.replies - 2 > 0
    pool.close()


def test_reply_deadline_adapts_to_observed_reply_times():
    orch = Orchestrator(FakePool([0.0]), OracleDrafter(), job_timeout=120.0, min_job_timeout=2.0)
    assert orch.reply_deadline() == 120.0  # nothing seen yet: first jobs load and prefill
    orch.workers.replies, orch.workers.reply_s = 10, 0.2     # 20 ms per reply
    assert orch.reply_deadline() == 2.0
    orch.workers.reply_s = 10 * 0.5                  # 0.5 s per reply
    assert orch.reply_deadline() == 25.0
    orch.pool.close()
