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


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_without_dispatch_ahead_nothing_is_in_flight_while_a_step_is_held(random_models,
                                                                          temperature):
    """The bench's step interleaving turns dispatch-ahead off so that no method's forward runs
    inside another's timed step: at every yield the target has verified exactly the steps
    yielded so far (with it on, one more), and the text is the same either way."""
    from mlx_spec.engine import Limits
    from mlx_spec.sampling import SamplingParams

    model = random_models["llama"]
    prompt = model.tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    texts = {}
    for ahead in (True, False):
        decoder = mlx_spec.make_decoder(model, "pld")
        decoder.dispatch_ahead = ahead
        verify, calls = decoder.target.verify, []
        decoder.target.verify = lambda tree: calls.append(1) or verify(tree)
        steps, ids = 0, []
        for step in decoder.generate(list(prompt), Limits(max_tokens=40),
                                     SamplingParams(temperature=temperature), seed=3):
            steps += 1
            ids += step.token_ids
            assert len(calls) == steps + (ahead and step.finish_reason is None)
        texts[ahead] = ids
    assert texts[True] == texts[False] and len(texts[True]) == 40
