"""Deciding which drafted nodes the target accepts, exactly.

Deterministic drafts (pld, lookahead, beams): draw the target's own next token at every node (argmax
when greedy), then walk from the root following the child whose token equals that draw. Each draw
uses only its node's target distribution, so the walked path is a sample of the target itself.
Given the request's seed, each draw uses the uniform number of the position its token would take
(sampling.position_uniform), so these methods reproduce `ar`'s sampled output exactly.

Sampled chains (draft models at temperature > 0): standard speculative rejection sampling. Node i's
token x was drawn from q; accept it with probability min(1, p(x)/q(x)); at the first rejection draw
from normalize(max(0, p - q)). The output distribution is exactly p, and acceptance is sum min(p, q).

Where MLX computes on the CPU (sampling.rows_on_host), the target's rows are read on the host and
only those the walk visits are computed (sampling.HostRows); a sampled chain is then accepted by
the same walk as a tree of sampled drafts (_accept_sampled_tree, each node having one child).

When sampling, a step's token count is partly the luck of its draws; Acceptance.expected_tokens
is its mean over those draws given the tree and the target's rows (_expected_tokens), which
`auto` reads to rank its model drafters on fewer steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import mlx.core as mx
import numpy as np

from .sampling import (HostRows, SamplingParams, choose, choose_at_positions, position_uniform,
                       probs, rows_on_host)
from .tree import Tree


@dataclass
class Acceptance:
    path: list[int]    # accepted nodes, root first
    tokens: list[int]  # new tokens: accepted drafts, then the target's bonus token
    # the mean of len(tokens) over the step's draws, computed when first asked (expected_tokens)
    expected: Optional[Callable[[], float]] = field(default=None, repr=False, compare=False)

    @property
    def accepted_drafts(self) -> int:
        return len(self.path) - 1

    def expected_tokens(self) -> float:
        """The tokens a step of this tree emits on average over the acceptance's random draws,
        given the target's rows (a conditional mean: the same mean as len(tokens), with the
        draws' part of its variance taken out). At T = 0.7-1.0 on the embedded target it has
        0.48-0.61 of the variance of len(tokens) for `redrafter` and `draft` steps (README,
        "Each step's luck taken out"). Greedy, or a tree of the root alone: len(tokens)."""
        if self.expected is None:
            return float(len(self.tokens))
        value = self.expected()
        self.expected = lambda: value  # (once: the rows it reads may be many)
        return value


def accept(tree: Tree, logits: mx.array, params: SamplingParams, key=None,
           seed: int | None = None, root_position: int | None = None) -> Acceptance:
    """key: this step's random key. seed and root_position (the root token's index in prompt +
    output) switch the target's own draws to per-position uniforms."""
    rows = HostRows(logits, params) if rows_on_host() else None
    acceptance = _accept(tree, logits, params, key, seed, root_position, rows)
    if not params.greedy and len(tree) > 1:
        if rows is not None:
            row = rows.probs  # the target's distribution after a node, [V] float64
        else:  # every row read at once when first asked (not a host sync per node)
            read: list[np.ndarray] = []

            def row(node: int) -> np.ndarray:
                if not read:
                    read.append(np.array(_host(probs(logits, params)), dtype=np.float64))
                return read[0][node]
        acceptance.expected = lambda: _expected_tokens(tree, row)
    return acceptance


def _accept(tree: Tree, logits: mx.array, params: SamplingParams, key, seed, root_position,
            rows: Optional[HostRows]) -> Acceptance:
    if tree.draft_probs is not None and not params.greedy and len(tree) > 1:
        if tree.is_chain and tree.draws is None and rows is None:
            return _accept_sampled_chain(tree, logits, params, key)
        return _accept_sampled_tree(tree, logits, params, key, rows)
    seeded = seed is not None and root_position is not None
    # each node's row draws the token at this position of prompt + output (seeded draws)
    positions = [root_position + depth + 1 for depth in tree.depths] if seeded else None
    if rows is not None:
        if params.greedy:
            return accept_by_walking(tree, rows.argmax)
        if seeded:
            def uniform(node: int) -> float:
                return position_uniform(seed, positions[node])
        else:  # one uniform per node from the step's key
            uniform = np.asarray(mx.random.uniform(shape=(len(tree),), key=key)).__getitem__
        return accept_by_walking(tree, lambda node: rows.draw(node, uniform(node)))
    if params.greedy or not seeded:
        return accept_by_walking(tree, choose(logits, params, key).tolist().__getitem__)
    if tree.is_chain:  # every row may be on the path: draw them all at once
        return accept_by_walking(
            tree, choose_at_positions(logits, params, seed, positions).tolist().__getitem__)

    def draw(node: int) -> int:
        """A branching tree's path is a few of its rows: only the rows the walk visits become
        probabilities (an exp over a vocabulary row each), each the same draw
        that choose_at_positions makes for the whole tree."""
        return choose_at_positions(logits[node:node + 1], params, seed, [positions[node]]).item()
    return accept_by_walking(tree, draw)


def accept_by_walking(tree: Tree, target_token) -> Acceptance:
    """target_token(node): the target's own token after `node` (bench.text_replay: the token of
    a known text at the node's depth)."""
    children = tree.children()
    node, path, tokens = 0, [0], []
    while True:
        wanted = target_token(node)
        match = next((c for c in children[node] if tree.tokens[c] == wanted), None)
        tokens.append(wanted)
        if match is None:
            return Acceptance(path=path, tokens=tokens)
        node = match
        path.append(node)


def _accept_sampled_chain(tree: Tree, logits: mx.array, params: SamplingParams, key) -> Acceptance:
    if not tree.is_chain:
        raise ValueError("rejection sampling here expects a chain of sampled drafts")
    n = len(tree)
    k_accept, k_residual, k_bonus = mx.random.split(key, 3)
    p = probs(logits, params)                             # [n, V]: row i predicts node i + 1
    q = tree.draft_probs[1:]                               # [n - 1, V]: draft dist of node i + 1
    drafted = mx.array(tree.tokens[1:])
    rows = mx.arange(n - 1)
    p_x, q_x = p[rows, drafted], q[rows, drafted]
    accept_prob = mx.minimum(1.0, p_x / mx.maximum(q_x, 1e-20))
    accepted = mx.random.uniform(shape=(n - 1,), key=k_accept) < accept_prob
    residual = mx.maximum(p[:-1] - q, 0.0)
    residual = mx.where(residual.sum(-1, keepdims=True) > 0, residual, p[:-1])
    residual_draw = mx.random.categorical(mx.log(residual), axis=-1, key=k_residual)
    bonus_draw = mx.random.categorical(mx.log(p[-1]), key=k_bonus)
    mx.eval(accepted, residual_draw, bonus_draw)  # the step's one host sync
    accepted, residual_draw, bonus_draw = accepted.tolist(), residual_draw.tolist(), bonus_draw.item()
    path, tokens = [0], []
    for i, ok in enumerate(accepted):
        if not ok:
            tokens.append(residual_draw[i])
            return Acceptance(path=path, tokens=tokens)
        path.append(i + 1)
        tokens.append(tree.tokens[i + 1])
    tokens.append(bonus_draw)
    return Acceptance(path=path, tokens=tokens)


def _accept_sampled_tree(tree: Tree, logits: mx.array, params: SamplingParams, key,
                         rows: Optional[HostRows]) -> Acceptance:
    """Only the target's rows the walk reads become probabilities, one per visited node (a
    16-node tree at T > 0 spent ~9 ms of a CPU step turning all 16 target rows of a 4,096-token
    vocabulary into probabilities; one row ~0.6 ms). The draft rows are read to the host once a
    step (an MLX gather per visited node cost ~0.05 ms each on the CPU).
    `rows`: the target's rows on the host (sampling.rows_on_host), else None."""
    def p(node: int) -> np.ndarray:  # the target's distribution after `node`
        if rows is not None:
            return rows.probs(node)
        return np.array(probs(logits[node:node + 1], params)[0], dtype=np.float64)

    rng = np.random.default_rng(mx.random.randint(0, 1 << 31, key=key).item())
    draws = tree.draws if tree.draws is not None else tree.children()
    q = _host(tree.draft_probs)  # [n, V]: what each node's token was drawn from, read once
    node, path, tokens = 0, [0], []
    while True:
        residual, chosen = p(node), None
        for child in draws[node]:
            x, q_child = tree.tokens[child], q[child].astype(np.float64)
            if rng.random() * q_child[x] < residual[x]:  # probability min(1, r(x) / q(x))
                chosen = child
                break
            residual = _rejected(residual, q_child)
        if chosen is None:
            tokens.append(int(rng.choice(len(residual), p=residual / residual.sum())))
            return Acceptance(path=path, tokens=tokens)
        tokens.append(tree.tokens[chosen])
        path.append(chosen)
        node = chosen


def _host(array: mx.array) -> np.ndarray:
    """`array` on the host as float32 (numpy has no bfloat16)."""
    return np.asarray(array if array.dtype == mx.float32 else array.astype(mx.float32))


def _rejected(residual: np.ndarray, q: np.ndarray) -> np.ndarray:
    """What the target's draw is taken from after a draw from `q` was rejected:
    normalize(max(0, residual - q)); unchanged where that is all zero (residual == q, where no
    draw could have been rejected)."""
    shrunk = np.maximum(residual - q, 0.0)
    total = shrunk.sum()
    return shrunk / total if total > 0 else residual


def _expected_tokens(tree: Tree, row: Callable[[int], np.ndarray]) -> float:
    """E[len(tokens)] over the acceptance's draws, given the tree and row(node), the target's
    distribution after each node ([V] float64). From the leaves up, the tokens emitted once a
    node is reached: E(node) = sum_j P(child j accepted) (1 + E(child j)) + P(none accepted), 1 at
    a leaf (the bonus token). Sampled drafts (tree.draft_probs): the draws below a node are
    tried in order, each accepted with probability min(1, r(x) / q(x)) against the residual r
    the rejections before it left (_accept_sampled_tree's rule). Deterministic drafts: the
    target's own draw follows the (first) child of its token, with probability p(x). Only nodes
    with children read their row."""
    sampled = tree.draft_probs is not None
    draws = tree.draws if sampled and tree.draws is not None else tree.children()
    q = _host(tree.draft_probs) if sampled else None  # [n, V], read once
    emitted = [1.0] * len(tree)
    for node in range(len(tree) - 1, -1, -1):  # (a child's index is above its parent's)
        below = draws[node]
        if not below:
            continue
        residual, none, total = row(node), 1.0, 0.0
        if sampled:
            for i, child in enumerate(below):
                x, q_child = tree.tokens[child], q[child].astype(np.float64)
                # (a draft probability rounded to 0: both rules accept x wherever r(x) > 0)
                accepted = (min(1.0, residual[x] / q_child[x]) if q_child[x] > 0
                            else float(residual[x] > 0))
                total += none * accepted * (1.0 + emitted[child])
                none *= 1.0 - accepted
                if i + 1 < len(below):  # (the residual only matters to a draw after this one)
                    residual = _rejected(residual, q_child)
        else:
            followed = {}  # token -> the child the walk follows on it (accept_by_walking's first)
            for child in below:
                followed.setdefault(tree.tokens[child], child)
            for token, child in followed.items():
                accepted = float(residual[token])
                total += accepted * (1.0 + emitted[child])
                none -= accepted
        emitted[node] = total + max(none, 0.0)
    return emitted[0]
