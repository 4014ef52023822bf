"""pld and lookahead replayed on ar's texts (mlx_spec/bench/text_replay.py): the replay takes the
very steps the method takes when it decodes, so its priced speedups differ from a bench's by the
cost model's error alone."""
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
        if temperature == 0:  # drafts were accepted: the walk along the text was exercised
            assert summary["target_calls"] < 128 and summary["speedup"] > 1
        assert set(summary["by_category"]) == {p["category"] for p in prompts}


def test_the_speedup_prices_each_call():
    """Planted: 12 tokens in 4 calls, priced 2 one-token steps each: 1.5x."""
    class Cost:
        def verify_seconds(self, tokens, tree=False, sampled=False, visited=1.0):
            return 0.01
    text = tr.Text("p", "c", [1], list(range(12)))
    replayed = [tr.Replayed(text, target_calls=4, drafted_tokens=8, priced_s=0.08, drafting_s=0)]
    assert tr.speedup(replayed, Cost(), sampled=False) == pytest.approx(1.5)


def test_methods_that_sample_their_drafts_are_refused():
    for name in ("redrafter", "draft", "auto", "ar", "dsi"):
        with pytest.raises(MlxSpecError, match="cannot be replayed"):
            tr.check_method(name)
    tr.check_method("pld")
    tr.check_method("lookahead")


def test_the_command_refuses_before_loading_and_writes_its_json(tmp_path, random_model_dirs):
    code, _, err = run_cli("text-replay", "--methods", "redrafter", "--model", "/nonexistent")
    assert code != 0 and "cannot be replayed" in err and "Traceback" not in err
    out = tmp_path / "r.json"
    code, stdout, err = run_cli("text-replay", "--model", str(random_model_dirs["llama"]),
                                "--prompts", "chat", "--limit", "2", "-n", "12", "--temps", "0,1",
                                "--json", str(out))
    assert code == 0, err
    results = json.loads(out.read_text())["results"]
    assert [(r["method"], r["temperature"]) for r in results] == [
        ("pld", 0.0), ("lookahead", 0.0), ("pld", 1.0), ("lookahead", 1.0)]
    assert all(r["speedup"] > 0 and r["tokens"] == 24 for r in results)
