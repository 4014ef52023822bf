"""A worker's job on a real (tiny random) model: cache deltas, chain verification, acceptance."""
import mlx.core as mx

import mlx_spec
from mlx_spec.dsi.verifier import ProtocolError, Verifier
from mlx_spec.sampling import SamplingParams
from mlx_spec.target import Target
from support.random_models import make_model_folder

import pytest


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return mlx_spec.load(str(make_model_folder(tmp_path_factory.mktemp("dsi") / "m", "llama", seed=0)))


@pytest.fixture(scope="module", params=["llama", "gemma3_text", "qwen3_next"])
def any_model(request, tmp_path_factory):
    """Full attention, a sliding window of 8 and a hybrid: each worker's cache rewinds its way."""
    from support.architectures import build
    return mlx_spec.load(str(build(tmp_path_factory.mktemp("dsi") / request.param, request.param)))


def test_jobs_with_cache_deltas_follow_the_target(any_model):
    model = any_model
    prompt = [0, 20, 31, 42, 57, 68, 70, 81, 92, 13, 24]
    g = mlx_spec.generate(model, prompt, method="ar", max_tokens=8).token_ids
    v = Verifier(Target(model.model))
    greedy = SamplingParams()
    wrong = (g[2] + 1) % 100
    # first job: the whole context is missing; the third draft is wrong
    assert v.run(0, prompt + [g[0], g[1], wrong], 4, greedy, 0) == ([g[0], g[1], g[2]], 2)
    # next job keeps the cached prompt + g0 g1 and drops the wrong draft: only the chain is new
    assert v.run(len(prompt) + 2, [g[2], g[3], g[4]], 3, greedy, 0) == ([g[3], g[4], g[5]], 2)
    # a job on another branch: keep only part of the prompt, resend the rest
    assert v.run(3, prompt[3:] + [g[0]], 1, greedy, 0) == ([g[1]], 0)
    with pytest.raises(ProtocolError):
        v.run(100, [1], 1, greedy, 0)


def test_sampled_chain_with_draft_probabilities(model):
    prompt = [0, 20, 31, 42]
    v = Verifier(Target(model.model))
    width = int(model.model(mx.array([[0]]))[0, -1].shape[-1])
    probs = mx.full((3, width), 1.0 / width)
    tokens, accepted = v.run(0, prompt + [5, 6], 3, SamplingParams(temperature=1.0), 7, probs)
    assert 0 <= accepted <= 2 and len(tokens) == accepted + 1
    assert all(0 <= t < width for t in tokens)
