"""Replay `auto`'s choice among its model drafters on the steps a bench run recorded, many times.

How `auto` fares from a cold start is partly luck when sampling (a step of redrafter emits 1 to 10
tokens by chance at T = 0.7, so the first steps may favour a slower candidate), and one bench run's
`auto` is one draw of it: its rounds spread +-4% on the story prompts, more than the changes one
wants to judge. A bench report (`mlxspec bench --json`) holds every method's steps on every prompt,
each timed alone ("steps": [tokens, seconds] per decoding step). This runs Auto's own code
(propose, observe: its trials, rates and lead) many times over with stand-in candidates that emit
the recorded steps of their method on the same prompt, in a new random order each run, on a clock
that advances by each step's recorded seconds. Each run is one round of the prompts from a cold
start, as the bench's; the result is the distribution of auto's speed relative to the fastest of
its candidates alone on the same round.

Only candidates judged by trials (`redrafter`, `draft`): `pld` and `lookahead` are scored in the
shadow on the text itself, which a recording of (tokens, seconds) does not hold. By default a
text-only stand-in that never finds a draft stands beside them, so that auto treats its trialled
candidates as in its default set (without any text-only candidate it shortens their waits at each
new request, since no shadow step would see a prompt that suits another candidate); where auto
gives that stand-in a step (it can lead where the model drafters run at about plain decoding's
speed), the step is a plain one: one of the report's `ar` steps on that prompt. A recorded
candidate's stand-in proposes a tree of one draft where the step it is about to play sent a
draft (`step_parts`: more than one node verified; every step, in a report without them), else
the root alone, so that auto tells a model drafter sitting at plain decoding (Rate.idle) as it
would; the steps its back-off held plain in the bench (and each prompt's last) read so too,
where auto does not count such steps at all. Steps are drawn
independently within a prompt, so runs keep each prompt's difficulty but not the order of its easy
and hard stretches (`--keep-order` plays them in their recorded order from a random step on). The
first step of each prompt is left out (auto does not time it either). A recording holds the tokens
each step emitted, not their mean over the step's acceptance draws that auto counts a model
drafter's step by (Acceptance.expected_tokens), so at T > 0 a replay ranks on noisier steps than
auto does.

    python -m mlx_spec.bench.replay REPORT.json [--methods redrafter,draft] [--runs 600]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..accept import Acceptance
from ..drafters.auto import Auto, Rates
from ..drafters.base import Drafter, StepContext
from ..errors import MlxSpecError
from ..sampling import SamplingParams
from ..tree import Tree

TRIALLED = ("redrafter", "draft")  # auto's candidates that a recording can stand in for
PLAIN = "plain"  # a step no recorded candidate proposed (replay_round)

Steps = list[tuple[int, float, bool]]  # (tokens, seconds, sent a draft) of each step of a prompt


@dataclass
class Recording:
    """One method's steps per round and prompt (prompts in the bench's order)."""
    rounds: list[list[Steps]]

    def speed(self, round_: int) -> float:
        """Tokens per second alone over one round."""
        steps = [s for prompt in self.rounds[round_] for s in prompt]
        return sum(step[0] for step in steps) / max(sum(step[1] for step in steps), 1e-12)


def recordings(report: dict, methods: Optional[list[str]] = None) -> dict[str, Recording]:
    """The recorded steps of `methods` (default: those of TRIALLED the report has) in a bench
    report; a one-line error where the report has none or lacks a method."""
    per_prompt = report.get("per_prompt") or []
    if not per_prompt or any("steps" not in p for p in per_prompt):
        raise MlxSpecError("this report records no steps per prompt (written before they were "
                           "kept): run `mlxspec bench --json` again")
    present = list(dict.fromkeys(p["method"] for p in per_prompt))
    methods = methods or [m for m in present if m in TRIALLED]
    missing = [m for m in methods if m not in present]
    if missing or len(methods) < 1:
        raise MlxSpecError(f"the report has no steps of {', '.join(missing) or 'redrafter or draft'}"
                           f" (it has {', '.join(present)})")
    rounds = max(p["round"] for p in per_prompt) + 1
    found = {}
    for method in methods:
        by_round: list[list[Steps]] = [[] for _ in range(rounds)]
        for p in per_prompt:
            if p["method"] == method:
                parts = p.get("step_parts") or []
                if len(parts) != len(p["steps"]):  # (none, or not one per step: as drafting)
                    parts = [[0, 0, 0, 2]] * len(p["steps"])
                by_round[p["round"]].append([(int(t), float(s), part[3] > 1) for (t, s), part
                                             in zip(p["steps"][1:], parts[1:])])
        found[method] = Recording(by_round)
    return found


class _NeverDrafts(Drafter):
    """A text-only stand-in (the place of pld and lookahead) whose tree is always the root."""
    drafts_from_text = True

    def propose(self, ctx: StepContext) -> Tree:
        return Tree.from_chain(ctx.tokens[-1], [])


class _FlatCost:
    """A cost model of the recordings' median step for any tree: auto reads it for text-only
    shadow steps (none here), its calibration of real steps, and the cap on a stalled step's
    seconds (Auto._capped), which the recorded stalls meet as they would the real model's."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def step_seconds(self, nodes: int, tree: bool = False, cached=None) -> float:
        return self.seconds


class _Recorded(Drafter):
    """A stand-in candidate: auto asks it for a tree, the replay then plays one of its method's
    recorded steps. Its tree only says whether that step sent a draft (`sends(name)`): a chain
    of one, or the root alone."""

    def __init__(self, name: str, asked: list, sends):
        self.name, self._asked, self._sends = name, asked, sends

    def propose(self, ctx: StepContext) -> Tree:
        self._asked.append(self.name)
        return Tree.from_chain(ctx.tokens[-1], [0] if self._sends(self.name) else [])


def _median_step(found: dict[str, Recording]) -> float:
    """The median seconds of every recorded step of every method."""
    seconds = sorted(s for r in found.values() for round_ in r.rounds for steps in round_
                     for _, s, _ in steps)
    return seconds[len(seconds) // 2] if seconds else 1.0


def _played(steps: Steps, rng: random.Random, keep_order: bool) -> Steps:
    """A prompt's steps in a random order, or in their recorded order from a random step on
    (cyclic: the stretches where a method drafts well or badly stay together)."""
    if not keep_order:
        return rng.sample(steps, len(steps))
    start = rng.randrange(len(steps)) if steps else 0
    return steps[start:] + steps[:start]


def replay_round(found: dict[str, Recording], round_: int, rng: random.Random,
                 sampling: SamplingParams, text_only: bool = True,
                 keep_order: bool = False, step_s: Optional[float] = None,
                 plain: Optional[Recording] = None) -> tuple[float, dict[str, int]]:
    """One cold start over one round's prompts: (auto's tokens per second, steps per method).
    `step_s`: the stand-in cost model's step (_median_step of `found`, where not given). A step
    that no recorded candidate proposed (the text-only stand-in leading where the model drafters
    run at about plain decoding's speed, and not handing its empty step on: Auto._fall_back) is
    a plain step: one of `plain`'s (the report's `ar`) on the same prompt, else one token in
    `step_s`; counted as PLAIN."""
    asked: list[str] = []
    rates = Rates()

    def sends(name: str) -> bool:  # whether the step `name` plays next sent a draft
        return plays[name][played[name] % len(plays[name])][2]

    candidates: dict[str, Drafter] = {name: _Recorded(name, asked, sends) for name in found}
    if text_only:
        candidates["text-only"] = _NeverDrafts()
    auto = Auto(candidates, rates_for=lambda regime: rates,
                cost=_FlatCost(step_s or _median_step(found)) if text_only else None)
    now = [0.0]
    ctx = StepContext(tokens=[0], max_drafts=1 << 20, sampling=sampling, clock=lambda: now[0])
    tokens, used = 0, {name: 0 for name in found}
    for prompt in range(len(next(iter(found.values())).rounds[round_])):
        plays = {n: _played(r.rounds[round_][prompt], rng, keep_order) for n, r in found.items()}
        left = min(sum(step[0] for step in steps) for steps in plays.values())
        plays[PLAIN] = ([(1, s, False) for _, s, _ in
                         _played(plain.rounds[round_][prompt], rng, keep_order)]
                        if plain is not None and prompt < len(plain.rounds[round_]) else []
                        ) or [(1, step_s or _median_step(found), False)]
        played = {n: 0 for n in plays}
        auto.begin(ctx.tokens)
        while left > 0:
            asked.clear()
            tree = auto.propose(ctx)
            auto.while_verifying(ctx)
            name = asked[0] if asked else PLAIN
            step_tokens, seconds, _ = plays[name][played[name] % len(plays[name])]
            played[name] += 1
            used[name] = used.get(name, 0) + 1
            step_tokens = min(step_tokens, left)
            left -= step_tokens
            tokens += step_tokens
            now[0] += seconds
            acceptance = Acceptance(path=[0], tokens=[0] * step_tokens)
            auto.observe(ctx, tree, acceptance, None)
            auto.prepare(ctx, acceptance, None)  # (as the engine: a fallback prepares from it)
        auto.end()
    return tokens / max(now[0], 1e-12), dict(used)


def replay(found: dict[str, Recording], runs: int = 600, seed: int = 0,
           temperature: float = 0.7, text_only: bool = True, keep_order: bool = False,
           plain: Optional[Recording] = None) -> dict:
    """`runs` cold starts (each on a round drawn at random): auto's speed relative to its fastest
    candidate alone on that round (mean, 10th and 5th percentile, lowest), and each candidate's
    share of auto's steps (and PLAIN's, where plain steps were taken: replay_round)."""
    rng = random.Random(seed)
    sampling = SamplingParams(temperature=temperature)
    rounds = len(next(iter(found.values())).rounds)
    step_s = _median_step(found)
    relative, steps = [], {name: 0 for name in found}
    for _ in range(runs):
        round_ = rng.randrange(rounds)
        speed, used = replay_round(found, round_, rng, sampling, text_only, keep_order, step_s,
                                   plain)
        relative.append(speed / max(r.speed(round_) for r in found.values()))
        for name, count in used.items():
            steps[name] = steps.get(name, 0) + count
    relative.sort()
    total = max(sum(steps.values()), 1)
    return {"runs": runs, "mean": sum(relative) / runs, "p10": relative[runs // 10],
            "p5": relative[runs // 20], "lowest": relative[0],
            "share": {name: count / total for name, count in steps.items()}}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlx_spec.bench.replay",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="a bench report (mlxspec bench --json)")
    parser.add_argument("--methods", help="comma list (default: redrafter and draft, where "
                                          "recorded)")
    parser.add_argument("--runs", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-text-only", action="store_true",
                        help="no text-only stand-in (auto's candidates are the recorded ones only)")
    parser.add_argument("--keep-order", action="store_true",
                        help="play each prompt's steps in their recorded order from a random step "
                             "on, not shuffled")
    args = parser.parse_args(argv)
    try:
        if args.runs < 1:
            raise MlxSpecError(f"--runs must be >= 1, got {args.runs}")
        try:
            report = json.loads(Path(args.report).read_text())
        except (OSError, ValueError) as exc:
            raise MlxSpecError(f"cannot read the report {args.report}: {exc}") from None
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        found = recordings(report, methods)
        plain = (recordings(report, ["ar"])["ar"]  # (plain steps, where auto takes any)
                 if any(p["method"] == "ar" for p in report["per_prompt"]) else None)
        temperature = float((report.get("settings") or {}).get("temperature", 0.0))
        result = replay(found, args.runs, args.seed, temperature, not args.no_text_only,
                        args.keep_order, plain)
    except MlxSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    share = ", ".join(f"{n} {v:.1%}" for n, v in result["share"].items())
    print(f"auto[methods={'+'.join(found)}] at T={temperature:g}, {result['runs']} cold rounds: "
          f"{result['mean']:.3f} of the fastest alone on average (10th percentile "
          f"{result['p10']:.3f}, 5th {result['p5']:.3f}, lowest {result['lowest']:.3f}); steps: "
          f"{share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
