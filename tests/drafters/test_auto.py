"""`auto` proposes with the candidate of best measured tokens per second: planted candidates (one
right and fast, one wrong and slow) show it picks the planted best, keeps trying the other now and
then, and carries what it measured to the next request; the output stays exactly the target's."""
import json
import os
import time

import pytest

import mlx_spec
from mlx_spec.accept import Acceptance
from mlx_spec.bench.replay import _FlatCost  # a cost model of one step time, whatever the tree
from mlx_spec.drafters import Drafter
from mlx_spec.cost import CostModel
from mlx_spec.drafters.auto import Auto, LongRate, Rate, Rates, candidates_for, may_beat
from mlx_spec.engine import Decoder
from mlx_spec.target import Target
from mlx_spec.tree import Tree
from support.greedy import PROMPTS, mlx_lm_greedy


class Oracle(Drafter):
    """Drafts the target's own greedy continuation, known in advance: always accepted."""

    def __init__(self, full: list[int]):
        self.full = full

    def propose(self, ctx):
        n = len(ctx.tokens)
        return Tree.from_chain(ctx.tokens[-1], self.full[n:n + min(4, ctx.max_drafts)])


class SlowWrong(Drafter):
    def propose(self, ctx):
        time.sleep(0.02)
        return Tree.from_chain(ctx.tokens[-1], [0] * min(4, ctx.max_drafts))


def test_auto_picks_the_planted_best_and_still_tries_the_other(random_models):
    model = random_models["llama"]
    prompt = model.tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    expected = mlx_lm_greedy(model, PROMPTS[0], 200)
    memory = {}
    auto = Auto({"slow": SlowWrong(), "oracle": Oracle(prompt + expected)},
                lambda regime: memory.setdefault(regime, Rates()))
    decoder = Decoder(Target(model.model), auto, "auto")  # no back-off: auto alone is under test
    result = mlx_spec.generate(model, PROMPTS[0], max_tokens=200, raw=True, decoder=decoder)
    assert result.token_ids == expected
    used = auto.steps_by_method
    # tried (an opening trial of TRIAL timed steps, after the request's untimed first), then rarely
    assert used["oracle"] > 2 * used["slow"] and used["slow"] >= Auto.TRIAL + 1
    rates = memory["greedy"].by_name
    assert rates["oracle"].per_second > rates["slow"].per_second

    # the next request starts from what was measured: no opening trial of the slow candidate
    result = mlx_spec.generate(model, PROMPTS[0], max_tokens=20, raw=True, decoder=decoder)
    assert result.token_ids == expected[:20]
    assert auto.steps_by_method.get("slow", 0) == 0


def test_steps_are_timed_without_the_time_the_consumer_holds_them(random_models):
    """The bench runs other methods' steps while one method's step is yielded (step
    interleaving), a UI draws text there: auto's step times, taken from one observe() to the
    next, must be the decoder's own work (StepContext.clock), or every candidate's rate is
    drowned in the consumer's time."""
    from mlx_spec.engine import Limits
    from mlx_spec.sampling import SamplingParams

    model = random_models["llama"]
    prompt = model.tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    expected = mlx_lm_greedy(model, PROMPTS[0], 24)
    memory = {}
    auto = Auto({"oracle": Oracle(prompt + expected)},
                lambda regime: memory.setdefault(regime, Rates()))
    decoder = Decoder(Target(model.model), auto, "auto")
    held = 0.12  # (a step of the tiny model under a loaded CI stays far below held / 2)
    for _ in decoder.generate(list(prompt), Limits(max_tokens=24), SamplingParams()):
        time.sleep(held)  # the consumer's turn
    rate = memory["greedy"].by_name["oracle"]
    assert rate.steps >= 3
    assert rate.seconds / rate.weight < held / 2  # a random tiny model's step takes a few ms


class TextOracle(Oracle):
    drafts_from_text = True


def slow_and_text_oracle(model, max_tokens: int, oracle=TextOracle):
    """auto over a slow, always wrong candidate and a text-only one that knows the greedy
    answer of PROMPTS[0] (cheap verifies: 8 tokens cost 1.8 steps); and that answer."""
    prompt = model.tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    expected = mlx_lm_greedy(model, PROMPTS[0], max_tokens)
    cost = CostModel(sizes=(1, 2, 4, 8), seconds=(0.010, 0.012, 0.014, 0.018), context=128)
    auto = Auto({"slow": SlowWrong(), "oracle": oracle(prompt + expected)},
                lambda regime: Rates(), cost)
    return auto, expected


def test_a_text_only_candidate_wins_from_the_shadow_without_trials(random_models):
    """The planted best drafts from the text alone: auto scores its unsent trees against the text
    and switches to it, with no trial steps; the slow candidate stays the only trialled one."""
    model = random_models["llama"]
    auto, expected = slow_and_text_oracle(model, 120)
    assert auto.shadowed == ["oracle"]
    result = mlx_spec.generate(model, PROMPTS[0], max_tokens=120, raw=True,
                               decoder=Decoder(Target(model.model), auto, "auto"))
    assert result.token_ids == expected
    used = auto.steps_by_method
    # the slow one's untimed first step and opening trial; the steps it led until PAIRED of the
    # oracle's shadow trees were paired beside them, each counted from the step after it was
    # asked, while the text still follows it (_pairing; scored only once the text, one token a
    # step, had passed its 4 drafts, they took 3 steps more); trial steps are not paired; its
    # recheck once it lost the lead (KNOWN_TRIAL steps, one less than the bound's TRIAL; then a
    # wait past the end); the oracle from then on
    assert used["slow"] <= 1 + Auto.TRIAL + Auto.PAIRED + 1 + Auto.TRIAL and used["oracle"] >= 8
    assert auto.rates.by_name["oracle"].steps > used["oracle"]  # scored in the shadow too


def test_while_the_back_off_pauses_auto_its_text_only_candidates_are_still_scored(random_models):
    """A paused auto (every step plain) still asks a candidate that learns while paused for the
    tree it would send and scores it, so when the pause ends auto knows that candidate wins
    here; those shadow steps are not paired with the plain steps. The output is the target's."""
    from mlx_spec.engine import BackOff

    class PausedLearner(TextOracle):
        learns_while_paused = True

    model = random_models["llama"]
    auto, expected = slow_and_text_oracle(model, 40, PausedLearner)
    assert auto.learns_while_paused
    class Paused(BackOff):  # paused for the whole answer
        drafting = False

    decoder = Decoder(Target(model.model), auto, "auto", backoff=Paused(auto.cost.relative))
    result = mlx_spec.generate(model, PROMPTS[0], max_tokens=40, raw=True, decoder=decoder)
    assert result.token_ids == expected and result.stats.drafted_tokens == 0
    assert auto.steps_by_method == {}  # no drafting step
    assert auto.rates.by_name["oracle"].steps >= 5  # its unsent trees, scored
    assert "oracle" not in auto.rates.paired  # nothing to pair them with
    assert not Auto({"slow": SlowWrong()}).learns_while_paused


def test_a_shadow_tree_is_scored_once_the_text_leaves_it():
    from mlx_spec.drafters.auto import _branches, _shadow_outcome
    from mlx_spec.drafters.draft_length import Open
    tree = Tree.from_branches(5, [[1, 2, 3], [1, 4], [6]])
    real = [3, 0.2]  # the real step taken where the tree was asked for
    guess = (_branches(tree), 0.5, real)
    inside = _shadow_outcome(guess, [9, 5, 1], 2)                        # still inside the tree:
    assert isinstance(inside, Open) and inside.so_far == (2, 0.5, real)  # open, 1 token matched
    assert _shadow_outcome(guess, [9, 5], 2).so_far is None              # not entered yet
    assert _shadow_outcome((guess[0], 0.5, []), [9, 5, 1], 2).so_far is None  # no real step
    assert _shadow_outcome(guess, [9, 5, 1, 4], 2) == (2, 0.5, real)     # reached a leaf
    assert _shadow_outcome(guess, [9, 5, 1, 7], 2) == (1, 0.5, real)     # left it after one token
    assert _shadow_outcome(guess, [9, 5, 8], 2) == (0, 0.5, real)


def test_a_shadow_tree_the_text_still_follows_counts_what_it_matched_so_far():
    """A followed shadow tree is scored only once the text leaves it; until then it counts, in
    the pairing auto judges by, at the draft tokens the text has gone into it (plus one): a lower
    bound. Not a tree the text has not entered, nor one asked in a trial (no real step)."""
    from mlx_spec.drafters.auto import Pairing, _branches, _shadow_outcome
    from mlx_spec.drafters.draft_length import Guesses

    chain = _branches(Tree.from_chain(5, [1, 2, 3, 4]))
    ledger = Guesses(_shadow_outcome)
    ledger.add(2, (chain, 0.02, [1, 0.01]))  # asked when the text was [9, 5]: followed 3 tokens
    ledger.add(2, (chain, 0.02, []))         # the same, asked in a trial
    ledger.add(5, (chain, 0.02, [1, 0.01]))  # asked just now
    tokens = [9, 5, 1, 2, 3]
    assert ledger.settle(tokens) == [] and len(ledger.open) == 3
    assert ledger.so_far == [(4, 0.02, [1, 0.01])]  # what the settle saw of the open trees

    auto = Auto({"m": Oracle([]), "t": TextOracle([])},
                cost=CostModel((1, 2), (0.01, 0.012), 128))
    auto.rates = Rates(by_name={"m": rate(100.0, 1.0, 40), "t": rate(100.0, 1.0, 40)},
                       leader="m", step=50)
    settled = auto.rates.paired.setdefault("t", Pairing())
    for _ in range(Auto.PAIRED - 1):
        settled.add(4, 0.02, 1, 0.01)
    assert auto._next() == "m"  # PAIRED - 1 scored trees: not yet enough to judge
    auto._following = {"t": ledger.so_far}
    assert auto._pairing("t").steps == Auto.PAIRED and auto._next() == "t"
    assert settled.steps == Auto.PAIRED - 1  # the scored pairing itself is unchanged


def test_a_text_only_challenger_is_judged_on_the_same_steps_as_the_leader():
    """`b`'s rate, over all its shadow steps, is 30% above the leader's; on the steps where it
    was asked, the real steps (the leader's) emitted as much per second: `a` holds. Where the
    shadow steps beat the real ones on the same text by more than the margin, `b` leads."""
    from mlx_spec.drafters.auto import Pairing

    for shadow_tokens, expected in ((4, "a"), (6, "b")):
        auto = Auto({"a": Oracle([]), "b": TextOracle([])},
                    cost=CostModel((1, 2), (0.01, 0.012), 128))
        auto.rates = Rates(by_name={"a": rate(100.0, 1.0, 40), "b": rate(130.0, 1.0, 40)},
                           leader="a")
        pairing = auto.rates.paired.setdefault("b", Pairing())
        for _ in range(Auto.PAIRED):
            pairing.add(shadow_tokens, 0.02, 4, 0.02)  # the real step: 4 tokens in 20 ms
        assert auto._next() == expected


def test_a_text_only_challenger_ahead_within_the_noise_of_its_steps_does_not_lead():
    """Paired steps where `b`'s shadow emitted 1 or 10 tokens beside real steps of 4 each: its
    ratio, ~1.4, is above the switch margin but within the noise of so few bursty steps, and
    `a` holds. The same ratio from steady shadow steps takes the lead."""
    from mlx_spec.drafters.auto import Pairing

    def paired(shadow_steps):
        pairing = Pairing()
        for tokens in shadow_steps:
            pairing.add(tokens, 0.02, 4, 0.02)
        return pairing

    bursty = paired((1, 10, 1, 10))
    steady = paired((4 * bursty.ratio,) * 4)
    assert abs(steady.ratio - bursty.ratio) < 1e-9 and bursty.ratio > 1.3
    for pairing, expected in ((bursty, "a"), (steady, "b")):
        auto = Auto({"a": Oracle([]), "b": TextOracle([])},
                    cost=CostModel((1, 2), (0.01, 0.012), 128))
        auto.rates = Rates(by_name={"a": rate(100.0, 1.0, 40), "b": rate(100.0, 1.0, 40)},
                           leader="a", paired={"b": pairing})
        assert auto._next() == expected


def test_at_a_cold_start_a_text_only_candidate_leads_only_once_paired_ahead():
    """Nothing leads yet; text-only `t`'s modelled shadow rate is twice model drafter `m`'s, but
    no real step has been taken beside it: `m` leads. Once `t`'s shadow steps beat the real ones
    at the same places, `t` leads. With no model drafter, the best text-only one leads at once."""
    from mlx_spec.drafters.auto import Pairing

    cost = CostModel((1, 2), (0.01, 0.012), 128)
    auto = Auto({"m": Oracle([]), "t": TextOracle([])}, cost=cost)
    auto.rates = Rates(by_name={"m": rate(100.0, 1.0, 40), "t": rate(200.0, 1.0, 40)}, step=10)
    for r in auto.rates.by_name.values():
        r.last_step = 9
    assert auto._best() == "t" and auto._next() == "m" and auto.rates.leader == "m"
    pairing = auto.rates.paired.setdefault("t", Pairing())
    for _ in range(Auto.PAIRED):
        pairing.add(8, 0.02, 4, 0.02)
    assert auto._next() == "t"

    alone = Auto({"t": TextOracle([]), "u": TextOracle([])}, cost=cost)
    alone.rates = Rates(by_name={"t": rate(200.0, 1.0, 40), "u": rate(100.0, 1.0, 40)})
    assert alone._next() == "t"


def test_candidates_are_what_the_target_can_run(random_models, random_model_dirs):
    model = random_models["llama"]
    assert list(candidates_for(model)) == ["pld", "lookahead"]  # no head or draft model fits
    with_draft = candidates_for(model, draft={"draft_model": str(random_model_dirs["qwen2"])})
    assert list(with_draft) == ["pld", "lookahead", "draft"]
    with pytest.raises(mlx_spec.MlxSpecError, match="redrafter"):
        candidates_for(model, "pld,redrafter")  # named explicitly: its error, not a silent skip
    with pytest.raises(mlx_spec.MlxSpecError, match="cannot be a candidate"):
        mlx_spec.make_decoder(model, "auto", methods="pld,ar")


def test_a_missing_draft_model_is_refused_before_the_target_is_measured(random_model_dirs):
    """`--draft-model` naming no folder: refused at once, not after the candidates have measured
    the target's cost model (~10 s for SmolLM2 where no measurement is cached yet)."""
    from mlx_spec.drafters.shared import shared

    model = mlx_spec.load(str(random_model_dirs["llama"]))  # its own Shared: nothing measured
    for methods, named in ((None, "draft"), ("pld,draft", "draft"), ("adaedl", "adaedl")):
        with pytest.raises(mlx_spec.MlxSpecError,  # the candidate it was for, named
                           match=f"^auto: candidate '{named}': model folder not found: /no/such"):
            mlx_spec.make_decoder(model, "auto", methods=methods, draft_model="/no/such/folder")
    with pytest.raises(mlx_spec.MlxSpecError, match="names no candidate that drafts with it"):
        mlx_spec.make_decoder(model, "auto", methods="pld", draft_model="/x")  # (was dropped)
    assert shared(model).cost is None


def test_auto_with_a_draft_model_is_greedy_exact_and_remembers_per_model(random_models,
                                                                        random_model_dirs):
    model = random_models["mistral"]
    options = dict(draft_model=str(random_model_dirs["qwen2"]), num_draft_tokens=3)
    for prompt in PROMPTS:
        expected = mlx_lm_greedy(model, prompt, 40)
        result = mlx_spec.generate(model, prompt, method="auto", max_tokens=40, raw=True, **options)
        assert result.token_ids == expected
    decoder = mlx_spec.make_decoder(model, "auto", **options)
    known = decoder.drafter._rates_for("greedy").by_name
    assert set(known) == {"pld", "lookahead", "draft"}  # each was tried, and that is kept


def rate(tokens, seconds, steps, spread=0.0):
    """A Rate of `steps` steps adding up to `tokens` in `seconds`, equal in time, their tokens
    alternately `spread` (a fraction of the mean) above and below the mean."""
    r = Rate()
    for i in range(steps):
        r.add(tokens / steps * (1 + spread * (-1) ** i), seconds / steps)
    return r


def long_rate(tokens_per_step):
    """A LongRate of 40 steps of 0.02 s, their tokens spread as at T = 0.7."""
    from mlx_spec.drafters.auto import LongRate
    r = LongRate()
    for i in range(40):
        r.add(tokens_per_step * (1 + 0.5 * (-1) ** i), 0.02)
    return r


def test_a_candidate_too_briefly_measured_is_tried_again_while_it_may_still_win():
    """Planted rates, no timing: `a` is settled at 100 tokens/s; `b` had one short trial."""

    for b_tokens, expected in ((8.0, "b"), (3.0, "a")):  # 80 tokens/s could still win; 30 cannot
        auto = Auto({"a": Oracle([]), "b": Oracle([])})
        auto.rates = Rates(by_name={"a": rate(100.0, 1.0, 40), "b": rate(b_tokens, 0.1, 3)})
        assert auto._next() == expected
    # once settled, the prior has faded: a rate is its measured tokens per second
    settled = rate(50.0, 1.0, 40)
    assert settled.per_second == pytest.approx(50.0) and rate(8.0, 0.1, 3).per_second < 80.0


def test_the_leader_holds_against_a_rate_within_the_switch_margin():
    """Rates are windowed means of bursty steps: a challenger replaces the leader only when it
    is ahead by more than SWITCH_MARGIN; without a leader the best rate leads."""
    for b_rate, expected in ((105.0, "a"), (125.0, "b")):
        auto = Auto({"a": Oracle([]), "b": Oracle([])})
        auto.rates = Rates(by_name={"a": rate(100.0, 1.0, 40), "b": rate(b_rate, 1.0, 40)},
                           leader="a")
        assert auto._next() == expected and auto.rates.leader == expected
    auto.rates.leader = None
    auto.rates.by_name["b"] = rate(105.0, 1.0, 40)
    assert auto._next() == "b"


def test_a_lost_trial_lengthens_the_wait_once_it_is_clearly_behind():
    """A candidate at half the leader's rate is judged after a few steps (two margins above its
    rate stay below the leader): its lost trial doubles its own wait; one still within reach
    after as many steps is tried again at once."""
    for b_tokens, expected, wait in ((50.0, "a", 2 * Auto.FIRST_GAP), (90.0, "b", Auto.FIRST_GAP)):
        auto = Auto({"a": Oracle([]), "b": Oracle([])})
        auto.rates = Rates(by_name={"a": rate(100.0, 1.0, 40), "b": rate(b_tokens, 1.0, 6)},
                           leader="a")
        auto._trial = ("b", 0)
        assert auto._next() == expected and auto.rates.by_name["b"].wait == wait


def test_a_trial_lost_within_noise_keeps_a_long_wait_and_a_won_one_resets_it():
    """`b` has waited 8 x FIRST_GAP after clear losses: a trial it loses within the noise (95
    against 100 tokens/s) keeps that wait (a candidate steadily behind but noisy looks within
    noise after about half its trials: halving or resetting the wait on those would try it
    every 24-48 steps for good); a trial it wins resets it."""
    for b_tokens, wait in ((95.0, 8 * Auto.FIRST_GAP), (130.0, Auto.FIRST_GAP)):
        auto = Auto({"a": Oracle([]), "b": Oracle([])})
        auto.rates = Rates(by_name={"a": rate(100.0, 1.0, 40), "b": rate(b_tokens, 1.0, 40)},
                           leader="a")
        auto.rates.by_name["b"].wait = 8 * Auto.FIRST_GAP
        auto._trial = ("b", 0)
        auto._next()
        assert auto.rates.by_name["b"].wait == wait


def test_a_trial_ahead_within_the_switch_margin_goes_on_until_settled():
    """`b` ends a trial ahead of the leader's rate (108 against 100, noisy steps) but not by the
    margin a switch needs: its trial goes on by KNOWN_TRIAL steps at a time (at T > 0 two steps
    cannot prove it faster), until SETTLED trial steps; then the leader stays."""
    auto = Auto({"a": Oracle([]), "b": Oracle([])})
    auto.rates = Rates(by_name={"a": rate(100.0, 1.0, 40, 0.5), "b": rate(108.0, 1.0, 40, 0.5)},
                       leader="a")
    assert auto._hold("b") == "a"
    auto._trial, auto._trial_steps = ("b", 0), Auto.KNOWN_TRIAL
    assert auto._next() == "b" and auto._trial == ("b", Auto.KNOWN_TRIAL - 1)
    assert auto._trial_steps == 2 * Auto.KNOWN_TRIAL
    auto._trial, auto._trial_steps = ("b", 0), Auto.SETTLED
    assert auto._next() == "a" and auto._trial is None and auto.rates.leader == "a"


def test_a_switch_rests_on_how_well_the_challenger_is_known_now():
    """`b` at 130 against the leader's 100 tokens/s takes the lead when its rate rests on many
    recent steps; the same rate resting on about two (its older steps faded while it sat out)
    is within its noise, and the leader stays."""
    for fade, expected in ((1.0, "b"), (0.15, "a")):
        b = rate(130.0, 1.0, 40, 0.3)
        b.discount(fade)
        auto = Auto({"a": Oracle([]), "b": Oracle([])})
        auto.rates = Rates(by_name={"a": rate(100.0, 1.0, 40, 0.3), "b": b}, leader="a")
        assert auto._hold("b") == expected


def test_the_noise_of_both_rates_decides_what_is_within_reach():
    """Margins scale with the steps' measured spread, the leader's as well as the candidate's:
    at 85 against 100 tokens/s over 12 steps each, steady steps (spread 0.1) make a clear loss
    and a wait doubled, steps of 1 and 5 tokens (spread 0.67, as at T = 1.0) a loss within
    the noise, whichever of the two is noisy."""

    steady, noisy = 0.1, 0.67
    assert not may_beat(rate(85.0, 1.0, 12, steady), rate(100.0, 1.0, 12, steady))
    assert may_beat(rate(85.0, 1.0, 12, noisy), rate(100.0, 1.0, 12, steady))
    assert may_beat(rate(85.0, 1.0, 12, steady), rate(100.0, 1.0, 12, noisy))
    for spread, wait in ((steady, 2 * Auto.FIRST_GAP), (noisy, Auto.FIRST_GAP)):
        auto = Auto({"a": Oracle([]), "b": Oracle([])})
        auto.rates = Rates(by_name={"a": rate(100.0, 1.0, 40, spread),
                                    "b": rate(85.0, 1.0, 12, spread)}, leader="a")
        auto._trial = ("b", 0)
        assert auto._next() == "a" and auto.rates.by_name["b"].wait == wait


def test_a_machine_stall_counts_as_a_few_of_the_candidates_steps_not_as_its_speed():
    """A step that took 10x the others (the machine stalled: this CPU's host throttles for
    ~100 ms at a time under sustained load, whatever runs) counts as SPIKE mean steps: the leader
    keeps its lead over a challenger at 0.75x its speed, where the stall counted in full would
    have cut its rate by ~40% and handed the lead over. Slower steps within SPIKE count in full."""
    stalled = rate(40.0, 0.1, 10)  # 4 tokens in 10 ms a step
    stalled.add(4, 0.1)
    capped = rate(40.0, 0.1, 10)
    capped.add(4, Rate.SPIKE * 0.01)
    assert stalled.raw == pytest.approx(capped.raw)
    auto = Auto({"a": Oracle([]), "b": Oracle([])})
    auto.rates = Rates(by_name={"a": stalled, "b": rate(30.0, 0.1, 10)}, leader="a")
    assert auto._hold("b") == "a"
    slow, unclipped = rate(40.0, 0.1, 10), Rate()
    unclipped.SPIKE = float("inf")
    for _ in range(10):
        unclipped.add(4, 0.01)
    slow.add(4, 0.025)  # 2.5x a mean step: the candidate's own
    unclipped.add(4, 0.025)
    assert slow.raw == pytest.approx(unclipped.raw)


def test_a_noisy_leader_keeps_the_lead_against_a_challenger_within_its_noise():
    """A challenger 25% ahead takes the lead from a leader of steady steps, not from one whose
    steps spread as at T = 1.0 (its window of unlucky steps is no evidence that the other is
    faster)."""
    for spread, expected in ((0.1, "b"), (0.67, "a")):
        auto = Auto({"a": Oracle([]), "b": Oracle([])})
        auto.rates = Rates(by_name={"a": rate(100.0, 1.0, 40, spread),
                                    "b": rate(125.0, 1.0, 40, spread)}, leader="a")
        assert auto._hold("b") == expected


def test_a_new_request_halves_the_weight_of_what_the_last_ones_measured():
    """A new prompt is new text: the rates carried from the last requests keep their values but
    count NEW_TEXT as much against the steps to come (a leader's rate from the last answer had
    kept it leading through many poor steps on the next)."""
    from mlx_spec.drafters.base import StepContext
    from mlx_spec.sampling import SamplingParams

    kept = Rates(by_name={"a": rate(100.0, 1.0, 40, 0.3), "b": rate(60.0, 1.0, 12, 0.3)})
    before = {n: (r.weight, r.per_second, r.error()) for n, r in kept.by_name.items()}
    auto = Auto({"a": Oracle([]), "b": Oracle([])}, lambda regime: kept)
    auto.begin([1, 2, 3])
    auto.propose(StepContext(tokens=[1, 2, 3], max_drafts=4, sampling=SamplingParams()))
    for name, (weight, per_second, error) in before.items():
        now = kept.by_name[name]
        assert now.weight == pytest.approx(Auto.NEW_TEXT * weight)
        assert now.per_second == pytest.approx(per_second)
        assert now.error() > error  # fewer steps' worth of evidence, wider spread estimate


def test_a_loss_hands_the_lead_to_a_candidate_that_clearly_beats_plain_decoding():
    """The back-off judged the steps of `a`, a text-only leader, a loss (Drafter.switch_instead):
    `b`, measured at 100 tokens/s where a plain step takes 20 ms (2x), leads instead of a pause;
    at 50 tokens/s (1x) it cannot, and the pause goes ahead. A model drafter's lost window (at
    T > 0 mostly its sampled steps' luck) is not handed on."""
    for a, b_rate, switched in ((TextOracle([]), 100.0, True), (TextOracle([]), 50.0, False),
                                (Oracle([]), 100.0, False)):
        auto = Auto({"a": a, "b": Oracle([])})
        auto.rates = Rates(by_name={"a": rate(150.0, 1.0, 40), "b": rate(b_rate, 1.0, 40)},
                           leader="a")
        auto.current = "a"
        assert auto.switch_instead(0.020, 0.1) is switched
        assert (auto.current, auto.rates.leader) == (("b", "b") if switched else ("a", "a"))


def idle(r):
    """`r` as the rate of a candidate whose recent steps sent no draft (its chooser at 0)."""
    r.sent = 0.0
    assert r.idle
    return r


class Plain(Drafter):
    """A model drafter whose chooser sits at plain decoding: it sends the root alone."""

    def propose(self, ctx):
        return Tree.from_chain(ctx.tokens[-1], [])


def test_a_candidate_whose_trees_send_no_draft_is_idle(random_models):
    """Rate.idle as observe() records it: over a request's steps, a candidate whose trees are the
    root alone is idle; one that sends drafts is not."""
    model = random_models["llama"]
    prompt = model.tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    expected = mlx_lm_greedy(model, PROMPTS[0], 48)
    for name, drafter, idle_after in (("plain", Plain(), True),
                                      ("oracle", Oracle(prompt + expected), False)):
        memory = {}
        auto = Auto({name: drafter}, lambda regime: memory.setdefault(regime, Rates()))
        decoder = Decoder(Target(model.model), auto, "auto")
        result = mlx_spec.generate(model, PROMPTS[0], max_tokens=48, raw=True, decoder=decoder)
        assert result.token_ids == expected
        measured = memory["greedy"].by_name[name]
        assert measured.steps >= 5 and measured.idle is idle_after


def test_an_idle_model_drafters_loss_hands_the_lead_to_a_text_only_candidate():
    """Model drafter `m` leads, its chooser at plain decoding (Rate.idle), and the back-off judged
    its probe a loss: text-only `t`, measured at plain decoding's rate or above (51 tokens/s
    where a plain step takes 20 ms), leads instead of a pause, though it does not beat plain
    decoding by `clear`. Not below plain decoding's rate, and not where `m` sends drafts (its
    loss is then the luck of its sampled steps). Without a cost model nothing is shadowed and
    the pause goes ahead; a text-only leader's loss is handed on as before (by `clear`)."""
    cost = CostModel(sizes=(1, 2, 4, 8), seconds=(0.010, 0.012, 0.014, 0.018), context=128)
    for m_idle, t_rate, switched in ((True, 52.0, True), (True, 45.0, False),
                                     (True, 51.0, True), (False, 52.0, False)):
        auto = Auto({"m": Oracle([]), "t": TextOracle([])}, cost=cost)
        m = rate(50.0, 1.0, 40)
        auto.rates = Rates(by_name={"m": idle(m) if m_idle else m, "t": rate(t_rate, 1.0, 40)},
                           leader="m")
        auto.current = "m"
        assert auto.switch_instead(0.020, 0.1) is switched
        assert (auto.current, auto.rates.leader) == (("t", "t") if switched else ("m", "m"))

    uncosted = Auto({"m": Oracle([]), "t": TextOracle([])})  # t is judged by trials then
    uncosted.rates = Rates(by_name={"m": idle(rate(50.0, 1.0, 40)), "t": rate(52.0, 1.0, 40)},
                           leader="m")
    assert not uncosted.switch_instead(0.020, 0.1)
    text_led = Auto({"t": TextOracle([]), "u": TextOracle([])})
    text_led.rates = Rates(by_name={"t": idle(rate(50.0, 1.0, 40)), "u": rate(54.0, 1.0, 40)},
                           leader="t")
    assert not text_led.switch_instead(0.020, 0.1)  # 1.08x: not more than `clear`
    text_led.rates.by_name["u"] = rate(56.0, 1.0, 40)
    assert text_led.switch_instead(0.020, 0.1) and text_led.rates.leader == "u"


def test_each_candidate_waits_its_own_turn_and_a_lost_lead_is_tried_again_soon():
    """`c` has lost many trials (a long wait) while `a` led; when `b` overtakes `a`, `a` is
    tried again RECHECK steps after its last step, long before `c`."""
    auto = Auto({"a": Oracle([]), "b": Oracle([]), "c": Oracle([])})
    rates = {"a": rate(100.0, 1.0, 40), "b": rate(130.0, 1.0, 40), "c": rate(50.0, 1.0, 40)}
    rates["c"].wait = Auto.MAX_GAP
    auto.rates = Rates(by_name=rates, leader="a", step=50)
    rates["a"].last_step, rates["b"].last_step, rates["c"].last_step = 49, 45, 40
    assert auto._next() == "b" and rates["a"].wait == Auto.RECHECK
    proposed = []
    for step in range(51, 51 + Auto.FIRST_GAP):
        auto.rates.step = step
        proposed.append(auto._next())
        rates[proposed[-1]].last_step = step
    assert "c" not in proposed and 51 + proposed.index("a") == 49 + Auto.RECHECK + 1


def test_shadow_steps_scale_by_a_candidates_own_real_steps_once_it_has_a_few():
    """Real steps of every candidate ran 1.2x the cost model; lookahead's own ran 1.5x: its
    shadow steps take the common ratio until it has TRUSTED real steps of its own."""
    from mlx_spec.drafters.auto import Calibration

    rates = Rates()
    for _ in range(10):
        rates.real.add(0.012, 0.010)
    own = rates.own.setdefault("lookahead", Calibration())
    for step in range(Calibration.TRUSTED):
        assert rates.scale("lookahead") == pytest.approx(1.2)
        assert rates.scale("pld") == pytest.approx(1.2)
        own.add(0.015, 0.010)
    assert rates.scale("lookahead") == pytest.approx(1.5)
    assert rates.scale("pld") == pytest.approx(1.2)


def test_a_rate_that_sat_out_counts_less_against_its_trial():
    """Two trial steps at 200 tokens/s move a rate settled at 100 more when it was measured long
    ago (the text has moved on) than when it was measured a moment ago."""
    moved = {}
    for idle in (1, 200):
        r = rate(100.0, 1.0, 40)
        r.last_step = 0
        r.fade(idle)
        for _ in range(2):
            r.add(5.0, 0.025)  # as long as each step before, twice the tokens
        moved[idle] = r.per_second
    assert 100.0 < moved[1] < 150.0 < 180.0 < moved[200] < 200.0


class Counting(TextOracle):
    def __init__(self, full):
        super().__init__(full)
        self.asked = 0

    def propose(self, ctx):
        self.asked += 1
        return super().propose(ctx)


def test_a_text_only_candidate_far_behind_is_asked_only_every_few_steps(random_models):
    """A text-only candidate settled far behind the leader is asked every step until it is
    paired on PAIRED steps of this request's text (its pairing starts afresh with each request),
    then every SHADOW_EVERY-th; from the first step where the leader outruns it over the long run
    (Auto._outrun)."""
    from mlx_spec.drafters.autoregressive import Autoregressive
    from mlx_spec.engine import Limits
    from mlx_spec.sampling import SamplingParams

    model = random_models["llama"]
    prompt = model.tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    limits = Limits(max_tokens=200)  # (no end of sequence: a long answer)

    def decode(drafter):
        steps = Decoder(Target(model.model), drafter, "x").generate(list(prompt), limits,
                                                                     SamplingParams())
        return [t for step in steps for t in step.token_ids]

    expected = decode(Autoregressive(model))
    wrong = next(t for t in range(1, 1000) if t not in expected)
    cost = CostModel(sizes=(1, 2, 4, 8), seconds=(0.010, 0.012, 0.014, 0.018), context=128)
    behind = Counting([wrong] * 1000)  # drafts a wrong chain: its shadow rate is one token a step
    memory = Rates(by_name={"oracle": rate(4000.0, 1.0, 40), "behind": rate(100.0, 1.0, 40)})
    auto = Auto({"oracle": Oracle(prompt + expected), "behind": behind}, lambda regime: memory,
                cost)
    assert decode(auto) == expected
    steps = auto.steps_by_method["oracle"]
    assert auto.steps_by_method.keys() == {"oracle"} and steps > 2 * Auto.SETTLED
    assert memory.paired["behind"].steps >= Auto.PAIRED  # measured on this text
    paired = Auto.PAIRED + 1  # (its first tree is scored at the step after it is asked)
    assert behind.asked <= paired + (steps - paired) // Auto.SHADOW_EVERY + 1

    # where the leader's long run outruns the candidate's (Auto._outrun: both LongRates known),
    # the pairing is not waited for: every SHADOW_EVERY-th step from the first
    behind = Counting([wrong] * 1000)
    memory = Rates(by_name={"oracle": rate(4000.0, 1.0, 40), "behind": rate(100.0, 1.0, 40)},
                   long={"oracle": long_rate(5.0)}, text_long={"behind": long_rate(1.0)})
    auto = Auto({"oracle": Oracle(prompt + expected), "behind": behind}, lambda regime: memory,
                cost)
    assert decode(auto) == expected
    steps = auto.steps_by_method["oracle"]
    assert auto.steps_by_method.keys() == {"oracle"} and steps > 2 * Auto.SETTLED
    assert behind.asked <= steps // Auto.SHADOW_EVERY + 2
    assert memory.text_long["behind"].steps > 40  # its scored shadow steps feed its long run


def test_a_text_only_candidates_asks_that_find_nothing_count_as_plain_steps(random_models):
    """A text-only candidate that drafts on every other ask: its window and its pairing of
    drafts (Rates.paired) count the asks with a draft alone; its long run and the pairing that
    counts misses too (Rates.paired_all: what it is judged by where the leader outruns it) count
    each empty ask as the one-token step it would have taken, so they see it emit fewer tokens a
    step."""
    from mlx_spec.drafters.autoregressive import Autoregressive
    from mlx_spec.engine import Limits
    from mlx_spec.sampling import SamplingParams

    class EveryOther(Counting):
        def propose(self, ctx):
            tree = super().propose(ctx)
            return tree if self.asked % 2 else Tree.from_chain(ctx.tokens[-1], [])

    model = random_models["llama"]
    prompt = model.tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    limits = Limits(max_tokens=120)
    steps = Decoder(Target(model.model), Autoregressive(model), "x").generate(
        list(prompt), limits, SamplingParams())
    expected = [t for step in steps for t in step.token_ids]
    cost = CostModel(sizes=(1, 2, 4, 8), seconds=(0.010, 0.012, 0.014, 0.018), context=128)
    memory = Rates(by_name={"oracle": rate(4000.0, 1.0, 40), "half": rate(100.0, 1.0, 40)})
    half = EveryOther(prompt + expected)
    auto = Auto({"oracle": Oracle(prompt + expected), "half": half}, lambda regime: memory, cost)
    out = Decoder(Target(model.model), auto, "auto").generate(list(prompt), limits,
                                                               SamplingParams())
    assert [t for step in out for t in step.token_ids] == expected
    drafts, every = memory.paired["half"], memory.paired_all["half"]
    assert every.steps > drafts.steps >= Auto.PAIRED
    per_step = lambda r: r.tokens / r.weight
    assert per_step(every.shadow) < 0.8 * per_step(drafts.shadow)
    assert per_step(every.real) == pytest.approx(per_step(drafts.real), rel=0.3)  # same leader
    assert memory.text_long["half"].steps > memory.by_name["half"].steps - 40
    assert per_step(memory.text_long["half"]) < 0.8 * per_step(drafts.shadow)


class EveryThird(TextOracle):
    """A text-only candidate that drafts 4 tokens on every third ask and nothing on the others."""
    asked = 0

    def propose(self, ctx):
        self.asked += 1
        return Tree.from_chain(ctx.tokens[-1], [1, 2, 3, 4] if self.asked % 3 == 0 else [])


def test_a_text_only_leader_that_finds_no_draft_hands_the_step_to_the_best_model_drafter():
    """Planted steps, no timing: text-only `text` leads, drafting 4 tokens on every third ask
    and nothing on the others. Beside a model drafter of 3 tokens a step, its empty steps are
    the model drafter's (Auto._fall_back), all accepted, and `text` keeps the lead. Beside one
    that does not beat plain decoding by SWITCH_MARGIN, its plain steps go out; so they do
    after Rate.PRIOR handed steps that emitted one token each (the text `text` cannot draft
    may be harder for the model drafter too). Handed steps are booked to the lead, not to the
    model drafter's rates, and do not put off its trials."""
    from mlx_spec.drafters.base import StepContext
    from mlx_spec.sampling import SamplingParams

    class TwoDrafts(Drafter):
        def propose(self, ctx):
            return Tree.from_chain(ctx.tokens[-1], [7, 7])

    cost = CostModel(sizes=(1, 2, 4, 8), seconds=(0.010, 0.012, 0.014, 0.018), context=128)

    def steps(model_tokens, handed_emit=3, count=21):
        """(proposer, leader or trial candidate, nodes) of the steps after the first, and the
        rates; `model_tokens` a step planted for the model drafter, `handed_emit` the tokens
        its steps emit."""
        rates = Rates(by_name={"text": rate(5.0 * 40, 0.8, 40),
                               "model": rate(model_tokens * 40, 0.8, 40)})
        auto = Auto({"model": TwoDrafts(), "text": EveryThird([])}, lambda regime: rates, cost)
        now = [0.0]
        ctx = StepContext(tokens=[0], max_drafts=8, sampling=SamplingParams(),
                          clock=lambda: now[0])
        auto.begin(ctx.tokens)
        proposed = []
        for step in range(count):
            tree = auto.propose(ctx)
            proposed.append((auto.proposer, auto.current, len(tree)))
            if step == 0:  # (a new request hands a text-only lead to the model drafter)
                rates.leader = "text"
            now[0] += 0.02
            emit = handed_emit if auto.proposer == "model" else len(tree)
            acceptance = Acceptance(path=list(range(emit)), tokens=[0] * emit)
            auto.observe(ctx, tree, acceptance, None)
            auto.prepare(ctx, acceptance, None)
        return proposed[1:], rates

    def led(proposed):  # (proposer, nodes) of the steps `text` led
        return [(p, nodes) for p, current, nodes in proposed if current == "text"]

    proposed, rates = steps(model_tokens=3.0, count=40)
    handed = led(proposed)
    assert set(handed) == {("text", 5), ("model", 3)} and handed.count(("model", 3)) >= 15
    trial = [p for p, current, _ in proposed if current == "model"]
    assert len(trial) >= Auto.KNOWN_TRIAL and set(trial) == {"model"}  # (its wait ran on)
    assert rates.by_name["model"].steps == 40 + len(trial) == 40 + rates.long["model"].steps
    assert rates.leader == "text"
    plain, _ = steps(model_tokens=1.0)
    assert set(led(plain)) == {("text", 5), ("text", 1)} and led(plain).count(("text", 1)) >= 12
    losing, _ = steps(model_tokens=3.0, handed_emit=1)
    assert led(losing).count(("model", 3)) == Rate.PRIOR and len(led(losing)) == 20
    assert led(losing).count(("text", 1)) >= 8


def test_an_idle_model_drafters_empty_steps_go_to_the_best_text_only_candidate():
    """Planted steps, no timing: model drafter `model` leads with its chooser at plain decoding
    (Rate.idle: it sends the root alone), and text-only `text` drafts 4 tokens on every third
    ask. Its drafts go out in the leader's empty steps (Auto._fall_forward), booked to its own
    rate as its steps and paired with the plain steps they replaced; `model` keeps its rate of
    its own plain steps and is told each handed step as the plain step it would have been;
    `text` is asked once a step, not again in the shadow. Once PAIRED of its drafts are paired
    ahead, `text` leads. Not in a trial (it measures its candidate), and not where the leader
    sends drafts (not idle)."""
    from mlx_spec.drafters.base import StepContext
    from mlx_spec.sampling import SamplingParams

    class Told(Plain):
        def __init__(self):
            self.told = []

        def observe(self, ctx, tree, acceptance, out):
            self.told.append((len(tree), acceptance.accepted_drafts))

    cost = CostModel(sizes=(1, 2, 4, 8), seconds=(0.010, 0.012, 0.014, 0.018), context=128)

    def steps(leader_idle=True, trial=None, count=24):
        model = rate(1.0 * 40, 0.8, 40)
        rates = Rates(by_name={"text": rate(1.5 * 40, 0.8, 40),
                               "model": idle(model) if leader_idle else model}, leader="model")
        told, text = Told(), EveryThird([])
        auto = Auto({"model": told, "text": text}, lambda regime: rates, cost)
        now = [0.0]
        ctx = StepContext(tokens=[0], max_drafts=8, sampling=SamplingParams(),
                          clock=lambda: now[0])
        auto.begin(ctx.tokens)
        auto._trial = trial
        proposed = []
        for _ in range(count):
            tree = auto.propose(ctx)
            auto.while_verifying(ctx)
            proposed.append((auto.proposer, auto.current, len(tree)))
            now[0] += 0.02
            acceptance = Acceptance(path=list(range(len(tree))), tokens=[0] * len(tree))
            auto.observe(ctx, tree, acceptance, None)
            auto.prepare(ctx, acceptance, None)
        return proposed, rates, told, text

    proposed, rates, told, text = steps()
    handed = 3 * Auto.PAIRED  # (steps until PAIRED drafts: one ask in three drafts)
    assert set(proposed[:handed]) == {("text", "model", 5), ("model", "model", 1)}
    assert proposed[:handed].count(("text", "model", 5)) == Auto.PAIRED
    assert rates.paired["text"].steps == Auto.PAIRED and rates.leader == "text"
    # its asks that found no draft too, as plain steps, but for the request's untimed first
    assert rates.paired_all["text"].steps == 3 * Auto.PAIRED - 1
    recheck = [(p, current) for p, current, _ in proposed[handed:] if current != "text"]
    assert set(recheck) <= {("model", "model")} and len(recheck) <= Auto.TRIAL  # its own steps
    assert proposed[handed][1] == "text" and text.asked == 24
    assert rates.by_name["model"].idle
    # (the request's first step, the leader's, is not timed)
    assert rates.by_name["model"].steps == 40 + 2 * Auto.PAIRED - 1 + len(recheck)
    assert told.told == [(1, 0)] * (handed + len(recheck))  # each step, own or handed, as plain
    trial, *_ = steps(trial=("model", 5))
    assert {p for p, *_ in trial[:5]} == {"model"} and ("text", "model", 5) in trial[6:]
    busy, *_ = steps(leader_idle=False, count=9)
    assert {p for p, *_ in busy} == {"model"}


def test_trial_steps_are_not_steady_so_the_back_off_does_not_judge_them():
    from mlx_spec.drafters.base import StepContext
    from mlx_spec.sampling import SamplingParams

    planted = Rates(by_name={"a": rate(100.0, 1.0, 40), "b": rate(40.0, 1.0, 2)})
    auto = Auto({"a": Oracle([]), "b": Oracle([])}, lambda regime: planted)
    ctx = StepContext(tokens=[1, 2], max_drafts=4, sampling=SamplingParams())
    steady = []
    for step in range(Auto.TRIAL + 2):
        auto.propose(ctx)
        steady.append((auto.current, auto.steady()))
        auto.current = auto._start_trial("b") if step == 0 else auto._next()
    assert steady == [("a", True)] + [("b", False)] * Auto.TRIAL + [("a", True)]


def test_auto_candidates_keep_their_sampled_draft_sizes_across_requests(random_models,
                                                                         random_model_dirs):
    """Alone (built without make_decoder's back-off), a sampling draft model starts each request
    from its chooser's prior (a seed gives the same text); inside auto it keeps what it learned,
    per temperature, for the next request and the next decoder of the same model, so its few
    trial steps are sized by what it knows."""
    from mlx_spec.drafters import create
    from mlx_spec.drafters.draft_length import chain_prior
    from mlx_spec.drafters.shared import shared
    from mlx_spec.engine import Limits
    from mlx_spec.sampling import SamplingParams

    model = random_models["mistral"]
    options = dict(draft_model=str(random_model_dirs["qwen2"]), num_draft_tokens=3)
    prompt = model.tokenizer.encode(PROMPTS[0])
    hot = SamplingParams(temperature=1.0)
    shared(model).draft_lengths.clear()  # no chooser learned by earlier tests on this model

    def run(drafter, sampling):
        decoder = Decoder(Target(model.model), drafter, method="draft")
        list(decoder.generate(list(prompt), Limits(max_tokens=24), sampling, seed=1))  # no back-off
        return drafter.choosers.get(sampling)

    def at_prior(chooser):
        return all(chooser.tokens[s] == chain_prior(s) for s in chooser.sizes)

    alone = create("draft", model, **options)
    learned = run(alone, hot)
    assert not at_prior(learned)  # a random drafter's misses moved it
    alone.begin(prompt)
    assert at_prior(alone.choosers.get(hot))  # alone: every request starts afresh

    kept = create("draft", model, **options)
    kept.keep_learning()
    learned = dict(run(kept, hot).tokens)
    kept.begin(prompt)
    assert kept.choosers.get(hot).tokens == learned  # carried to the next request
    other = create("draft", model, **options)
    other.keep_learning()
    assert other.choosers.get(hot).tokens == learned  # and to the next decoder
    assert at_prior(other.choosers.get(SamplingParams(temperature=0.7)))  # another temperature learns on its own
    auto = mlx_spec.make_decoder(model, "auto", methods="draft", **options).drafter
    assert auto.candidates["draft"].choosers.learned.carried


def test_a_new_request_pairs_the_text_only_candidates_again():
    """How pld and lookahead compare with the real steps depends on the text: at a new request
    their pairings start again and a text-only leader hands the lead to the best model drafter
    until paired steps on this text show it ahead (the rates themselves are kept); nor do the
    last request's trees that its text was still following count (_pairing)."""
    from mlx_spec.drafters.auto import Pairing
    from mlx_spec.drafters.base import StepContext
    from mlx_spec.sampling import SamplingParams

    cost = CostModel(sizes=(1, 2, 4, 8), seconds=(0.010, 0.012, 0.014, 0.018), context=128)
    planted = Rates(by_name={"model": rate(100.0, 1.0, 40), "text": rate(300.0, 1.0, 40)},
                    paired={"text": Pairing()}, leader="text")
    auto = Auto({"model": Oracle([]), "text": TextOracle([])}, lambda regime: planted, cost)
    auto._following = {"text": [(8, 0.02, [1, 0.01])] * Auto.PAIRED}  # the last request's
    auto.begin([1, 2])
    auto.propose(StepContext(tokens=[1, 2], max_drafts=4, sampling=SamplingParams()))
    assert auto._pairing("text") is None
    assert auto.current == "model" and planted.leader == "model"
    assert "text" not in planted.paired
    assert planted.by_name["model"].steps == planted.by_name["text"].steps == 40


def test_a_text_only_leader_hands_the_lead_to_the_best_model_drafter_over_the_long_run():
    """At a new request (and where the back-off ends a text-only leader's run) the lead goes to
    the model drafter of best long-run rate, not of best window: `b`'s window is from steps
    long before, while `text` led (a draft model's, 270 steps old, had handed it the lead at
    0.7x of redrafter's speed, T = 0.7); over the long run it is behind `a`, within noise."""
    from mlx_spec.drafters.auto import Pairing
    from mlx_spec.drafters.base import StepContext
    from mlx_spec.sampling import SamplingParams

    cost = CostModel(sizes=(1, 2, 4, 8), seconds=(0.010, 0.012, 0.014, 0.018), context=128)

    def planted():
        return Rates(by_name={"a": rate(100.0, 1.0, 40, 0.3), "b": rate(130.0, 1.0, 14, 0.3),
                              "text": rate(300.0, 1.0, 40)},
                     long={"a": long_rate(4.0), "b": long_rate(3.8)},
                     paired={"text": Pairing()}, leader="text")

    rates = planted()
    auto = Auto({"a": Oracle([]), "b": Oracle([]), "text": TextOracle([])},
                lambda regime: rates, cost)
    auto.rates = rates  # (as the first step sets them)
    assert not auto._clearly_slower("b", "a") and auto._fastest(["a", "b"]) == "b"
    auto.rates = None
    auto.propose(StepContext(tokens=[1, 2], max_drafts=4, sampling=SamplingParams()))
    assert rates.leader == "a"

    auto.rates = planted()
    assert auto.switch_instead(plain_s=0.02, clear=0.1) and auto.rates.leader == "a"


def test_rates_outlive_the_process_in_the_cache_folder(random_models, tmp_path):
    """At each request's end auto saves its rates (per candidates and regime) in the cache
    folder; the next process's first request starts from them, and `mlxspec doctor` lists them.
    A state without a folder (the bench's) writes nothing; a damaged file reads as nothing."""
    from mlx_spec.drafters.auto import describe_remembered
    from mlx_spec.drafters.shared import Shared

    model = random_models["llama"]
    kept = model.extras
    try:
        model.extras = Shared(auto_folder=tmp_path)
        decoder = mlx_spec.make_decoder(model, "auto")
        mlx_spec.generate(model, PROMPTS[0], max_tokens=40, raw=True, decoder=decoder)
        (file,) = tmp_path.glob("*.json")
        ((_, regime), measured), = model.extras.auto_rates.items()
        assert regime == "greedy" and measured.by_name
        told = describe_remembered(model)  # (mlxspec doctor)
        assert told.startswith("greedy: ") and told.count("(leads)") == (measured.leader is not None)
        assert all(name in told for name in measured.by_name)
        # a record of another candidate set for the same regime: each then names its candidates
        # (a candidate without a measured step shows `-`); a file this machine's auto would not
        # read (another mlx, device, BLAS or cache format names it otherwise) is left out
        mlx_spec.generate(model, PROMPTS[1], max_tokens=6, raw=True, decoder=mlx_spec.make_decoder(
            model, "auto", methods="pld", num_draft_tokens=3))
        (second,) = set(tmp_path.glob("*.json")) - {file}
        os.utime(file, (1e9, 1e9))  # the first record older: the latest is listed first
        names = "+".join(decoder.drafter.candidates)
        both = describe_remembered(model)
        assert both.startswith("greedy [pld, num_draft_tokens=3]: pld ")
        assert f"; greedy [{names}]: " in both
        (tmp_path / "0000000000000000.json").write_text(file.read_text())
        about = json.loads(second.read_text())["about"]
        for odd, value in (("1", 3), ("2", "x"), ("3", None)):  # unreadable records: left out
            wrong = {**about, "candidates" if odd == "1" else "options": value}
            if value is None:
                del wrong["candidates"]  # (a record written before they named their candidates)
            Rates(by_name={"pld": Rate()}).save(tmp_path / f"{odd * 16}.json", 1.0, wrong)
        Rates(by_name={"pld": Rate()}).save(second, 1.0, about)
        told = describe_remembered(model)
        assert told.count("greedy") == 2 and "greedy [pld, num_draft_tokens=3]: pld -" in told
        for extra in set(tmp_path.glob("*.json")) - {file}:
            extra.unlink()

        model.extras = Shared(auto_folder=tmp_path)  # the next process
        read = mlx_spec.make_decoder(model, "auto").drafter._rates_for("greedy")
        assert read.by_name.keys() == measured.by_name.keys() and read.leader == measured.leader
        for name, old in measured.by_name.items():
            new = read.by_name[name]
            assert (new.steps, new.wait, new.idle) == (old.steps, old.wait, old.idle)
            assert new.sent == pytest.approx(old.sent)
            assert new.per_second == pytest.approx(old.per_second)
            assert new.spread() == pytest.approx(old.spread())

        file.write_text("{not json")
        model.extras = Shared(auto_folder=tmp_path)
        assert not mlx_spec.make_decoder(model, "auto").drafter._rates_for("greedy").by_name
        assert describe_remembered(model).startswith("nothing yet")

        file.unlink()
        model.extras = Shared(auto_folder=None)
        mlx_spec.generate(model, PROMPTS[0], max_tokens=20, raw=True,
                          decoder=mlx_spec.make_decoder(model, "auto"))
        assert not list(tmp_path.glob("*"))
    finally:
        model.extras = kept


def test_saved_rates_are_read_in_units_of_the_target_step():
    """Seconds are saved in units of the modelled one-token step: a process whose cost model
    says the step takes twice as long reads the same tokens per step, at half the rate."""
    import json
    import tempfile
    from pathlib import Path

    from mlx_spec.drafters.auto import LongRate

    long = LongRate()
    for i in range(30):
        long.add(4 + (-1) ** i, 0.05)
    planted = Rates(by_name={"a": rate(100.0, 1.0, 20, spread=0.3)}, leader="a", long={"a": long},
                    text_long={"t": long_rate(2.0), "u": long_rate(1.0)})
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "rates.json"
        planted.save(file, unit=0.01)
        assert json.loads(file.read_text())["rates"]["a"]["seconds"] == pytest.approx(
            planted.by_name["a"].seconds / 0.01)
        slower = Rates.load(file, unit=0.02, names=("a", "b", "t"))
        assert Rates.load(file, unit=0.01, names=("b",)).by_name == {}
    assert slower.leader == "a"
    assert slower.by_name["a"].per_second == pytest.approx(planted.by_name["a"].per_second / 2)
    assert slower.by_name["a"].spread() == pytest.approx(planted.by_name["a"].spread())
    assert type(slower.long["a"]) is LongRate  # (its own decay and error)
    assert slower.long["a"].raw == pytest.approx(long.raw / 2)
    assert slower.long["a"].error() == pytest.approx(long.error())
    assert slower.text_long.keys() == {"t"} and type(slower.text_long["t"]) is LongRate
    assert slower.text_long["t"].raw == pytest.approx(planted.text_long["t"].raw / 2)

    with tempfile.TemporaryDirectory() as folder:  # a file written before text_long was kept
        file = Path(folder) / "rates.json"
        planted.save(file, unit=0.01)
        data = json.loads(file.read_text())
        del data["text_long"]
        file.write_text(json.dumps(data))
        older = Rates.load(file, unit=0.01, names=("a", "t"))
    assert older.text_long == {} and older.long["a"].raw == pytest.approx(long.raw)
    assert older.leader == "a"


def test_a_model_drafter_clearly_slower_over_the_long_run_neither_leads_nor_waits_less():
    """Planted rates: `b`'s window (two lucky trial steps) is 30% ahead of leader `a`'s, but over
    the long run (LongRate, 40 steps each) `b` runs at 0.7x of `a`, its steps spread as at
    T = 0.7: `b` does not take the lead and its trial counts as clearly lost, its wait doubled
    (without the long run it took the lead). Where the long run has them within noise, the
    window decides as before. And a leader clearly slower over the long run than a model drafter
    whose window is the best hands it the lead, however small the window's difference."""
    for b_long, expected, wait in ((2.8, "a", 192), (3.9, "b", Auto.FIRST_GAP)):
        auto = Auto({"a": Oracle([]), "b": Oracle([])})
        windows = {"a": rate(200.0, 1.0, 40, 0.3), "b": rate(260.0, 1.0, 14, 0.3)}
        windows["b"].wait = 96
        auto.rates = Rates(by_name=windows, leader="a",
                           long={"a": long_rate(4.0), "b": long_rate(b_long)})
        auto._trial, auto._trial_steps = ("b", 0), 12  # b's trial ends (settled: no extension)
        assert auto._next() == expected
        assert auto.rates.leader == expected and auto.rates.by_name["b"].wait == wait

    auto = Auto({"a": Oracle([]), "b": Oracle([])})
    auto.rates = Rates(by_name={"a": rate(200.0, 1.0, 40, 0.3), "b": rate(201.0, 1.0, 40, 0.3)},
                       leader="a", long={"a": long_rate(2.8), "b": long_rate(4.0)})
    assert auto._hold("b") == "b"
    auto.rates.long = {"a": long_rate(3.9), "b": long_rate(4.0)}
    assert auto._hold("b") == "a"  # within the switch margin, the long run within noise
    # whoever hands the lead on (a text-only leader at a new request, the back-off) hands it to
    # the best window of those not clearly slower over the long run
    auto.rates = Rates(by_name={"a": rate(200.0, 1.0, 40, 0.3), "b": rate(260.0, 1.0, 14, 0.3)},
                       long={"a": long_rate(4.0), "b": long_rate(2.8)})
    assert auto._best() == "a"


def test_a_due_trial_waits_while_the_drafter_cannot_beat_the_leader_over_the_long_run():
    """Planted rates: model drafter `b` is due a trial, and over the long run (LongRate, 40 steps)
    it runs at 100 tokens a second. Against a leader at 400 (a copied passage) the trial waits,
    its wait unchanged; against one at 110, within both rates' noise, it runs; and with a long run
    of fewer than SETTLED steps (an unlucky opening may be all it is) it runs whatever the leader."""
    def next_after(leader_rate, b_long):
        auto = Auto({"a": Oracle([]), "b": Oracle([])})
        windows = {"a": rate(leader_rate, 1.0, 40, 0.3), "b": rate(100.0, 1.0, 40, 0.3)}
        windows["b"].last_step, windows["b"].wait = 0, 24
        auto.rates = Rates(by_name=windows, step=100, leader="a", long={"b": b_long})
        return auto._next(), windows["b"].wait

    assert next_after(400.0, long_rate(2.0)) == ("a", 24)
    assert next_after(110.0, long_rate(2.0)) == ("b", 24)
    few = LongRate()
    for tokens in (1, 3, 2):
        few.add(tokens, 0.02)
    assert next_after(400.0, few) == ("b", 24)


def test_a_text_only_candidate_paired_ahead_of_a_model_drafter_takes_its_lead():
    """Planted rates: the model drafter `m` leads at twice text-only `t`'s rate from earlier
    text, but on this text `t`'s shadow steps beat the real steps at the same places by 50%:
    `t` leads. Two text-only candidates are not switched so (their modelled shadow steps each
    beat the other's real ones a little); a text-only leader that loses the lead is paired
    afresh before it may take it back."""
    from mlx_spec.drafters.auto import Pairing

    cost = CostModel(sizes=(1, 2, 4, 8), seconds=(0.010, 0.012, 0.014, 0.018), context=128)

    def ahead(ratio):
        p = Pairing()
        for _ in range(Auto.PAIRED):
            p.add(3, 0.01 / ratio, 3, 0.01)
        return p

    auto = Auto({"m": Oracle([]), "t": TextOracle([]), "u": TextOracle([])},
                lambda regime: None, cost)
    auto.rates = Rates(by_name={"m": rate(200.0, 1.0, 40), "t": rate(100.0, 1.0, 40),
                                "u": rate(90.0, 1.0, 40)},
                       paired={"t": ahead(1.5)}, leader="m", step=50)
    for r in auto.rates.by_name.values():
        r.last_step = 49
    assert auto._best() == "m" and auto._next() == "t" and auto.rates.leader == "t"

    auto.rates.by_name["m"] = rate(50.0, 1.0, 40)
    auto.rates.paired = {"u": ahead(1.5)}  # a text-only leader is not handed to another so
    assert auto._best() == "t" and auto._hold("t") == "t"

    auto.rates.by_name["m"] = rate(400.0, 1.0, 40)  # `m` clearly ahead: it takes the lead back
    auto.rates.by_name["m"].last_step = 49
    auto.rates.paired["t"] = ahead(1.5)
    assert auto._next() == "m" and "t" not in auto.rates.paired


def test_a_text_only_candidate_far_below_a_model_drafters_long_run_needs_more_paired_steps():
    """Model drafter `m` leads, 4 tokens a 20 ms step over the long run (LongRate); text-only
    `t`'s windowed rate is 30 tokens a second. Paired 1.6x ahead of the real steps over PAIRED
    steps, `t` does not lead (four steps at T > 0 are an opening's luck), over SETTLED steps it
    does. Where its rate may beat `m`'s long run (a text it copies), where `m`'s long run is not
    yet SETTLED steps long or there is none, and where `m` sits idle at plain decoding (its long
    run is older text), PAIRED steps are enough. Once `t`'s own long run (its scored shadow
    steps and its own, LongRate) is SETTLED steps long, it decides in place of its window, and
    below `m`'s at all, within the noise too, it needs SETTLED. Those SETTLED steps are of the
    pairing that counts its asks that found no draft (Rates.paired_all): ahead on its drafts
    alone while behind with its misses, `t` does not lead; where `m` does not outrun it, its
    drafts alone decide."""
    from mlx_spec.drafters.auto import Pairing

    def ahead(steps, ratio=1.6):
        pairing = Pairing()
        for _ in range(steps):
            pairing.add(2, 0.02 / ratio, 2, 0.02)
        return pairing

    short = LongRate()
    for _ in range(Auto.SETTLED - 1):
        short.add(4.0, 0.02)
    t_short = LongRate()
    for _ in range(Auto.SETTLED - 1):
        t_short.add(1.0, 0.02)
    for t_tokens, t_long, long, m_idle, steps, expected in (
            (30.0, None, long_rate(4.0), False, Auto.PAIRED, "m"),
            (30.0, None, long_rate(4.0), False, Auto.SETTLED, "t"),
            (200.0, None, long_rate(4.0), False, Auto.PAIRED, "t"),
            (200.0, t_short, long_rate(4.0), False, Auto.PAIRED, "t"),
            (30.0, None, short, False, Auto.PAIRED, "t"),
            (30.0, None, None, False, Auto.PAIRED, "t"),
            (30.0, None, long_rate(4.0), True, Auto.PAIRED, "t"),
            # its long run (SETTLED steps or more) decides, not its window: a window lifted by
            # a predictable passage is a burst where `t` runs at a quarter of `m` on average
            (200.0, long_rate(1.0), long_rate(4.0), False, Auto.PAIRED, "m"),
            (200.0, long_rate(1.0), long_rate(4.0), False, Auto.SETTLED, "t"),
            (30.0, long_rate(4.2), long_rate(4.0), False, Auto.PAIRED, "t"),
            (200.0, long_rate(3.8), long_rate(4.0), False, Auto.PAIRED, "m"),  # (within noise)
            (30.0, long_rate(1.0), long_rate(4.0), True, Auto.PAIRED, "t")):
        for with_misses, outcome in ((ahead(steps), expected),
                                     (ahead(Auto.SETTLED, ratio=0.8), None)):
            auto = Auto({"m": Oracle([]), "t": TextOracle([])},
                        cost=CostModel((1, 2), (0.01, 0.012), 128))
            m = rate(50.0, 1.0, 40)
            auto.rates = Rates(by_name={"m": idle(m) if m_idle else m,
                                        "t": rate(t_tokens, 1.0, 40)},
                               paired={"t": ahead(steps)}, paired_all={"t": with_misses},
                               leader="m", step=50,
                               long={"m": long} if long is not None else {},
                               text_long={"t": t_long} if t_long is not None else {})
            outrun = auto._outrun("t", "m")
            # behind with its misses: `m` holds where it outruns `t`, else the drafts decide
            assert auto._hold("t") == (outcome or ("m" if outrun else expected))


def test_against_an_idle_leaders_plain_steps_a_text_only_candidate_needs_only_the_switch_margin():
    """Model drafter `m` leads with plain steps of one token each; text-only `t`'s shadow steps
    beside them emitted 1, 1, 1, 1, 2, 1 tokens (ratio 1.18, within the noise of so few bursty
    steps). Where `m` sits at plain decoding (Rate.idle) its steps have no burst to wait out and
    `t` leads (its own chooser drafts only where it expects a gain); where `m` sends drafts it
    holds, and so it does where the real steps beside `t`'s emitted two tokens each (the pairing
    was built beside another leader). Below the switch margin `t` does not lead either way. An
    idle text-only leader is not handed on so: `u`, the best rate, paired as `t` was, waits."""
    from mlx_spec.drafters.auto import Pairing, _margin

    cost = CostModel((1, 2), (0.01, 0.012), 128)

    def pairing(shadow_tokens, real_tokens=1):
        p = Pairing()
        for tokens in shadow_tokens:
            p.add(real_tokens * tokens, 0.02, real_tokens, 0.02)
        return p

    bursty, flat = pairing((1, 1, 1, 1, 2, 1)), pairing((1, 1.05, 1, 1.05, 1, 1.05))
    beside_drafts = pairing((1, 1, 1, 1, 2, 1), real_tokens=2)
    assert 1.0 + Auto.SWITCH_MARGIN < bursty.ratio < 1.0 + _margin(bursty.shadow, bursty.real)
    assert beside_drafts.ratio < 1.0 + _margin(beside_drafts.shadow, beside_drafts.real)
    assert flat.ratio < 1.0 + Auto.SWITCH_MARGIN
    for m_idle, paired, expected in ((True, bursty, "t"), (False, bursty, "m"),
                                     (True, beside_drafts, "m"), (True, flat, "m")):
        auto = Auto({"m": Oracle([]), "t": TextOracle([])}, cost=cost)
        m = rate(50.0, 1.0, 40)
        auto.rates = Rates(by_name={"m": idle(m) if m_idle else m, "t": rate(50.0, 1.0, 40)},
                           paired={"t": paired}, leader="m", step=50)
        for r in auto.rates.by_name.values():
            r.last_step = 49
        assert auto._next() == expected

    auto = Auto({"t": TextOracle([]), "u": TextOracle([])}, cost=cost)
    auto.rates = Rates(by_name={"t": idle(rate(50.0, 1.0, 40)), "u": rate(52.0, 1.0, 40)},
                       paired={"u": pairing((1, 1, 1, 1, 2, 1))}, leader="t", step=50)
    assert auto._best() == "u" and auto._next() == "t"


def test_model_drafters_that_swap_places_swap_the_lead():
    """Planted steps, no timing: `a` emits 4 tokens a step and `b` 2 for 200 steps, then the
    reverse (a new kind of text where the other drafter does better). `a` leads the first part;
    once the long run has seen the swap (LongRate), `b` leads: 75% or more of the last 300
    steps. A new request every 32 steps, as in a chat."""
    from mlx_spec.drafters.base import StepContext
    from mlx_spec.sampling import SamplingParams

    rates = Rates()
    auto = Auto({"a": Oracle([]), "b": Oracle([])}, rates_for=lambda regime: rates)
    now = [0.0]
    ctx = StepContext(tokens=[0], max_drafts=8, sampling=SamplingParams(), clock=lambda: now[0])
    chosen = []
    for step in range(500):
        if step % 32 == 0:
            if step:
                auto.end()
            auto.begin(ctx.tokens)
        tree = auto.propose(ctx)
        name = auto.current
        tokens = 4 if (name == "a") == (step < 200) else 2
        now[0] += 0.02
        auto.observe(ctx, tree, Acceptance(path=[0], tokens=[0] * tokens), None)
        chosen.append(name)
    assert chosen[:200].count("a") >= 180
    assert chosen[200:].count("b") >= 225


def test_a_cold_start_times_as_many_trial_steps_of_each_model_drafter():
    """A request's first step has no start mark and is not timed. The first trial falls on it:
    it runs one step longer, so each candidate's opening rate rests on TRIAL timed steps (with
    one fewer, the prior shrank the first candidate's rate more and handed the lead to the
    second: draft over redrafter at 0.7x its speed, T = 0.7)."""
    from mlx_spec.drafters.base import StepContext
    from mlx_spec.sampling import SamplingParams

    rates = Rates()
    auto = Auto({"a": Oracle([]), "b": Oracle([])}, rates_for=lambda regime: rates)
    now = [0.0]
    ctx = StepContext(tokens=[0], max_drafts=8, sampling=SamplingParams(), clock=lambda: now[0])
    auto.begin(ctx.tokens)
    chosen = []
    for _ in range(2 * Auto.TRIAL + 1):
        tree = auto.propose(ctx)
        chosen.append(auto.current)
        now[0] += 0.02
        auto.observe(ctx, tree, Acceptance(path=[0], tokens=[0] * 3), None)
    assert chosen == ["a"] * (Auto.TRIAL + 1) + ["b"] * Auto.TRIAL
    assert rates.by_name["a"].steps == rates.by_name["b"].steps == Auto.TRIAL
    # equal steps, equal rates: the first candidate is not left behind by its prior
    assert rates.by_name["a"].per_second == pytest.approx(rates.by_name["b"].per_second)


def test_a_stall_among_a_candidates_first_steps_counts_as_a_slow_step_by_the_cost_model():
    """Rate.add caps a stalled step by the candidate's own mean step, which its first step has
    not got: there auto caps it by the cost model (drafting plus SPIKE modelled verifies), so one
    stall of the machine at a cold start does not make the better candidate look clearly slower
    over the long run. Without a cost model the step counts as measured."""
    from mlx_spec.drafters.base import StepContext
    from mlx_spec.sampling import SamplingParams

    def first_steps(cost):
        rates = Rates()
        auto = Auto({"a": Oracle([]), "b": Oracle([])}, rates_for=lambda regime: rates,
                    cost=cost)
        now = [0.0]
        ctx = StepContext(tokens=[0], max_drafts=8, sampling=SamplingParams(),
                          clock=lambda: now[0])
        auto.begin(ctx.tokens)
        for seconds in (0.01, 0.2):  # the request's untimed first step, then a stall
            tree = auto.propose(ctx)
            now[0] += seconds
            auto.observe(ctx, tree, Acceptance(path=[0], tokens=[0] * 3), None)
        return rates.by_name["a"], rates.long["a"]

    rate, long = first_steps(_FlatCost(0.01))
    assert rate.steps == long.steps == 1
    # SPIKE modelled verifies, plus auto's own drafting (microseconds here)
    assert Rate.SPIKE * 0.01 <= rate.seconds == long.seconds < Rate.SPIKE * 0.01 + 0.002
    rate, long = first_steps(None)
    assert rate.seconds == long.seconds == pytest.approx(0.2)


def test_shadow_asks_run_while_the_target_verifies_the_step(random_models):
    """The engine calls Drafter.while_verifying right after it dispatches the verify of the
    proposed tree, before the step's sync: auto asks its text-only candidates there (on a GPU the
    host is idle until the sync), each step's asks before that step's observe, on the step's own
    context; `overlap=False` asks inside propose, as before. The candidate whose tree is in
    flight gets the wait too (its own while_verifying)."""
    model = random_models["llama"]
    prompt = model.tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    expected = mlx_lm_greedy(model, PROMPTS[0], 12)
    for overlap in (True, False):
        events = []

        class Recording(TextOracle):
            def propose(self, ctx):
                events.append(("asked", len(ctx.tokens)))
                return super().propose(ctx)

        class Leader(Oracle):
            def propose(self, ctx):
                events.append(("propose", len(ctx.tokens)))
                return super().propose(ctx)

            def while_verifying(self, ctx):
                events.append(("wait", None))

            def observe(self, ctx, tree, acceptance, out):
                events.append(("observe", None))

        auto = Auto({"leader": Leader(prompt + expected), "text": Recording(prompt + expected)},
                    cost=CostModel((1, 2), (0.01, 0.011), 64), overlap=overlap)
        target = Target(model.model)
        verify = target.verify

        def verifying(tree):
            events.append(("verify", None))
            return verify(tree)
        target.verify = verifying
        decoder = Decoder(target, auto, "auto")
        result = mlx_spec.generate(model, PROMPTS[0], max_tokens=12, raw=True, decoder=decoder)
        assert result.token_ids == expected
        kinds = [kind for kind, _ in events]
        first = kinds.index("propose")
        step = kinds[first:first + 5]  # the proposing candidate gets the wait too
        assert step == (["propose", "verify", "wait", "asked", "observe"] if overlap
                        else ["propose", "asked", "verify", "wait", "observe"])
        proposed = [n for kind, n in events if kind == "propose"]
        asked = [n for kind, n in events if kind == "asked"]
        assert asked and set(asked) <= set(proposed)  # each ask on its step's context


def test_a_model_drafters_step_counts_its_expected_tokens_a_text_only_ones_what_it_emitted():
    """At T > 0 a model drafter's step counts Acceptance.expected_tokens (the mean over the
    acceptance's draws: half the variance), in its rate and its long run; a text-only candidate's
    real step counts the tokens it emitted, as its shadow steps do."""
    from mlx_spec.drafters.base import StepContext
    from mlx_spec.sampling import SamplingParams

    rates = Rates()
    auto = Auto({"m": Oracle([]), "t": TextOracle([])}, rates_for=lambda regime: rates)
    now = [0.0]
    ctx = StepContext(tokens=[0], max_drafts=8, sampling=SamplingParams(temperature=1.0),
                      clock=lambda: now[0])
    auto.begin(ctx.tokens)
    counted = {}
    for _ in range(8):
        tree = auto.propose(ctx)
        name = auto.current
        before = rates.by_name[name].tokens if name in rates.by_name else 0.0
        now[0] += 0.02
        auto.observe(ctx, tree, Acceptance(path=[0], tokens=[0] * 3, expected=lambda: 2.25), None)
        if rates.by_name[name].steps:  # (a request's first step is not timed)
            counted.setdefault(name, rates.by_name[name].tokens - Rate.DECAY * before)
    assert counted == {"m": pytest.approx(2.25), "t": pytest.approx(3.0)}
    for counts in (rates.by_name["m"], rates.long["m"]):  # every step of m at 2.25
        assert counts.tokens == pytest.approx(2.25 * counts.weight)
    assert "t" not in rates.long and rates.text_long["t"].tokens == pytest.approx(
        3.0 * rates.text_long["t"].weight)
