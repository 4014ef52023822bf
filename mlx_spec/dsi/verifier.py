"""What a DSI worker does with one job: bring its own KV cache to the job's context, verify the
chain and decide acceptance with mlx_spec.accept (greedy or exact sampling).

Jobs arrive as token deltas: `keep` tokens of what the worker verified last stay cached, `tail` is
the rest of the context followed by the chain. A short missing context and the chain run as one
causal forward (the context was speculated by the drafter and verified elsewhere, so this worker
has never seen it); only the chain's rows are used. After the job the cache holds context + chain
(the target's kv.TokenCache says so), which is exactly what the orchestrator mirrors to compute the
next delta.
"""
from __future__ import annotations

from typing import Optional

import mlx.core as mx

from ..accept import accept
from ..kv import PREFILL_CHUNK
from ..sampling import SamplingParams
from ..target import Target
from ..tree import Tree


class ProtocolError(RuntimeError):
    pass


class Verifier:
    def __init__(self, target: Target):
        self.target = target

    def run(self, keep: int, tail: list[int], n_chain: int, sampling: SamplingParams,
            seed: int, draft_probs: Optional[mx.array] = None) -> tuple[list[int], int]:
        """Returns (accepted drafts + the target's token, number of accepted drafts)."""
        cached = self.target.tokens
        if keep > len(cached) or n_chain < 1 or n_chain > len(tail):
            raise ProtocolError(f"job does not fit the cache: keep {keep} of {len(cached)}, "
                                f"tail {len(tail)}, chain {n_chain}")
        self.target.kv.rewind(keep)
        missing, chain = tail[:len(tail) - n_chain], tail[len(tail) - n_chain:]
        if len(missing) > PREFILL_CHUNK:
            self.target.prefill(missing)
            fed = chain
        else:
            fed = missing + chain
        out = self.target.verify(Tree.from_chain(fed[0], fed[1:]))
        logits = out.logits[len(fed) - n_chain:]
        tree = Tree.from_chain(chain[0], chain[1:], draft_probs=draft_probs)
        acceptance = accept(tree, logits, sampling, mx.random.key(seed))
        return [int(t) for t in acceptance.tokens], acceptance.accepted_drafts
