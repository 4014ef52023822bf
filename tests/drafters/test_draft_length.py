"""The adaptive draft length (mlx_spec/drafters/draft_length.py) and pld's use of it: drafts grow while
guesses are accepted, shrink to plain decoding when they keep failing, and come back."""
import pytest

from mlx_spec.drafters.draft_length import SLOWEST_DRIFT, DraftChooser
from mlx_spec.drafters.base import StepContext
from mlx_spec.drafters.pld import PromptLookup
from mlx_spec.sampling import SamplingParams


def test_all_accepted_means_the_longest_draft():
    chooser = DraftChooser.for_depths(max_length=8)
    for _ in range(30):
        chooser.record(accepted=8, offered=8)
    assert chooser.choose() == 8
    assert chooser.choose(limit=3) == 3  # never past the caller's limit


def test_first_token_always_rejected_means_no_draft():
    chooser = DraftChooser.for_depths(max_length=8)
    for _ in range(30):
        chooser.record(accepted=0, offered=8)
    assert chooser.choose() == 0
    assert DraftChooser.for_depths(max_length=8, min_length=1).choose() >= 1


def test_a_fresh_chooser_leaves_its_prior_within_a_few_outcomes():
    """Started afresh (a sampling drafter's each request), the first outcomes weigh as in a mean
    with the prior: five misses of every draft already choose plain decoding, where the settled
    rate alone would keep drafting the whole chain for several more steps."""
    fresh, settled = DraftChooser.for_depths(max_length=4), DraftChooser.for_depths(max_length=4)
    settled.outcomes = 100  # as if long in use
    for _ in range(5):
        fresh.record(accepted=0, offered=4)
        settled.record(accepted=0, offered=4)
    assert fresh.choose() == 0 and settled.choose() > 0
    fresh.reset()
    assert fresh.outcomes == 0 and fresh.choose() == 4


def _bursts(chooser, rounds: int) -> int:
    """A lucky guess (7 of 8 drafts held) then seven that miss at once, `rounds` times, each
    guess whole and learned from whether or not it would be sent (pld's way); the guesses the
    chooser would have sent."""
    sent = 0
    for _ in range(rounds):
        for accepted in (7, 0, 0, 0, 0, 0, 0, 0):
            sent += chooser.choose() > 0
            chooser.record(accepted=accepted, offered=8, whole=True)
    return sent


def test_a_calibrated_chooser_stops_drafting_where_its_forecasts_do_not_hold():
    """Bursty outcomes: the running means read high right after a lucky guess, and an
    uncalibrated chooser drafts on the misses that follow; where its forecasts held a small part
    of what they promised, a calibrated one trusts them that much less. Forecasts that hold
    raise the trust again."""
    verify = lambda nodes, cached=None: 1.0 + (0.3 + 0.05 * nodes if nodes else 0.0)
    plain = DraftChooser.for_depths(8, verify=verify)
    calibrated = DraftChooser.for_depths(8, verify=verify, calibrated=True)
    assert plain.trust == calibrated.trust == 1.0
    _bursts(plain, 6), _bursts(calibrated, 6)  # what the first bursts teach both
    assert calibrated.trust < 0.5
    assert _bursts(calibrated, 6) < _bursts(plain, 6) / 2
    for _ in range(20):  # every guess holds now: the forecasts hold, and it drafts again
        calibrated.record(accepted=8, offered=8, whole=True)
    assert calibrated.trust > 0.9 and calibrated.choose() == 8
    calibrated.reset()
    assert calibrated.trust == 1.0


def test_the_trust_decides_whether_to_draft_not_how_much():
    """A trust below 1 leaves the size the estimates pick where its trusted tokens still beat its
    cost, and holds the draft back (plain decoding) where they do not; the expected gain the
    back-off reads is the trusted one. Every draft holds here, and a 3-draft verify costs 2 steps,
    a 1-draft one 1.05: at half trust, estimates scaled by the trust would pick 1 draft (1.5 / 1.05
    against 2.5 / 2), where the estimates' own pick, 3, still gains."""
    prices = {0: 1.0, 1: 1.05, 2: 1.9, 3: 2.0}
    verify = lambda nodes, cached=None: prices[round(nodes)]
    plain = DraftChooser.for_depths(3, verify=verify)
    calibrated = DraftChooser.for_depths(3, verify=verify, calibrated=True)
    for chooser in (plain, calibrated):
        chooser.outcomes = 100  # settled: learning at its rate
        for _ in range(40):
            chooser.record(accepted=3, offered=3)
    calibrated.forecasts = [5.0, 2.0]  # half the forecast draft tokens held
    assert calibrated.trust == 0.5
    assert plain.choose() == calibrated.choose() == 3
    assert calibrated.expected_gain() < plain.expected_gain()
    calibrated.forecasts = [30.0, 0.0]  # none held
    assert calibrated.choose() == 0
    assert calibrated.expected_gain() == 1.0 and plain.choose() == 3


def test_only_pld_sampling_choosers_are_calibrated():
    """At T > 0 a guess that held is a lucky draw; greedy, one that held repeats
    (DraftChooser.trust)."""
    choosers = PromptLookup(None).choosers
    assert not choosers.of(SamplingParams()).calibrated
    assert choosers.of(SamplingParams(temperature=1.0)).calibrated
    assert choosers.of(SamplingParams(temperature=1.0), following=True).calibrated
    chooser = choosers.of(SamplingParams(temperature=0.7))
    chooser.forecasts = [10.0, 1.0]
    assert chooser.trust < 0.5 and chooser.twin().trust == 1.0  # its forecasts are its own
    with pytest.raises(ValueError, match="plain decoding"):
        DraftChooser.for_depths(4, min_length=1, calibrated=True)


def test_length_tracks_where_acceptance_stops():
    chooser = DraftChooser.for_depths(max_length=12)
    for _ in range(40):
        chooser.record(accepted=3, offered=12)  # the 4th token is always wrong
    assert chooser.choose() == 3


def test_unseen_depths_are_tried_again():
    chooser = DraftChooser.for_depths(max_length=8, min_length=1)
    for _ in range(30):
        chooser.record(accepted=0, offered=8)
    assert chooser.choose() == 1
    for _ in range(60):  # depth 1 now always succeeds; depths beyond drift back to the prior
        chooser.record(accepted=chooser.choose(), offered=chooser.choose())
    assert chooser.choose() > 2


def test_wider_trees_cost_more():
    narrow, wide = DraftChooser.for_depths(max_length=8), DraftChooser.for_depths(max_length=8)
    for _ in range(30):
        narrow.record(accepted=2, offered=6, nodes=6)
        wide.record(accepted=2, offered=6, nodes=24)
    assert wide.cost(6) > narrow.cost(6)


def drafted_lengths(drafter: PromptLookup, sequence: list[int], prompt_len: int) -> list[int]:
    """Run the drafter over a known token sequence, one token per step (as if each draft
    gained exactly the one token the target produced), and return its draft lengths."""
    drafter.begin(sequence[:prompt_len])
    lengths = []
    for end in range(prompt_len, len(sequence)):
        ctx = StepContext(tokens=sequence[:end], max_drafts=64, sampling=SamplingParams())
        lengths.append(len(drafter.propose(ctx)) - 1)
    return lengths


def test_pld_stops_drafting_when_lookups_fail_and_resumes_when_they_match():
    # a repeating phrase (lookups match), then text where the last token's earlier continuation
    # is always wrong (lookups fail), then the phrase again
    phrase = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    misleading = [t for i in range(40) for t in (10, 11 + i)]  # "10" is followed by a new token
    sequence = phrase * 4 + misleading + phrase * 4
    adaptive = drafted_lengths(PromptLookup(None), sequence, len(phrase))
    fixed = drafted_lengths(PromptLookup(None, adaptive=False), sequence, len(phrase))
    start, end = 4 * len(phrase), 4 * len(phrase) + len(misleading)
    tail = slice(start - len(phrase) + 40, end - len(phrase))  # well inside the misleading stretch
    assert max(adaptive[tail]) == 0 < max(fixed[tail])
    assert max(adaptive[-len(phrase):]) > 0  # drafting is back for the repeated phrase


def test_after_giving_up_drafting_is_tried_again():
    chooser = DraftChooser.for_depths(max_length=8)
    for _ in range(30):
        chooser.record(accepted=0, offered=4)
    assert chooser.choose() == 0
    steps = 0
    while chooser.choose() == 0:  # steps that draft nothing
        chooser.record(accepted=0, offered=0)
        steps += 1
    assert 1 < steps < 200


def test_a_cost_model_where_drafts_are_dear_backs_off_and_climbs_back():
    """Driven by a fake cost model (verify(n) in one-token steps) and planted acceptance: with
    drafts that never hit, the chooser falls to depth 0; the unused depths drift back towards the
    prior, so it probes again, and once probes hit it climbs back to long drafts."""
    dear = DraftChooser.for_depths(max_length=8, verify=lambda n, cached=None: 1.0 + 0.3 * n if n else 1.0)
    for _ in range(30):
        dear.record(accepted=0, offered=dear.choose() or 8)
    assert dear.choose() == 0
    probes = 0
    for _ in range(200):
        depth = dear.choose()
        probes += depth > 0
        dear.record(accepted=depth, offered=depth)  # from now on every drafted token is right
    assert probes > 0 and dear.choose() == 8


def test_the_same_acceptance_drafts_deeper_where_verifying_is_cheaper():
    """Planted acceptance 0.7 per depth: a chip where extra rows are nearly free (GPU-like) drafts
    deeper than one where each row costs a fifth of a step."""
    def chooser(verify):
        c = DraftChooser.for_depths(max_length=10, verify=verify)
        c.tokens = {n: 1 + sum(0.7 ** d for d in range(1, n + 1)) for n in c.sizes}
        return c
    cheap = chooser(lambda n, cached=None: 1.0 + 0.01 * n if n else 1.0).choose()
    dear = chooser(lambda n, cached=None: 1.0 + 0.2 * n if n else 1.0).choose()
    assert cheap > dear >= 1


def test_a_short_whole_guess_costs_what_it_sends():
    """pld's lookup found 2 tokens, both right: every size would have sent those 2, so the deep
    sizes are neither credited with more tokens nor charged for nodes never sent."""
    chooser = DraftChooser.for_depths(max_length=8, verify=lambda n, cached=None: 1.0 + 0.2 * n if n else 1.0)
    for _ in range(60):
        chooser.record(accepted=2, offered=2, whole=True)
    assert abs(chooser.expected_tokens(8) - 3.0) < 0.01
    assert abs(chooser.cost(8) - chooser.cost(2)) < 0.01
    assert chooser.choose() >= 2  # any size that sends the whole guess


def test_depths_and_budgets_are_one_chooser():
    """A chain is a ranked tree whose n-th node is its n-th level: the same outcomes give the
    same estimates through either door."""
    chain = DraftChooser.for_depths(max_length=8, verify=lambda n, cached=None: 1.0 + 0.1 * n if n else 1.0)
    ranked = DraftChooser(range(9), chain.verify)
    for accepted in (3, 0, 8, 5, 1):
        chain.record(accepted=accepted, offered=8)
        ranked.record_ranks(list(range(1, accepted + 1)), retrieved=8)
    assert all(abs(chain.tokens[s] - ranked.tokens[s]) < 1e-9 for s in chain.sizes)
    assert chain.choose() == ranked.choose()


def test_guesses_settle_once_the_text_decides_them():
    """The one ledger of pld's and lookahead's guesses: open while the text still matches and has
    not reached the guess's end, settled (oldest first) at a mismatch or at the end."""
    from mlx_spec.drafters.draft_length import Guesses
    from mlx_spec.drafters.pld import _chain_outcome

    ledger = Guesses(_chain_outcome)
    ledger.add(3, [7, 8, 9])   # made after tokens[:3]
    ledger.add(4, [8, 5])      # made after tokens[:4]
    assert ledger.settle([1, 2, 3, 7]) == [] and len(ledger.open) == 2  # nothing decided yet
    assert ledger.settle([1, 2, 3, 7, 8]) == [] and len(ledger.open) == 2  # still matching
    # (matched, offered): 7, 8 then 4 != 9; 8 then 4 != 5
    assert ledger.settle([1, 2, 3, 7, 8, 4]) == [(2, 3), (1, 2)]
    assert ledger.open == []


def test_failed_probes_are_rare_where_drafts_never_hit():
    """A draft model that never matches (planted) on a target where one draft costs ~1.2 steps:
    once plain, it probes after the drift alone, and a failed probe is learned from where the
    misses had left the size, not from the drifted value, so the next probe is again a whole
    drift away (learned from the drifted value, a miss left it just under the threshold and it
    probed one step in about four)."""
    chooser = DraftChooser.for_depths(4, verify=lambda n, cached=None: 1.1 + 0.04 * n if n else 1.0,
                                      draft_cost=0.06)
    for _ in range(30):
        chooser.record(accepted=0, offered=chooser.choose() or 4)
    assert chooser.choose() == 0
    probes = 0
    for _ in range(300):
        depth = chooser.choose()
        probes += depth > 0
        chooser.record(accepted=0, offered=depth)
    assert 3 <= probes <= 300 // 12


def test_each_failed_probe_slows_the_next_and_one_that_hits_restores_the_pace():
    """probe_backoff (drafters with a model of their own): probes that win nothing halve the
    drift's speed each time, down to SLOWEST_DRIFT, so over the same 600 plain-text steps such a
    chooser probes far less often than one without; the first probe that wins a token restores
    the usual pace."""
    def probes_over(chooser, steps, hits=False):
        count = 0
        for _ in range(steps):
            depth = chooser.choose()
            count += depth > 0
            chooser.record(accepted=depth if hits else 0, offered=depth)
        return count

    def make(backoff):
        chooser = DraftChooser.for_depths(4, verify_cost=0.04, verify_overhead=0.1,
                                          draft_cost=0.06, probe_backoff=backoff)
        for _ in range(30):
            chooser.record(accepted=0, offered=chooser.choose() or 4)
        return chooser

    steady, backing_off = make(False), make(True)
    assert steady.choose() == backing_off.choose() == 0
    plain_probes, backed_off_probes = probes_over(steady, 600), probes_over(backing_off, 600)
    assert backed_off_probes * 2 <= plain_probes and backed_off_probes >= 3
    assert backing_off.drift_speed == SLOWEST_DRIFT and steady.drift_speed == 1.0
    # the text turns predictable: the next probe hits and the pace is back at once
    probes_over(backing_off, 600, hits=True)
    assert backing_off.drift_speed == 1.0 and backing_off.choose() == 4


def test_a_sampling_chooser_starts_from_the_drafters_shipped_acceptance(tmp_path):
    """training.json's held-out first-draft acceptance (one number, or one per temperature: the
    lowest is kept) becomes the per-level prior of the sampling choosers;
    with SmolLM2's head (~0.47) a first step drafts 2 tokens, not the 7 that PRIOR = 0.8 sends
    at the same costs, while a drafter with no such record keeps PRIOR."""
    import json

    from mlx_spec.drafters.draft_length import PRIOR, ModelChoosers, shipped_acceptance

    per_temperature, single, bare = tmp_path / "head", tmp_path / "draft", tmp_path / "bare"
    for folder, heldout in ((per_temperature, {"first_draft_accepted_sampling":
                                               {"T=0.7": 0.52, "T=1.0": 0.47}}),
                            (single, {"first_draft_accepted_T=0.7": 0.43, "top1": 0.9}),
                            (bare, None)):
        folder.mkdir()
        (folder / "training.json").write_text(json.dumps({"heldout": heldout}))
    assert shipped_acceptance(per_temperature) == 0.47 and shipped_acceptance(single) == 0.43
    assert shipped_acceptance(bare) is None and shipped_acceptance(tmp_path / "none") is None

    # a 2-token verify costs 1.2 steps, each further one 0.08
    def make(start_level=PRIOR, sampled=False):
        return DraftChooser.for_depths(9, verify_cost=0.08, verify_overhead=0.12,
                                       start_level=start_level)

    informed = ModelChoosers(None, ("test",), make, shipped_acceptance(per_temperature))
    uninformed = ModelChoosers(None, ("test",), make, shipped_acceptance(bare))
    sampling = SamplingParams(temperature=0.7)
    assert uninformed.get(sampling).choose() == 7
    assert informed.get(sampling).choose() == 2
    assert informed.greedy.choose() == 7  # greedy drafts keep PRIOR
    # a start below what pays is plain decoding, but the drift returns towards PRIOR: it probes
    cautious = make(start_level=0.2)
    plain = 0
    while cautious.choose() == 0 and plain < 500:
        cautious.record(accepted=0, offered=0)
        plain += 1
    assert 0 < plain < 500


def test_a_full_match_extends_the_unknown_levels_at_the_start_level():
    """A chain that matched to its end says nothing of the levels below it: a chooser starting
    from a drafter's measured acceptance (0.43: SmolLM2's draft model at T = 0.7) assumes that of
    them, not PRIOR. Costs of SmolLM2's verify (1.2x for 2 tokens, 1.45x, 1.71x, 1.75x): one
    accepted 1-token draft keeps it at 1 token, where at PRIOR it sends 4 (SmolLM2's draft model
    sent 3, its most: 1.28 tokens for a 1.8x step, measured); two in a row go deeper."""
    from mlx_spec.drafters.draft_length import PRIOR

    table = {0: 1.0, 1: 1.2, 2: 1.45, 3: 1.71, 4: 1.75}
    measured = DraftChooser.for_depths(4, verify=lambda nodes, cached=None: table[round(nodes)],
                                       start_level=0.43)
    assert measured.extend_level == 0.43 and measured.choose() == 1
    at_prior = DraftChooser.for_depths(4, verify=lambda nodes, cached=None: table[round(nodes)],
                                       start_level=0.43)
    at_prior.extend_level = PRIOR
    for chooser in (measured, at_prior):
        chooser.record(accepted=1, offered=1)
    assert measured.choose() == 1 and at_prior.choose() == 4
    measured.record(accepted=1, offered=1)
    assert measured.choose() > 1
    assert DraftChooser.for_depths(4).extend_level == PRIOR  # greedy choosers: unchanged


def test_a_probe_after_plain_steps_is_shallow_and_a_full_match_goes_deeper():
    """probe_backoff: the drift back to the prior makes deep drafts look good without evidence,
    so the first draft after plain steps sends at most PROBE_DEPTH tokens; when it matches to its
    end the deeper sizes are extended optimistically and the next draft goes deeper."""
    from mlx_spec.drafters.draft_length import PROBE_DEPTH

    def make(backoff):
        chooser = DraftChooser.for_depths(8, verify_cost=0.04, verify_overhead=0.1,
                                          draft_cost=0.02, probe_backoff=backoff)
        for _ in range(30):
            chooser.record(accepted=0, offered=chooser.choose() or 8)
        while chooser.choose() == 0:
            chooser.record(accepted=0, offered=0)
        return chooser

    assert make(False).choose() > PROBE_DEPTH  # without it, the first probe is deep
    chooser = make(True)
    probe = chooser.choose()
    assert 0 < probe <= PROBE_DEPTH
    chooser.record(accepted=probe, offered=probe)
    assert chooser.choose() > probe


def test_a_new_request_restores_the_probing_pace_of_a_carried_chooser():
    """The greedy chooser carries what it learned to the next request, but not the slowed pace of
    its failed probes: a new prompt may suit the drafter better."""
    from mlx_spec.drafters.draft_length import PRIOR, ModelChoosers

    def make(start_level=PRIOR, sampled=False):
        return DraftChooser.for_depths(4, verify_cost=0.04, verify_overhead=0.1,
                                       draft_cost=0.06, probe_backoff=True,
                                       start_level=start_level)

    choosers = ModelChoosers(None, ("test",), make)
    greedy = SamplingParams(temperature=0.0)
    choosers.begin()
    chooser = choosers.get(greedy)
    for _ in range(600):
        chooser.record(accepted=0, offered=chooser.choose())
    assert chooser.drift_speed == SLOWEST_DRIFT
    assert choosers.get(greedy).drift_speed == SLOWEST_DRIFT  # within the request: kept
    choosers.begin()
    assert choosers.get(greedy) is chooser and chooser.drift_speed == 1.0


def test_a_carried_sampling_chooser_is_one_per_regime_without_a_model_too():
    """Carried (inside auto), a drafter's sampling chooser lasts across steps and requests, one
    per sampling regime (temperature and filters), also where there is no loaded model to keep it
    on (the drafter keeps it)."""
    from mlx_spec.drafters.draft_length import ModelChoosers

    choosers = ModelChoosers(None, ("test",),
                             lambda start_level=0.8, sampled=False: DraftChooser.for_depths(4))
    choosers.keep_learning()
    warm, hot = SamplingParams(temperature=0.7), SamplingParams(temperature=1.0)
    choosers.begin()
    first = choosers.get(warm)
    assert choosers.get(warm) is first and choosers.get(hot) is not first
    assert choosers.get(SamplingParams(temperature=0.7, top_p=0.9)) is not first  # a filter too
    choosers.begin()
    assert choosers.get(warm) is first and choosers.get(SamplingParams()) is choosers.greedy


def test_a_sampling_regimes_chooser_prices_sampling_steps():
    """A sampled chain's verify costs more than a greedy one's (SmolLM2, 2 tokens: ~1.2x a
    one-token step sampled, as low as 1.04x greedy), so the choosers of a sampling regime are
    made to price sampling steps (verify_cost_for's `sampled`), the greedy one greedy steps."""
    from mlx_spec.drafters.draft_length import ModelChoosers

    made = []

    def make(start_level=0.8, sampled=False):
        made.append(sampled)
        return DraftChooser.for_depths(4, start_level=start_level)

    choosers = ModelChoosers(None, ("test",), make, sampled_start=0.4)
    assert made == [False]  # the greedy chooser, made at once
    choosers.get(SamplingParams(temperature=0.7))
    choosers.get(SamplingParams())
    assert made == [False, True]


def test_text_drafters_keep_one_chooser_per_sampling_regime(random_models):
    """Greedy steps on a text that repeats teach `pld` and `lookahead` to draft deep; a request at
    T = 1.0 starts from a chooser of its own (none of those outcomes), and greedy again finds its
    chooser as it left it: the acceptance of one regime does not size the other's drafts. Per
    loaded model, so a second drafter on the same model shares them."""
    from mlx_spec.drafters.lookahead import Lookahead
    from mlx_spec.drafters.shared import Shared

    model = random_models["llama"]
    text = [5, 6, 7, 8, 9, 10, 11, 12, 13] * 6
    greedy, hot = SamplingParams(), SamplingParams(temperature=1.0)
    kept = model.extras
    try:
        for make in (lambda: PromptLookup(model), lambda: Lookahead(model)):
            # nothing learned by other tests' drafters on this model
            model.extras = Shared(cost=kept.cost if kept else None, auto_folder=None)
            drafter = make()
            drafter.begin(text[:10])
            for end in range(10, len(text)):
                drafter.propose(StepContext(tokens=text[:end], max_drafts=0, sampling=greedy))
            taught = drafter.chooser
            assert taught.outcomes > 3 and taught.choose() > 0
            drafter.begin(text[:10])
            drafter.propose(StepContext(tokens=text[:10], max_drafts=8, sampling=hot))
            assert drafter.chooser is not taught and drafter.chooser.outcomes == 0
            drafter.propose(StepContext(tokens=text[:11], max_drafts=8, sampling=greedy))
            assert drafter.chooser is taught
            second = make().choosers  # (pld's `taught` may be its twin: RegimeChoosers.of)
            assert taught in (second.of(greedy), second.of(greedy, following=True))
    finally:
        model.extras = kept


def test_guesses_remember_whether_the_text_followed_an_earlier_one():
    """A guess made while the text still follows an earlier guess (inside a copied span) is
    settled with that said; `still_open` says whether one made earlier is still followed."""
    from mlx_spec.drafters.draft_length import Guesses
    from mlx_spec.drafters.pld import _chain_outcome

    guesses = Guesses(_chain_outcome)
    tokens = [1, 2, 3]
    guesses.add(3, [4, 5, 6])  # made outside a run
    tokens += [4]
    assert guesses.settle_each(tokens) == [] and guesses.still_open  # the text follows it
    guesses.add(4, [5, 6], following=True)  # made inside the run
    tokens += [5, 6]
    assert guesses.settle_each(tokens) == [((3, 3), False), ((2, 2), True)]
    assert not guesses.still_open


def test_pld_sizes_guesses_inside_a_copied_span_by_a_chooser_of_their_own():
    """pld's guesses come true in runs: those made while the text follows an earlier guess teach
    a twin of the regime's chooser, copied from it on first use, and the rest teach the regime's
    own, so a run's outcomes neither lengthen the drafts after it nor are shortened by the misses
    between runs."""
    span = list(range(10, 30))
    tokens = [1, 2] + span + [3, 4, 5, 6, 7] + span[:1]  # the answer starts copying the span
    drafter = PromptLookup(None)
    greedy = SamplingParams()
    drafter.begin(list(tokens))
    for token in span[1:]:  # plain steps along the copy: every lookup's outcome is learned
        drafter.propose(StepContext(tokens=tokens, max_drafts=0, sampling=greedy, trees=False))
        tokens.append(token)
    drafter.propose(StepContext(tokens=tokens, max_drafts=0, sampling=greedy, trees=False))
    outside = drafter.choosers.of(greedy)
    inside = drafter.choosers.of(greedy, following=True)
    assert inside is not outside and inside.tokens is not outside.tokens
    assert outside.outcomes == 1  # the guess that opened the run
    assert inside.outcomes >= 8  # the guesses made inside it
    assert drafter.choosers.of(SamplingParams(temperature=1.0), following=True) is not inside


def test_pld_counts_a_guess_matched_to_its_end_as_followed():
    """Where a step sends a whole guess and all of it holds, the guess settles at once: the text
    followed it to its end, so the next guess is still inside the copied span."""
    span = list(range(10, 50))
    tokens = [1, 2] + span + [3, 4, 5, 6, 7] + span[:1]
    drafter = PromptLookup(None)
    greedy = SamplingParams()
    drafter.begin(list(tokens))
    tree = drafter.propose(StepContext(tokens=tokens, max_drafts=8, sampling=greedy))
    assert drafter.chooser is drafter.choosers.of(greedy)  # nothing followed yet
    tokens += span[1:1 + len(tree)]  # every draft accepted, and the bonus token
    drafter.propose(StepContext(tokens=tokens, max_drafts=8, sampling=greedy))
    assert drafter.choosers.of(greedy).outcomes == 1  # the first guess settled, matched whole
    assert drafter.chooser is drafter.choosers.of(greedy, following=True)
