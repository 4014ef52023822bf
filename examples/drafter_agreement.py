"""How well do a chat target's drafters predict its answers to requests they never saw?

The target answers the bench's prompts greedily (its hidden states kept, as `mlxspec distill`
stores them); each ReDrafter head is then scored along those answers as on its held-out data
(teacher-forced top-1 per draft step, and the tokens per call that greedy verification of its
beams would give at 1,024 random positions), and each draft model by its top-1 agreement, the
tokens per call of chains of k drafts, and the probability that its sampled first draft is
accepted at T = 0.7. The training commands print the same figures for their own held-out
requests; these say whether they carry over to requests written by someone else.

    python examples/drafter_agreement.py TARGET [--head FOLDER ...] [--draft FOLDER ...]
        [--prompts chat] [-n 128]
"""
import argparse

import mlx.core as mx
import numpy as np

import mlx_spec
from mlx_spec.bench import load_prompts
from mlx_spec.drafters.model_parts import output_projection, token_embedding
from mlx_spec.drafters.redrafter import load_drafter
from mlx_spec.loading import load_mlx_lm
from mlx_spec.train.chat_draft import chat_sequences, evaluate_draft
from mlx_spec.train.distill import heldout_accuracy, simulated_acceptance
from mlx_spec.train.distill_data import DataOptions, continue_batch

BEAMS = ((1, 7), (2, 7), (4, 6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--head", action="append", default=[])
    parser.add_argument("--draft", action="append", default=[])
    parser.add_argument("--prompts", default="chat")
    parser.add_argument("-n", type=int, default=128)
    args = parser.parse_args()

    target = mlx_spec.load(args.target)
    requests = [list(target.tokenizer.apply_chat_template(
        [{"role": "user", "content": p["prompt"]}], add_generation_prompt=True))
        for p in load_prompts(args.prompts)]
    eos, options = set(target.eos_token_ids), DataOptions(continuation=args.n)
    parts = [continue_batch(target.model, requests[i:i + 8], options, eos)
             for i in range(0, len(requests), 8)]  # greedy, in batches of 8 left-padded requests
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    print(f"{len(requests)} answers, {int(data['lengths'].sum()) - len(requests):,} positions")

    embed = token_embedding(target.model)
    embed_weight = mx.array(embed.weight).astype(mx.float32)
    for folder in args.head:
        head = load_drafter(folder)
        top1 = heldout_accuracy(head, embed_weight, data, steps=3)["top1_per_step"]
        beams = {f"{w}x{n}": round(simulated_acceptance(head, embed, data, w, n, positions=1024), 3)
                 for w, n in BEAMS}
        print(f"head {folder}: top-1 per step {top1}, tokens per call {beams}")
    output, sequences = output_projection(target.model), chat_sequences(requests, data)
    for folder in args.draft:
        model = load_mlx_lm(folder)[0]
        model.set_dtype(mx.float32)
        print(f"draft {folder}: "
              f"{evaluate_draft(model, output, sequences, data['hidden'], set(range(len(requests))))}")


if __name__ == "__main__":
    main()
