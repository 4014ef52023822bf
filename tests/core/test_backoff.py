"""Never slower than plain decoding (engine.BackOff): fed planted step timings it turns drafting off
where speculation lost, probes again with growing holds, and stays on where it wins; in the loop, a
drafter made slow and always wrong is backed off while the output stays exactly the target's."""
import time

import pytest

import mlx_spec
from mlx_spec.drafters import Drafter
from mlx_spec.engine import BackOff, Decoder, Limits
from mlx_spec.sampling import SamplingParams
from mlx_spec.target import Target
from mlx_spec.tree import Tree


# a fake cost model: verifying the root and 4 drafts costs 2 one-token steps
SHAPE = lambda n, tree=False, **_: 1.0 + 0.25 * (n - 1)  # noqa: E731


def run(backoff, steps, drafted_tokens, seconds, plain_s):
    """Feed `steps` steps; a drafting step (4 drafts, all of its time verifying) emits
    drafted_tokens in `seconds`, a plain one 1 token in plain_s."""
    plain = 0
    for _ in range(steps):
        if backoff.drafting:
            backoff.record(4, drafted_tokens, seconds, 0.0, verify_s=seconds)
        else:
            plain += 1
            backoff.record(0, 1, plain_s, 0.0)
    return plain


def test_losing_speculation_is_turned_off_and_probed_with_growing_holds():
    backoff = BackOff(relative_cost=SHAPE)
    # 1.2 tokens per 20 ms against 1 per 10 ms (20 ms / the shape's 2.0): 0.6x of plain
    plain = run(backoff, 8, 1.2, 0.020, 0.010)
    assert not backoff.drafting and backoff.plain_left == BackOff.FIRST_HOLD
    plain += run(backoff, 400, 1.2, 0.020, 0.010)
    assert plain > 300  # mostly plain, with a probe window after each hold
    assert backoff.hold > 4 * BackOff.FIRST_HOLD


def test_a_drafter_that_can_draft_another_way_switches_instead_of_a_pause():
    """A loss is first offered to the drafter (Drafter.switch_instead, auto: another candidate
    that measured a clear win): where it switches, drafting goes on and the lost windows are
    not held against the next; where it cannot, the pause as usual."""
    asked = []

    def switch(plain_s, clear):
        asked.append((plain_s, clear))
        return len(asked) == 1  # the first time only

    backoff = BackOff(relative_cost=SHAPE)
    for _ in range(8):  # 0.6x of plain (test above)
        backoff.record(4, 1.2, 0.020, 0.0, verify_s=0.020, switch=switch)
    assert backoff.drafting and len(asked) == 1
    assert asked[0] == (pytest.approx(0.010), BackOff.CLEAR)  # the plain step, estimated
    for _ in range(8):  # another way of drafting, 1.2x: judged on its own steps (with the
        backoff.record(4, 2.4, 0.020, 0.0, verify_s=0.020, switch=switch)  # lost ones, 1.0x)
    assert backoff.drafting and len(asked) == 1
    for _ in range(8):  # loses again, and nothing is left to switch to
        backoff.record(4, 1.2, 0.020, 0.0, verify_s=0.020, switch=switch)
    assert not backoff.drafting and backoff.plain_left == BackOff.FIRST_HOLD


def test_a_pause_ends_early_where_the_drafters_own_evidence_rises():
    """pld and lookahead go on guessing while paused (Drafter.learns_while_paused): a pause for a
    loss ends once the gain their choosers expect rises by CLEAR above what it was when the
    pause began (the back-off overruled that estimate); the plain steps measured before judging
    are never cut short."""
    backoff = BackOff(relative_cost=SHAPE)
    run(backoff, 8, 1.2, 0.020, 0.010)  # lost: paused
    assert backoff.plain_left == BackOff.FIRST_HOLD
    backoff.resume_if(1.3)  # the estimate as the pause began: the reference
    backoff.resume_if(1.35)
    backoff.resume_if(None)
    assert not backoff.drafting
    backoff.resume_if(1.3 * (1 + BackOff.CLEAR) + 0.01)  # the text changed: guesses now match
    assert backoff.drafting
    probing = BackOff(relative_cost=SHAPE)
    run(probing, 8, 2.1, 0.010, 0.005)  # within CLEAR: plain steps are measured first
    assert probing.plain_left == BackOff.PROBE
    probing.resume_if(1.0)
    probing.resume_if(5.0)
    assert probing.plain_left == BackOff.PROBE


def test_the_decoder_asks_a_paused_learner_for_its_gain(random_models):
    model = random_models["llama"]

    class Learner(Drafter):
        learns_while_paused = True
        gains = [1.0, 1.0, 2.0]

        def propose(self, ctx):
            return Tree.from_chain(ctx.tokens[-1], [])

        def expected_gain(self):
            return self.gains.pop(0) if self.gains else 2.0

    backoff = BackOff(relative_cost=SHAPE)
    run(backoff, 8, 1.2, 0.020, 0.010)  # paused for FIRST_HOLD steps
    decoder = Decoder(Target(model.model), Learner(), "learner", backoff=backoff)
    backoff.new_request = lambda: None  # keep the pause across generate()'s new request
    mlx_spec.generate(model, "hello", max_tokens=6, raw=True, decoder=decoder)
    assert backoff.drafting  # resumed after 3 steps, not 16


def test_pld_learns_on_the_back_offs_plain_steps():
    """A plain step sends nothing, but the lookup and its scoring go on."""
    from mlx_spec.drafters.base import StepContext
    from mlx_spec.drafters.pld import PromptLookup

    pld = PromptLookup(None)
    phrase = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    text = phrase * 3
    pld.begin(text[:10])
    for end in range(10, len(text)):
        tree = pld.propose(StepContext(tokens=text[:end], max_drafts=0, sampling=SamplingParams()))
        assert len(tree) == 1  # the root alone
    assert pld.chooser.outcomes > 5 and pld.chooser.choose() == 8  # the repeats were scored


def test_winning_speculation_never_stops():
    backoff = BackOff(relative_cost=SHAPE)
    assert run(backoff, 200, 3.0, 0.015, 0.0075) == 0  # 1.5x of plain: no plain step, no probe


def test_close_calls_are_measured_before_judging():
    backoff = BackOff(relative_cost=SHAPE)
    run(backoff, 8, 2.1, 0.010, 0.005)  # 1.05x by the estimate, within CLEAR: measure plain steps
    assert backoff.plain_left == BackOff.PROBE
    run(backoff, BackOff.PROBE, 2.1, 0.010, 0.004)  # plain is really 4 ms: drafting loses
    assert backoff.plain_s is not None
    run(backoff, 8, 2.1, 0.010, 0.004)
    assert backoff.plain_left == BackOff.FIRST_HOLD


def test_a_new_request_probes_drafting_early_and_keeps_the_pause_length():
    backoff = BackOff(relative_cost=SHAPE)
    run(backoff, 8 + 16 + 8, 1.2, 0.020, 0.010)  # lost twice: the pause has grown
    hold, plain_s = backoff.hold, backoff.plain_s
    assert backoff.plain_left > BackOff.PROBE
    backoff.new_request()
    assert backoff.plain_left <= BackOff.PROBE and backoff.hold == hold
    assert backoff.plain_s == plain_s


def test_windows_where_the_drafter_sent_nothing_are_not_judged():
    """A drafter whose own chooser is at plain decoding sends empty trees: those steps are plain
    ones whatever their timing says, and a pause would only stop the chooser learning."""
    backoff = BackOff(relative_cost=SHAPE)
    backoff.plain_s = 0.010
    for _ in range(3 * BackOff.WINDOW):
        backoff.record(0, 1, 0.012, 0.0, verify_s=0.012)  # 0.83x of plain, but nothing drafted
    assert backoff.drafting and backoff.hold == BackOff.FIRST_HOLD
    for _ in range(BackOff.WINDOW):  # one draft in the window: judged, and it lost
        backoff.record(1 if backoff.drafting else 0, 1, 0.012, 0.0, verify_s=0.012)
    assert not backoff.drafting


def test_a_window_is_judged_once_enough_of_its_steps_sent_drafts():
    """Seven plain steps of a drafter whose chooser sent nothing and one missed draft: one draft
    is not evidence of a loss, so the window grows until SENT of its steps drafted, and is
    judged then (a drafter losing on every draft is paused)."""
    backoff = BackOff(relative_cost=SHAPE)
    backoff.plain_s = 0.010
    for _ in range(BackOff.WINDOW - 1):
        backoff.record(0, 1, 0.010, 0.0, verify_s=0.010)
    backoff.record(4, 1, 0.020, 0.0, verify_s=0.020)  # a missed draft: 0.89x over the window
    assert backoff.drafting
    for _ in range(BackOff.SENT - 2):  # more missed drafts, still fewer than SENT
        backoff.record(4, 1, 0.020, 0.0, verify_s=0.020)
    assert backoff.drafting
    backoff.record(4, 1, 0.020, 0.0, verify_s=0.020)  # the SENT-th: judged, and it lost
    assert not backoff.drafting and backoff.plain_left == BackOff.FIRST_HOLD


def test_no_cost_model_means_a_probe_first():
    backoff = BackOff()
    run(backoff, 8, 3.0, 0.015, 0.010)
    assert backoff.plain_left == BackOff.PROBE


class SlowWrongDrafter(Drafter):
    """Four wrong tokens after a 30 ms pause: speculation that can only lose."""

    def propose(self, ctx):
        if ctx.max_drafts < 1:
            return Tree.from_chain(ctx.tokens[-1], [])
        time.sleep(0.03)
        return Tree.from_chain(ctx.tokens[-1], [0] * min(4, ctx.max_drafts))


def test_a_losing_drafter_is_backed_off_and_the_output_is_unchanged(random_models):
    model = random_models["llama"]
    prompt = [1, 5, 9, 13, 2, 7]
    limits = Limits(max_tokens=60)

    def decode(backoff):
        decoder = Decoder(Target(model.model), SlowWrongDrafter(), "slow", backoff=backoff)
        steps = list(decoder.generate(prompt, limits, SamplingParams()))
        return [t for s in steps for t in s.token_ids], steps[-1].stats

    reference = mlx_spec.generate(model, prompt, max_tokens=60, method="ar").token_ids
    always, always_stats = decode(None)
    governed, stats = decode(BackOff(relative_cost=lambda n, tree=False, **_: 1.0))
    assert always == governed == reference
    assert always_stats.plain_calls == 0
    assert stats.plain_calls > 30 and stats.target_calls - stats.plain_calls < 30


class Exploring(Drafter):
    """Slow and wrong on every second step, which it calls unsteady (as auto calls its trials),
    free and right in between: only the steady steps may pause drafting."""

    def __init__(self, full):
        self.full, self.step = full, 0

    def propose(self, ctx):
        self.step += 1
        n = len(ctx.tokens)
        if self.step % 2:
            time.sleep(0.02)
            return Tree.from_chain(ctx.tokens[-1], [0] * min(4, ctx.max_drafts))
        return Tree.from_chain(ctx.tokens[-1], self.full[n:n + min(4, ctx.max_drafts)])

    def steady(self):
        return self.step % 2 == 0


def test_the_back_off_judges_only_the_steps_a_drafter_calls_steady(random_models):
    model = random_models["llama"]
    prompt = [1, 5, 9, 13, 2, 7]
    reference = mlx_spec.generate(model, prompt, max_tokens=60, method="ar").token_ids
    recorded = []

    class Counting(BackOff):
        def record(self, drafted, *args, **kwargs):
            recorded.append(drafted)
            super().record(drafted, *args, **kwargs)

    decoder = Decoder(Target(model.model), Exploring(prompt + reference), "exploring",
                      backoff=Counting(relative_cost=lambda n, tree=False, **_: 1.0))
    steps = list(decoder.generate(prompt, Limits(max_tokens=60), SamplingParams()))
    assert [t for s in steps for t in s.token_ids] == reference
    stats = steps[-1].stats
    # the slow steps are not judged: drafting is never paused, and only the others were recorded
    assert stats.plain_calls == 0 and len(recorded) == stats.target_calls // 2
