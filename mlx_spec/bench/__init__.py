"""`mlxspec bench`: methods side by side in one process, on the same prompts, interleaved.

On the CPU every method decodes each prompt at once, step by step in turn (`interleave="steps"`:
method A's step, then B's, ..., each timed alone), so the host's drift (the one-token step of a
135M model moved 60-80 ms within seconds on a shared 2-core machine) hits every method in the same
second rather than in its own prompt's; measured per prompt, whole-prompt rotation left plain-step
methods +-10% apart in one run. The engine normally dispatches a method's next verification before
handing its tokens over, and mx.async_eval returns at once on the CPU too, so the command turns
that off for step interleaving (engine.Decoder.dispatch_ahead): otherwise one method's forward ran
inside the next method's timed step (`ar` measured 3% slower right after a method verifying three
tokens a step than the same `ar` elsewhere in the run). On a GPU methods instead run whole prompts
in a rotating order (`interleave="prompts"`), each with its usual overlap.
Before the timed runs, one warm-up run per method on the first prompt, whose learned state
(lookahead's trie, the choosers) is then dropped as at a new round. `repeat` runs the prompt set
several rounds and reports each method's speedup per round beside the pooled one: a difference
smaller than the rounds' spread is not a difference. Each round starts with drafters that learned
nothing (loaded models are kept): greedy rounds write the same answers, which lookahead's trie of
past outputs would otherwise retrieve whole. Every prompt of every round samples with a seed of
its own, `seed` + its index in the run (round r's prompt j: seed + r x prompts + j, modulo 2**64),
the same for every method on it (runs meant as independent draws take seeds at least rounds x
prompts apart). With one seed per round, a method that draws from the request's key (`draft`,
`adaedl`, sampled `redrafter`) drew the same first uniform on every prompt of a round, and where
that was small each prompt that made end-of-sequence likely began with it (the embedded target at
T = 1.0, `draft`'s second round: 8 of 12 prompts of 0 tokens): a round's prompts were not the
independent draws the intervals take them to be. `auto` keeps its rates in this process only
(not in the cache folder, drafters/shared.py), so a run does not depend on earlier ones.
`fresh` starts every prompt with drafters that learned nothing, as one `mlxspec generate` per
prompt would; `auto` then reads the rates it saved at the end of the earlier prompts, in a folder
of the run's own, as such a process reads the cache folder. Speed is decode tokens/s (prefill
excluded, it is the same for every method); "matches_ar" compares greedy token ids with the `ar`
run of the same prompt.
The report keeps every method's steps per prompt ("steps": tokens and seconds of each step, timed
alone), which replay.py reads to replay `auto`'s choice among its model drafters many times over,
and counts the machine's stalls in them (steps far over their prompt's median, see `stalls`), with
each method's speed again without them ("tokens_per_s_unstalled", "speedup_unstalled"), and
how far each speedup could move on other prompts and rounds like the run's ("intervals":
speedup_intervals).
The package also holds the other measurements users run: prompts.py (built-in prompt sets),
memory.py (peak RSS), baselines/ (mlx-lm's own speculative decoding as a method) and exactness.py
(`mlxspec exactness`: sampled steps against the target's exact distributions).
"""
from __future__ import annotations

import json
import platform
import re
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median_high
from typing import Callable, Optional

from . import memory
from ..cost import CostModel
from ..errors import MlxSpecError
from ..sampling import SEEDS
from ..stats import GenerationStats

REFERENCE = "ar"
CONTROL = "ar (control)"  # plain decoding once more, under a label of its own (run_bench's control)


@dataclass
class MethodSpec:
    """`name` or `name[key=value,...]`: a method with options, shown under its full spec."""
    label: str
    name: str
    options: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        match = re.fullmatch(r"\s*([\w.-]+)\s*(?:\[(.*)\])?\s*", text)
        if not match:
            raise MlxSpecError(f"bad method spec {text!r}; use NAME or NAME[key=value,...]")
        name, body = match.group(1), match.group(2)
        options = {}
        for pair in filter(None, (p.strip() for p in (body or "").split(","))):
            if "=" not in pair:
                raise MlxSpecError(f"bad option {pair!r} in {text!r}; use key=value")
            key, value = pair.split("=", 1)
            options[key.strip().replace("-", "_")] = _parse_scalar(value.strip())
        return cls(label=text.strip(), name=name, options=options)


def _parse_scalar(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def split_method_list(text: str) -> list[str]:
    """Split on commas that are not inside [...]."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def load_prompts(path: Optional[str]) -> list[dict]:
    """FastChat / Spec-Bench question.jsonl ({"question_id","category","turns"}: the first turn is
    used) or plain text, one prompt per line; None gives the built-in story prompts, "chat" and
    "chat2" the two sets of built-in chat requests (prompts.CHAT_SETS)."""
    from .prompts import CHAT_SETS, builtin_prompts, chat_prompts
    if path is None:
        return builtin_prompts()
    if path in CHAT_SETS and not Path(path).exists():
        return chat_prompts(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MlxSpecError(f"cannot read prompts file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
                turns = record["turns"]
                prompt = turns[0] if isinstance(turns, list) else str(turns)
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                raise MlxSpecError(f"{path}:{number}: expected a JSON object with \"turns\"") from None
            prompts.append({"id": str(record.get("question_id", number)),
                            "category": str(record.get("category", "default")), "prompt": prompt})
        else:
            prompts.append({"id": str(number), "category": "default", "prompt": line})
    if not prompts:
        raise MlxSpecError(f"no prompts in {path}")
    return prompts


@dataclass
class Run:
    method: str
    prompt_id: str
    category: str
    token_ids: list[int]
    stats: GenerationStats
    round: int = 0
    steps: list = field(default_factory=list)  # (tokens, seconds) of each decoding step
    parts: list = field(default_factory=list)  # (draft s, verify s, other s, nodes verified,
    # as a branching tree?) of each step: where its seconds went, what the cost model prices


STALL = 4.0  # without a cost model: a step over this many times its prompt's median step
STALL_STEPS = 1.0  # with one: a step over its priced time by more than this many one-token steps


def step_prices(run: Run, cost: Optional[CostModel], sampled: bool = False) -> Optional[list]:
    """Per step of `run`, (the model's price of its verify, of a one-token step), both at the
    length cached before it (the prompt's, less its last token, which the first step verifies,
    and the tokens emitted since); `sampled`: as the bench prices a sampled verify, the rows its
    tokens visited. None without a cost model, or where the steps are not one verify each
    (`dsi`: a step commits several jobs' tokens)."""
    if (cost is None or not run.steps or len(run.parts) != len(run.steps)
            or run.stats.target_calls != len(run.steps)):
        return None
    cached, prices = run.stats.prompt_tokens - 1, []
    for (tokens, _), (*_, nodes, tree) in zip(run.steps, run.parts):
        prices.append((cost.verify_seconds(nodes, tree, sampled, visited=tokens, cached=cached),
                       cost.verify_seconds(1, False, sampled, cached=cached)))
        cached += tokens
    return prices


def stalls(steps: list, parts: list = (), prices: Optional[list] = None) -> tuple[int, float]:
    """(how many, seconds beyond the step's due) of the steps of one prompt where the machine
    stalled: not the method's work. This task's 2-core VM stalls ~100 ms at a time once it has
    been busy for about a minute (a loop of equal 12 ms matrix products: no stall in its first
    25 s, then 58 in 120 s, all 112-117 ms); a stall falls on whichever method is running, by
    chance, and in one four-round run gave `auto` 2.9 s and `redrafter` 2.1 s of their 37 and
    35 s: a third of the 5% between them.

    With each step's `parts` (Run.parts) and `prices` (step_prices: the target's cost model at
    the step's cached length), a step is due its own drafting, the model's price for what it
    verified, scaled as the prompt's verifies ran, and the prompt's median other work; a stall
    is a step over its due by more than STALL_STEPS one-token steps
    (a stall within the drafting is taken for drafting: a draft model's varies with its depth).
    Measured (SmolLM2 and the embedded target at T = 0.7, every method, 18,000 steps): the
    methods' own steps stay within one such step of their due, the stalls are 1.2-1.6 of them
    on SmolLM2 (a 68 ms step) and 7-9 on the embedded target (12 ms). Without: a step over
    STALL times the prompt's median, which misses every stall of a step over ~30 ms (a
    32-node tree costs 3.5x a plain step: no lower multiple tells the two apart). Under 8
    steps: no median."""
    if len(steps) < 8:
        return 0, 0.0
    if prices is not None and len(parts) == len(steps) == len(prices):
        scale = median_high([part[1] / p for part, (p, _) in zip(parts, prices)])  # verify / price
        others = median_high([part[2] for part in parts])
        over = [(s - part[0] - others - scale * p, scale * plain)  # (plain: a one-token
                for (_, s), part, (p, plain) in zip(steps, parts, prices)]  # step, scaled)
        over = [x for x, step in over if x > STALL_STEPS * step]
    else:
        median = median_high([s for _, s in steps])
        over = [s - median for _, s in steps if s > STALL * median]
    return len(over), sum(over)


def _aggregate(runs: list[Run], cost: Optional[CostModel] = None, sampled: bool = False) -> dict:
    tokens = sum(r.stats.generated_tokens for r in runs)
    decode_s = sum(r.stats.decode_s for r in runs)
    calls = sum(r.stats.target_calls for r in runs)
    per_call = [n for r in runs for n in r.stats.accepted_per_call]
    prices = [step_prices(r, cost, sampled) for r in runs]
    stalled = [stalls(r.steps, r.parts, p) for r, p in zip(runs, prices)]
    stall_s = sum(s for _, s in stalled)
    priced = {}
    if runs and all(p is not None for p in prices):
        # the model's price of every verify at its cached length (add_verify_prediction)
        priced["predicted_verify_s"] = sum(p for run_prices in prices for p, _ in run_prices)
    return {**priced,
        "tokens_per_s": tokens / decode_s if decode_s else 0.0,
        # the machine's stalls (see stalls) and the speed without them: the stalled steps at
        # their due
        "stall_steps": sum(n for n, _ in stalled),  # ("stall_s": their seconds over their due)
        "stall_s": stall_s,
        "tokens_per_s_unstalled": tokens / (decode_s - stall_s) if decode_s > stall_s else 0.0,
        "mean_accepted": sum(per_call) / max(1, calls),
        "target_calls": calls,
        "generated_tokens": tokens,
        "decode_s": decode_s,
        "time_split_s": {k: sum(getattr(r.stats, k + "_s") for r in runs)
                         for k in ("draft", "verify", "other")},
        "acceptance_rate": (sum(r.stats.accepted_drafts for r in runs)
                            / max(1, sum(r.stats.drafted_tokens for r in runs))),
        "replayed_tokens": sum(r.stats.replayed_tokens for r in runs),
        "drafted_tokens": sum(r.stats.drafted_tokens for r in runs),
        "accepted_length_histogram": _histogram(per_call),
        # target calls by what they verified: {"chain" | "tree": {nodes: calls}}
        "verified_calls": {kind: _histogram([n for r in runs for n, branching in
                                             r.stats.verified_per_call if branching == (kind == "tree")])
                           for kind in ("chain", "tree")},
    }


def add_verify_prediction(methods: dict, cost: CostModel, sampled: bool = False) -> None:
    """Per method: the measured verify time per target call beside the cost model's prediction,
    the mean over its calls of the modelled time of what each verified (that many nodes, as a
    chain or a branching tree, at its cached length where the runs' steps were recorded:
    "predicted_verify_s"), both in ms. When sampling, a chain's rows all become
    distributions and a tree's walk converts the rows it visits (the step's tokens, or the
    method's mean tokens per call). Also the measured time without the machine's stalls
    ("verify_ms_per_call_unstalled": their seconds beyond their due taken out of the verify,
    where a step spends most of its time), which is what the model, measured at the run's
    start, can be held to.
    Where `ar` ran, also the prediction anchored to its calls ("..._anchored": scaled by `ar`'s
    measured time without stalls over its predicted time): the machine's speed drifts over a run
    (a SmolLM2 run at 0.7 measured every method's verifies 14-19% above the model, `ar`'s by
    16%), which moves every method alike, while the choosers read only the model's ratios; the
    anchored figure is how well its shape holds."""
    for m in methods.values():
        m.pop("predicted_verify_ms_per_call_anchored", None)  # (from an earlier call)
        calls = max(1, m["target_calls"])
        m["verify_ms_per_call"] = 1000 * m["time_split_s"]["verify"] / calls
        m["verify_ms_per_call_unstalled"] = 1000 * max(
            0.0, m["time_split_s"]["verify"] - m.get("stall_s", 0.0)) / calls
        m["predicted_verify_ms_per_call"] = 1000 * (m["predicted_verify_s"] / calls
                                                    if "predicted_verify_s" in m else sum(
            count * cost.verify_seconds(int(nodes), kind == "tree", sampled,
                                        visited=m["mean_accepted"])
            for kind, sizes in m["verified_calls"].items() for nodes, count in sizes.items())
            / calls)
    plain = methods.get(REFERENCE)
    predicted = plain["predicted_verify_ms_per_call"] if plain else 0.0
    if predicted > 0 and plain["verify_ms_per_call_unstalled"] > 0:
        drift = plain["verify_ms_per_call_unstalled"] / predicted
        for m in methods.values():
            m["predicted_verify_ms_per_call_anchored"] = drift * m["predicted_verify_ms_per_call"]


MISPREDICTED = 1.3  # measured verify time per call over the cost model's, above which to warn


def mispredicted(methods: dict, factor: float = MISPREDICTED) -> dict:
    """{method: (measured, predicted) verify ms per call} where the measurement exceeds the cost
    model's prediction by more than `factor`. The choosers size drafts by that model, so such a
    method drafted into costs it did not see: load that changed during the run, or work the
    backend does per shape (on an H200, cuDNN's attention graph per key length: 37.7 ms measured
    against 4.0 predicted before the model timed new shapes)."""
    return {name: (m["verify_ms_per_call"], m["predicted_verify_ms_per_call"])
            for name, m in methods.items()
            if m.get("predicted_verify_ms_per_call")
            and m["verify_ms_per_call"] > factor * m["predicted_verify_ms_per_call"]}


def _histogram(values: list[int]) -> dict:
    counts = defaultdict(int)
    for v in values:
        counts[v] += 1
    return {str(k): counts[k] for k in sorted(counts)}


def summarize(runs: list[Run], greedy: bool,
              cost: Optional[CostModel] = None) -> tuple[dict, dict]:
    """Per method and per category: speed, speedup over ar, acceptance, equality with ar; with
    the target's cost model, stalls are told by each step's price (see stalls)."""
    reference_ids = {(r.prompt_id, r.round): r.token_ids for r in runs if r.method == REFERENCE}

    def table(selected: list[Run]) -> dict:
        by_method: dict[str, list[Run]] = defaultdict(list)
        for r in selected:
            by_method[r.method].append(r)
        out = {name: _aggregate(rs, cost, not greedy) for name, rs in by_method.items()}
        ref_speed = out.get(REFERENCE, {}).get("tokens_per_s")
        rounds = sorted({r.round for r in selected})
        ref_by_round = ([_aggregate([r for r in by_method[REFERENCE] if r.round == k])["tokens_per_s"]
                         for k in rounds] if len(rounds) > 1 and ref_speed else None)
        for name, rs in by_method.items():
            out[name]["speedup"] = out[name]["tokens_per_s"] / ref_speed if ref_speed else None
            ref_unstalled = out.get(REFERENCE, {}).get("tokens_per_s_unstalled")
            out[name]["speedup_unstalled"] = (out[name]["tokens_per_s_unstalled"] / ref_unstalled
                                              if ref_unstalled else None)
            if ref_by_round:
                out[name]["speedup_by_round"] = [
                    _aggregate([r for r in rs if r.round == k])["tokens_per_s"] / ref
                    for k, ref in zip(rounds, ref_by_round)]
            if greedy and reference_ids:
                mismatched = [r.prompt_id for r in rs
                              if r.token_ids != reference_ids.get((r.prompt_id, r.round))]
                out[name]["matches_ar"] = not mismatched
                out[name]["mismatched_prompts"] = mismatched
            else:
                out[name]["matches_ar"] = None  # sampled outputs legitimately differ
        return out

    by_category: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_category[r.category].append(r)
    return table(runs), {cat: table(rs) for cat, rs in by_category.items()}


def control_band(methods: dict, by_category: dict) -> dict:
    """What the control (plain decoding run a second time beside `ar`, interleaved as any
    method) measured: its speedup over `ar`, 1.0 but for the run's timing noise, overall, per
    category and per round, with the band the categories span (None where `ar` emitted
    nothing), with and without the machine's stalls. A method's figure for a category is told
    from `ar`'s only outside that band. When sampling, the control writes `ar`'s very text (the
    same seed), so the band is the timing noise alone: the other methods' sampled texts differ
    from `ar`'s and move their figures further from run to run."""
    def per_category(key: str) -> dict:  # the control's `key` in each category that has one
        return {cat: table[CONTROL][key] for cat, table in by_category.items()
                if table.get(CONTROL, {}).get(key) is not None}

    def band(values: dict) -> Optional[list]:
        return [min(values.values()), max(values.values())] if values else None

    control = methods[CONTROL]
    speedups, unstalled = per_category("speedup"), per_category("speedup_unstalled")
    return {"label": CONTROL, "speedup": control["speedup"],
            "speedup_unstalled": control.get("speedup_unstalled"),
            "speedup_by_round": control.get("speedup_by_round"),
            "by_category": speedups, "by_category_unstalled": unstalled,
            "band": band(speedups), "band_unstalled": band(unstalled)}


INTERVAL_LEVEL, RESAMPLES = 0.95, 2000  # speedup_intervals


def speedup_intervals(runs: list[Run], resamples: int = RESAMPLES, seed: int = 0) -> Optional[dict]:
    """How far each speedup could move on other prompts and rounds like these: a paired bootstrap
    of the run. A resample draws the prompts with replacement and, within each prompt drawn, its
    rounds with replacement (a prompt's rounds share its difficulty: drawn as units of their own,
    12 prompts x 4 rounds would pass for 48 independent ones), the same draws for every method,
    and computes each method's speedup over `ar` (tokens over decode seconds, pooled as the
    tables pool them) and its ratio to the run's fastest method (not `ar` or the control; picked
    on the same data, so a close second's ratio reads a little low). Returned: per method, the
    INTERVAL_LEVEL interval of each (percentiles of the resamples; with a dozen prompts, if
    anything a little narrow), beside the fastest method's label (None where there is none) and
    the numbers of prompts and of units (prompt, round); None where `ar` is missing or there is
    a single unit. Only the units every method ran (run_bench runs every method on each).

    When sampling, each method writes its own text, and one round's texts are easier or harder
    by chance: on the embedded target at T = 1.0 a method's target calls on one prompt differed
    by ~18% between two rounds, which the control cannot show (it writes `ar`'s very text, so its
    band is timing alone). Greedy, the texts are fixed and the intervals say how much the figures
    rest on these prompts. Pairing keeps what every method shares (a hard prompt is hard for
    all), so the ratio of two methods is known better than either speedup alone."""
    import numpy as np

    labels = list(dict.fromkeys(r.method for r in runs))
    ran: dict = defaultdict(set)  # unit -> the methods that ran it
    for r in runs:
        ran[(r.prompt_id, r.round)].add(r.method)
    units = sorted(u for u, methods in ran.items() if len(methods) == len(labels))
    if REFERENCE not in labels or len(units) < 2:
        return None
    index = {unit: i for i, unit in enumerate(units)}
    tokens = np.zeros((len(labels), len(units)))  # [methods, units]
    seconds = np.zeros((len(labels), len(units)))
    for r in runs:
        unit = index.get((r.prompt_id, r.round))
        if unit is not None:
            row = labels.index(r.method)
            tokens[row, unit] += r.stats.generated_tokens
            seconds[row, unit] += r.stats.decode_s
    prompts = sorted({p for p, _ in units})
    rounds_of = [[index[u] for u in units if u[0] == p] for p in prompts]
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(len(prompts), [1 / len(prompts)] * len(prompts), size=resamples)
    counts = np.zeros((len(units), resamples))  # [units, resamples]: each unit's draws
    for p, rounds in enumerate(rounds_of):  # a prompt drawn k times: k x its rounds drawn from
        counts[rounds] = rng.multinomial(drawn[:, p] * len(rounds),  # them with replacement
                                         [1 / len(rounds)] * len(rounds)).T
    candidates = [i for i, label in enumerate(labels) if label not in (REFERENCE, CONTROL)]
    with np.errstate(divide="ignore", invalid="ignore"):
        speed = (tokens @ counts) / (seconds @ counts)  # [methods, resamples]
        speedup = speed / speed[labels.index(REFERENCE)]
        pooled = tokens.sum(1) / seconds.sum(1)
        fastest = max(candidates, key=lambda i: np.nan_to_num(pooled[i])) if candidates else None
        of_fastest = speed / speed[fastest] if fastest is not None else None
    tail = 100 * (1 - INTERVAL_LEVEL) / 2

    def interval(values) -> Optional[list]:
        if values is None or not np.isfinite(values).all():  # a resample with no time: unknown
            return None
        return [float(v) for v in np.percentile(values, [tail, 100 - tail])]

    return {"level": INTERVAL_LEVEL, "prompts": len(prompts), "units": len(units),
            "resamples": resamples, "fastest": None if fastest is None else labels[fastest],
            "by_method": {label: {"speedup": interval(speedup[i]),
                                  "of_fastest": None if of_fastest is None
                                  else interval(of_fastest[i])}
                          for i, label in enumerate(labels)}}


def machine_info() -> dict:
    import os

    import mlx.core as mx

    from .. import blas
    from importlib.metadata import version

    backend = "metal" if mx.metal.is_available() else (
        "cuda" if hasattr(mx, "cuda") and mx.cuda.is_available() else "cpu")
    return {"platform": platform.platform(terse=True), "processor": platform.machine(),
            "cpu_count": os.cpu_count(), "backend": backend, "blas": blas.describe(),
            "mlx": version("mlx"), "mlx_lm": version("mlx-lm"), "python": platform.python_version()}


class MemoryTrace:
    """Resident memory over a bench run (MB): flat after the warm-up is what long use needs."""

    def __init__(self):
        self.start = memory.rss_mb()
        self.warm: Optional[float] = None
        self.per_prompt: list[Optional[float]] = []

    def after_warmup(self) -> None:
        self.warm = memory.rss_mb()

    def after_prompt(self) -> None:
        self.per_prompt.append(memory.rss_mb())

    def report(self) -> dict:
        end = memory.rss_mb()
        growth = end - self.warm if end is not None and self.warm is not None else None
        return {"rss_start_mb": _mb(self.start), "rss_after_warmup_mb": _mb(self.warm),
                "rss_end_mb": _mb(end), "peak_rss_mb": _mb(memory.peak_rss_mb()),
                "rss_growth_after_warmup_mb": _mb(growth),
                "rss_after_prompt_mb": [_mb(x) for x in self.per_prompt], **memory.mlx_memory_mb()}


def _mb(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 1)


def measure_rollback(model, context: list[int], drafted: int = 4, accepted: int = 2,
                     repeats: int = 7) -> dict:
    """What rejecting drafts costs this model's cache (kv.py), in milliseconds (medians).

    A chain of `drafted` drafts is verified and `accepted` of them kept; the next verification of
    such a chain is timed (`verify_after_rollback_ms`) against the same verification on a cache
    that never held the rejected drafts (`verify_ms`). Their difference is the rollback's cost:
    nothing for attention layers (the offset moves), the accepted tokens fed again as extra rows
    for recurrent layers. `replay_forward_ms` is the alternative it is held against: a forward of
    just the kept tokens."""
    import time

    import mlx.core as mx

    from ..kv import cache_kinds
    from ..target import Target
    from ..tree import Tree

    target = Target(model.model)
    root, chain = context[-1], [(t * 7 + 3) % 50 + 10 for t in range(drafted)]
    kept = [root] + chain[:accepted]
    nxt = Tree.from_chain(chain[accepted] + 1, chain[:drafted])

    def timed(prepare, run) -> float:
        times = []
        for _ in range(repeats):
            prepare()
            t0 = time.perf_counter()
            mx.eval(run())
            times.append(time.perf_counter() - t0)
        return 1000 * sorted(times)[len(times) // 2]

    def rolled_back():
        target.sync(context[:-1])
        mx.eval(target.verify(Tree.from_chain(root, chain)).logits)
        target.commit(list(range(accepted + 1)), drafted + 1)

    def clean():
        target.sync(context[:-1] + kept)

    def before_kept():
        target.sync(context[:-1])

    def replay():
        target.prefill(kept)
        return [c.state for c in target.cache]

    after = timed(rolled_back, lambda: target.verify(nxt).logits)
    replayed = target.replayed
    return {"cache_kinds": cache_kinds(model.model), "trees": target.supports_trees,
            "drafted": drafted, "accepted": accepted,
            "replayed_rows": replayed // repeats,
            "verify_ms": round(timed(clean, lambda: target.verify(nxt).logits), 3),
            "verify_after_rollback_ms": round(after, 3),
            "replay_forward_ms": round(timed(before_kept, replay), 3)}


@contextmanager
def own_state(model, label: str, states: dict):
    """Run a method with drafter state of its own (drafters/shared.py): without it, lookahead's
    trie of past outputs and the learned choosers would carry one method's answers to the next
    on the same prompt (at a fixed seed, methods whose drafts are only followed write the same
    text, so `auto`'s lookahead would retrieve what `lookahead` just wrote). The target's cost
    model, measured once, is shared. Auto's rates stay in the state (run_bench may give it a
    folder)."""
    from ..drafters.shared import Shared, shared

    common = shared(model)
    if label not in states:
        states[label] = Shared(cost=common.cost, auto_folder=None)
    model.extras = states[label]
    try:
        yield
    finally:
        model.extras = common


INTERLEAVINGS = ("steps", "prompts")


def default_interleave() -> str:
    """"steps" on the CPU (one compute stream; see the module text), "prompts" on a GPU, where a
    step's forward is short beside the host's own work and overlapping them is the speed users
    get."""
    import mlx.core as mx

    gpu = mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available())
    return "prompts" if gpu else "steps"


def _step_parts(stats: GenerationStats, spent: list) -> tuple:
    """The step just yielded: (draft, verify, other seconds, nodes it verified, as a branching
    tree?), from `stats` against `spent`, the method's seconds until then (updated)."""
    now = (stats.draft_s, stats.verify_s, stats.other_s)
    seconds = tuple(n - before for n, before in zip(now, spent))
    spent[:] = now
    nodes, tree = stats.verified_per_call[-1] if stats.verified_per_call else (1, False)
    return (*seconds, nodes, tree)


def _drain(stream) -> tuple[list[int], GenerationStats]:
    ids, stats = [], None
    for new, stats in stream:
        ids.extend(new)
    return ids, stats


def run_bench(model, specs: list[MethodSpec], prompts: list[dict], max_tokens: int,
              temperature: float, seed: int, stream_one: Callable, warmup_tokens: int = 16,
              progress: Optional[Callable[[str], None]] = None,
              cost: Optional[CostModel] = None, repeat: int = 1,
              interleave: Optional[str] = None, fresh: bool = False,
              control: bool = False) -> dict:
    """stream_one(model, spec, prompt, max_tokens, temperature, seed) -> an iterator of
    (new token ids, stats so far), one per decoding step, whose stats time each step alone (the
    engine's do: the time the consumer holds a step is not the method's; with step interleaving
    nothing of the method may still run when it hands a step over, see the module text). With
    the target's cost model (cost.py), each method's verify time per call gets its prediction.
    `repeat` rounds of the prompts, `interleave` ("steps" or "prompts", default
    default_interleave()) and `fresh`: module text. `control`: plain decoding runs a second time
    beside `ar`, as one more method (CONTROL), and the report's "control" gives how far it
    landed from `ar` (control_band): the run's own noise, against which to read every other
    method's speedup."""
    import tempfile
    from contextlib import nullcontext

    if control:
        specs = list(specs) + [MethodSpec(CONTROL, REFERENCE)]
    with (tempfile.TemporaryDirectory(prefix="mlxspec-bench-auto-") if fresh
          else nullcontext()) as folder:
        return _run_bench(model, specs, prompts, max_tokens, temperature, seed, stream_one,
                          warmup_tokens, progress, cost, repeat, interleave,
                          Path(folder) if folder else None)


def _run_bench(model, specs, prompts, max_tokens, temperature, seed, stream_one, warmup_tokens,
               progress, cost, repeat, interleave, auto_folder: Optional[Path]) -> dict:
    from ..drafters.shared import loaded_only

    interleave = interleave or default_interleave()
    if interleave not in INTERLEAVINGS:
        raise MlxSpecError(f"interleave must be one of {', '.join(INTERLEAVINGS)}, got {interleave!r}")
    if interleave == "steps" and default_interleave() != "steps":
        raise MlxSpecError("step interleaving is the CPU's way of timing methods side by side; "
                           "on a GPU use interleave=prompts")
    memory, states = MemoryTrace(), {}
    for spec in specs:  # warm-up: compile, allocate, load drafters; not timed
        with own_state(model, spec.label, states):
            _drain(stream_one(model, spec, prompts[0]["prompt"], warmup_tokens, temperature, seed))
    # the warm-up decoded the first prompt: what the drafters learned there is dropped, or
    # lookahead would retrieve the warm-up's tokens when that prompt is timed (measured on
    # SmolLM2, greedy: a 21-token French translation 3.2x, where it was 0.9x from a clean state)
    states = {label: loaded_only(state) for label, state in states.items()}
    for state in states.values():  # (after the warm-up: its rates are not a prompt's)
        state.auto_folder = auto_folder
    memory.after_warmup()
    runs = []
    for i, (rnd, prompt) in enumerate((r, p) for r in range(repeat) for p in prompts):
        if (rnd and prompt is prompts[0]) or auto_folder:
            states = {label: loaded_only(state) for label, state in states.items()}
        rotation = specs[i % len(specs):] + specs[:i % len(specs)]
        prompt_seed = (seed + i) % SEEDS  # every prompt of every round its own (module text)
        streams = {spec.label: stream_one(model, spec, prompt["prompt"], max_tokens, temperature,
                                          prompt_seed) for spec in rotation}
        results = {label: ([], None, []) for label in streams}  # (ids, stats, steps)
        spent = {label: [0.0, 0.0, 0.0] for label in streams}  # (its draft, verify, other s)
        parts = {label: [] for label in streams}
        while streams:  # "prompts": each stream to its end in turn; "steps": one step of each
            for spec in rotation:
                stream = streams.get(spec.label)
                if stream is None:
                    continue
                with own_state(model, spec.label, states):
                    for new, stats in stream:
                        ids, _, steps = results[spec.label]
                        ids.extend(new)
                        part = _step_parts(stats, spent[spec.label])
                        parts[spec.label].append(part)
                        steps.append((len(new), sum(part[:3])))  # (the step's decode seconds)
                        results[spec.label] = (ids, stats, steps)
                        if interleave == "steps":
                            break
                    else:
                        del streams[spec.label]
                        ids, stats, steps = results[spec.label]
                        runs.append(Run(spec.label, prompt["id"], prompt["category"], ids, stats, rnd,
                                        steps, parts[spec.label]))
                        if progress:
                            progress(f"{prompt['id']} {spec.label}")
        memory.after_prompt()
    methods, by_category = summarize(runs, greedy=temperature == 0, cost=cost)
    if cost is not None:
        for table in (methods, *by_category.values()):
            add_verify_prediction(table, cost, sampled=temperature > 0)
    labels = [s.label for s in specs]
    intervals = speedup_intervals(runs)
    return {"methods": methods, "by_category": by_category, "memory": memory.report(),
            **({"control": control_band(methods, by_category)} if CONTROL in labels else {}),
            **({"intervals": intervals} if intervals is not None else {}),
            "cost_model": cost.to_dict() if cost is not None else None,
            "machine": machine_info(),
            "model": model.path, "settings": {"max_tokens": max_tokens, "temperature": temperature,
                                              "seed": seed, "seeding": "per prompt",
                                              "prompts": len(prompts),
                                              "repeat": repeat, "interleave": interleave,
                                              "fresh": auto_folder is not None,
                                              "method_specs": labels,
                                              "control": CONTROL in labels},
            "per_prompt": [{"method": r.method, "prompt_id": r.prompt_id, "category": r.category,
                            "round": r.round,
                            "tokens_per_s": r.stats.tokens_per_s, "mean_accepted": r.stats.mean_accepted,
                            "target_calls": r.stats.target_calls, "generated_tokens": r.stats.generated_tokens,
                            "proposers": r.stats.proposers,
                            "steps": [[tokens, round(seconds, 6)] for tokens, seconds in r.steps],
                            "step_parts": [[*(round(x, 6) for x in part[:3]), *part[3:]]
                                           for part in r.parts]}
                           for r in runs]}
