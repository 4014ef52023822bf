"""pld and lookahead replayed on ar's texts (mlx_spec/bench/text_replay.py): the replay takes the
very steps the method takes when it decodes (without the back-off, whose judgements read measured
seconds there), and prices each by what it verified."""
import json

import pytest

import mlx_spec
from mlx_spec import methods
from mlx_spec.bench import load_prompts, text_replay as tr
from mlx_spec.cost import CostModel
from mlx_spec.drafters.shared import Shared, shared
from mlx_spec.engine import Limits
from mlx_spec.errors import MlxSpecError
from mlx_spec.sampling import SamplingParams
from support.cli import run_cli

# a planted cost model (a verify of n tokens costs 1 + 0.05 (n - 1) one-token steps): the replay
# and the decoder size their drafts by the same one, and nothing is measured
PLANTED = CostModel(sizes=tuple(range(1, 34)), seconds=tuple(0.01 * (1 + 0.05 * (n - 1))
                                                              for n in range(1, 34)), context=128)


@pytest.fixture(scope="module")
def embedded():
    return mlx_spec.load()


def _decoded(model, method: str, texts, temperature: float, seed: int):
    """(target calls, drafted tokens, output) of each text's prompt decoded by `method` itself,
    with drafter state of its own as the replay has."""
    saved = shared(model)
    model.extras = Shared(cost=PLANTED, auto_folder=None)
    try:
        decoder = methods.make_decoder(model, method, backoff=False)
        found = []
        for text in texts:
            output, stats = [], None
            for step in decoder.generate(list(text.prompt), Limits(max_tokens=len(text.output)),
                                         SamplingParams(temperature=temperature), seed):
                output += step.token_ids
                stats = step.stats
            found.append((stats.target_calls, stats.drafted_tokens, output))
        return found
    finally:
        model.extras = saved


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_replay_takes_the_steps_the_method_takes(embedded, temperature):
    """The embedded target on two story prompts, one request after the other."""
    model = embedded
    prompts = load_prompts(None)[:2]
    texts = tr.ar_texts(model, prompts, model.tokenizer.encode, temperature, max_tokens=64,
                        seed=3)
    assert [len(t.output) for t in texts] == [64, 64]  # past any end-of-sequence token
    for method in ("pld", "lookahead"):
        replayed = tr.replay(model, texts, method, temperature, PLANTED, backoff=False)
        decoded = _decoded(model, method, texts, temperature, seed=3)
        assert [(r.target_calls, r.drafted_tokens) for r in replayed] == \
            [(calls, drafted) for calls, drafted, _ in decoded]
        assert [out for *_, out in decoded] == [t.output for t in texts]  # ar's very text
        summary = tr.summary(replayed, PLANTED, temperature > 0)
        assert summary["target_calls"] == sum(r.target_calls for r in replayed)
        assert summary["drafted_tokens"] > 0
        if temperature == 0:  # drafts were accepted: the walk along the text was exercised
            assert summary["target_calls"] < 128 and summary["speedup"] > 1
        assert set(summary["by_category"]) == {p["category"] for p in prompts}


LINEAR = CostModel(sizes=(1, 2), seconds=(0.01, 0.02), context=128)  # n tokens cost n steps


def test_each_step_is_priced_by_what_it_verified(embedded):
    """Where a verify of n tokens costs n one-token steps, the priced speedup is the tokens over
    the nodes verified, at any temperature (nothing is sampled-priced without sampled timings),
    with or without the back-off; the same on every run."""
    texts = tr.ar_texts(embedded, load_prompts(None)[:1], embedded.tokenizer.encode, 0.0,
                        max_tokens=48, seed=0)
    for temperature in (0.0, 1.0):
        for method in ("pld", "lookahead"):
            for backoff in (False, True):
                runs = [tr.replay(embedded, texts, method, temperature, LINEAR, backoff=backoff)
                        for _ in range(2)]
                replayed = runs[0]
                nodes = sum(r.target_calls + r.drafted_tokens for r in replayed)
                assert tr.speedup(replayed, LINEAR, temperature > 0) == pytest.approx(48 / nodes)
                assert [(r.target_calls, r.priced_s) for r in runs[0]] == \
                    [(r.target_calls, r.priced_s) for r in runs[1]]


def test_one_back_off_judges_all_the_requests(embedded, monkeypatch):
    """As a decoder keeps one BackOff across requests (methods._backoff), the replay does."""
    made = []
    real = tr.BackOff

    def counted(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]
    monkeypatch.setattr(tr, "BackOff", counted)
    texts = tr.ar_texts(embedded, load_prompts(None)[:3], embedded.tokenizer.encode, 0.0,
                        max_tokens=8, seed=0)
    tr.replay(embedded, texts, "pld", 0.0, PLANTED)
    assert len(made) == 1


def test_the_speedup_prices_each_call():
    """Planted: 12 tokens in 4 calls, priced 2 one-token steps each: 1.5x."""
    class Cost:
        def verify_seconds(self, tokens, tree=False, sampled=False, visited=1.0, cached=None):
            return 0.01
    text = tr.Text("p", "c", [1], list(range(12)))
    replayed = [tr.Replayed(text, target_calls=4, drafted_tokens=8, priced_s=0.08, drafting_s=0)]
    assert tr.speedup(replayed, Cost(), sampled=False) == pytest.approx(1.5)


def test_only_methods_whose_drafts_follow_the_text_are_replayed():
    for name in ("redrafter", "draft", "auto", "ar", "dsi"):
        with pytest.raises(MlxSpecError, match="cannot be replayed"):
            tr.check_method(name)
    with pytest.raises(MlxSpecError, match="kv_bits"):  # (nothing runs the target here)
        tr.check_method("lookahead", kv_bits=4)
    tr.check_method("pld", num_draft_tokens=4)
    tr.check_method("lookahead")


@pytest.mark.parametrize("args, message", [
    (["--methods", "redrafter"], "cannot be replayed"),
    (["--methods", "lookahead[kv_bits=4]"], "kv_bits"),
    (["--methods", "pld[backoff=2]"], "backoff must be true or false"),
    (["--temps", "0,nan"], "temperature"),
    (["--limit", "0"], "--limit"),
    (["--seed", "-1"], "seed")])
def test_the_command_refuses_bad_input_before_loading(args, message):
    code, _, err = run_cli("text-replay", "--model", "/nonexistent", *args)
    assert code != 0 and message in err and "Traceback" not in err, err


def test_the_command_writes_its_json(tmp_path, random_model_dirs):
    out = tmp_path / "r.json"
    code, stdout, err = run_cli("text-replay", "--model", str(random_model_dirs["llama"]),
                                "--methods", "pld,lookahead[backoff=false]", "--prompts", "chat",
                                "--limit", "2", "-n", "12", "--temps", "0,1", "--json", str(out))
    assert code == 0, err
    results = json.loads(out.read_text())["results"]
    assert [(r["method"], r["temperature"], r["backoff"]) for r in results] == [
        ("pld", 0.0, True), ("lookahead[backoff=false]", 0.0, False), ("pld", 1.0, True),
        ("lookahead[backoff=false]", 1.0, False)]
    assert all(r["speedup"] > 0 and r["tokens"] == 24 for r in results)
