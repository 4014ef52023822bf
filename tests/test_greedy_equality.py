"""Greedy output of every chain method equals mlx-lm's own greedy decoding, token for token."""
import mlx.core as mx
import pytest
from mlx_lm import stream_generate as mlx_lm_stream_generate
from mlx_lm.sample_utils import make_sampler

import mlx_spec
from random_models import ARCHITECTURES

PROMPTS = ["once upon a time there was", "lily found the ball under a big green tree and smiled. the sun"]


def mlx_lm_greedy(model, prompt, max_tokens):
    ids = []
    for response in mlx_lm_stream_generate(model.model, model.tokenizer, prompt, max_tokens=max_tokens,
                                           sampler=make_sampler(0.0)):
        if response.finish_reason == "stop" and response.token in model.tokenizer.eos_token_ids:
            break
        ids.append(response.token)
    return ids


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("method", ["ar", "pld"])
def test_greedy_matches_mlx_lm(random_models, arch, method):
    model = random_models[arch]
    for prompt in PROMPTS:
        expected = mlx_lm_greedy(model, prompt, 60)
        result = mlx_spec.generate(model, prompt, method=method, max_tokens=60, raw=True)
        assert result.token_ids == expected, (arch, method, prompt)
        assert result.stats.generated_tokens == len(expected)
        if method == "ar":  # one call per token, plus the one that produced EOS
            assert result.stats.target_calls == len(expected) + (result.finish_reason == "stop")
        else:
            assert result.stats.target_calls <= len(expected) + 1
