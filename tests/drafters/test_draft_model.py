"""Method `draft`: greedy output equals mlx-lm's, the drafter's KV cache stays exact through
rejections, sampled chains are accepted by rejection sampling, incompatible vocabularies are refused."""
import json

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from mlx_lm.models.cache import make_prompt_cache

import mlx_spec
from mlx_spec.accept import accept
from mlx_spec.drafters.base import StepContext
from mlx_spec.drafters.shared import shared
from mlx_spec.engine import Limits
from mlx_spec.sampling import SamplingParams, log_probs
from mlx_spec.target import Target
from support.random_models import make_model_folder
from support.greedy import PROMPTS, mlx_lm_greedy
from support.rows import BOTH_ROW_PATHS, rows_on

PAIRS = [("llama", "qwen3"), ("qwen2", "mistral"), ("llama3-scaled", "llama")]
# the verify cost as the defaults, where a test needs the chooser to draft: measured while other
# tests run, one more row can look dear enough for fewer drafts a round than the test needs
FIXED_VERIFY = {"verify_cost": 0.07, "verify_overhead": 0.2}


@pytest.fixture(scope="module")
def near_copy_dirs(tmp_path_factory):
    """Drafters that agree with their target often but not always: the same initial weights at a
    slightly different scale (partial acceptance, the case where cache rewinding matters)."""
    root = tmp_path_factory.mktemp("near_copies")
    return {arch: make_model_folder(root / arch, arch, seed=seed, weight_scale=3.0)
            for seed, arch in enumerate(["llama", "llama3-scaled"])}


@pytest.mark.parametrize("target_arch,draft_arch", PAIRS)
def test_greedy_matches_mlx_lm_with_a_different_random_drafter(random_models, random_model_dirs,
                                                               target_arch, draft_arch):
    model = random_models[target_arch]
    for prompt in PROMPTS:
        expected = mlx_lm_greedy(model, prompt, 40)
        result = mlx_spec.generate(model, prompt, method="draft", max_tokens=40, raw=True,
                                   draft_model=str(random_model_dirs[draft_arch]), num_draft_tokens=3)
        assert result.token_ids == expected, (target_arch, draft_arch, prompt)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_drafter_identical_to_target_is_accepted_and_equals_mlx_lm(random_models, random_model_dirs, arch):
    model = random_models[arch]
    expected = mlx_lm_greedy(model, PROMPTS[0], 60)
    # backoff=False, adaptive=False: the call count is the point (drafting with the target itself
    # measures slower than plain decoding, which the back-off and the chooser would act on)
    result = mlx_spec.generate(model, PROMPTS[0], method="draft", max_tokens=60, raw=True,
                               draft_model=str(random_model_dirs[arch]), num_draft_tokens=4,
                               backoff=False, adaptive=False)
    assert result.token_ids == expected
    assert result.stats.acceptance_rate >= 0.95
    assert result.stats.target_calls <= len(expected) // 5 + 2  # ~5 tokens per call


def test_draft_length_follows_acceptance_and_cost(random_models, random_model_dirs):
    model = random_models["llama"]
    expected = mlx_lm_greedy(model, PROMPTS[0], 60)
    # the target as its own drafter, drafting for free: every round drafts all it may (measured,
    # the verify cost had once looked dear enough for 3 drafts a call)
    same = mlx_spec.generate(model, PROMPTS[0], method="draft", max_tokens=60, raw=True,
                             draft_model=str(random_model_dirs["llama"]), num_draft_tokens=4,
                             draft_cost=0.0, backoff=False, **FIXED_VERIFY)
    assert same.token_ids == expected
    assert same.stats.target_calls <= len(expected) // 5 + 2
    # a drafter that does not agree, drafting at half a target step a token: plain steps
    other = mlx_spec.generate(model, PROMPTS[0], method="draft", max_tokens=60, raw=True,
                              draft_model=str(random_model_dirs["qwen3"]), num_draft_tokens=4,
                              draft_cost=0.5, backoff=False, **FIXED_VERIFY)
    assert other.token_ids == expected
    drafting = [nodes > 1 for nodes, _ in other.stats.verified_per_call]
    assert not all(drafting[:8]) and sum(drafting) <= len(drafting) // 4  # probes now and then
    # when sampling, the chooser starts over with each request: a seed gives the same text
    # (without the back-off, whose pauses follow the clock)
    runs = [mlx_spec.generate(model, PROMPTS[1], method="draft", max_tokens=30, raw=True,
                              draft_model=str(random_model_dirs["qwen3"]), temperature=1.0,
                              seed=5, draft_cost=0.5, backoff=False).token_ids for _ in range(2)]
    assert runs[0] == runs[1]


def test_with_the_back_off_sampled_draft_sizes_carry_to_the_next_request(random_models,
                                                                         random_model_dirs):
    """The back-off's pauses follow the clock, so with it on (the default) no seed reproduces a
    sampled text, and the sampling chooser keeps what it learned for the next request (each
    request's opening otherwise drafted at the start level until its misses taught it again);
    with backoff=False it starts afresh, and a seed gives one text (the test above)."""
    from mlx_spec.drafters.draft_length import chain_prior

    model, hot = random_models["llama"], SamplingParams(temperature=1.0)
    options = {"draft_model": str(random_model_dirs["qwen3"]), "num_draft_tokens": 4}
    shared(model).draft_lengths.clear()  # no chooser learned by earlier tests on this model
    on = mlx_spec.make_decoder(model, "draft", **options)
    off = mlx_spec.make_decoder(model, "draft", backoff=False, **options)
    prompt = mlx_spec.api.encode_prompt(model, PROMPTS[0], raw=True)
    for decoder in (on, off):
        list(decoder.generate(list(prompt), Limits(max_tokens=24), hot, seed=1))
    learned = dict(on.drafter.choosers.get(hot).tokens)
    assert learned != {s: chain_prior(s) for s in learned}  # a random drafter's misses moved it
    for decoder in (on, off):
        decoder.drafter.begin(list(prompt))
    assert on.drafter.choosers.get(hot).tokens == learned
    fresh = off.drafter.choosers.get(hot)
    assert fresh.tokens == {s: chain_prior(s) for s in fresh.tokens}


def test_mlx_lm_baseline_greedy_equals_ours(random_models, near_copy_dirs):
    model = random_models["llama"]
    result = mlx_spec.generate(model, PROMPTS[1], method="mlx-lm", max_tokens=50, raw=True,
                               draft_model=str(near_copy_dirs["llama"]), num_draft_tokens=3)
    ids, stats = result.token_ids, result.stats
    assert ids == mlx_lm_greedy(model, PROMPTS[1], 50)
    assert stats.generated_tokens == len(ids) and 0 < stats.target_calls < len(ids)
    assert sum(stats.accepted_per_call) >= len(ids)


def _fresh_cache(module, tokens):
    cache = make_prompt_cache(module)
    module(mx.array(tokens)[None], cache=cache)
    return cache


# adaedl with a low lambda (and gamma, for these random drafters' broad distributions) stops in
# some rounds and not others: a stopped round has fed its last draft, a full one has not (its
# rule alone: no chooser). draft's chooser is told drafting is free (this drafter is as large as
# the target) and given the default verify cost, so that it drafts (measured on a loaded CI
# machine, it had once drafted one token a round: no round was partial).
METHODS = [("draft", dict(draft_cost=0.0, **FIXED_VERIFY)),
           ("adaedl", dict(lam=0.05, epsilon=0.0, gamma=0.02, adaptive=False))]


@pytest.mark.parametrize("method,options", METHODS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_drafter_cache_equals_a_fresh_prefill_after_partial_acceptance(random_models, near_copy_dirs,
                                                                       temperature, method, options):
    model = random_models["llama3-scaled"]
    decoder = mlx_spec.make_decoder(model, method, draft_model=str(near_copy_dirs["llama3-scaled"]),
                                    num_draft_tokens=4, backoff=False, **options)
    drafter = decoder.drafter
    observe, rounds = drafter.observe, {"partial": 0, "checked": 0}

    def observe_and_check(ctx, tree, acceptance, out):
        observe(ctx, tree, acceptance, out)
        cached = drafter.cached_tokens
        assert cached == ctx.tokens[:len(cached)]
        # (a plain round, chosen by draft's chooser, feeds nothing: the next drafting round
        # catches up)
        assert len(cached) >= len(ctx.tokens) - 2 or len(tree) == 1
        assert all(c.offset == len(cached) for c in drafter.forward.cache)
        fresh = _fresh_cache(drafter.draft.module, cached)
        for mine, ref in zip(drafter.forward.cache, fresh):
            for a, b in ((mine.keys, ref.keys), (mine.values, ref.values)):
                np.testing.assert_allclose(np.array(a[..., :mine.offset, :]),
                                           np.array(b[..., :ref.offset, :]), atol=1e-4, rtol=1e-4)
        rounds["checked"] += 1
        rounds["partial"] += 0 < acceptance.accepted_drafts < len(tree) - 1
        rounds["short"] = rounds.get("short", 0) + (len(tree) - 1 < 4)

    drafter.observe = observe_and_check
    prompt = mlx_spec.api.encode_prompt(model, PROMPTS[0], raw=True)
    for request in range(2):  # the second request reuses (and rewinds) the first one's cache
        tokens = list(prompt) + [7, 8] * request
        for _ in decoder.generate(tokens, Limits(max_tokens=40), SamplingParams(temperature), seed=3):
            pass
    assert rounds["checked"] > 10
    assert rounds["partial"] > 0, "the test needs rounds that accepted some but not all drafts"
    if method == "adaedl":
        assert 0 < rounds["short"] < rounds["checked"], "the rule should stop in some rounds only"


def test_sampled_chain_uses_rejection_sampling(random_models, random_model_dirs):
    """A drafter equal to the target has q == p, so min(1, p/q) accepts (almost) everything, while
    mlx-lm's match rule accepts only sum(p * q) per token on these flat random distributions."""
    model = random_models["llama"]
    ours = mlx_spec.generate(model, PROMPTS[0], method="draft", max_tokens=60, raw=True, temperature=1.0,
                             seed=5, draft_model=str(random_model_dirs["llama"]), num_draft_tokens=4)
    theirs = mlx_spec.generate(model, PROMPTS[0], method="mlx-lm", max_tokens=60, raw=True,
                               temperature=1.0, seed=5, draft_model=str(random_model_dirs["llama"]),
                               num_draft_tokens=4).stats
    assert ours.stats.acceptance_rate >= 0.95
    assert theirs.acceptance_rate < 0.5


@BOTH_ROW_PATHS
@pytest.mark.parametrize("vocabulary", [False, True])
def test_sampled_drafts_leave_the_target_distribution_exact(random_models, near_copy_dirs,
                                                            vocab_draft, vocabulary, host):
    """One drafted token then rejection sampling, many times from one context: the emitted token's
    frequencies match the target's processed distribution p, not the drafter's q (also where q is
    0 outside a drafting vocabulary: the residual brings back the tokens it never drafts)."""
    model = random_models["llama"]
    sampling = SamplingParams(temperature=0.5)
    prompt = mlx_spec.api.encode_prompt(model, PROMPTS[1], raw=True)
    p = np.array(mx.exp(log_probs(model.model(mx.array(prompt)[None])[0, -1:], sampling))[0])
    folder = vocab_draft[0] if vocabulary else near_copy_dirs["llama"]
    drafter = mlx_spec.drafters.create("draft", model, draft_model=str(folder),
                                       num_draft_tokens=1, adaptive=False)
    q = np.array(mx.exp(log_probs(drafter._feed_unseen(list(prompt))[None], sampling))[0])
    drafter._trim_to([])
    target = Target(model.model)
    target.prefill(prompt[:-1])
    n, counts, key = 600, np.zeros_like(p), mx.random.key(0)
    with rows_on(host):  # the drafts drawn and accepted on the host (a CPU) or by MLX's ops
        for _ in range(n):
            key, draft_key, accept_key = mx.random.split(key, 3)
            tree = drafter.propose(StepContext(tokens=list(prompt), max_drafts=1,
                                               sampling=sampling, key=draft_key))
            assert np.allclose(np.array(tree.draft_probs[1]), q, atol=1e-5)  # drawn from q
            assert q[tree.tokens[1]] > 0
            counts[accept(tree, target.verify(tree).logits, sampling, accept_key).tokens[0]] += 1
            target.trim(len(tree))
    assert 0.5 * np.abs(q - p).sum() > 0.3  # the drafter's own samples would fail the check below
    assert 0.5 * np.abs(counts / n - p).sum() < 0.15
    if vocabulary:  # the tokens it never drafts come out as often as the target writes them
        never = np.ones(len(p), bool)
        never[vocab_draft[1]] = False
        assert q[never].sum() == 0 and p[never].sum() > 0.1
        assert abs(counts[never].sum() / n - p[never].sum()) < 0.06  # ~3 binomial sd


def test_incompatible_vocabulary_is_refused(random_models, tmp_path):
    folder = make_model_folder(tmp_path / "other", "llama", seed=9)
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(mlx_spec.MlxSpecError, match="vocabulary"):
        mlx_spec.make_decoder(random_models["llama"], "draft", draft_model=str(folder))


def test_bad_options_are_one_line_errors(random_models, random_model_dirs):
    with pytest.raises(mlx_spec.MlxSpecError, match="num_draft_tokens"):
        mlx_spec.make_decoder(random_models["llama"], "draft", draft_model=str(random_model_dirs["llama"]),
                              num_draft_tokens=0)
    with pytest.raises(mlx_spec.MlxSpecError, match="not found"):
        mlx_spec.make_decoder(random_models["llama"], "draft", draft_model="/no/such/folder")


def test_drafter_catches_up_after_a_back_off(random_models, near_copy_dirs):
    """Plain steps (engine.BackOff) leave the draft model's cache behind; the next draft feeds the
    gap, and the output stays mlx-lm's greedy text."""
    from mlx_spec.engine import BackOff

    model = random_models["llama3-scaled"]
    decoder = mlx_spec.make_decoder(model, "draft", draft_model=str(near_copy_dirs["llama3-scaled"]),
                                    num_draft_tokens=4, backoff=False, draft_cost=0.0, **FIXED_VERIFY)

    class Planted(BackOff):
        """12 plain steps from the start, then drafting to the end: the request keeps the planted
        pause (BackOff.new_request cuts one to PROBE steps) and no window is judged (a judged
        window paused or not by its timing: 4 plain steps on a CI run where drafting won)."""
        WINDOW = 10 ** 9

        def new_request(self) -> None:
            pass

    decoder.backoff = Planted()
    decoder.backoff.plain_left = 12
    prompt = mlx_spec.api.encode_prompt(model, PROMPTS[0], raw=True)
    steps = list(decoder.generate(list(prompt), Limits(max_tokens=40), SamplingParams()))
    ids = [t for step in steps for t in step.token_ids]
    assert ids == mlx_lm_greedy(model, PROMPTS[0], 40)
    stats = steps[-1].stats
    assert stats.plain_calls == 12 and stats.drafted_tokens > 0
    cached = decoder.drafter.cached_tokens
    assert cached == (list(prompt) + ids)[:len(cached)] and len(cached) > len(prompt) + 12


@pytest.fixture(scope="module")
def vocab_draft(near_copy_dirs, random_models, tmp_path_factory):
    """The llama near-copy with a drafting vocabulary of the even ids plus the target's greedy
    text's tokens, and without the drafter's own first guess (so that the vocabulary shows)."""
    import shutil

    from mlx_spec.drafters import draft_vocab

    folder = tmp_path_factory.mktemp("vocab_draft") / "llama"
    shutil.copytree(near_copy_dirs["llama"], folder)
    model = random_models["llama"]
    prompt = mlx_spec.api.encode_prompt(model, PROMPTS[0], raw=True)
    module, _ = mlx_lm.load(str(folder))  # not through `draft`: that would keep it loaded
    first_guess = int(mx.argmax(module(mx.array(prompt)[None])[0, -1]).item())
    width = module.args.vocab_size
    ids = set(range(0, width, 2)) | set(mlx_lm_greedy(model, PROMPTS[0], 40))
    ids.discard(first_guess)
    draft_vocab.write(folder, np.array(sorted(ids)), {"size": len(ids), "source": "test"})
    return folder, sorted(ids), first_guess


def test_drafting_vocabulary_drafts_only_its_tokens_and_stays_exact(random_models, vocab_draft):
    """A draft model with draft_vocab.json proposes only those ids (greedy chains, and sampled
    drafts whose q is 0 elsewhere and sums to 1), its logits of them are its own logits, and the
    output is still mlx-lm's greedy text; draft_vocab=false drafts from the whole vocabulary."""
    folder, ids, first_guess = vocab_draft
    model = random_models["llama"]
    prompt = list(mlx_spec.api.encode_prompt(model, PROMPTS[0], raw=True))
    drafter = mlx_spec.drafters.create("draft", model, draft_model=str(folder), adaptive=False)
    assert drafter.draft.vocab_columns is not None and drafter.vocab.tolist() == ids
    full = np.array(drafter.draft.module(mx.array(prompt)[None])[0, -1])
    drafted = np.array(drafter._feed_unseen(prompt))
    assert np.allclose(drafted[ids], full[ids], atol=1e-4)
    assert np.isneginf(np.delete(drafted, ids)).all()
    assert drafter.draft.compiled_step  # so the one- and two-token feeds below run compiled
    extra = [5, 9, 14]
    fed = [drafter._forward(mx.array(extra[:1])), drafter._forward(mx.array(extra[1:]))]
    reference = np.array(drafter.draft.module(mx.array(prompt + extra)[None])[0])
    for logits, position in zip(fed, (len(prompt), len(prompt) + 2)):
        assert np.allclose(np.array(logits)[ids], reference[position][ids], atol=1e-4)
    drafter._trim_to(prompt)

    greedy = drafter.propose(StepContext(tokens=prompt, max_drafts=4, sampling=SamplingParams()))
    assert len(greedy.tokens) == 5 and set(greedy.tokens[1:]) <= set(ids)
    sampled = drafter.propose(StepContext(tokens=prompt, max_drafts=4,
                                          sampling=SamplingParams(temperature=1.0),
                                          key=mx.random.key(3)))
    q = np.array(sampled.draft_probs[1:])
    assert set(sampled.tokens[1:]) <= set(ids)
    assert np.allclose(q.sum(axis=-1), 1.0, atol=1e-4) and not np.delete(q, ids, axis=1).any()

    whole = mlx_spec.drafters.create("draft", model, draft_model=str(folder), adaptive=False,
                                     draft_vocab=False)
    assert whole.propose(StepContext(tokens=prompt, max_drafts=1,
                                     sampling=SamplingParams())).tokens[1] == first_guess
    expected = mlx_lm_greedy(model, PROMPTS[0], 40)
    result = mlx_spec.generate(model, PROMPTS[0], method="draft", max_tokens=40, raw=True,
                               draft_model=str(folder), num_draft_tokens=3, draft_cost=0.0,
                               **FIXED_VERIFY)
    assert result.token_ids == expected and result.stats.drafted_tokens > 0


def test_drafting_vocabulary_columns_only_where_they_reproduce_the_logits(random_models,
                                                                           near_copy_dirs):
    """A quantized projection's columns are dequantized; a model whose logits are not hidden @ W
    (here scaled) gets none, and drafts from its whole vocabulary."""
    import mlx.nn as nn

    from mlx_spec.drafters.draft_model import vocabulary_columns

    ids = np.arange(0, 64, 3)
    tied, _ = mlx_lm.load(str(near_copy_dirs["llama3-scaled"]))
    assert tied.args.tie_word_embeddings and vocabulary_columns(tied, ids) is not None
    module, _ = mlx_lm.load(str(near_copy_dirs["llama"]))
    assert vocabulary_columns(module, ids) is not None
    nn.quantize(module, group_size=32, bits=8)
    columns = vocabulary_columns(module, ids)
    assert columns is not None and columns.shape == (module.args.hidden_size, len(ids))

    class Scaled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model, self.lm_head = inner.model, inner.lm_head

        def __call__(self, x, cache=None):
            return 2.0 * self.lm_head(self.model(x, cache=cache))

    assert vocabulary_columns(Scaled(module), ids) is None
