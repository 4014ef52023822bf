"""Greedy output of every chain method (and `auto`, which switches among them) equals mlx-lm's own greedy decoding, token for token."""
import pytest

import mlx_spec
from support.greedy import PROMPTS, mlx_lm_greedy
from support.random_models import ARCHITECTURES


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("method", ["ar", "pld", "auto"])
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
