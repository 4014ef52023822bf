"""`mlxspec bench --repeat`: rounds of the same prompts, each sampling with its own seed, with each
method's speedup per round beside the pooled one; greedy equality is checked round by round."""
import pytest

from mlx_spec.bench import MethodSpec, run_bench
from mlx_spec.stats import GenerationStats


class FakeModel:
    path = "fake"
    extras = None


LEARNED = []  # (method, seed, runs its drafter state had seen before this one)


def fake_run(model, spec, prompt, max_tokens, temperature, seed):
    """`ar` takes 1 s per prompt; `fast` is 2x faster in round 0 (seed 10) and 4x in round 1."""
    seen = model.extras.auto_rates
    LEARNED.append((spec.name, seed, len(seen)))
    seen[len(seen)] = "learned"
    seconds = 1.0 if spec.name == "ar" else {10: 0.5, 11: 0.25}[seed]
    return [seed, 1], GenerationStats(method=spec.name, generated_tokens=8, target_calls=4,
                                      accepted_per_call=[2] * 4, verify_s=seconds)


def test_rounds_use_their_own_seed_and_report_their_speedups():
    prompts = [{"id": str(i), "category": "c", "prompt": "x"} for i in range(3)]
    specs = [MethodSpec("ar", "ar"), MethodSpec("fast", "fast")]
    LEARNED.clear()
    report = run_bench(FakeModel(), specs, prompts, 8, 0.0, 10, fake_run, repeat=2)
    # each method's drafters learn over a round (after its warm-up run) and start over in the next
    for name in ("ar", "fast"):
        assert [n for m, seed, n in LEARNED if m == name] == [0, 1, 2, 3, 0, 1, 2]
    fast = report["methods"]["fast"]
    assert fast["speedup_by_round"] == pytest.approx([2.0, 4.0])
    assert fast["speedup"] == pytest.approx(48 / (3 * 0.5 + 3 * 0.25) / 8)  # pooled over rounds
    assert fast["matches_ar"] is True  # each run against ar's run of its own round
    assert sorted({(r["prompt_id"], r["round"]) for r in report["per_prompt"]}) == [
        (str(i), k) for i in range(3) for k in (0, 1)]
    assert report["settings"]["repeat"] == 2
    single = run_bench(FakeModel(), specs, prompts, 8, 0.0, 10, fake_run)
    assert "speedup_by_round" not in single["methods"]["fast"]
