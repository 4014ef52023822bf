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


@pytest.mark.parametrize("params, filters", [
    (SamplingParams(temperature=1.0), False), (SamplingParams(temperature=1.0, top_k=64), False),
    (SamplingParams(temperature=1.0, top_k=100), False),
    (SamplingParams(temperature=1.0, top_k=63), True),
    (SamplingParams(temperature=1.0, top_p=0.99), True),
    (SamplingParams(temperature=1.0, min_p=0.01), True)])
def test_a_filter_acts_where_it_drops_a_token_of_the_row(params, filters):
    """filters() decides whether probs() (and HostRows) take the filtered path: a filtered row
    has zeros where log_probs dropped tokens, an unfiltered one none."""
    assert params.filters(64) is filters
    logits = mx.random.normal((1, 64), key=mx.random.key(3)) * 3
    assert bool((HostRows(logits, params).weights(0) == 0).any()) is filters


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
        differ = np.flatnonzero((rows.probs(node) > 0) != (reference[node] > 0))
        if params.top_p < 1.0:  # (a token at top-p's edge may differ: MLX sums in float32)
            assert len(differ) <= 1 and all(abs(_mass_before(rows.probs(node), t) - params.top_p)
                                            < 1e-4 for t in differ)
            if len(differ):
                continue
        assert len(differ) == 0
        assert np.allclose(rows.probs(node), reference[node], atol=1e-6)
        drawn = [rows.draw(node, u) for u in uniforms]
        mlx = np.array(invert_cdf(mx.broadcast_to(mx.array(reference[node]), (200, 3000)),
                                  mx.array(uniforms, dtype=mx.float32))).tolist()
        cdf = np.cumsum(reference[node])
        edge = np.abs(uniforms[:, None] - cdf[None, :]).min(axis=1) < 1e-5  # rounding decides
        assert all(d == m for d, m, e in zip(drawn, mlx, edge) if not e)
        assert all(reference[node][d] > 0 for d in drawn)


def _mass_before(p: np.ndarray, token: int) -> float:
    """The mass of the tokens heavier than `token` in `p` (before it in top-p's order)."""
    return float(p[p > p[token]].sum())


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.99, 0.999999])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_top_p_on_the_host_keeps_the_smallest_prefix_that_reaches_top_p(top_p, dtype):
    """sampling._top_p against its definition, a stable sort of the weights (equal ones by id)
    and a float64 sum: each token kept while the mass before it is below top_p of the total;
    bfloat16 logits put many equal weights at the edge, and a planted run of ties splits there."""
    from mlx_spec.sampling import _top_p

    def reference(weights):
        order = np.argsort(-weights, kind="stable")
        before = np.cumsum(weights[order]) - weights[order]
        keep = np.zeros(len(weights), dtype=bool)
        keep[order[before < top_p * weights.sum()]] = True
        return keep

    rng = np.random.default_rng(3)
    for vocab in (50, 3000, 49152):
        logits = mx.array(rng.normal(size=vocab) * 3).astype(dtype).astype(mx.float32)
        weights = np.exp(np.array(logits) - np.array(logits).max()).astype(np.float64)
        assert np.array_equal(_top_p(weights, top_p), reference(weights))
    ties = np.array([0.5, 1.0, 4.0, 1.0, 1.0, 1.0])  # total 8.5; the ties (ids 1, 3, 4, 5) have
    # 4, 5, 6, 7 before them, id 0 has 8: top_p x 8.5 decides how many ties stay, lowest ids first
    kept = {0.05: [2], 0.5: [1, 2], 0.9: [1, 2, 3, 4, 5], 0.99: list(range(6)),
            0.999999: list(range(6))}[top_p]
    assert np.flatnonzero(_top_p(ties, top_p)).tolist() == kept
    # a run of 200 ties past the first partition's 64 heaviest: the edge falls inside it
    long_run = np.concatenate([np.full(100, 0.5), np.full(10, 30.0), np.full(200, 1.0)])
    assert np.array_equal(_top_p(long_run, top_p), reference(long_run))


def test_host_draws_follow_the_probabilities_and_never_a_zero_one():
    weights = mx.log(mx.array([[0.0, 0.25, 0.0, 0.5, 0.25, 0.0]]))  # logits with -inf
    rows = HostRows(weights, SamplingParams(temperature=1.0))
    grid = (np.arange(10_000) + 0.5) / 10_000
    shares = np.bincount([rows.draw(0, u) for u in grid], minlength=6) / 10_000
    assert np.allclose(shares, [0.0, 0.25, 0.0, 0.5, 0.25, 0.0], atol=1e-3)
    assert {rows.draw(0, u) for u in (0.0, 1.0 - 2 ** -53, 1.0)} == {1, 4}  # (1.0: past the
    # CDF's end, the last token with probability)


def test_the_regime_names_each_setting_that_changes_the_distribution():
    """What drafters learn is kept per regime: greedy ignores the filters (as greedy decoding
    does), a sampled regime names the temperature and every filter that is set, and settings
    that sample one distribution share a name."""
    assert SamplingParams().regime == SamplingParams(top_p=0.9, top_k=5).regime == "greedy"
    assert SamplingParams(temperature=0.7).regime == "T=0.7"
    assert SamplingParams(temperature=0.7, top_p=1.0, top_k=0, min_p=0.0).regime == "T=0.7"
    assert (SamplingParams(temperature=1.0, top_p=0.9, top_k=40, min_p=0.05).regime
            == "T=1 top_p=0.9 top_k=40 min_p=0.05")
    names = {SamplingParams(temperature=t, top_p=p).regime for t in (0.7, 1.0) for p in (0.9, 1.0)}
    assert len(names) == 4
