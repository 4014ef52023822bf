"""What one target forward costs on this machine, as a function of how many tokens it verifies.

Speculation pays only where verifying n tokens at once costs less than n one-token steps, and how
much less depends on the chip (a memory-bound GPU verifies 8 tokens almost for free; this 2-core
CPU pays ~1.5x a one-token step), the BLAS, the model and its dtype. So it is measured, once per
(weights, backend, BLAS, mlx version), kept on disk, and read by the draft-size chooser
(drafters/draft_length.py) in place of constants, and by `auto` to time the steps it scores in
the shadow (drafters/auto.py).

Measured through the same Target.verify and acceptance the engine uses, up to the host
holding the target's tokens, as the engine's verify time is: `context` tokens are cached, then a
chain of each size in SIZES is verified in `repeats` rounds over all sizes after a warm-up round
(the fastest kept), rewinding the cache after each. The machine's other work only ever slows a
forward, so each size's fastest round is its own time: with the median of SmolLM2's three rounds,
a busy spell during the one-token timings (another process, at the bench's start) made a one-token
step 89-119 ms where the run's steps took 71 and 65, and every larger size as cheap as it
(2-16 tokens 1.00-1.06x, against 1.2-1.7x), so every draft looked free; a size whose every round
was slowed now only looks dearer, and is drafted less (but for the one-token step, the unit: a
machine busy through all of its rounds still makes every size look cheaper).
Every size is timed, not a few to interpolate between: the time is not smooth in the token
count. On this project's 2-core CPU (OpenBLAS) a 16-token verify costs what an 8-token one does
and a 12-token one 1.45x that (SmolLM2: 8 tokens 75 ms, 12 110 ms, 16 76 ms; 28 165 ms, 32 131
ms), so a model timed at powers of two only saw the cheap sizes and predicted the 10-13 token
verifies the choosers sent 13-35% too low. Every round
caches one token more than the last, so no (tokens, cached length) shape is timed twice, as in
decoding, where the cache grows every step: a backend that builds work per shape pays it in every
step (mlx's CUDA build makes a cuDNN attention graph per query and key length: on an H200 a
multi-token verify measured 40-150 ms in the bench against 4.8 ms at the repeated shape of the
earlier model, a 2.1 ms one-token step).
Where the target verifies trees, a two-branch tree is timed at each of EXTRA_SIZES that can branch
(3 nodes and up): a branching tree runs with an explicit mask and per-node positions instead of the
causal fast path. Each chain of EXTRA_SIZES is also timed with sampled acceptance (temperature 1,
the engine's per-position draws): with MLX's ops (on a GPU) every row of a sampled chain becomes a
probability distribution, while a branching tree's walk, and on a CPU every walk
(sampling.HostRows), converts only the rows it visits (`row_seconds`). What a tree or sampling
adds over the chain of the same size is smooth in the size (a mask, a softmax per row), so it is
interpolated between EXTRA_SIZES and added to every size's chain. `relative(n)` is the
interpolated time of an n-token verify over a one-token step; beyond the largest size it
extrapolates the last segment.

The time also grows with the cached length, a multi-token verify's far faster than a one-token
step's (its attention reads every cached token for every verified one): on this CPU
SmolLM2's 8-token verify costs 1.59x a one-token step at 128 cached tokens, 1.94x at 512 and
2.03x at 1024, a 22-token one 2.42x, 3.01x and 3.75x (the embedded target: 8 tokens 1.47x,
1.60x, 1.89x). Priced at 128 alone, drafts cost 18-25% more than their price at 512 cached
tokens and 22-37% more at 1024. So each chain of EXTRA_SIZES is timed again at LONG_CONTEXT
cached tokens (less where the target's context is shorter), and what one more cached token adds
(`per_cached`, never negative: a size's two times differ by its attention alone, the matrix
products being the same) is interpolated between them; `cached=` prices a verify at that cached
length, linearly beyond the longer one, and as measured below `context` (the attention's share
is small there, and a line drawn down from two noisy points could reach zero).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .paths import cache_root

SIZES = tuple(range(1, 34))  # every verify up to a 32-node tree and its root
EXTRA_SIZES = (1, 2, 4, 8, 16, 32)  # where trees and sampled acceptance are timed too
CONTEXT = 128
LONG_CONTEXT = 1024  # the second cached length (per_cached), where the target allows it
MIN_GAP = 256  # the least span between the two lengths (cost_model)
VERSION = 10  # bump when what is measured changes, so old files on disk are not read


@dataclass(frozen=True)
class CostModel:
    sizes: tuple            # tokens per verify forward, ascending, starting at 1
    seconds: tuple          # seconds of one such forward (the fastest of its rounds)
    context: int            # tokens cached while measuring
    tree_seconds: tuple = ()  # the same sizes verified as branching trees; () if not measured
    sampled_seconds: tuple = ()  # the chains with sampled acceptance; () if not measured
    long_context: int = 0   # the second cached length timed (0: none)
    per_cached: tuple = ()  # per size, seconds one more cached token adds; () if not measured

    def step_seconds(self, tokens: float, tree: bool = False,
                     cached: Optional[float] = None) -> float:
        """Seconds of a verify forward of `tokens` tokens, as a chain or a branching tree, with
        `cached` tokens in the cache (None: as measured, `context`)."""
        return (self._interpolate(tokens, self.tree_seconds if tree and self.tree_seconds
                                  else self.seconds) + self._longer(tokens, cached))

    def sampled_step_seconds(self, tokens: float, tree: bool = False,
                             visited: float = 1.0, cached: Optional[float] = None) -> float:
        """Seconds of a verify step when sampling: a chain as timed with sampled acceptance
        (all its rows made distributions with MLX's ops; on a CPU the rows its walk visited);
        a branching tree's only the `visited` rows of its acceptance walk."""
        if tree or not self.sampled_seconds:
            return self.step_seconds(tokens, tree, cached) + self.row_seconds * (
                visited if tree else tokens)
        return self._interpolate(tokens, self.sampled_seconds) + self._longer(tokens, cached)

    def verify_seconds(self, tokens: float, tree: bool, sampled: bool,
                       visited: float = 1.0, cached: Optional[float] = None) -> float:
        """Seconds of a verify step, greedy (step_seconds) or sampled (sampled_step_seconds)."""
        return (self.sampled_step_seconds(tokens, tree, visited, cached) if sampled
                else self.step_seconds(tokens, tree, cached))

    def _longer(self, tokens: float, cached: Optional[float]) -> float:
        """What `cached` tokens in the cache add to the time measured at `context` for a verify
        of `tokens` tokens (nothing at or below `context`)."""
        if cached is None or not self.per_cached or cached <= self.context:
            return 0.0
        return self._interpolate(tokens, self.per_cached) * (cached - self.context)

    @property
    def row_seconds(self) -> float:
        """What sampling adds per row made a distribution (a one-token step's difference)."""
        return max(0.0, self.sampled_seconds[0] - self.seconds[0]) if self.sampled_seconds else 0.0

    def _interpolate(self, tokens: float, seconds: tuple) -> float:
        """np.interp's value (its formula), beyond the last size the last segment's: in plain
        Python, since auto and the back-off ask several times a step and np.interp converts
        the tuples to arrays on every call."""
        sizes = self.sizes
        if tokens <= sizes[0] or len(sizes) == 1:
            return float(seconds[0])
        if tokens > sizes[-1]:
            slope = (seconds[-1] - seconds[-2]) / (sizes[-1] - sizes[-2])
            return float(seconds[-1] + slope * (tokens - sizes[-1]))
        j = bisect.bisect_right(sizes, tokens) - 1
        if j == len(sizes) - 1:
            return float(seconds[-1])
        slope = (seconds[j + 1] - seconds[j]) / (sizes[j + 1] - sizes[j])
        return float(slope * (tokens - sizes[j]) + seconds[j])

    def relative(self, tokens: float, tree: bool = False, sampled: bool = False,
                 cached: Optional[float] = None) -> float:
        """Cost of verifying `tokens` tokens in units of a one-token step (never below 1).
        `sampled`: of a sampling step over a sampling one-token step (sampled_step_seconds; a
        branching tree's walk visiting one row): the draft-size choosers of a sampling regime
        price their sizes so, since a sampled chain's verify costs more than a greedy one's
        (SmolLM2, 2 tokens: 1.19-1.31x a one-token step sampled, 1.04-1.22x greedy, in the
        same measurements; the bench's sampled 2-token steps, 1.20-1.23x). `cached`: with that
        many tokens cached (both steps; None: as measured)."""
        if not sampled:
            return max(1.0, self.step_seconds(tokens, tree, cached)
                       / self.step_seconds(1, cached=cached))
        return max(1.0, self.sampled_step_seconds(tokens, tree, cached=cached)
                   / self.sampled_step_seconds(1, cached=cached))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CostModel":
        return cls(tuple(data["sizes"]), tuple(data["seconds"]), int(data["context"]),
                   tuple(data.get("tree_seconds", ())), tuple(data.get("sampled_seconds", ())),
                   int(data.get("long_context", 0)), tuple(data.get("per_cached", ())))


def measure(module, context: int = CONTEXT, sizes=SIZES, repeats: int = 3,
            budget_s: float = 3.0, max_repeats: int = 15,
            long_context: int = LONG_CONTEXT) -> CostModel:
    """Time the target's verify forward for each chain size (see the module docstring): at least
    `repeats` rounds, more (up to max_repeats) while the rounds so far took under budget_s, so a
    small model's milliseconds get more samples for the same wait. Then, where `long_context`
    is above what is cached by then, the chains of EXTRA_SIZES at about that many cached tokens,
    in rounds by the same rule (0: not)."""
    import mlx.core as mx

    from .accept import accept
    from .sampling import SamplingParams
    from .target import Target
    from .tree import Tree

    target = Target(module)
    vocab = 32  # ids every vocabulary has
    prompt = [(7 * i + 3) % vocab for i in range(context)]
    target.prefill(prompt)

    greedy, sampled = SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)
    key = mx.random.key(0)

    def timed(tree: Tree, sampling: SamplingParams) -> float:
        if target.kv.pending:
            target.prefill([])  # recurrent layers replay after a rewind (kv.py): not timed
        cached = target.offset
        start = time.perf_counter()
        out = target.verify(tree)
        # the host waits for the target's tokens, as in a step
        accept(tree, out.logits, sampling, key, seed=0, root_position=cached - 1)
        seconds = time.perf_counter() - start
        target.kv.rewind(cached)
        return seconds

    # per kind ("chain", "tree", "sampled"), per size: the shape timed (None where a size is not
    # one of EXTRA_SIZES, cannot branch, or the target verifies no trees)
    shapes = {"chain": [], "tree": [], "sampled": []}
    for n in sizes:
        chain = [(11 * j + 5) % vocab for j in range(n)]
        extra = n in EXTRA_SIZES
        branches = None
        if extra and target.supports_trees:
            # root, then two branches (n // 2 and the rest): the explicit-mask path of any tree
            a = n // 2
            branches = Tree.from_branches(chain[0], [chain[1:1 + a],
                                                     [(c + 1) % vocab for c in chain[1:n - a]]])
        shapes["chain"].append(Tree.from_chain(chain[0], chain[1:]))
        shapes["tree"].append(None if branches is None or branches.is_chain else branches)
        shapes["sampled"].append(shapes["chain"][-1] if extra else None)

    def fastest_rounds(kinds: dict, salt: int) -> dict:
        """Per kind of `kinds` ({kind: (its shape per size, the sampling to accept it with)}),
        per size, the fastest of its rounds (None where no shape): at least `repeats` rounds
        over every shape, more (up to max_repeats) while under budget_s, the first one a
        warm-up (a size timed in one burst right after the prefill would carry the machine's
        warm-up and drift into that size alone: measured, 1 token 16.3 ms against 13.4 in the
        bench that followed, making 2-8 tokens look free); each round caches one token more
        (`salt` picks it), so the next round's shapes are all new."""
        times = {kind: [[] for _ in sizes] for kind in kinds}
        started, round_ = time.perf_counter(), 0
        while round_ <= repeats or (round_ <= max_repeats
                                    and time.perf_counter() - started < budget_s):
            for i in range(len(sizes)):
                for kind, (kind_shapes, sampling) in kinds.items():
                    if kind_shapes[i] is not None:
                        seconds = timed(kind_shapes[i], sampling)
                        if round_:
                            times[kind][i].append(seconds)
            target.prefill([(5 * round_ + salt) % vocab])
            round_ += 1
        return {kind: [float(np.min(t)) if t else None for t in kept]
                for kind, kept in times.items()}

    fastest = fastest_rounds({"chain": (shapes["chain"], greedy), "tree": (shapes["tree"], greedy),
                              "sampled": (shapes["sampled"], sampled)}, salt=1)
    long = None
    if long_context > target.offset:  # the chains of EXTRA_SIZES again, at the longer length (two
        # measurements of SmolLM2 with three rounds there put its one-token step's increase at
        # 1024 cached tokens at 16 and 40 ms: the rounds follow the same budget)
        target.prefill([(3 * i + 2) % vocab for i in range(long_context - target.offset)])
        long = fastest_rounds({"long": (shapes["sampled"], greedy)}, salt=2)["long"]
    target.reset()
    return from_times(sizes, fastest["chain"], fastest["tree"] if target.supports_trees else None,
                      fastest["sampled"], context, long, long_context if long else 0)


def from_times(sizes, chain: list, tree: Optional[list], sampled: list,
               context: int, long: Optional[list] = None, long_context: int = 0) -> CostModel:
    """The model from the seconds per size: `chain` at every size, `tree` and `sampled`
    where timed (None elsewhere; tree None altogether where the target verifies no trees);
    `long`: the chains at `long_context` cached tokens where timed (None elsewhere, or
    altogether where not measured)."""
    # no verify costs less than a one-token step (a noisy 2 tokens at 0.98x of 1 would make
    # drafting look cheaper than not drafting); a larger size may cost less than a smaller one
    seconds = np.maximum(chain, chain[0])

    def with_extra(kind: list) -> tuple:
        """Each size's chain plus what `kind` added over the chain where it was timed (0 where a
        size of EXTRA_SIZES could not branch), interpolated in between, never negative."""
        points = [(n, max(0.0, t - c) if t is not None else 0.0)
                  for n, t, c in zip(sizes, kind, seconds) if n in EXTRA_SIZES]
        if not points:
            return ()
        extra = np.interp(sizes, [n for n, _ in points], [e for _, e in points])
        return tuple(float(s) for s in seconds + extra)

    per_cached = ()
    if long is not None and long_context > context:
        # what one more cached token adds, per size where timed (from the raw chain times: the
        # matrix products, whatever their quirks at a size, are the same at both lengths),
        # interpolated in between
        points = [(n, max(0.0, (t - c) / (long_context - context)))
                  for n, t, c in zip(sizes, long, chain) if t is not None]
        if points:
            per_cached = tuple(float(x) for x in np.interp(sizes, [n for n, _ in points],
                                                           [x for _, x in points]))
    return CostModel(tuple(sizes), tuple(float(s) for s in seconds), context,
                     with_extra(tree) if tree is not None else (), with_extra(sampled),
                     long_context if per_cached else 0, per_cached)


def machine_file(model, folder: Path, *more, weights: Optional[str] = None) -> Path:
    """A file in `folder` for what was measured of this target on this machine (its weights,
    mlx, the device, the BLAS), and of `more` (JSON-able) where that matters too. `weights`: the
    target's loading.weights_fingerprint where the caller has it (it reads a MiB of each
    weights file)."""
    import mlx.core as mx

    from . import blas
    from .loading import weights_fingerprint

    key = json.dumps([VERSION, weights or weights_fingerprint(model.path), mx.__version__,
                      str(mx.default_device()), blas.describe(), *more])
    return Path(folder) / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def _cache_file(model) -> Path:
    return machine_file(model, cache_root() / "cost")


def cost_model(model, refresh: bool = False) -> CostModel:
    """The cost model of a loaded SpecModel: from disk when this machine measured it before,
    else measured now (about 20 forwards) and saved."""
    file = _cache_file(model)
    if file.exists() and not refresh:
        try:
            return CostModel.from_dict(json.loads(file.read_text()))
        except (ValueError, KeyError, TypeError):
            pass  # a damaged file is measured again
    limit = model.context_length  # (a target with a shorter one is timed within it: the long
    # rounds add a token each, up to measure's max_repeats + 1, beside a chain of SIZES[-1]; and
    # a second length less than MIN_GAP beyond the first would divide noise by a short span)
    long = LONG_CONTEXT if limit is None else min(LONG_CONTEXT, limit - SIZES[-1] - 16 - 8)
    measured = measure(model.model, long_context=long if long >= CONTEXT + MIN_GAP else 0)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(measured.to_dict()))
        tmp.replace(file)
    except OSError:
        pass  # a read-only cache only costs a measurement per process
    return measured


def describe(cost: CostModel, sizes=(2, 4, 8, 12, 16), tree_sizes=(8, 32)) -> str:
    """One line: the one-token step time and the relative cost of larger verifies."""
    parts = ", ".join(f"{n}: {cost.relative(n):.2f}x" for n in sizes)
    trees = ", ".join(f"{n}: {cost.relative(n, tree=True):.2f}x" for n in tree_sizes
                      if cost.tree_seconds)
    sampled = ""
    if cost.sampled_seconds:
        sampled = (f" (sampled {cost.sampled_seconds[0] * 1000:.1f}, "
                   f"8: {cost.sampled_step_seconds(8) * 1000:.1f})")
    longer = ""
    if cost.per_cached:
        longer = f"; {cost.long_context} cached: " + ", ".join(
            f"{n}: {cost.relative(n, cached=cost.long_context):.2f}x" for n in (2, 8, 32))
    return (f"1 token {cost.seconds[0] * 1000:.1f} ms{sampled}; {parts}"
            + (f"; trees {trees}" if trees else "") + longer)

