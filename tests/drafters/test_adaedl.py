"""AdaEDL: the entropy bound, the lambda update of the paper's Algorithm 1, the max-confidence rule,
and the `adaedl` drafter stopping early while its greedy output stays equal to mlx-lm's."""
import math

import mlx.core as mx
import pytest

import mlx_spec
from mlx_spec.sampling import SamplingParams
from mlx_spec.drafters.stopping import (AdaEDLThreshold, MaxConfidenceRule, acceptance_lower_bound, entropy,
                               make_rule)
from support.greedy import PROMPTS, mlx_lm_greedy


def test_entropy_in_nats_ignores_filtered_tokens():
    uniform = mx.log(mx.full((1, 8), 1 / 8))
    assert entropy(uniform).item() == pytest.approx(math.log(8), rel=1e-5)
    one_hot = mx.array([[0.0, -mx.inf, -mx.inf]])
    assert entropy(one_hot).item() == pytest.approx(0.0, abs=1e-7)
    half = mx.log(mx.array([[0.5, 0.5, 0.0, 0.0]]))  # top-k style -inf entries
    assert entropy(half).item() == pytest.approx(math.log(2), rel=1e-5)


def test_acceptance_lower_bound():
    assert acceptance_lower_bound(0.0, 0.2) == 1.0
    assert acceptance_lower_bound(1.25, 0.2) == pytest.approx(0.5)
    assert acceptance_lower_bound(math.log(4096), 0.2) == pytest.approx(1 - math.sqrt(0.2 * math.log(4096)))
    rule = AdaEDLThreshold(lam=0.5)
    assert not rule.should_stop(1.2) and rule.should_stop(1.3)  # bound crosses 0.5 at H = 1.25


def test_threshold_update_follows_algorithm_1():
    t = AdaEDLThreshold(lam=0.5)
    assert t.acceptance == 0.9  # AR starts at alpha
    t.update(accepted=1, drafted=4, max_drafts=8)  # AR = 0.5*0.9 + 0.5*0.25 < alpha: stop sooner
    assert t.acceptance == pytest.approx(0.575)
    assert t.lam == pytest.approx(0.9 * 0.5 + 0.1 * 0.51)

    t = AdaEDLThreshold(lam=0.5, acceptance=1.0)
    t.update(accepted=4, drafted=4, max_drafts=8)  # AR stays >= alpha, round below the cap: longer
    assert t.acceptance == 1.0 and t.lam == pytest.approx(0.9 * 0.5 + 0.1 * 0.49)

    t = AdaEDLThreshold(lam=0.5, acceptance=1.0)
    t.update(accepted=8, drafted=8, max_drafts=8)  # everything accepted at the cap: unchanged
    assert t.lam == pytest.approx(0.5)

    t = AdaEDLThreshold(lam=0.5, acceptance=0.95)
    t.update(accepted=0, drafted=0, max_drafts=0)  # nothing drafted: AR keeps its value
    assert t.acceptance == 0.95

    t = AdaEDLThreshold(lam=0.9995, acceptance=0.0, epsilon=0.1)
    t.update(accepted=0, drafted=1, max_drafts=8)
    assert t.lam == 1.0  # clamped

    t = AdaEDLThreshold(lam=0.0, acceptance=1.0, epsilon=0.5)
    t.update(accepted=2, drafted=2, max_drafts=8)
    assert t.lam == pytest.approx(-0.05)  # below 0: keeps drafting where the bound is negative
    for _ in range(100):
        t.update(accepted=2, drafted=2, max_drafts=8)
    assert t.lam == -1.0  # clamped


def test_lambda_converges_towards_the_acceptance_target():
    low, high = AdaEDLThreshold(lam=0.5), AdaEDLThreshold(lam=0.5)
    for _ in range(200):
        low.update(accepted=1, drafted=4, max_drafts=8)
        high.update(accepted=4, drafted=4, max_drafts=8)
    assert low.lam > 0.6 and high.lam < 0.4


def test_max_confidence_rule():
    rule = MaxConfidenceRule(0.6)
    confident = mx.log(mx.array([0.7, 0.2, 0.1]))
    unsure = mx.log(mx.array([0.4, 0.35, 0.25]))
    assert rule.statistic(confident).item() == pytest.approx(0.7)
    assert not rule.should_stop(rule.statistic(confident).item())
    assert rule.should_stop(rule.statistic(unsure).item())
    with pytest.raises(ValueError):
        make_rule("sometimes")


def _generate(model, draft_dir, max_tokens=40, temperature=0.0, **options):
    # backoff=False, adaptive=False: these tests read the rule's drafting rounds, which the
    # back-off to plain decoding (engine.BackOff) and the draft-length chooser would cut wherever
    # drafting measured slower (as it is on tiny models)
    options.setdefault("adaptive", False)
    return mlx_spec.generate(model, PROMPTS[0], method="adaedl", max_tokens=max_tokens, raw=True,
                             temperature=temperature, seed=0, draft_model=str(draft_dir),
                             backoff=False, **options)


@pytest.mark.parametrize("stop_rule,options", [("adaedl", {}), ("max-confidence", {}),
                                               ("static", {}), ("adaedl", {"lam": 1.5}),
                                               ("max-confidence", {"confidence_threshold": 0.0})])
def test_greedy_output_equals_mlx_lm_for_every_stop_rule(random_models, random_model_dirs, stop_rule, options):
    model = random_models["qwen3"]
    result = _generate(model, random_model_dirs["qwen3"], stop_rule=stop_rule, num_draft_tokens=5, **options)
    assert result.token_ids == mlx_lm_greedy(model, PROMPTS[0], 40)


def test_stopping_shortens_drafts(random_models, random_model_dirs):
    """With the target itself as drafter every draft is accepted, so round lengths show the rule:
    static drafts the full k, lambda above every bound drafts one token, lambda below drafts k."""
    model, draft = random_models["llama"], random_model_dirs["llama"]
    full = _generate(model, draft, stop_rule="static", num_draft_tokens=5).stats
    never = _generate(model, draft, stop_rule="adaedl", lam=-1.0, epsilon=0.0, num_draft_tokens=5).stats
    always = _generate(model, draft, stop_rule="adaedl", lam=1.5, epsilon=0.0, num_draft_tokens=5).stats
    assert full.drafted_tokens == never.drafted_tokens
    assert always.drafted_tokens == always.target_calls  # one draft per round
    assert always.accepted_drafts == always.drafted_tokens
    assert full.target_calls < always.target_calls


def test_the_drafters_distribution_decides_where_drafting_stops(random_models, random_model_dirs):
    """A threshold between the typical bounds of these random models stops some rounds early and
    lets others run: neither all-one nor all-k drafts."""
    model, draft = random_models["llama"], random_model_dirs["llama"]
    rounds = []
    decoder = mlx_spec.make_decoder(model, "adaedl", draft_model=str(draft), num_draft_tokens=5,
                                    stop_rule="max-confidence", confidence_threshold=0.3,
                                    adaptive=False, backoff=False)  # the rule alone drafts
    observe = decoder.drafter.observe
    decoder.drafter.observe = lambda ctx, tree, acc, out: (rounds.append(len(tree) - 1), observe(ctx, tree, acc, out))
    mlx_spec.generate(model, PROMPTS[1], max_tokens=60, raw=True, decoder=decoder)
    assert 1 in rounds and max(rounds) > 1, rounds


def test_lambda_adapts_and_persists_across_requests(random_models, random_model_dirs):
    model = random_models["mistral"]
    options = dict(draft_model=str(random_model_dirs["qwen2"]), num_draft_tokens=4, lam=0.3,
                   backoff=False, adaptive=False)  # the threshold moves only in drafting rounds
    first = mlx_spec.make_decoder(model, "adaedl", **options)
    mlx_spec.generate(model, PROMPTS[0], max_tokens=30, raw=True, decoder=first)
    lam = first.drafter.stop_rule.threshold.lam
    assert lam > 0.3  # an unrelated random drafter is rarely accepted: stop sooner
    second = mlx_spec.make_decoder(model, "adaedl", **options)
    assert second.drafter.stop_rule.threshold.lam == lam


def test_greedy_and_each_sampling_setting_keep_their_own_lambda(random_models, random_model_dirs):
    model = random_models["llama"]
    options = dict(draft_model=str(random_model_dirs["qwen3"]), num_draft_tokens=4, lam=0.3,
                   sampling_lam=0.1, backoff=False,
                   adaptive=False)  # the thresholds move only in drafting rounds
    decoder = mlx_spec.make_decoder(model, "adaedl", **options)
    decoder.drafter.keep_learning()  # sampled rules carried too, as with the back-off on
    mlx_spec.generate(model, PROMPTS[0], max_tokens=30, raw=True, decoder=decoder)
    greedy = decoder.drafter.stop_rule
    assert greedy.threshold.lam != 0.3
    lam = greedy.threshold.lam
    sampled = decoder.drafter.rule_for(SamplingParams(temperature=1.0))
    assert sampled is not greedy and sampled.threshold.lam == 0.1  # starts from sampling_lam
    # (seeded: an unseeded draw that ends the text at once leaves the rule unmoved)
    out = mlx_spec.generate(model, PROMPTS[0], max_tokens=30, raw=True, decoder=decoder,
                            temperature=1.0, seed=3)
    assert len(out.token_ids) > 4
    assert decoder.drafter.stop_rule is sampled and sampled.threshold.lam != 0.1
    assert greedy.threshold.lam == lam  # sampling did not move the greedy threshold
    mlx_spec.generate(model, PROMPTS[1], max_tokens=30, raw=True, decoder=decoder)
    assert decoder.drafter.stop_rule is greedy


def test_without_the_back_off_a_seed_gives_one_sampled_text(random_models, random_model_dirs):
    """With backoff=False nothing timed decides a step, so a sampled rule starts afresh with each
    request (its lambda moved by the last one drafted other lengths: three runs at one seed gave
    two texts) and a seed gives one text; with the back-off on it carries over, as the draft
    sizes do."""
    model = random_models["llama"]
    options = dict(draft_model=str(random_model_dirs["qwen3"]), num_draft_tokens=4,
                   sampling_lam=0.1, backoff=False, adaptive=False)
    decoder = mlx_spec.make_decoder(model, "adaedl", **options)
    texts = [mlx_spec.generate(model, PROMPTS[0], max_tokens=30, raw=True, decoder=decoder,
                               temperature=1.0, seed=5).token_ids for _ in range(3)]
    assert texts[0] == texts[1] == texts[2]
    hot, prompt = SamplingParams(temperature=1.0), mlx_spec.api.encode_prompt(model, PROMPTS[0])
    carried = mlx_spec.make_decoder(model, "adaedl", **{**options, "backoff": True})
    mlx_spec.generate(model, PROMPTS[0], max_tokens=30, raw=True, decoder=carried,
                      temperature=1.0, seed=5)
    for drafter in (decoder.drafter, carried.drafter):
        assert drafter.rule_for(hot).threshold.lam != 0.1  # it did adapt within the request
    lam = carried.drafter.rule_for(hot).threshold.lam
    for drafter in (decoder.drafter, carried.drafter):
        drafter.begin(list(prompt))
    assert decoder.drafter.rule_for(hot).threshold.lam == 0.1
    assert carried.drafter.rule_for(hot).threshold.lam == lam


def test_unknown_stop_rule_is_a_one_line_error(random_models, random_model_dirs):
    with pytest.raises(mlx_spec.MlxSpecError, match="stop_rule"):
        mlx_spec.make_decoder(random_models["llama"], "adaedl", draft_model=str(random_model_dirs["llama"]),
                              stop_rule="sometimes")


def test_greedy_decoding_reads_a_sharpened_distribution():
    """Greedy drafts are argmaxes: AdaEDL's entropy is taken at greedy_entropy_temperature, which
    separates a clear favourite from a flat distribution that temperature 1 would blur."""
    rule = make_rule("adaedl", greedy_entropy_temperature=0.5)
    logits = mx.array([3.0, 1.0, 0.5, 0.0])
    sharpened = rule.greedy_log_probs(logits)
    expected = 2 * logits - mx.logsumexp(2 * logits)
    assert mx.allclose(sharpened, expected, atol=1e-6).item()
    assert entropy(sharpened[None]).item() < entropy((logits - mx.logsumexp(logits))[None]).item()
    assert make_rule("max-confidence").greedy_log_probs(logits).tolist() == \
        (logits - mx.logsumexp(logits)).tolist()  # other rules read the plain softmax
    with pytest.raises(ValueError):
        make_rule("adaedl", greedy_entropy_temperature=0.0)


def test_the_draft_length_chooser_caps_the_rule_down_to_plain_decoding(random_models,
                                                                       random_model_dirs):
    """adaptive (the default): the chooser `draft` uses caps each round, so with a drafter the
    target never agrees with (an unrelated random model) adaedl stops drafting altogether after a
    few misses, where the rule alone drafts at least one token every round; the output is the
    target's either way."""
    model, unrelated = random_models["mistral"], random_model_dirs["qwen2"]
    expected = mlx_lm_greedy(model, PROMPTS[0], 60)
    runs = {}
    for adaptive in (True, False):
        result = mlx_spec.generate(model, PROMPTS[0], method="adaedl", max_tokens=60, raw=True,
                                   draft_model=str(unrelated), backoff=False, adaptive=adaptive)
        assert result.token_ids == expected
        runs[adaptive] = result.stats
    assert runs[False].drafted_tokens >= runs[False].target_calls  # one or more every round
    assert runs[True].drafted_tokens < runs[False].drafted_tokens / 3
