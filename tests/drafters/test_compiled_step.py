"""The drafter's compiled one-token forward over fixed-capacity KV buffers: equal to mlx-lm's plain
forward through prefills, rewinds and buffer growth; architectures it cannot serve keep the plain
path."""
import mlx.core as mx
import numpy as np
import pytest

import mlx_spec
from mlx_spec.drafters.compiled_step import CAPACITY_STEP, DraftForward, supports_compiled_step

ARCHS = ["llama", "llama3-scaled", "qwen2", "qwen3", "mistral"]


@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_steps_equal_the_plain_forward(random_models, arch):
    module = random_models[arch].model
    vocab = module(mx.array([[0]])).shape[-1]
    assert supports_compiled_step(module, vocab)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, vocab, size=40).tolist()
    plain = DraftForward(module, compiled=False)
    compiled = DraftForward(module, compiled=True)
    assert isinstance(plain.cache, list) and compiled.compiled and not plain.compiled
    for forward in (plain, compiled):
        forward(mx.array(tokens[:10]))
    for i in range(10, 40):
        if i == 25:  # rewind over five fed tokens, then feed different ones over their slots
            for forward in (plain, compiled):
                forward.trim(5)
            tokens[20:] = [(t + 1) % vocab for t in tokens[20:]]
        at = i if i < 25 else i - 5
        feed = mx.array(tokens[at:at + 2] if i % 7 == 0 else [tokens[at]])  # two-token feeds too
        a, b = plain(feed), compiled(feed)
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-4)
        if feed.shape[0] == 2:
            for forward in (plain, compiled):
                forward.trim(1)
    assert compiled.offset == plain.offset == 35


def test_buffers_grow_past_their_capacity(random_models):
    module = random_models["llama"].model
    forward = DraftForward(module, compiled=True)
    forward(mx.array(list(range(CAPACITY_STEP - 2))))
    for t in range(4):  # crosses the first capacity step one token at a time
        logits = forward(mx.array([t + 3]))
    assert forward.cache[0].capacity == 2 * CAPACITY_STEP and forward.offset == CAPACITY_STEP + 2
    fresh = module(mx.array([list(range(CAPACITY_STEP - 2)) + [3, 4, 5, 6]]))[0, -1]
    np.testing.assert_allclose(np.array(logits), np.array(fresh), rtol=1e-4, atol=1e-4)


class _OwnMaskModel:
    """Wraps a model but hides the slot mask from it: stale slots after a rewind leak into
    attention, which the check must notice."""

    def __init__(self, module):
        self.module, self.layers = module, module.layers

    def __call__(self, inputs, cache=None):
        if cache is not None:
            for c in cache:
                c.make_mask = lambda n, **_: None if n == 1 else "causal"
        return self.module(inputs, cache=cache)


def test_an_architecture_that_ignores_the_cache_mask_keeps_the_plain_path(random_models):
    module = random_models["qwen3"].model
    assert not supports_compiled_step(_OwnMaskModel(module), 64)
    assert not supports_compiled_step(object(), 64)


def test_the_shipped_drafter_runs_the_compiled_step():
    model = mlx_spec.load()
    drafter = mlx_spec.make_decoder(model, "draft").drafter
    assert drafter.draft.compiled_step and drafter.forward.compiled
