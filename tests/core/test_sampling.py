"""The processed distribution in one softmax, and the inverse-CDF draw every sampled draft uses."""
import mlx.core as mx
import numpy as np
import pytest

from mlx_spec.sampling import HostRows, SamplingParams, invert_cdf, log_probs, probs


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


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=0.7),
                                    SamplingParams(temperature=1.0),
                                    SamplingParams(temperature=0.8, top_k=5),
                                    SamplingParams(temperature=1.0, top_p=0.9),
                                    SamplingParams(temperature=1.2, min_p=0.05),
                                    SamplingParams(temperature=0.7, top_k=40, min_p=0.02)])
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_host_rows_are_mlx_rows(params, dtype):
    """HostRows (numpy's exp and top-k / min-p filters where MLX's are slow) gives each row's
    probabilities, the tokens its filters keep, argmax and inverse-CDF draw as MLX's ops do."""
    logits = (mx.random.normal((4, 3000), key=mx.random.key(2)) * 3).astype(dtype)
    rows = HostRows(logits, params)
    uniforms = np.random.default_rng(0).random(200)
    for node in range(4):
        assert rows.argmax(node) == int(mx.argmax(logits[node]).item())
    if params.greedy:
        return
    reference = np.array(probs(logits, params))
    for node in range(4):
        assert np.allclose(rows.probs(node), reference[node], atol=1e-6)
        assert np.array_equal(rows.probs(node) > 0, reference[node] > 0)
        drawn = [rows.draw(node, u) for u in uniforms]
        mlx = np.array(invert_cdf(mx.broadcast_to(mx.array(reference[node]), (200, 3000)),
                                  mx.array(uniforms, dtype=mx.float32))).tolist()
        cdf = np.cumsum(reference[node])
        edge = np.abs(uniforms[:, None] - cdf[None, :]).min(axis=1) < 1e-5  # rounding decides
        assert all(d == m for d, m, e in zip(drawn, mlx, edge) if not e)
        assert all(reference[node][d] > 0 for d in drawn)


def test_host_draws_follow_the_probabilities_and_never_a_zero_one():
    weights = mx.log(mx.array([[0.0, 0.25, 0.0, 0.5, 0.25, 0.0]]))  # logits with -inf
    rows = HostRows(weights, SamplingParams(temperature=1.0))
    grid = (np.arange(10_000) + 0.5) / 10_000
    shares = np.bincount([rows.draw(0, u) for u in grid], minlength=6) / 10_000
    assert np.allclose(shares, [0.0, 0.25, 0.0, 0.5, 0.25, 0.0], atol=1e-3)
    assert {rows.draw(0, u) for u in (0.0, 1.0 - 2 ** -53, 1.0)} == {1, 4}  # (1.0: past the
    # CDF's end, the last token with probability)
