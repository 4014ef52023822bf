"""Every mlx-lm text architecture in tests/support/architectures.py, built tiny and random: sliding windows
of 8 (wrapped many times by the prompts and outputs here), recurrent and hybrid layers, CacheLists,
chunked attention, models with no RoPE module and models with per-position code besides RoPE.

- Tree verification equals a sequential forward along every root-to-leaf path, after a prefix that
  has wrapped the windows (architectures that cannot verify trees must say so up front).
- A partial acceptance then rolls every layer kind back exactly (the next logits equal a fresh
  prefill's), also after a sliding window has dropped keys.
- `ar`, `pld`, `lookahead` and `draft` (a near copy of the target as drafter: drafts hit and miss)
  give mlx-lm's own greedy output token for token.
"""
import mlx.core as mx
import pytest

import mlx_spec
from mlx_spec.kv import WINDOW_SLACK, cache_kinds
from mlx_spec.target import Target
from mlx_spec.tree import Tree
from support.architectures import MATRIX, build
from support.greedy import mlx_lm_greedy

NAMES = sorted(MATRIX)
PREFIX = [(7 * i + 3) % 250 + 2 for i in range(30)]   # longer than every window (8) and chunk (8)
BRANCHES = [[11, 12, 13], [11, 14], [17, 18, 19, 20], [17, 18, 12], [30]]
# a passage quoted back (drafts hit) after a plain opening (drafts miss); far past the window
PROMPTS = ["lily found the ball under a big green tree and smiled. the sun was warm and the birds "
           "sang. lily found the ball under a big green tree and",
           "once upon a time there was"]
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def matrix_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    return {name: build(root / name, name) for name in NAMES}


@pytest.fixture(scope="module")
def twin_dirs(tmp_path_factory):
    """Drafters that agree with their target often but not always: the same initial weights at a
    slightly different scale."""
    root = tmp_path_factory.mktemp("matrix_twins")
    return {name: build(root / name, name, weight_scale=3.6) for name in NAMES}


@pytest.fixture(scope="module")
def matrix_models(matrix_dirs):
    return {name: mlx_spec.load(str(path)) for name, path in matrix_dirs.items()}


def _fresh_logits(model, tokens, then):
    target = Target(model)
    target.prefill(tokens)
    return target._forward(mx.array(then)).logits


@pytest.mark.parametrize("name", NAMES)
def test_tree_or_chain_verification_is_exact(matrix_models, name):
    model = matrix_models[name].model
    target = Target(model)
    target.sync(PREFIX)
    if not target.supports_trees:  # known before any text: drafters then propose chains
        with pytest.raises(mlx_spec.MlxSpecError):
            target.verify(Tree.from_branches(3, BRANCHES))
        tree = Tree.from_chain(3, BRANCHES[2])
        target.sync(PREFIX)
    else:
        tree = Tree.from_branches(3, BRANCHES)
    out = target.verify(tree)
    for leaf in tree.leaves():
        path = tree.path_to(leaf)
        expected = _fresh_logits(model, PREFIX, [tree.tokens[i] for i in path])
        got = out.logits[mx.array(path)]
        assert mx.abs(got - expected).max().item() < 1e-3, (name, path)


@pytest.mark.parametrize("name", NAMES)
def test_partial_acceptance_rolls_back_exactly(matrix_models, name):
    """Verify a tree (or chain), keep a path that rejects something, verify again: the logits equal
    those of a fresh cache that only ever saw the kept tokens (every layer kind rolled back)."""
    model = matrix_models[name].model
    target = Target(model)
    target.sync(PREFIX)
    tree = (Tree.from_branches(3, BRANCHES) if target.supports_trees
            else Tree.from_chain(3, BRANCHES[2]))
    target.verify(tree)
    path = tree.path_to(tree.leaves()[-2 if target.supports_trees else 0])[:3]
    target.commit(path, len(tree))
    kept = PREFIX + [tree.tokens[i] for i in path]
    assert target.tokens == kept
    after = target.verify(Tree.from_chain(40, [41, 42])).logits
    assert mx.abs(after - _fresh_logits(model, kept, [40, 41, 42])).max().item() < 1e-3


@pytest.mark.parametrize("name", ["gemma3_text", "recurrent_gemma", "qwen3_next", "llama4"])
def test_sync_far_back_after_the_window_dropped_keys(matrix_models, name):
    """A new prompt that leaves the cached one long after its start: the layers can no longer be
    rewound that far (window keys dropped, no snapshot), so the cache starts over, exactly."""
    model = matrix_models[name].model
    long = [(5 * i + 1) % 250 + 2 for i in range(2 * WINDOW_SLACK + 60)]
    target = Target(model)
    target.sync(long)
    target.sync(long + [9])  # a feed after the long prompt lets windows drop their oldest keys
    other = long[:40] + [3, 4, 5]
    assert target.sync(other) == 0 or not any(k.startswith("Rotating") for k in cache_kinds(model))
    got = target.verify(Tree.from_chain(6, [7])).logits
    assert target.tokens == other + [6, 7]
    assert mx.abs(got - _fresh_logits(model, other, [6, 7])).max().item() < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_every_method_equals_mlx_lm_greedy(matrix_models, twin_dirs, name):
    model = matrix_models[name]
    methods = [("ar", {}), ("pld", {}), ("lookahead", {}),
               ("draft", {"draft_model": str(twin_dirs[name]), "num_draft_tokens": 3,
                          "adaptive": False, "backoff": False})]  # drafts every step: sized by
    # the machine's measured costs, the twin (as dear as the target) drafted nothing on
    # falcon_h1 under the parallel suite's load, and the hits below are what the test needs
    hits = {}
    for prompt in PROMPTS:
        expected = mlx_lm_greedy(model, prompt, MAX_TOKENS)
        for method, options in methods:
            result = mlx_spec.generate(model, prompt, method=method, max_tokens=MAX_TOKENS,
                                       raw=True, **options)
            assert result.token_ids == expected, (name, method, prompt)
            hits[method] = hits.get(method, 0) + result.stats.accepted_drafts
    assert hits["draft"] > 0, "the near-copy drafter should have drafts accepted"


def test_trees_on_a_position_dependent_model_would_be_wrong(matrix_models, monkeypatch):
    """Control for the chain-only list: ministral3 scales its queries by each token's index, so
    verifying a tree there (were it allowed) gives a node the scale of its index, not its depth."""
    monkeypatch.setattr("mlx_spec.target.POSITION_DEPENDENT", frozenset())
    model = matrix_models["ministral3"].model
    target = Target(model)
    assert target.supports_trees
    target.sync(PREFIX)
    tree = Tree.from_branches(3, BRANCHES)
    out = target.verify(tree)
    worst = max(mx.abs(out.logits[mx.array(tree.path_to(leaf))]
                       - _fresh_logits(model, PREFIX, [tree.tokens[i] for i in tree.path_to(leaf)])
                       ).max().item() for leaf in tree.leaves())
    assert worst > 1e-2


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("name", ["llama", "gemma3_text", "qwen3_next"])
def test_quantized_weights_every_method_equals_mlx_lm(matrix_dirs, twin_dirs, tmp_path, name, bits):
    """4- and 8-bit mlx-lm models (what Mac users download) through every chain and tree method,
    with a quantized near copy as the drafter."""
    from mlx_lm.convert import convert

    paths = {}
    for role, source in (("target", matrix_dirs[name]), ("draft", twin_dirs[name])):
        paths[role] = tmp_path / role
        convert(str(source), mlx_path=str(paths[role]), quantize=True, q_bits=bits, q_group_size=32)
    model = mlx_spec.load(str(paths["target"]))
    assert "QuantizedLinear" in {type(m).__name__ for _, m in model.model.named_modules()}
    for prompt in PROMPTS:
        expected = mlx_lm_greedy(model, prompt, MAX_TOKENS)
        for method, options in [("ar", {}), ("pld", {}), ("lookahead", {}),
                                ("draft", {"draft_model": str(paths["draft"])})]:
            result = mlx_spec.generate(model, prompt, method=method, max_tokens=MAX_TOKENS,
                                       raw=True, **options)
            assert result.token_ids == expected, (name, bits, method, prompt)


@pytest.mark.parametrize("name", ["gemma3_text", "qwen3_next"])
@pytest.mark.parametrize("method", ["lookahead", "draft"])
def test_sampled_output_has_target_distribution(matrix_models, twin_dirs, name, method):
    """Exact sampling on a sliding-window and a hybrid model: the prompt wraps the window and every
    rejected draft rolls a layer kind back (chi-square against the enumerated distribution)."""
    from support.exactness import chi_square_pvalue, exact_distribution, sample_continuations
    from mlx_spec.sampling import SamplingParams

    model = matrix_models[name]
    # the model's own greedy text as the prompt: lookahead's trie then drafts what it may sample
    opening = [40, 41, 42, 43, 44, 45, 46]
    prompt = opening + mlx_spec.generate(model, opening, method="ar", max_tokens=60).token_ids
    params = SamplingParams(temperature=1.0, top_k=3)
    # drafting always on (no back-off, a fixed budget): the rollbacks of rejected drafts are tested
    options = {"lookahead": {"adaptive": False},
               "draft": {"draft_model": str(twin_dirs[name]), "num_draft_tokens": 3,
                         "adaptive": False}}[method]
    options["backoff"] = False
    decoder = mlx_spec.make_decoder(model, method, **options)
    seen, observe = {"drafted": 0, "accepted": 0}, decoder.drafter.observe

    def counting(ctx, tree, acceptance, out):
        seen["drafted"] += len(tree) - 1
        seen["accepted"] += acceptance.accepted_drafts
        observe(ctx, tree, acceptance, out)

    decoder.drafter.observe = counting
    counts = sample_continuations(decoder, prompt, 3, params, 1000)
    assert chi_square_pvalue(counts, exact_distribution(model.model, prompt, 3, params)) > 1e-4
    assert seen["drafted"] > seen["accepted"] > 0  # drafts were accepted and rejected


def test_a_tokenizer_listing_more_ids_than_the_logits_is_no_reason_to_refuse():
    """qwen2 folders load a tokenizer that lists one id more (513) than the model's logits (512):
    a drafter identical to its target was refused. Ids no logits row can produce are simply never
    proposed; a vocabulary that disagrees is still refused."""
    from mlx_spec.drafters.draft_model import check_vocabularies

    class Tokenizer:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    listed = Tokenizer({f"t{i}": i for i in range(513)})
    check_vocabularies(listed, listed, 512, 512)
    other = Tokenizer({**{f"t{i}": i for i in range(512)}, "x": 512})
    with pytest.raises(mlx_spec.MlxSpecError):
        check_vocabularies(listed, other, 512, 512)


@pytest.mark.parametrize("name, replayed", [("llama", 0), ("gemma3_text", 0), ("qwen3_next", 3),
                                            ("falcon_h1", 3)])
def test_bench_rollback_measure_counts_replayed_rows(matrix_models, name, replayed):
    """`mlxspec bench` reports what rejecting drafts costs: attention layers rewind for free,
    recurrent layers feed the kept tokens again (root + 2 accepted drafts) in the next verify."""
    from mlx_spec.bench import measure_rollback

    report = measure_rollback(matrix_models[name], PREFIX, drafted=4, accepted=2, repeats=3)
    assert report["replayed_rows"] == replayed
    assert report["trees"] == (replayed == 0)
    assert min(report["verify_ms"], report["verify_after_rollback_ms"],
               report["replay_forward_ms"]) > 0
