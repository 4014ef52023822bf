"""mlx-lm's own greedy decoding: the reference every method must equal token for token."""
from mlx_lm import stream_generate as mlx_lm_stream_generate
from mlx_lm.sample_utils import make_sampler

PROMPTS = ["once upon a time there was", "lily found the ball under a big green tree and smiled. the sun"]


def mlx_lm_greedy(model, prompt, max_tokens):
    ids = []
    for response in mlx_lm_stream_generate(model.model, model.tokenizer, prompt, max_tokens=max_tokens,
                                           sampler=make_sampler(0.0)):
        if response.finish_reason == "stop" and response.token in model.tokenizer.eos_token_ids:
            break
        ids.append(response.token)
    return ids
