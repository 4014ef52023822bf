"""Where does a method's greedy output leave plain decoding's, and how close was the tie there?

For each prompt, every method decodes greedily beside `ar`. Where the outputs differ, the first
differing position is found and plain decoding (mlx-lm's way: the prompt prefilled, then one
token per forward) is replayed up to it. The logits there show whether the two tokens were a
near tie, which different rounding in a multi-token forward can flip (a GPU backend), or far
apart, which means a real bug. On the CPU every method should print no divergence at all.

    python examples/greedy_divergence.py [--model FOLDER] [--methods pld,lookahead,...]
        [--prompts FILE|chat] [-n 128]
"""
import argparse
import json
import os

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

import mlx_spec
from mlx_spec.api import encode_prompt
from mlx_spec.bench import load_prompts


def plain_logits(model, prompt_ids: list[int], output: list[int]) -> mx.array:
    """The logits after prompt + output, computed as plain decoding computes them."""
    cache = make_prompt_cache(model.model)
    model.model(mx.array([prompt_ids[:-1]]), cache=cache)
    logits = None
    for token in [prompt_ids[-1]] + output:
        logits = model.model(mx.array([[token]]), cache=cache)[0, -1].astype(mx.float32)
        mx.eval(logits)
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--methods", default="pld,lookahead,draft,adaedl,redrafter,auto")
    parser.add_argument("--prompts", default=None)
    parser.add_argument("-n", "--max-tokens", type=int, default=128)
    args = parser.parse_args()

    model = mlx_spec.load(args.model)
    methods = args.methods.split(",")
    prompts = load_prompts(args.prompts)
    print("device", mx.default_device(), "TF32", os.environ.get("MLX_ENABLE_TF32"),
          "cuDNN SDPA", os.environ.get("MLX_CUDA_USE_CUDNN_SDPA"), flush=True)
    divergent = 0
    for prompt in prompts:
        ids = encode_prompt(model, prompt["prompt"])
        plain = mlx_spec.generate(model, ids, method="ar", max_tokens=args.max_tokens).token_ids
        for method in methods:
            out = mlx_spec.generate(model, ids, method=method, max_tokens=args.max_tokens).token_ids
            if out == plain:
                continue
            divergent += 1
            at = next((i for i, (a, b) in enumerate(zip(plain, out)) if a != b), None)
            row = {"prompt": prompt["id"], "method": method, "index": at}
            if at is None:  # one output is a prefix of the other (an end token on one side)
                row["lengths"] = [len(plain), len(out)]
            else:
                logits = plain_logits(model, ids, plain[:at])
                row.update(plain_token=plain[at], method_token=out[at],
                           plain_logit=logits[plain[at]].item(),
                           method_logit=logits[out[at]].item(),
                           top3=mx.argsort(-logits)[:3].tolist())
            print(json.dumps(row), flush=True)
    print(f"divergent runs: {divergent} of {len(prompts) * len(methods)}")


if __name__ == "__main__":
    main()
