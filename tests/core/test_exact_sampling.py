"""Sampled output of every method has exactly the target's distribution (chi-square against the
enumerated distribution of 3-token continuations), and a biased acceptance rule is caught."""
import pytest

import mlx_spec
from mlx_spec.sampling import SamplingParams
from support.exactness import (LENGTH, PROMPT, SAMPLES, TOP_K, biased_accept, chi_square_pvalue,
                               exact_distribution, sample_continuations)

METHODS = [("ar", {}), ("pld", {"num_draft_tokens": 3, "adaptive": False}), ("lookahead", {}),
           ("draft", "qwen2"), ("adaedl", "qwen2"), ("auto", "qwen2")]


@pytest.fixture(scope="module")
def small(random_models):
    return random_models["llama"]


def decoder_for(model, method, options, model_dirs=None):
    if isinstance(options, str):  # a draft model from the random set, by architecture
        options = {"draft_model": str(model_dirs[options]), "num_draft_tokens": 3}
    return mlx_spec.make_decoder(model, method, **options)


@pytest.mark.parametrize("temperature", [0.7, 1.0])
@pytest.mark.parametrize("method, options", METHODS)
def test_sampled_output_has_target_distribution(small, random_model_dirs, method, options, temperature):
    params = SamplingParams(temperature=temperature, top_k=TOP_K)
    exact = exact_distribution(small.model, PROMPT, LENGTH, params)
    decoder = decoder_for(small, method, options, random_model_dirs)
    counts = sample_continuations(decoder, PROMPT, LENGTH, params, SAMPLES)
    assert chi_square_pvalue(counts, exact) > 1e-4


def test_biased_acceptance_is_caught(small, monkeypatch):
    params = SamplingParams(temperature=1.0, top_k=TOP_K)
    exact = exact_distribution(small.model, PROMPT, LENGTH, params)
    monkeypatch.setattr("mlx_spec.engine.accept", biased_accept)
    # a fixed draft length, so that drafts are sent whatever earlier tests taught pld's chooser
    decoder = decoder_for(small, "pld", {"num_draft_tokens": 3, "adaptive": False})
    counts = sample_continuations(decoder, PROMPT, LENGTH, params, SAMPLES)
    assert chi_square_pvalue(counts, exact) < 1e-6


@pytest.mark.parametrize("method", ["ar", "pld"])
def test_same_seed_same_output(small, method):
    first = mlx_spec.generate(small, PROMPT, method=method, max_tokens=20, temperature=0.9, seed=7)
    again = mlx_spec.generate(small, PROMPT, method=method, max_tokens=20, temperature=0.9, seed=7)
    other = mlx_spec.generate(small, PROMPT, method=method, max_tokens=20, temperature=0.9, seed=8)
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids


def test_followed_drafts_sample_exactly_what_ar_samples(small):
    """Methods whose drafts are only followed draw the target's token at each position with that
    position's own random number, so with the same seed they reproduce ar's sampled text exactly,
    whatever they drafted (lookahead's shared trie included, even on a repeated call)."""
    for seed in (1, 2):
        ar = mlx_spec.generate(small, PROMPT, method="ar", max_tokens=24, temperature=0.9, seed=seed)
        for method in ("pld", "lookahead", "lookahead", "auto"):  # auto: pld and lookahead here
            other = mlx_spec.generate(small, PROMPT, method=method, max_tokens=24, temperature=0.9,
                                      seed=seed)
            assert other.token_ids == ar.token_ids, (method, seed)
