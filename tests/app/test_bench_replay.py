"""Replaying auto's choice on a bench report's recorded steps (mlx_spec/bench/replay.py)."""
import json
import random

import pytest

from mlx_spec.bench.replay import main, recordings, replay
from mlx_spec.errors import MlxSpecError


def planted_report(speeds: dict, rounds: int = 2, prompts: int = 8, tokens: int = 240,
                   temperature: float = 0.7, seed: int = 0) -> dict:
    """A report whose methods' steps emit 1 to 2 x mean - 1 tokens in 10 ms each, about `tokens`
    a prompt: speeds = {method: mean tokens per step}."""
    rng = random.Random(seed)
    per_prompt = []
    for rnd in range(rounds):
        for prompt in range(prompts):
            for method, mean in speeds.items():
                per_prompt.append({"method": method, "prompt_id": f"p{prompt}", "round": rnd,
                                   "steps": [[rng.randint(1, 2 * mean - 1), 0.01]
                                             for _ in range(tokens // mean)]})
    return {"per_prompt": per_prompt, "settings": {"temperature": temperature}}


def test_one_candidate_replays_its_own_speed():
    found = recordings(planted_report({"redrafter": 4}), ["redrafter"])
    for keep_order in (False, True):
        result = replay(found, runs=20, keep_order=keep_order)
        assert result["mean"] == pytest.approx(1.0) and result["lowest"] == pytest.approx(1.0)
        assert result["share"] == {"redrafter": 1.0}


def test_auto_leads_with_the_planted_best_and_loses_little_to_trials():
    """One method emits 5 tokens a step on average, the other 2, at the same step time: replayed
    from cold starts, auto proposes with the first on most steps and keeps most of its speed,
    whichever of the two it is."""
    for best, other in (("redrafter", "draft"), ("draft", "redrafter")):
        for keep_order in (False, True):
            result = replay(recordings(planted_report({best: 5, other: 2}), ["redrafter", "draft"]),
                            runs=40, keep_order=keep_order)
            assert result["share"][best] > 0.85
            assert result["mean"] > 0.9 and result["lowest"] > 0.8


def test_reports_without_steps_or_methods_are_refused():
    old = planted_report({"redrafter": 4})
    for run in old["per_prompt"]:
        del run["steps"]
    with pytest.raises(MlxSpecError, match="no steps"):
        recordings(old)
    with pytest.raises(MlxSpecError, match="draft"):
        recordings(planted_report({"redrafter": 4}), ["redrafter", "draft"])


def test_the_command_prints_one_line_and_refuses_bad_input(tmp_path, capsys):
    report = tmp_path / "bench.json"
    report.write_text(json.dumps(planted_report({"redrafter": 5, "draft": 2})))
    for order in ([], ["--keep-order"]):
        assert main([str(report), "--runs", "10", *order]) == 0
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and "auto[methods=redrafter+draft] at T=0.7, 10 cold rounds" in out[0]
    for argv in ([str(tmp_path / "missing.json")], [str(report), "--runs", "0"],
                 [str(report), "--methods", "lookahead"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")


def test_without_text_only_candidates_auto_tries_its_others_at_each_new_prompt():
    """With only trialled candidates, auto shortens their waits at each new request (no shadow
    step would see a prompt that suits another); the default replay keeps a text-only stand-in
    beside them, as in auto's default set, and the slower one proposes fewer steps. (Fewer by
    15% here, where it was 60% before a due trial began to wait while the drafter's long run
    cannot beat the leader's rate: that rule holds back most of the extra trials either way.)"""
    found = recordings(planted_report({"redrafter": 5, "draft": 2}, prompts=12))
    alone = replay(found, runs=20, text_only=False)
    beside = replay(found, runs=20)
    assert beside["share"]["draft"] < 0.9 * alone["share"]["draft"]
    assert set(beside["share"]) == {"redrafter", "draft"}  # the stand-in never proposes



def test_steps_no_recorded_candidate_proposes_are_plain_steps(monkeypatch):
    """A step auto gives no recorded candidate (the text-only stand-in leading where the model
    drafters run at about plain decoding's speed, its empty step not handed on: Auto._fall_back;
    seen on SmolLM2's chat2, where it was a traceback) is played as a plain step: one of the
    report's `ar` steps on that prompt, or without one a token in the median recorded step.
    Here an auto whose text-only stand-in leads every step."""
    from mlx_spec.bench import replay as module

    class TextOnlyLeads(module.Auto):
        def _next(self):
            return "text-only"

        def _fall_back(self, ctx, empty):
            return empty

    monkeypatch.setattr(module, "Auto", TextOnlyLeads)
    report = planted_report({"redrafter": 4, "draft": 2, "ar": 1})  # ar: 1 token in each 10 ms
    found = recordings(report, ["redrafter", "draft"])
    for plain in (recordings(report, ["ar"])["ar"], None):
        result = replay(found, runs=4, plain=plain)
        assert result["share"] == {"redrafter": 0.0, "draft": 0.0, "plain": 1.0}
        assert result["mean"] == pytest.approx(0.25, rel=0.1)  # `ar`'s speed against ~4 tokens


def test_a_stand_in_sends_a_draft_where_its_recorded_step_did(monkeypatch):
    """From the report's `step_parts` (nodes verified per step): `redrafter`'s steps verified 5
    nodes, `draft`'s only the root (it sat at plain decoding), so auto sees the one busy and the
    other idle (Rate.idle), as it would have; a report without them counts every step a draft."""
    from mlx_spec.bench import replay as module

    seen, idle = [], {}  # (proposer, tree size); each candidate's share of steps that sent

    class Spy(module.Auto):
        def observe(self, ctx, tree, acceptance, out):
            seen.append((self.proposer, len(tree)))
            super().observe(ctx, tree, acceptance, out)
            idle.update({name: rate.sent / rate.weight for name in ("redrafter", "draft")
                         for rate in [self._rate(name)] if rate.weight})  # (Rate.idle's share)

    monkeypatch.setattr(module, "Auto", Spy)
    report = planted_report({"redrafter": 3, "draft": 2})
    for run in report["per_prompt"]:
        nodes = 5 if run["method"] == "redrafter" else 1
        run["step_parts"] = [[0.0, 0.01, 0.0, nodes, False]] * len(run["steps"])
    replay(recordings(report), runs=2)
    assert {size for name, size in seen if name == "redrafter"} == {2}
    assert {size for name, size in seen if name == "draft"} == {1}
    assert idle == {"redrafter": pytest.approx(1.0), "draft": 0.0}
    seen.clear()
    replay(recordings(planted_report({"redrafter": 3, "draft": 2})), runs=2)
    assert {size for _, size in seen} == {2}
