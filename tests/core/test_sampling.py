"""The processed distribution in one softmax, and the inverse-CDF draw every sampled draft uses."""
import mlx.core as mx
import numpy as np
import pytest

from mlx_spec.sampling import SamplingParams, invert_cdf, log_probs, probs


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.7), SamplingParams(temperature=1.0),
                                    SamplingParams(temperature=0.8, top_k=5),
                                    SamplingParams(temperature=1.0, top_p=0.9),
                                    SamplingParams(temperature=1.2, min_p=0.05), SamplingParams()])
def test_probs_are_the_processed_distribution(params):
    logits = mx.random.normal((3, 64), key=mx.random.key(1)) * 3
    assert np.allclose(np.array(probs(logits, params)), np.array(mx.exp(log_probs(logits, params))),
                       atol=1e-6)


def test_inverting_the_cdf_draws_each_token_with_its_probability_and_never_a_zero_one():
    q = mx.array([[0.0, 0.25, 0.0, 0.5, 0.25, 0.0]])
    # uniforms on a fine grid: each token's share of the grid is its probability
    grid = (mx.arange(10_000) + 0.5) / 10_000
    tokens = np.array(invert_cdf(mx.broadcast_to(q, (10_000, 6)), grid))
    shares = np.bincount(tokens, minlength=6) / 10_000
    assert np.allclose(shares, np.array(q[0]), atol=1e-3)
    edges = invert_cdf(mx.broadcast_to(q, (2, 6)), mx.array([0.0, 1.0 - 2 ** -24]))
    assert set(np.array(edges).tolist()) <= {1, 3, 4}
