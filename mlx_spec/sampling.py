"""Sampling settings and the target distribution they define.

The same processed distribution is used to sample from the target and to accept or reject drafts,
so temperature / top-k / top-p / min-p change what "the target's distribution" means consistently.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .errors import MlxSpecError
from .loading import compute_on_cpu

HOST_ROWS = compute_on_cpu()  # draws and distributions over a vocabulary are computed on the host
# (HostRows) where MLX computes on the CPU; on a GPU with MLX's ops (not measured here: no GPU)


def rows_on_host() -> bool:
    """Whether draws and distributions over a vocabulary are computed on the host (HostRows)."""
    return HOST_ROWS


def is_whole(value) -> bool:
    """A whole number (Python's, numpy's), not a bool: what counts, sizes and seeds take."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number (Python's, numpy's; whole ones too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    def __post_init__(self):
        for name in ("temperature", "top_p", "top_k", "min_p"):
            value = getattr(self, name)
            whole = name == "top_k"
            if not (is_whole(value) if whole else is_number(value)):
                raise MlxSpecError(f"{name} must be a {'whole ' if whole else ''}number, "
                                   f"got {value!r}")
        if not 0 <= self.temperature < math.inf:  # (NaN too: no distribution to sample)
            raise MlxSpecError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise MlxSpecError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise MlxSpecError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.min_p < 1:
            raise MlxSpecError(f"min_p must be in [0, 1), got {self.min_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def regime(self) -> str:
        """The name of the distribution these settings sample from, what a drafter's learned state
        (draft sizes, stop rules, auto's rates) is kept under: a draft's acceptance depends on
        each setting (the temperature, and a filter that drops the tail the drafts reach into), so
        what one regime taught must not size another's drafts. "greedy" ignores the filters, as
        greedy decoding does; the others name the temperature and each filter that is set, e.g.
        "T=0.7" or "T=1 top_p=0.9 min_p=0.05"."""
        if self.greedy:
            return "greedy"
        parts = [f"T={self.temperature:g}"]
        if self.top_p < 1.0:
            parts.append(f"top_p={self.top_p:g}")
        if self.top_k:
            parts.append(f"top_k={self.top_k}")
        if self.min_p > 0:
            parts.append(f"min_p={self.min_p:g}")
        return " ".join(parts)

    def filters(self, vocab: int) -> bool:
        """Whether a top-k, top-p or min-p filter that may drop tokens of a `vocab`-token row is
        set (a top_k of 0 or of the whole vocabulary drops none; greedy decoding ignores them)."""
        return self.top_p < 1.0 or self.min_p > 0 or 0 < self.top_k < vocab


SEEDS = 1 << 64  # mx.random.key takes an unsigned 64-bit seed


def check_seed(seed) -> None:
    """Refuse a seed that is not None or a whole number in 0..2**64-1 (sampling raised a bare
    TypeError from mx.random.key; greedy decoding ignored it)."""
    if seed is not None and not (is_whole(seed) and 0 <= seed < SEEDS):
        raise MlxSpecError(f"seed must be a whole number in 0..2**64-1, got {seed!r}")


def log_probs(logits: mx.array, params: SamplingParams) -> mx.array:
    """Row-wise log-probabilities of the processed distribution (temperature, then top-k, top-p,
    min-p filtering; filtered tokens get -inf). For greedy params this is the plain softmax."""
    logits = logits.astype(mx.float32)
    if params.temperature > 0:
        logits = logits / params.temperature
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    if params.greedy:
        return logprobs
    keep = mx.ones(logprobs.shape, dtype=mx.bool_)
    if params.top_k and params.top_k < logprobs.shape[-1]:
        kth = mx.sort(logprobs, axis=-1)[..., -params.top_k][..., None]
        keep = keep & (logprobs >= kth)
    if params.top_p < 1.0:
        order = mx.argsort(-logprobs, axis=-1)
        sorted_probs = mx.take_along_axis(mx.exp(logprobs), order, axis=-1)
        mass_before = mx.cumsum(sorted_probs, axis=-1) - sorted_probs
        keep_sorted = mass_before < params.top_p  # smallest prefix whose mass reaches top_p
        inverse = mx.argsort(order, axis=-1)
        keep = keep & mx.take_along_axis(keep_sorted, inverse, axis=-1)
    if params.min_p > 0:
        threshold = mx.max(logprobs, axis=-1, keepdims=True) + mx.log(mx.array(params.min_p))
        keep = keep & (logprobs >= threshold)
    filtered = mx.where(keep, logprobs, -mx.inf)
    return filtered - mx.logsumexp(filtered, axis=-1, keepdims=True)


def probs(logits: mx.array, params: SamplingParams) -> mx.array:
    """Row-wise probabilities of the processed distribution: exp(log_probs), in one softmax when
    nothing is filtered (on a CPU each pass of exp over a vocabulary row is a measurable cost)."""
    if params.greedy or params.filters(logits.shape[-1]):
        return mx.exp(log_probs(logits, params))
    return mx.softmax(logits.astype(mx.float32) / params.temperature, axis=-1)


def invert_cdf(probs: mx.array, uniforms: mx.array) -> mx.array:
    """The token of each row [..., V] whose CDF interval holds its uniform [...]: an exact draw
    from `probs` with one random number per row (a Gumbel draw needs a log pass per entry)."""
    cdf = mx.cumsum(probs, axis=-1)
    # the first token whose CDF passes u * total (scaled by the total, which rounding moves off 1);
    # a zero-probability token never passes (its CDF equals its predecessor's), and a u that
    # rounds up to the total takes the last token that has probability
    token = (cdf <= uniforms[..., None] * cdf[..., -1:]).sum(axis=-1)
    last = probs.shape[-1] - 1 - mx.argmax(probs[..., ::-1] > 0, axis=-1)
    return mx.minimum(token, last)


class HostRows:
    """The processed distribution of each row of logits [n, V] (the target's after each node
    of a verified tree, a draft model's after each draft), one row at a time on the host, as the
    acceptance walk (or the drafting) reaches it. Where MLX computes on the CPU its exp
    takes ~20 ns an entry, one at a time, where numpy's takes well under 1; and rows past the
    walk's first miss are never computed; top-k, top-p and min-p filter a visited row with
    numpy too (_kept). Each draw is a function of its row and its uniform alone, as with MLX's
    ops, and every method on a machine draws through the same path, so `pld` and `lookahead`
    still write `ar`'s text at a seed; the two paths may differ at an interval's edge (MLX's CDF
    is float32, this one float64) and at top-p's edge (_kept), so a CPU's and a GPU's sampled
    texts at one seed need not be equal. (What it saves: README, "The target's rows on the
    host".)"""

    def __init__(self, logits: mx.array, params: SamplingParams):
        if logits.dtype == mx.bfloat16:  # (numpy has no bfloat16; float32 holds it exactly)
            logits = logits.astype(mx.float32)
        self.host = np.asarray(logits)  # [n, V]: the step's one sync, no copy (read-only: it
        self.host.flags.writeable = False  # is MLX's own buffer, which the view keeps alive)
        self.params = params
        self._filtered = params.filters(logits.shape[-1])
        self._weights: dict[int, np.ndarray] = {}  # node -> its row's weights, once computed

    def argmax(self, node: int) -> int:
        """The greedy token after `node` (the first of equal maxima, as mx.argmax). A float16
        row is converted first: numpy's float16 argmax took 4x the conversion and a float32
        argmax together."""
        row = self.host[node]
        return int((row if row.dtype == np.float32 else row.astype(np.float32)).argmax())

    def weights(self, node: int) -> np.ndarray:
        """[V] float32: the distribution after `node` up to a factor (0 where a filter drops a
        token): exp((logits - their max) / temperature), as probs() is before normalising."""
        if node not in self._weights:  # (once per node: a draw and its distribution read it)
            z = self.host[node].astype(np.float32)
            z -= z.max()
            if self.params.temperature != 1.0:
                z *= np.float32(1.0 / self.params.temperature)
            keep = _kept(z, self.params) if self._filtered else None
            np.exp(z, out=z)
            if keep is not None:
                z[~keep] = 0.0
            z.flags.writeable = False
            self._weights[node] = z
        return self._weights[node]

    def probs(self, node: int) -> np.ndarray:
        """[V] float64: the distribution after `node`, normalised."""
        weights = self.weights(node).astype(np.float64)
        return weights / weights.sum()

    def draw(self, node: int, uniform: float) -> int:
        """The token after `node` whose CDF interval holds `uniform` (invert_cdf's draw: a
        zero-probability token is never drawn)."""
        weights = self.weights(node)
        cdf = np.cumsum(weights, dtype=np.float64)
        token = int(np.searchsorted(cdf, uniform * cdf[-1], side="right"))
        # (u x total < total for any u < 1: past the end only for a uniform of 1)
        return token if token < len(cdf) else int(np.flatnonzero(weights)[-1])


def _kept(z: np.ndarray, params: SamplingParams) -> np.ndarray:
    """[V] bool: the tokens log_probs' top-k, top-p and min-p filters keep, from one row of
    scaled logits z = (logits - max) / temperature (the log-probabilities up to a constant), each
    filter judged on the whole distribution as there, with numpy's partition where MLX sorts: a
    row of SmolLM2's 49,152 tokens took 9.7 ms with top-p through MLX, 5.1 with top-k, 2.0 with
    min-p. Both paths keep the same tokens up to rounding: a top-k or min-p threshold compares
    float32 values computed two ways (a token within an ulp of it may differ); top-p's edge is
    summed in float64 here (_top_p), in float32 by MLX's cumsum, so a token whose mass before it
    is within that rounding of top_p (~1e-4 over SmolLM2's vocabulary) may be kept on one path
    and not the other, as a draw at an interval's edge may differ."""
    keep = np.ones(z.shape, dtype=bool)
    vocab = z.shape[0]
    if 0 < params.top_k < vocab:
        keep &= z >= np.partition(z, vocab - params.top_k)[vocab - params.top_k]
    if params.min_p > 0:
        keep &= z >= np.float32(math.log(params.min_p))
    if params.top_p < 1.0:
        keep &= _top_p(np.exp(z, dtype=np.float64), params.top_p)
    return keep


def _top_p(weights: np.ndarray, top_p: float) -> np.ndarray:
    """[V] bool: the tokens by falling weight (equal weights by id, as a stable sort orders them)
    while the mass before each is below top_p of the total. The edge is found among the
    heaviest few: a partition of 64, 256, ... tokens, sorted, until their mass reaches top_p."""
    bound = top_p * weights.sum()
    size = min(64, weights.shape[0])
    while True:
        heaviest = np.sort(np.partition(weights, weights.shape[0] - size)[-size:])[::-1]
        before = np.cumsum(heaviest) - heaviest
        if size == weights.shape[0] or before[-1] + heaviest[-1] >= bound:
            break
        size = min(4 * size, weights.shape[0])
    edge = heaviest[np.count_nonzero(before < bound) - 1]  # the lightest weight kept
    keep = weights > edge
    ties = np.flatnonzero(weights == edge)  # in id order: the j-th is kept while the mass
    kept = np.count_nonzero(weights[keep].sum() + np.arange(len(ties)) * edge < bound)  # before
    keep[ties[:kept]] = True  # it is below the bound
    return keep


def choose(logits: mx.array, params: SamplingParams, key) -> mx.array:
    """One token per row: argmax when greedy, else a sample of the processed distribution."""
    if params.greedy:
        return mx.argmax(logits, axis=-1)
    return mx.random.categorical(log_probs(logits, params), axis=-1, key=key)


def position_uniform(seed: int, position: int) -> float:
    """The uniform number behind the target's own draw of the token at `position` (its index in
    prompt + output): a function of the request's seed and the position alone, so a method whose
    drafts are only followed, never mixed into the draw (ar, pld, lookahead, beams), samples
    exactly the tokens `ar` samples with the same seed, whatever it drafted and whatever state it
    carried over from earlier requests."""
    return float(np.random.default_rng([seed, position]).random())


def choose_at_positions(logits: mx.array, params: SamplingParams, seed: int,
                        positions: list[int]) -> mx.array:
    """One sample per row by inverting its CDF at position_uniform(seed, positions[i]): one
    random number per row instead of a Gumbel draw per vocabulary entry (on a CPU, sampling 32
    rows of 4,096 the usual way took 4.7 ms)."""
    uniforms = mx.array([position_uniform(seed, p) for p in positions], dtype=mx.float32)
    return invert_cdf(probs(logits, params), uniforms)
