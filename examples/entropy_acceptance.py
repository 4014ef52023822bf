"""Does a draft model's entropy predict whether the target accepts its token? (AdaEDL's premise)

Along the target's own greedy answers to the bench's prompts, each position's draft distribution
q (teacher-forced on prompt + answer) is set against the target's distribution p there:

- greedy: does q's argmax equal the target's token? Entropy read at temperature 0.5, as `adaedl`
  reads it when greedy (mlx_spec/drafters/stopping.py);
- sampled at T: sum_v min(p_T(v), q_T(v)), the probability a drafted token is accepted.

Printed: acceptance per entropy bin, and the AUC of "low entropy" for "accepted" (0.5: entropy
says nothing; 1: it separates them). An early-stopping rule can only gain where the bins differ.

    python examples/entropy_acceptance.py TARGET DRAFT [--prompts chat] [-n 128] [--temp 0.7]
"""
import argparse

import numpy as np

import mlx_spec
import mlx.core as mx
from mlx_spec.bench import load_prompts
from mlx_spec.drafters.stopping import entropy

BINS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 99.0)


def log_softmax(x: mx.array) -> mx.array:
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted half."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))


def table(name: str, entropies: np.ndarray, accepted: np.ndarray) -> None:
    print(f"\n{name}: {len(accepted)} positions, mean acceptance {accepted.mean():.3f}, "
          f"AUC(low entropy -> accepted) {auc(-entropies, accepted > 0.5):.3f}")
    print("entropy (nats)   positions   acceptance")
    for low, high in zip(BINS, BINS[1:]):
        inside = (entropies >= low) & (entropies < high)
        if inside.any():
            print(f"{low:5.2f} - {high:5.2f}   {inside.sum():9d}   {accepted[inside].mean():10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("draft")
    parser.add_argument("--prompts", default="chat")
    parser.add_argument("-n", "--max-tokens", type=int, default=128)
    parser.add_argument("--temp", type=float, default=0.7)
    args = parser.parse_args()
    target, draft = mlx_spec.load(args.target), mlx_spec.load(args.draft)
    greedy_h, matched, sampled_h, sampled_acc = [], [], [], []
    for prompt in load_prompts(args.prompts):
        ids = mlx_spec.api.encode_prompt(target, prompt["prompt"])
        answer = mlx_spec.generate(target, ids, method="pld", max_tokens=args.max_tokens).token_ids
        full = mx.array([ids + answer])
        start = len(ids) - 1  # the position whose logits chose answer[0]
        p = target.model(full)[0, start:-1].astype(mx.float32)      # [A, V]
        q = draft.model(full)[0, start:-1].astype(mx.float32)[:, :p.shape[-1]]
        tokens = mx.array(answer)
        greedy_h.append(np.array(entropy(log_softmax(q / 0.5))))
        matched.append(np.array(mx.argmax(q, axis=-1) == tokens))
        q_t, p_t = mx.softmax(q / args.temp, axis=-1), mx.softmax(p / args.temp, axis=-1)
        sampled_h.append(np.array(entropy(log_softmax(q / args.temp))))
        sampled_acc.append(np.array(mx.minimum(p_t, q_t).sum(axis=-1)))
    table("greedy: draft argmax = target token (entropy at temperature 0.5)",
          np.concatenate(greedy_h), np.concatenate(matched).astype(float))
    table(f"sampled at T={args.temp}: sum min(p, q)", np.concatenate(sampled_h),
          np.concatenate(sampled_acc))


if __name__ == "__main__":
    main()
