"""ReDrafter: beam search against exhaustive enumeration, the beam tree, checkpoints with the
reference key names, and lossless greedy decoding on random and trained models."""
import itertools
import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlx_spec
from mlx_spec.errors import ModelLoadError
from mlx_spec.drafters.redrafter import (DrafterConfig, RecurrentDrafter, beam_search, load_drafter,
                                save_drafter, warp_top_k)
from mlx_spec.drafters.redrafter.beam_search import LOG_0, draft_log_probs, greedy_chain
from mlx_spec.tree import Tree

PROMPTS = ["once upon a time there was", "lily found the ball under a big green tree and smiled. the sun"]


def toy_drafter(vocab=6, hidden=8, exit_dim=12, seed=0, rnn=True, layers=1, scale=3.0):
    mx.random.seed(seed)
    drafter = RecurrentDrafter(DrafterConfig(vocab_size=vocab, hidden_size=hidden, exit_dim=exit_dim,
                                             num_draft_layers=layers, rnn=rnn))
    # sharper distributions than the default init, so beams differ clearly
    drafter.update(nn.utils.tree_map(lambda p: p * scale, drafter.parameters()))
    embed = nn.Embedding(vocab, hidden)
    mx.eval(drafter.parameters(), embed.parameters())
    return drafter, embed


def exhaustive_scores(drafter, embed, context, root, length, top_k=50) -> dict:
    """Every one of the vocab^(length-1) drafts, scored by teacher forcing the head."""
    vocab = drafter.config.vocab_size
    drafts = np.array(list(itertools.product(range(vocab), repeat=length - 1)))
    full = np.concatenate([np.full((len(drafts), 1), root), drafts], axis=1)
    ctx = mx.broadcast_to(context[None], (len(drafts), context.shape[-1]))
    state, score = mx.zeros(ctx.shape), mx.zeros(len(drafts))
    for k in range(length - 1):
        state = drafter.next_state(state, embed(mx.array(full[:, k])))
        log_p = draft_log_probs(drafter, ctx, state, top_k)
        score = score + mx.take_along_axis(log_p, mx.array(full[:, k + 1])[:, None], axis=1)[:, 0]
    return dict(zip(map(tuple, drafts.tolist()), np.array(score).tolist()))


EXHAUSTIVE_CASES = [
    (6, 3, 6, True),    # every first token survives, so step two ranks all 36 drafts
    (3, 4, 9, True),    # every 2-token prefix survives, so step three ranks all 27
    (5, 4, 3, False),   # pruning may drop the best draft; scores must still be right
]
HEADS = [(True, 12), (False, 16)]  # RNN state + input_proj; summed embeddings, no input_proj


@pytest.mark.parametrize("vocab,length,width,exact,rnn,exit_dim", [
    *[case + head for case in EXHAUSTIVE_CASES for head in HEADS],
    (6, 5, 4, True, True, 12),  # token-independent RNN states (W = 0): scores add up, exact
])
def test_beam_search_returns_the_top_sequences(vocab, length, width, exact, rnn, exit_dim):
    drafter, embed = toy_drafter(vocab=vocab, seed=vocab + length, rnn=rnn, exit_dim=exit_dim)
    if length == 5:
        drafter.rnn_w.weight = mx.zeros_like(drafter.rnn_w.weight)
    contexts = mx.random.normal((2, 8))
    roots = mx.array([1, 2])
    beams = beam_search(drafter, embed, contexts, roots, width, length, keep_distributions=True)
    tokens, scores = np.array(beams.tokens), np.array(beams.scores)
    assert tokens.shape == (2, width, length)
    for b in range(2):
        assert (tokens[b, :, 0] == int(roots[b])).all()
        every = exhaustive_scores(drafter, embed, contexts[b], int(roots[b]), length)
        found = [tuple(t) for t in tokens[b, :, 1:].tolist()]
        assert len(set(found)) == width
        np.testing.assert_allclose(scores[b], [every[f] for f in found], atol=1e-4)
        assert (np.diff(scores[b]) <= 1e-6).all()  # best first
        if exact:
            assert found == sorted(every, key=every.get, reverse=True)[:width]
    # per-step log-probabilities add up to the beam scores and match the full distributions
    np.testing.assert_allclose(np.array(beams.token_log_probs).sum(-1), scores, atol=1e-4)
    picked = mx.take_along_axis(beams.log_probs, beams.tokens[..., 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.array(picked), np.array(beams.token_log_probs), atol=1e-6)


def test_warp_top_k_keeps_the_k_largest():
    logits = mx.array([[3.0, 1.0, 2.0, 0.5, 2.5]])
    warped = np.array(warp_top_k(logits, top_k=2))[0]
    assert warped.max() == 0.0  # shifted by the max
    assert warped[0] == 0.0 and warped[4] == pytest.approx(-0.5)
    assert (warped[[1, 2, 3]] == LOG_0).all()
    np.testing.assert_allclose(np.array(warp_top_k(logits, top_k=50)), np.array(logits - 3.0))


def test_beam_tree_has_one_node_per_distinct_prefix():
    drafter, embed = toy_drafter(vocab=4, seed=3)
    beams = beam_search(drafter, embed, mx.random.normal((1, 8)), mx.array([0]), 8, 4)
    drafts = [b[1:] for b in beams.tokens[0].tolist()]
    prefixes = {tuple(d[:i]) for d in drafts for i in range(1, len(d) + 1)}
    tree = Tree.from_branches(0, drafts)
    assert len(tree) - 1 == len(prefixes) < sum(map(len, drafts))  # sharing happened
    paths = {tuple(tree.tokens[n] for n in tree.path_to(i)[1:]) for i in range(1, len(tree))}
    assert paths == prefixes
    assert {tuple(tree.tokens[n] for n in tree.path_to(leaf)[1:]) for leaf in tree.leaves()} == \
        {tuple(d) for d in drafts}


REFERENCE_KEYS = {"input_proj.weight", "input_proj.bias", "lm_head.0.linear.weight",
                  "lm_head.0.linear.bias", "lm_head.1.linear.weight", "lm_head.1.linear.bias",
                  "lm_head.2.weight", "rnn_u.weight", "rnn_u.bias", "rnn_w.weight"}


@pytest.mark.parametrize("exit_dim,rnn,keys", [
    (12, True, REFERENCE_KEYS),
    (16, True, REFERENCE_KEYS - {"input_proj.weight", "input_proj.bias"}),  # exit_dim = 2 * hidden
    (12, False, REFERENCE_KEYS - {"rnn_u.weight", "rnn_u.bias", "rnn_w.weight"}),
])
def test_checkpoint_round_trip_with_reference_names(tmp_path, exit_dim, rnn, keys):
    drafter, _ = toy_drafter(exit_dim=exit_dim, rnn=rnn, layers=2)
    save_drafter(drafter, tmp_path / "head")
    stored = mx.load(str(tmp_path / "head" / "model.safetensors"))
    assert set(stored) == keys
    assert all(v.dtype == mx.float16 for v in stored.values())
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["model_type"] == "recurrent_drafting_drafter"
    assert {k: config[k] for k in ("vocab_size", "hidden_size", "exit_dim", "num_draft_layers", "rnn")} \
        == dict(vocab_size=6, hidden_size=8, exit_dim=exit_dim, num_draft_layers=2, rnn=rnn)
    loaded = load_drafter(tmp_path / "head")
    x, s = mx.random.normal((3, 8)), mx.random.normal((3, 8))
    np.testing.assert_allclose(np.array(loaded(x, s)), np.array(drafter(x, s)), atol=0.05, rtol=0.01)
    # a reference config with extra keys loads, and keeps them on save
    config["num_lookback_tokens"] = -1
    (tmp_path / "head" / "config.json").write_text(json.dumps(config))
    again = load_drafter(tmp_path / "head")
    assert again.config.to_dict()["num_lookback_tokens"] == -1
    # weights that do not match the config are a one-line error
    config["num_draft_layers"] = 3
    (tmp_path / "head" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError):
        load_drafter(tmp_path / "head")


def random_head_for(model, folder, seed=0):
    drafter, _ = toy_drafter(vocab=model.config["vocab_size"], hidden=model.config["hidden_size"],
                             exit_dim=48, seed=seed, scale=1.0)
    save_drafter(drafter, folder)
    return str(folder)


# redrafter's default costs, where a test counts drafts: measured while other tests run, the
# verify cost can look dear enough to shrink the first request's trees at once
FIXED_VERIFY = {"verify_cost": 0.07, "verify_overhead": 0.15}


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_greedy_equals_ar_on_random_models(random_models, tmp_path, arch):
    model = random_models[arch]
    head = random_head_for(model, tmp_path / "head")
    for prompt in PROMPTS:
        ar = mlx_spec.generate(model, prompt, method="ar", max_tokens=40, raw=True)
        drafted = {}
        for width, length, min_prob in [(1, 2, 0), (1, 6, 0), (1, 6, 0.02), (4, 4, 0), (8, 3, 0),
                                        (4, 4, 0.02)]:
            result = mlx_spec.generate(model, prompt, method="redrafter", max_tokens=40, raw=True,
                                       head=head, beam_width=width, beam_length=length,
                                       min_prob=min_prob, adaptive=False, backoff=False)
            # fixed depth, no timed back-off: the trees' sizes compare (a random head never
            # hits: adapting, it stops drafting)
            assert result.token_ids == ar.token_ids, (arch, prompt, width, length)
            assert result.stats.target_calls <= len(ar.token_ids) + 1
            assert result.stats.drafted_tokens > 0
            drafted[width, length, min_prob] = result.stats.drafted_tokens
        assert drafted[4, 4, 0.02] < drafted[4, 4, 0]  # pruning unlikely beams shrinks the trees


def test_near_the_token_limit_the_tree_fits(random_models, tmp_path):
    model = random_models["llama"]
    head = random_head_for(model, tmp_path / "head")
    for n in (1, 2, 3):
        ar = mlx_spec.generate(model, PROMPTS[0], method="ar", max_tokens=n, raw=True)
        result = mlx_spec.generate(model, PROMPTS[0], method="redrafter", max_tokens=n, raw=True,
                                   head=head, beam_width=8, beam_length=6)
        assert result.token_ids == ar.token_ids


def test_sampling_is_reproducible_and_valid(random_models, tmp_path):
    model = random_models["llama"]
    head = random_head_for(model, tmp_path / "head")
    # backoff=False: sampled drafts make the draws depend on which steps drafted, and the
    # back-off decides that from timings; a seed reproduces text only with drafting fixed
    runs = [mlx_spec.generate(model, PROMPTS[0], method="redrafter", max_tokens=30, raw=True,
                              temperature=0.8, seed=7, head=head, backoff=False) for _ in range(2)]
    assert runs[0].token_ids == runs[1].token_ids
    assert all(0 <= t < model.config["vocab_size"] for t in runs[0].token_ids)


def test_head_for_another_target_is_refused(random_models, tmp_path):
    model = random_models["llama"]
    drafter, _ = toy_drafter(vocab=model.config["vocab_size"] + 1, hidden=model.config["hidden_size"])
    save_drafter(drafter, tmp_path / "head")
    with pytest.raises(mlx_spec.MlxSpecError, match="vocab"):
        mlx_spec.make_decoder(model, "redrafter", head=str(tmp_path / "head"))


def test_shipped_head_is_lossless_and_accepts_several_tokens():
    model = mlx_spec.load()  # the embedded target; the shipped head is the default drafter
    prompt = "Once upon a time, there was a little dog named Max. Max loved to"
    ar = mlx_spec.generate(model, prompt, method="ar", max_tokens=64)
    result = mlx_spec.generate(model, prompt, method="redrafter", max_tokens=64)
    assert result.token_ids == ar.token_ids
    assert result.stats.mean_accepted >= 2.0


def test_the_shipped_sampling_head_drafts_when_sampling():
    """The embedded target has two shipped heads: the greedy one (distilled on greedy tokens) and
    the sampling one (--soft-labels, chains at head temperature 1), which is accepted far more
    often at T > 0 (here, back-off off: 4.0 tokens per call where the greedy head gives 1.45)."""
    model = mlx_spec.load()
    drafter = mlx_spec.make_decoder(model, "redrafter").drafter
    greedy, sampling = drafter.heads[False], drafter.heads[True]
    assert greedy.model is not sampling.model
    assert (greedy.temperature, sampling.temperature) == (2.0, 1.0)
    prompt = "Once upon a time, there was a little girl named Lily. She"
    result = mlx_spec.generate(model, prompt, method="redrafter", max_tokens=96, temperature=0.7,
                               seed=1, ignore_eos=True, backoff=False)
    assert result.stats.mean_accepted > 2.5
    # a head given by path serves both regimes
    one = mlx_spec.make_decoder(model, "redrafter", head="tinystories-redrafter").drafter
    assert one.heads[False].model is one.heads[True].model


@pytest.mark.parametrize("rnn", [True, False])
def test_greedy_chain_is_the_width_one_beam(rnn):
    drafter, embed = toy_drafter(vocab=9, hidden=8, exit_dim=12, seed=3, rnn=rnn)
    context, root = mx.random.normal((2, 8), key=mx.random.key(1)), mx.array([1, 4])
    beams = beam_search(drafter, embed, context, root, width=1, length=6, top_k=3)
    chain = greedy_chain(drafter, embed, context, root, length=6)
    assert chain.tolist() == beams.tokens[:, 0].tolist()


def test_drafting_vocabulary_limits_drafts_and_round_trips(tmp_path):
    """A head with a drafting vocabulary projects onto those rows only: its logits equal the
    whole head's there and are -inf elsewhere, so greedy chains and beams draft only its tokens;
    the vocabulary travels with the folder, and a damaged file is a one-line error."""
    drafter, embed = toy_drafter(vocab=12, seed=3, layers=2)
    kept = np.array([1, 4, 5, 9], dtype=np.int32)
    drafter.vocab_ids, drafter.vocab_info = kept, {"size": 4}
    save_drafter(drafter, tmp_path / "head")
    loaded = load_drafter(tmp_path / "head")
    assert loaded.vocab_ids.tolist() == kept.tolist() and loaded.vocab_info == {"size": 4}
    context, state = mx.random.normal((3, 8)), mx.random.normal((3, 8))
    whole = np.array(loaded(context, state))
    np.testing.assert_allclose(np.array(loaded(context, state, mx.array(kept))), whole[:, kept],
                               rtol=1e-5, atol=1e-5)
    tables = loaded.drafting_tables(embed)
    features = loaded.context_features(context, tables)
    limited = np.array(loaded.logits_from_features(features, state, tables))
    np.testing.assert_allclose(limited[:, kept], whole[:, kept], rtol=1e-4, atol=1e-4)
    assert np.isneginf(np.delete(limited, kept, axis=1)).all()
    roots = mx.array([0, 2, 3])
    chain = np.array(greedy_chain(loaded, embed, context, roots, 5, tables))
    assert set(chain[:, 1:].ravel()) <= set(kept.tolist())
    beams = beam_search(loaded, embed, context, roots, 3, 4, tables=tables)
    assert set(np.array(beams.tokens)[:, :, 1:].ravel()) <= set(kept.tolist())
    # use_vocab=False: the whole vocabulary again
    whole_tables = loaded.drafting_tables(embed, use_vocab=False)
    np.testing.assert_allclose(np.array(loaded.logits_from_features(
        loaded.context_features(context, whole_tables), state, whole_tables)), whole,
        rtol=1e-4, atol=1e-4)
    # a head saved without a vocabulary drops the file it would have read
    loaded.vocab_ids = None
    save_drafter(loaded, tmp_path / "head")
    assert load_drafter(tmp_path / "head").vocab_ids is None
    for bad in ({"ids": [3, 12]}, {"ids": []}, {"size": 2}):
        (tmp_path / "head" / "draft_vocab.json").write_text(json.dumps(bad))
        with pytest.raises(ModelLoadError, match="draft_vocab.json"):
            load_drafter(tmp_path / "head")


def test_head_with_drafting_vocabulary_is_lossless(random_models, tmp_path):
    """Greedy output equals ar's; sampled continuations have the target's exact distribution,
    though the head cannot draft half of the tokens the target samples (the residual of each
    rejection covers them)."""
    from mlx_spec.sampling import SamplingParams
    from support.exactness import chi_square_pvalue, exact_distribution, sample_continuations

    model = random_models["llama"]
    vocab = model.config["vocab_size"]
    drafter, _ = toy_drafter(vocab=vocab, hidden=model.config["hidden_size"], exit_dim=48, seed=1,
                             scale=1.0)
    drafter.vocab_ids = np.arange(0, vocab, 2, dtype=np.int32)  # the even ids
    save_drafter(drafter, tmp_path / "head")
    head = str(tmp_path / "head")
    for prompt in PROMPTS:
        ar = mlx_spec.generate(model, prompt, method="ar", max_tokens=30, raw=True)
        result = mlx_spec.generate(model, prompt, method="redrafter", max_tokens=30, raw=True,
                                   head=head, beam_width=4, beam_length=4, backoff=False)
        assert result.token_ids == ar.token_ids
    params = SamplingParams(temperature=1.0, top_k=4)
    prompt = model.tokenizer.encode(PROMPTS[0])
    exact = exact_distribution(model.model, prompt, 3, params)
    assert any(t % 2 for seq in exact for t in seq)  # the target samples odd ids too
    decoder = mlx_spec.make_decoder(model, "redrafter", head=head, beam_width=3, beam_length=3,
                                    backoff=False, head_temperature=1.0)
    counts = sample_continuations(decoder, prompt, 3, params, 600)
    assert chi_square_pvalue(counts, exact) > 1e-4
    assert all(decoder.drafter.heads[s].tables["vocab_ids"].size == vocab // 2
               for s in (False, True))


def test_greedy_depth_adapts_and_carries_over_requests(random_models, tmp_path):
    """Greedy, the head's depth is chosen like the sampled one (a random head never hits: its
    drafts shrink towards plain decoding instead of nine misses a step), and since greedy drafts
    never change the text, what the chooser learned carries to the next request."""
    model = random_models["llama"]
    head = random_head_for(model, tmp_path / "head")

    def drafted(**options) -> int:
        result = mlx_spec.generate(model, PROMPTS[0], method="redrafter", max_tokens=40, raw=True,
                                   head=head, backoff=False, **FIXED_VERIFY, **options)
        ar = mlx_spec.generate(model, PROMPTS[0], method="ar", max_tokens=40, raw=True)
        assert result.token_ids == ar.token_ids
        return result.stats.drafted_tokens

    fixed = drafted(adaptive=False)
    first, second = drafted(), drafted()
    assert fixed >= 9 * 30 and first < fixed / 3
    assert second < first  # starts from the first request's depths, not the prior's


def test_sampled_chains_draw_from_a_key_no_proposer_of_the_step_used():
    """The chains for step n+1 are drawn in prepare() from step n's key; a `draft` step (inside
    `auto`) draws its drafts from that key split once per draft token. The chains' key is none of
    those, nor the key itself: drafts already in the text must not be correlated with them."""
    import mlx.core as mx
    import numpy as np

    from mlx_spec.drafters.redrafter.method import chains_key

    key = mx.random.key(7)
    used = [key] + [k for n in range(1, 9) for k in mx.random.split(key, n)]
    own = np.array(chains_key(key))
    assert not any(np.array_equal(own, np.array(k)) for k in used)
    assert np.array_equal(own, np.array(chains_key(mx.random.key(7))))  # (a seed still replays)
