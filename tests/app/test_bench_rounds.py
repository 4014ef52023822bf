"""`mlxspec bench --repeat`: rounds of the same prompts, each prompt of each round sampling with
its own seed, with each method's speedup per round beside the pooled one; greedy equality is
checked round by round."""
import pytest

from mlx_spec.bench import CONTROL, MethodSpec, run_bench
from mlx_spec.stats import GenerationStats


class FakeModel:
    path = "fake"
    extras = None


LEARNED = []  # (method, seed, runs its drafter state had seen before this one)


def fake_run(model, spec, prompt, max_tokens, temperature, seed):
    """`ar` takes 1 s per prompt; `fast` is 2x faster in round 0 (seeds 10-12 with 3 prompts)
    and 4x in round 1 (seeds 13-15)."""
    seen = model.extras.auto_rates
    LEARNED.append((spec.name, seed, len(seen)))
    seen[len(seen)] = "learned"
    seconds = 1.0 if spec.name == "ar" else 0.5 if seed < 13 else 0.25
    yield [seed, 1], GenerationStats(method=spec.name, generated_tokens=8, target_calls=4,
                                     accepted_per_call=[2] * 4, verify_s=seconds)


def test_rounds_use_their_own_seed_and_report_their_speedups():
    prompts = [{"id": str(i), "category": "c", "prompt": "x"} for i in range(3)]
    specs = [MethodSpec("ar", "ar"), MethodSpec("fast", "fast")]
    LEARNED.clear()
    report = run_bench(FakeModel(), specs, prompts, 8, 0.0, 10, fake_run, repeat=2,
                       interleave="prompts")
    # each method's drafters learn over a round and start over in the next; what its warm-up
    # run (on the first prompt) taught them is dropped before round 0 too
    for name in ("ar", "fast"):
        assert [n for m, seed, n in LEARNED if m == name] == [0, 0, 1, 2, 0, 1, 2]
        # every prompt of every round its own seed (the warm-up's first), the same for each method
        assert [seed for m, seed, n in LEARNED if m == name] == [10, 10, 11, 12, 13, 14, 15]
    fast = report["methods"]["fast"]
    assert fast["speedup_by_round"] == pytest.approx([2.0, 4.0])
    assert fast["speedup"] == pytest.approx(48 / (3 * 0.5 + 3 * 0.25) / 8)  # pooled over rounds
    assert fast["matches_ar"] is True  # each run against ar's run of its own round
    assert sorted({(r["prompt_id"], r["round"]) for r in report["per_prompt"]}) == [
        (str(i), k) for i in range(3) for k in (0, 1)]
    assert report["settings"]["repeat"] == 2 and report["settings"]["seeding"] == "per prompt"
    LEARNED.clear()  # the seeds wrap round at 2**64 (mx.random.key's range)
    run_bench(FakeModel(), specs[:1], prompts, 8, 0.0, 2 ** 64 - 1, fake_run, interleave="prompts")
    assert [seed for m, seed, n in LEARNED] == [2 ** 64 - 1, 2 ** 64 - 1, 0, 1]
    single = run_bench(FakeModel(), specs, prompts, 8, 0.0, 10, fake_run, interleave="prompts")
    assert "speedup_by_round" not in single["methods"]["fast"]


def test_fresh_starts_every_prompt_from_new_state_with_a_rates_folder_of_the_run():
    """--fresh: as one process per prompt: nothing learned carries from prompt to prompt, and
    auto's rates folder is the run's own (not the user's cache), after the warm-up only, the same
    folder for every prompt. Without --fresh there is no folder: a run never reads earlier ones."""
    folders = []

    def recording(model, spec, prompt, max_tokens, temperature, seed):
        folders.append(model.extras.auto_folder)
        yield from fake_run(model, spec, prompt, max_tokens, temperature, seed)

    prompts = [{"id": str(i), "category": "c", "prompt": "x"} for i in range(3)]
    specs = [MethodSpec("ar", "ar"), MethodSpec("fast", "fast")]
    LEARNED.clear()
    report = run_bench(FakeModel(), specs, prompts, 8, 0.0, 10, recording, repeat=2,
                       interleave="prompts", fresh=True)
    for name in ("ar", "fast"):
        assert [n for m, seed, n in LEARNED if m == name] == [0] * 7
    assert folders[:2] == [None, None]  # the warm-up's rates are not a prompt's
    assert len(set(folders[2:])) == 1 and folders[2] is not None and not folders[2].exists()
    assert report["settings"]["fresh"] is True
    folders.clear()
    report = run_bench(FakeModel(), specs, prompts, 8, 0.0, 10, recording, interleave="prompts")
    assert set(folders) == {None} and report["settings"]["fresh"] is False


def test_step_interleaving_runs_one_step_of_each_method_in_turn():
    """On the CPU every method decodes a prompt at once, a step of each in turn (rotating which
    method goes first), each with its own drafter state; tokens and stats are each method's own."""
    order = []

    def stepping(model, spec, prompt, max_tokens, temperature, seed):
        steps = 2 if spec.name == "ar" else 1  # `fast` emits two tokens per step
        stats = GenerationStats(method=spec.name)
        for step in range(max_tokens // steps):
            model.extras.auto_rates[spec.name] = step  # each method sees only its own state
            order.append((prompt, spec.name, step))
            stats.generated_tokens += steps
            stats.target_calls += 1
            stats.accepted_per_call.append(steps)
            stats.verify_s += 0.1
            yield [step] * steps, stats

    specs = [MethodSpec("ar", "ar"), MethodSpec("fast", "fast")]
    prompts = [{"id": str(i), "category": "c", "prompt": f"p{i}"} for i in range(2)]
    report = run_bench(FakeModel(), specs, prompts, 4, 0.0, 0, stepping, warmup_tokens=2,
                       interleave="steps")
    timed = order[3:]  # after the warm-up runs on p0 (2 tokens: one step of ar, two of fast)
    assert timed[:6] == [("p0", "ar", 0), ("p0", "fast", 0), ("p0", "ar", 1), ("p0", "fast", 1),
                         ("p0", "fast", 2), ("p0", "fast", 3)]
    assert timed[6:9] == [("p1", "fast", 0), ("p1", "ar", 0), ("p1", "fast", 1)]  # rotated
    assert report["settings"]["interleave"] == "steps"
    assert report["methods"]["fast"]["speedup"] == pytest.approx(0.5)
    assert report["methods"]["fast"]["matches_ar"] is False
    runs = {(r["method"], r["prompt_id"]): r for r in report["per_prompt"]}
    assert runs[("ar", "0")]["target_calls"] == 2 and runs[("fast", "0")]["target_calls"] == 4


def test_the_control_is_plain_decoding_again_and_its_band_is_reported():
    """--control: `ar` runs a second time under a label of its own, interleaved as any method;
    the report gives how far it landed from `ar` per category (its speed differs only by the
    run's noise: planted here as a slow second category), the band a method must leave to be
    told from plain decoding."""
    ran = []

    def timed(model, spec, prompt, max_tokens, temperature, seed):
        ran.append((spec.label, spec.name))
        slow = spec.label == CONTROL and prompt == "b"
        yield [1] * 8, GenerationStats(method=spec.name, generated_tokens=8, target_calls=8,
                                       accepted_per_call=[1] * 8, verify_s=1.25 if slow else 1.0)

    prompts = [{"id": "0", "category": "a", "prompt": "a"}, {"id": "1", "category": "b",
                                                               "prompt": "b"}]
    report = run_bench(FakeModel(), [MethodSpec("ar", "ar")], prompts, 8, 0.0, 0, timed,
                       interleave="prompts", control=True)
    assert set(ran) == {("ar", "ar"), (CONTROL, "ar")}
    assert report["settings"]["control"] is True and CONTROL in report["methods"]
    control = report["control"]
    assert control["by_category"] == pytest.approx({"a": 1.0, "b": 0.8})
    assert control["band"] == pytest.approx([0.8, 1.0])
    assert control["speedup"] == pytest.approx(16 / 2.25 / 8)
    assert report["methods"][CONTROL]["matches_ar"] is True
    plain = run_bench(FakeModel(), [MethodSpec("ar", "ar")], prompts, 8, 0.0, 0, timed,
                      interleave="prompts")
    assert "control" not in plain and plain["settings"]["control"] is False


def test_unknown_interleaving_is_refused():
    with pytest.raises(Exception, match="interleave must be one of"):
        run_bench(FakeModel(), [MethodSpec("ar", "ar")], [{"id": "0", "category": "c",
                                                           "prompt": "x"}],
                  2, 0.0, 0, fake_run, interleave="tokens")


def test_the_machines_stalls_are_counted_and_speeds_given_without_them():
    """A step over STALL times its prompt's median step is the machine's stall: counted per
    method with the seconds beyond the median, and the speeds again without them (the step at
    its prompt's median), so that a stall that fell on one method by chance can be told from the
    method's speed. Slower steps within STALL are the method's own."""
    from mlx_spec.bench import STALL

    def stepping(model, spec, prompt, max_tokens, temperature, seed):
        stats = GenerationStats(method=spec.name)
        for step in range(max_tokens):
            stats.generated_tokens += 1
            stats.target_calls += 1
            stats.accepted_per_call.append(1)
            seconds = 0.1
            if spec.name == "fast" and step == 5:
                seconds = 1.0  # a stall
            if spec.name == "fast" and step == 6:
                seconds = 0.9 * STALL * 0.1  # slow, its own
            stats.verify_s += seconds
            yield [step], stats

    specs = [MethodSpec("ar", "ar"), MethodSpec("fast", "fast")]
    prompts = [{"id": "0", "category": "c", "prompt": "p0"}]
    report = run_bench(FakeModel(), specs, prompts, 10, 0.0, 0, stepping, warmup_tokens=2,
                       interleave="steps")
    fast, ar = report["methods"]["fast"], report["methods"]["ar"]
    assert (ar["stall_steps"], ar["stall_s"]) == (0, 0.0)
    assert fast["stall_steps"] == 1 and fast["stall_s"] == pytest.approx(0.9)
    assert fast["tokens_per_s"] == pytest.approx(10 / (1.9 + 0.9 * STALL * 0.1 - 0.1))
    assert fast["tokens_per_s_unstalled"] == pytest.approx(10 / (1.0 + 0.9 * STALL * 0.1 - 0.1))
    assert ar["tokens_per_s_unstalled"] == pytest.approx(10.0)
    assert fast["speedup_unstalled"] == pytest.approx(fast["tokens_per_s_unstalled"] / 10.0)
    assert report["per_prompt"][0]["steps"]  # each step kept, stalls too


def test_with_the_cost_model_a_stall_is_told_by_each_steps_price():
    """With the target's cost model a step is due its own drafting, its tree's modelled price
    (scaled as the prompt's verifies ran) and the prompt's median other work, and a stall is a
    step over its due by more than STALL_STEPS one-token steps: the machine's 150 ms on a step
    the model prices at twice a plain one (1.75x the prompt's median step: the median rule
    misses it); a plain step 80% over its due is the method's own, and so is a long drafting."""
    from mlx_spec.bench import STALL_STEPS
    from mlx_spec.cost import CostModel

    cost = CostModel(sizes=(1, 8), seconds=(0.05, 0.1), context=128)  # on the run's machine the
    # verifies take twice the model's price: the due is scaled to that

    def stepping(model, spec, prompt, max_tokens, temperature, seed):
        stats = GenerationStats(method=spec.name)
        for step in range(max_tokens):
            nodes = 8 if spec.name == "wide" and step % 2 else 1
            seconds = 2 * cost.step_seconds(nodes)  # 0.1 s a plain step, 0.2 an 8-node one
            if spec.name == "wide" and step == 5:
                seconds += 0.15  # the machine
            if spec.name == "wide" and step == 6:
                seconds += 0.08  # the method's own
            if spec.name == "wide" and step == 7:
                stats.draft_s += 0.3  # its drafter's own (a draft model's deep draft)
            stats.generated_tokens += 1
            stats.target_calls += 1
            stats.accepted_per_call.append(1)
            stats.verified_per_call.append((nodes, False))
            stats.verify_s += seconds
            yield [step], stats

    specs = [MethodSpec("ar", "ar"), MethodSpec("wide", "wide")]
    prompts = [{"id": "0", "category": "c", "prompt": "p0"}]
    report = run_bench(FakeModel(), specs, prompts, 10, 0.0, 0, stepping, warmup_tokens=2,
                       interleave="steps", cost=cost)
    wide, ar = report["methods"]["wide"], report["methods"]["ar"]
    assert STALL_STEPS * 0.1 < 0.15 and 0.08 < STALL_STEPS * 0.1
    assert (ar["stall_steps"], ar["stall_s"]) == (0, 0.0)
    assert wide["stall_steps"] == 1 and wide["stall_s"] == pytest.approx(0.15)
    (part, *_), = [r["step_parts"] for r in report["per_prompt"] if r["method"] == "wide"]
    assert part == [0.0, pytest.approx(0.1), 0.0, 1, False]


def test_each_step_is_priced_at_its_cached_length():
    """A verify costs more with more tokens cached: the bench prices each step at the length
    cached before it (the prompt's and what the steps before emitted), both for the stall rule
    and for the predicted verify time per call. Planted: a step that emits 4,000 tokens, after
    which a one-token verify takes 5x as long; priced at one length, its two later steps would be
    stalls (over their due by more than a one-token step)."""
    from mlx_spec.cost import from_times

    cost = from_times((1, 2), [0.01, 0.012], None, [None, None], 128, [0.02, 0.022], 1128)
    emitted = [1] * 9 + [4000, 1, 1]  # 1e-5 s more per cached token

    def stepping(model, spec, prompt, max_tokens, temperature, seed):
        stats = GenerationStats(method=spec.name, prompt_tokens=129)
        cached = 128
        for tokens in emitted:
            stats.generated_tokens += tokens
            stats.target_calls += 1
            stats.accepted_per_call.append(tokens)
            stats.verified_per_call.append((1, False))
            stats.verify_s += cost.step_seconds(1, cached=cached)
            cached += tokens
            yield [0] * tokens, stats

    specs = [MethodSpec("ar", "ar")]
    prompts = [{"id": "0", "category": "c", "prompt": "p0"}]
    report = run_bench(FakeModel(), specs, prompts, 5000, 0.0, 0, stepping, warmup_tokens=2,
                       interleave="steps", cost=cost)
    ar = report["methods"]["ar"]
    lengths = [128 + sum(emitted[:i]) for i in range(len(emitted))]
    expected = sum(cost.step_seconds(1, cached=c) for c in lengths)
    assert cost.step_seconds(1, cached=lengths[-1]) > 4.9 * cost.step_seconds(1, cached=128)
    assert ar["predicted_verify_s"] == pytest.approx(expected)
    assert ar["predicted_verify_ms_per_call"] == pytest.approx(1000 * expected / len(emitted))
    assert ar["stall_steps"] == 0


def _unit_runs(seconds_by_method: dict, tokens=100, rounds: int = 1) -> list:
    """Runs of `rounds` rounds per prompt: {method: [decode seconds of each unit, prompt by prompt
    and round by round within it]}; `tokens` a number, or a list of the same shape."""
    from mlx_spec.bench import Run
    return [Run(method, str(i // rounds), "c", [],
                GenerationStats(method=method, verify_s=s,
                                generated_tokens=tokens[i] if isinstance(tokens, list) else tokens),
                i % rounds)
            for method, per_unit in seconds_by_method.items() for i, s in enumerate(per_unit)]


def test_speedup_intervals_pair_the_prompts_so_a_steady_lead_shows_through_their_spread():
    """`b` is 10% slower than `a` on every prompt, while the prompts' own spread (common to both)
    is far wider: each speedup's interval overlaps the other's, and the ratio resampled on the
    same prompts for both is exactly 1/1.1. Resampled apart it would span the spread."""
    import random

    from mlx_spec.bench import speedup_intervals

    rng = random.Random(3)
    ar = [rng.uniform(0.5, 2.0) for _ in range(30)]
    a = [s / 2 * rng.uniform(0.6, 1.4) for s in ar]
    b = [1.1 * s for s in a]
    found = speedup_intervals(_unit_runs({"ar": ar, "a": a, "b": b}))
    assert (found["prompts"], found["units"], found["fastest"]) == (30, 30, "a")
    (a_low, a_high), (b_low, b_high) = (found["by_method"][m]["speedup"] for m in "ab")
    assert a_low < sum(ar) / sum(a) < a_high  # (the pooled speedup the tables show)
    assert b_low < a_low < b_high < a_high  # overlapping
    assert found["by_method"]["b"]["of_fastest"] == pytest.approx([1 / 1.1, 1 / 1.1])
    assert found["by_method"]["a"]["of_fastest"] == pytest.approx([1.0, 1.0])
    assert found["by_method"]["ar"]["speedup"] == pytest.approx([1.0, 1.0])


def test_speedup_intervals_draw_a_prompts_rounds_together():
    """Three prompts on which `a` runs 1x, 2x and 4x, each in four rounds that agree: drawn by
    prompt, a resample of the slowest (or fastest) prompt three times comes one time in 27, more
    often than the 2.5% at each end, so the interval reaches each extreme; drawn as 12 units apart, resamples that all fall on one prompt would be too rare
    for the interval to reach them (its ends would lie well inside, near 1.3x and 2.4x)."""
    from mlx_spec.bench import speedup_intervals

    a = [s for s in (1.0, 0.5, 0.25) for _ in range(4)]
    found = speedup_intervals(_unit_runs({"ar": [1.0] * 12, "a": a}, rounds=4))
    assert (found["prompts"], found["units"]) == (3, 12)
    assert found["by_method"]["a"]["speedup"] == pytest.approx([1.0, 4.0])


def test_speedup_intervals_leave_out_ar_the_control_and_units_not_every_method_ran():
    from mlx_spec.bench import speedup_intervals

    assert speedup_intervals(_unit_runs({"ar": [1.0], "a": [0.5]})) is None  # a single unit
    assert speedup_intervals(_unit_runs({"a": [1.0, 2.0], "b": [0.5, 1.0]})) is None  # no `ar`
    only_plain = speedup_intervals(_unit_runs({"ar": [1.0, 2.0], CONTROL: [0.5, 1.0]}))
    assert only_plain["fastest"] is None and only_plain["by_method"][CONTROL]["of_fastest"] is None
    runs = _unit_runs({"ar": [1.0, 1.0, 8.0], CONTROL: [0.25, 0.25, 0.25], "a": [0.5, 0.5, 0.5]})
    runs = [r for r in runs if not (r.method == "a" and r.prompt_id == "2")]  # `a` skipped one
    found = speedup_intervals(runs)
    assert found["fastest"] == "a" and found["units"] == 2  # the control is never the fastest
    assert found["by_method"]["a"]["speedup"] == pytest.approx([2.0, 2.0])  # (with `ar`'s 8 s
    # on the unit `a` skipped, any resample holding it would read higher)


def test_the_report_and_the_footer_give_the_intervals():
    from mlx_spec.cli.bench_cmd import intervals_line

    specs = [MethodSpec("ar", "ar"), MethodSpec("fast", "fast")]
    prompts = [{"id": str(i), "category": "c", "prompt": f"p{i}"} for i in range(2)]
    LEARNED.clear()
    report = run_bench(FakeModel(), specs, prompts, 8, 0.0, 10, fake_run, repeat=2)
    found = report["intervals"]
    assert (found["prompts"], found["units"], found["fastest"]) == (2, 4, "fast")
    low, high = found["by_method"]["fast"]["speedup"]  # 2x in round 0, 4x in round 1
    assert 2.0 <= low < high <= 4.0
    line = intervals_line(found, sampled=True)
    assert f"fast {low:.2f}-{high:.2f}x" in line and "2 prompts" in line
    assert "its own" in line and "its own" not in intervals_line(found, sampled=False)
