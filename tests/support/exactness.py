"""Statistical exactness checks: a method's sampled continuations against the target's exact
distribution, enumerated with plain sequential forwards of the model."""
from __future__ import annotations

from collections import Counter

import mlx.core as mx
import numpy as np
from scipy.stats import chisquare

from mlx_spec.accept import Acceptance
from mlx_spec.engine import Decoder, Limits
from mlx_spec.sampling import SamplingParams, choose, log_probs


def exact_distribution(model, prompt: list[int], length: int, params: SamplingParams) -> dict:
    """P(first `length` generated tokens) under the target with these sampling params,
    by enumerating the support (keep top_k small)."""
    dist = {(): 1.0}
    for _ in range(length):
        grown = {}
        for seq, prob in dist.items():
            logits = model(mx.array([prompt + list(seq)]))[0, -1]
            probs = np.exp(np.array(log_probs(logits[None], params)[0]))
            for token in np.nonzero(probs > 0)[0]:
                grown[seq + (int(token),)] = prob * float(probs[token])
        dist = grown
    return dist


def sample_continuations(decoder: Decoder, prompt: list[int], length: int, params: SamplingParams,
                         n: int, eos=frozenset()) -> Counter:
    counts = Counter()
    limits = Limits(max_tokens=length, eos_token_ids=eos)
    for seed in range(n):
        tokens = []
        for step in decoder.generate(prompt, limits, params, seed=seed):
            tokens.extend(step.token_ids)
        counts[tuple(tokens)] += 1
    return counts


def chi_square_pvalue(counts: Counter, dist: dict, min_expected: float = 5.0) -> float:
    """Chi-square goodness of fit; rare outcomes are pooled so every cell expects >= min_expected."""
    n = sum(counts.values())
    unexpected = sum(c for seq, c in counts.items() if seq not in dist)
    if unexpected:
        return 0.0
    observed, expected, pooled_obs, pooled_exp = [], [], 0, 0.0
    for seq, prob in sorted(dist.items(), key=lambda kv: -kv[1]):
        if prob * n >= min_expected:
            observed.append(counts.get(seq, 0))
            expected.append(prob * n)
        else:
            pooled_obs += counts.get(seq, 0)
            pooled_exp += prob * n
    if pooled_exp > 0:
        observed.append(pooled_obs)
        expected.append(pooled_exp)
    expected = np.array(expected) * (n / sum(expected))
    return float(chisquare(observed, expected).pvalue)


# the setting of the chi-square tests: 3-token continuations of a prompt that repeats itself (so
# pld/lookahead find matches and really draft), the target restricted to its top 3 tokens
LENGTH, SAMPLES, TOP_K = 3, 1200, 3
PROMPT = [40, 41, 42, 43, 44, 40, 41, 42, 43, 44, 40, 41]


def biased_accept(tree, logits, params, key=None, seed=None, root_position=None):
    """Deliberately wrong: follows a drafted child whenever the target gives it any probability
    (instead of only when the target's own draw equals it)."""
    draws = choose(logits, params, key).tolist()
    kids = tree.children()
    node, path, tokens = 0, [0], []
    while kids[node]:
        node = kids[node][0]
        path.append(node)
        tokens.append(tree.tokens[node])
    tokens.append(draws[node])
    return Acceptance(path=path, tokens=tokens)
