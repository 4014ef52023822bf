"""The CLI's contracts: JSON fields, one-line errors with non-zero exits, bench report schema."""
import json

import numpy as np
import pytest

from mlx_spec.bench import MethodSpec, load_prompts, split_method_list
from support.cli import run_cli


def test_generate_json_contract(random_model_dirs):
    code, out, err = run_cli("generate", "--model", str(random_model_dirs["llama"]), "--method", "pld",
                             "--prompt", "once upon a time", "--max-tokens", "12", "--raw", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) >= {"text", "token_ids", "stats"}
    assert set(result["stats"]) >= {"target_calls", "mean_accepted", "tokens_per_s"}
    assert 0 < len(result["token_ids"]) <= 12


@pytest.mark.parametrize("args, message", [
    (["generate", "--model", "/no/such/folder"], "model folder not found"),
    (["generate", "--max-tokens", "-3"], "max-tokens"),
    (["generate", "--temp", "-1"], "temperature"),
    (["generate", "--temp", "nan"], "temperature must be a finite number"),  # (was a ValueError
    (["generate", "--temp", "inf"], "temperature must be a finite number"),  # traceback; noise)
    (["generate", "--method", "nope"], "unknown method"),
    # what the user typed is quoted as typed, not read as rich markup (a stray closing tag
    # raised a MarkupError traceback; a bracketed option list vanished from the message)
    (["generate", "--method", "[/x]"], "unknown method '[/x]'"),
    (["generate", "--method", "auto[methods=pld]"], "unknown method 'auto[methods=pld]'"),
    (["generate", "--bogus-flag"], "No such option"),
    (["bench", "--prompts", "/no/such/prompts.jsonl", "--model", "/no/such/folder"], "cannot read prompts"),
    (["bench", "--json", "/no/such/folder/report.json"], "no folder /no/such/folder"),  # (before
    # the run: it was found only once the whole bench had run, and the report was lost)
    (["bench", "--methods", "ar,pld[num_draft_tokens=x]"], "num_draft_tokens must be a whole"),
    (["generate", "--method", "pld", "-o", "adaptive=1"], "adaptive must be true or false"),
    # found by probing (session 35): each was a traceback, a hang or a silent mistake
    (["generate", "--temp", "0.7", "--seed", "-1"], "seed must be a whole number in 0..2**64-1"),
    (["generate", "--method", "pld", "--num-draft-tokens", "100000"], "must be in 1..256"),  # hung
    (["generate", "--draft-model", "/no/such/folder"], "not found"),  # auto dropped it silently
    (["generate", "--num-draft-tokens", "0"], "num_draft_tokens must be in 1..256"),      # (auto)
    (["bench", "--json", "."], "give a file name, not a folder"),  # (found after the whole run)
    (["bench", "--warmup-tokens", "0"], "--warmup-tokens must be >= 1"),
    (["exactness", "--methods", ""], "name at least one method"),  # (an empty table, exit 0)
    (["serve", "--port", "99999"], "--port must be in 0..65535"),
    (["dsi-sim", "--target-ms", "10", "--drafter-ms", "1", "--acceptance", "0.5", "--workers", "0"],
     "--workers"),                                                                      # (hung)
    (["dsi-sim", "--target-ms", "inf", "--drafter-ms", "1", "--acceptance", "0.5"], "finite"),
    (["generate", "--model", ""], "the model is empty"),               # (". is not a model")
    (["train", "--out", "/tmp/x", "--text", "/dev/null", "--tokenizer", "/no/such/folder"],
     "not a tokenizer folder"),                                         # (a hub id's rules)
    (["train-tokenizer", "--text", "/dev/null", "--out", "/tmp/x"], "found 0 stories"),
    (["distill", "--out", "/tmp/x", "--text", "/dev/null"], "found 0 stories"),  # (IndexError)
    (["distill", "--out", "/tmp/x", "--text", "/etc/hostname", "--init-head", "/no/such"],
     "not a head folder"),                               # (found after the continuations' run)
])
def test_bad_input_is_one_line_and_nonzero(args, message):
    code, out, err = run_cli(*args)
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_bad_model_folders(tmp_path, random_model_dirs):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in random_model_dirs["llama"].iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    for folder, message in [(empty, "no config.json"), (corrupt, "could not load"),
                            (bad_json, "not valid JSON")]:
        code, _, err = run_cli("generate", "--model", str(folder))
        assert code != 0 and message in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1


def test_prompt_longer_than_context(random_model_dirs):
    long_prompt = "the sun was warm and the birds sang. " * 400
    code, _, err = run_cli("generate", "--model", str(random_model_dirs["llama"]), "--raw",
                           "--prompt", long_prompt)
    assert code != 0 and "context" in err and len(err.strip().splitlines()) == 1


def test_bench_json_schema(tmp_path, random_model_dirs):
    prompts = tmp_path / "q.jsonl"
    prompts.write_text("\n".join(json.dumps({"question_id": i, "category": cat, "turns": [text]})
                                 for i, (cat, text) in enumerate([("story", "once upon a time"),
                                                                  ("copy", "lily found the ball")])))
    out = tmp_path / "bench.json"
    code, stdout, err = run_cli("bench", "--model", str(random_model_dirs["qwen2"]), "--methods",
                                "pld,pld[num_draft_tokens=3]", "--prompts", str(prompts),
                                "--max-tokens", "10", "--json", str(out))
    assert code == 0, err
    report = json.loads(out.read_text())
    assert set(report) >= {"methods", "by_category", "machine", "model"}
    assert set(report["methods"]) == {"ar", "pld", "pld[num_draft_tokens=3]"}
    for entry in report["methods"].values():
        assert set(entry) >= {"tokens_per_s", "speedup", "mean_accepted", "target_calls", "matches_ar"}
        assert entry["matches_ar"] is True
    assert set(report["by_category"]) == {"story", "copy"}
    assert report["methods"]["ar"]["speedup"] == pytest.approx(1.0)
    for run in report["per_prompt"]:  # each step's tokens and seconds (bench/replay.py reads them)
        assert len(run["steps"]) == run["target_calls"]
        assert sum(tokens for tokens, _ in run["steps"]) == run["generated_tokens"]
        assert all(seconds > 0 for _, seconds in run["steps"])
        assert run["tokens_per_s"] == pytest.approx(
            run["generated_tokens"] / sum(seconds for _, seconds in run["steps"]), rel=1e-3)
        parts = run["step_parts"]  # where each step's seconds went, and what it verified
        assert len(parts) == len(run["steps"])
        for (_, seconds), (draft, verify, other, nodes, tree) in zip(run["steps"], parts):
            assert draft + verify + other == pytest.approx(seconds, abs=3e-6)
            assert nodes >= 1 and tree is False  # (pld sends chains)


def test_bench_samples_with_the_filters_it_is_given(tmp_path, random_models, random_model_dirs,
                                                    monkeypatch):
    """--top-p / --top-k / --min-p reach every method's sampling: at T = 1.0 with top_k = 1 the
    bench's stream is greedy decoding's; the command hands the filters to every stream it runs
    and records them; a filter without --temp is a one-line error."""
    from typer.testing import CliRunner

    import mlx_spec
    from mlx_spec.cli.app import app
    from mlx_spec.cli.bench_cmd import _stream_one, sampling_words

    model, spec = random_models["qwen2"], MethodSpec("pld", "pld")

    def tokens(temperature, filters=None):
        return [t for ids, _ in _stream_one(model, spec, "lily found the ball", 12, temperature,
                                            7, filters=filters) for t in ids]
    greedy = tokens(0.0)
    assert tokens(1.0, {"top_k": 1}) == greedy and tokens(1.0) != greedy

    seen, stream = [], mlx_spec.stream_generate
    def recording(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("top_p", "top_k", "min_p")})
        return stream(*args, **kwargs)
    monkeypatch.setattr(mlx_spec, "stream_generate", recording)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "--model", str(random_model_dirs["qwen2"]), "--methods", "pld", "--prompts",
        "chat", "--limit", "1", "--max-tokens", "4", "--temp", "0.7", "--top-p", "0.9",
        "--top-k", "20", "--min-p", "0.01", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "temp 0.7, top-p 0.9, top-k 20, min-p 0.01" in result.output  # the progress line
    assert seen and all(s == {"top_p": 0.9, "top_k": 20, "min_p": 0.01} for s in seen)
    settings = json.loads(out.read_text())["settings"]
    assert (settings["top_p"], settings["top_k"], settings["min_p"]) == (0.9, 20, 0.01)
    # the plot's title (and the progress line) name the filters; an older report, none
    assert sampling_words(settings) == "temp 0.7, top-p 0.9, top-k 20, min-p 0.01"
    assert sampling_words({"temperature": 0.7}) == "temp 0.7"
    code, _, err = run_cli("bench", "--model", str(random_model_dirs["qwen2"]), "--top-p", "0.9")
    assert code != 0 and "--temp" in err and len(err.strip().splitlines()) == 1


def test_method_options_are_checked_without_a_model():
    """What a bench checks before it loads: every method's options by kind, make_decoder's own
    kv_bits taken by every method, and an option may have any name (no clash with the
    checker's own parameters)."""
    from mlx_spec import methods
    from mlx_spec.errors import MlxSpecError

    methods.check_options("pld", kv_bits=8, num_draft_tokens=4, backoff=False)
    methods.check_options("dsi", kv_bits=8, workers=2)
    methods.check_options("pld", adaptive=np.False_, num_draft_tokens=np.int64(4))  # numpy's
    methods.check_options("lookahead", decay=1, node_budget=np.int32(100))  # an int for a float
    for method, options, message in (("pld", {"num_draft_tokens": "x"}, "a whole number"),
                                     ("pld", {"kv_bits": "x"}, "kv_bits must be"),
                                     ("pld", {"num_draft_tokens": np.True_}, "a whole number"),
                                     ("pld", {"factory": 1}, "unexpected keyword"),
                                     ("lookahead", {"name": 1}, "unexpected keyword")):
        with pytest.raises(MlxSpecError, match=message):
            methods.check_options(method, **options)


def test_method_spec_parsing():
    assert split_method_list("ar, redrafter[beam_width=2,beam_length=4],pld") == [
        "ar", "redrafter[beam_width=2,beam_length=4]", "pld"]
    spec = MethodSpec.parse("draft[num_draft_tokens=4,draft_model=a/b,temp=0.5]")
    assert spec.name == "draft" and spec.options == {"num_draft_tokens": 4, "draft_model": "a/b", "temp": 0.5}


def test_prompt_files(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("first prompt\n\nsecond prompt\n")
    assert [p["prompt"] for p in load_prompts(str(text))] == ["first prompt", "second prompt"]
    assert {p["category"] for p in load_prompts(None)} == {"story", "passage"}
    chat, chat2 = load_prompts("chat"), load_prompts("chat2")
    assert len(chat) == len(chat2) == 16 and chat2[0]["id"] == "advice-0"
    assert not {p["category"] for p in chat} & {p["category"] for p in chat2}


def test_the_cli_default_method_is_the_library_one():
    from mlx_spec import methods
    from mlx_spec.cli.common import DEFAULT_METHOD

    assert DEFAULT_METHOD == methods.DEFAULT == "auto"


def test_ignore_eos_decodes_to_max_tokens(random_model_dirs, monkeypatch):
    """Benchmarks at T > 0 need every method to write as many tokens: with ignore_eos an
    end-of-sequence token (planted: the model's first greedy token) does not end the text."""
    import mlx_spec
    from mlx_spec.loading import SpecModel

    model = mlx_spec.load(str(random_model_dirs["llama"]))
    first = mlx_spec.generate(model, "once upon a time", max_tokens=1, raw=True).token_ids[0]
    monkeypatch.setattr(SpecModel, "eos_token_ids", property(lambda self: frozenset({first})))
    stopped = mlx_spec.generate(model, "once upon a time", max_tokens=12, raw=True)
    assert stopped.token_ids == [] and stopped.finish_reason == "stop"
    for method in ("ar", "auto"):
        full = mlx_spec.generate(model, "once upon a time", method=method, max_tokens=12, raw=True,
                                 ignore_eos=True)
        assert len(full.token_ids) == 12 and full.token_ids[0] == first
        assert full.finish_reason == "length"


def test_verify_prediction_times_each_call_as_the_chain_or_tree_it_verified():
    from mlx_spec.bench import Run, add_verify_prediction, summarize
    from mlx_spec.cost import CostModel
    from mlx_spec.stats import GenerationStats

    cost = CostModel((1, 4, 8), (0.010, 0.012, 0.016), 128, tree_seconds=(0.010, 0.014, 0.020))
    stats = GenerationStats(target_calls=3, generated_tokens=6, verify_s=0.042,
                            accepted_per_call=[1, 2, 3],
                            verified_per_call=[(1, False), (4, False), (8, True)])
    plain = GenerationStats(target_calls=1, generated_tokens=1, verify_s=0.01,
                            accepted_per_call=[1], verified_per_call=[(1, False)])
    methods, _ = summarize([Run("ar", "0", "c", [1], plain), Run("m", "0", "c", [1], stats)], True)
    add_verify_prediction(methods, cost)
    assert methods["m"]["verified_calls"] == {"chain": {"1": 1, "4": 1}, "tree": {"8": 1}}
    assert methods["m"]["predicted_verify_ms_per_call"] == pytest.approx((10 + 12 + 20) / 3)
    assert methods["m"]["verify_ms_per_call"] == pytest.approx(14.0)
    assert methods["m"]["verify_ms_per_call_unstalled"] == pytest.approx(14.0)  # no stalls
    methods["m"]["stall_s"] = 0.012  # one stall's 12 ms beyond the median step, out of the verify
    add_verify_prediction(methods, cost)
    assert methods["m"]["verify_ms_per_call_unstalled"] == pytest.approx(10.0)
    # when sampling: chains at their sampled times; the tree adds one row (2 ms) per token of
    # the method's mean 2 per call, the rows its walk visits
    sampled = CostModel((1, 4, 8), (0.010, 0.012, 0.016), 128, tree_seconds=(0.010, 0.014, 0.020),
                        sampled_seconds=(0.012, 0.020, 0.030))
    add_verify_prediction(methods, sampled, sampled=True)
    assert methods["m"]["predicted_verify_ms_per_call"] == pytest.approx((12 + 20 + 24) / 3)


def test_the_prediction_anchored_to_plain_decoding_takes_out_the_machines_drift():
    """The machine ran 20% slower than when the model was measured: `ar`'s one-token calls took
    12 ms against 10 predicted, and the method's calls 20% more than predicted too; anchored to
    `ar`'s calls, the model's shape is exact, and the footer says so."""
    from mlx_spec.cli.bench_cmd import anchored_line
    from mlx_spec.bench import Run, add_verify_prediction, summarize
    from mlx_spec.cost import CostModel
    from mlx_spec.stats import GenerationStats

    cost = CostModel((1, 4, 8), (0.010, 0.012, 0.016), 128)
    stats = GenerationStats(target_calls=2, generated_tokens=4, verify_s=1.2 * 0.028,
                            accepted_per_call=[2, 2], verified_per_call=[(4, False), (8, False)])
    plain = GenerationStats(target_calls=1, generated_tokens=1, verify_s=0.012,
                            accepted_per_call=[1], verified_per_call=[(1, False)])
    methods, _ = summarize([Run("ar", "0", "c", [1], plain), Run("m", "0", "c", [1], stats)], True)
    add_verify_prediction(methods, cost)
    assert methods["m"]["predicted_verify_ms_per_call"] == pytest.approx(14.0)
    assert methods["m"]["verify_ms_per_call"] == pytest.approx(16.8)
    assert methods["m"]["predicted_verify_ms_per_call_anchored"] == pytest.approx(16.8)
    assert methods["ar"]["predicted_verify_ms_per_call_anchored"] == pytest.approx(12.0)
    assert anchored_line(methods).endswith("m 16.8 / 16.8 (+0%)")
    del methods["ar"]  # no plain decoding in the run: nothing to anchor to
    add_verify_prediction(methods, cost)
    assert "predicted_verify_ms_per_call_anchored" not in methods["m"] and anchored_line(methods) == ""


def test_a_method_whose_verifies_cost_far_more_than_predicted_is_named():
    """The bench warns where the cost model the choosers read missed a method's verify time by
    more than MISPREDICTED (the H200's 37.7 ms against 4.0 predicted), and not for the 5-12%
    misses of a CPU run."""
    from mlx_spec.bench import MISPREDICTED, mispredicted

    methods = {"ar": {"verify_ms_per_call": 2.1, "predicted_verify_ms_per_call": 2.6},
               "redrafter": {"verify_ms_per_call": 37.7, "predicted_verify_ms_per_call": 4.0},
               "pld": {"verify_ms_per_call": 56.0, "predicted_verify_ms_per_call": 52.4},
               "mlx-lm": {"verify_ms_per_call": 9.0}}  # no prediction: never named
    assert mispredicted(methods) == {"redrafter": (37.7, 4.0)}
    assert MISPREDICTED > 56.0 / 52.4


def test_the_stall_line_gives_speeds_and_verify_times_without_the_stalls():
    """Where the machine stalled, the footer gives each method's speedup and verify time per call
    without the stalls, the latter beside the cost model's prediction (the model is measured at
    the run's start; a stall is not the model's miss)."""
    from mlx_spec.cli.bench_cmd import stall_line

    methods = {"ar": {"stall_steps": 0, "stall_s": 0.0, "decode_s": 2.0, "speedup_unstalled": 1.0,
                      "verify_ms_per_call_unstalled": 11.8, "predicted_verify_ms_per_call": 11.5},
               "redrafter": {"stall_steps": 3, "stall_s": 0.3, "decode_s": 3.0,
                             "speedup_unstalled": 1.9, "verify_ms_per_call_unstalled": 17.0,
                             "predicted_verify_ms_per_call": 16.1}}
    line = stall_line(methods)
    assert "redrafter 3 (+0.3 s, 10.0% of its time)" in line
    assert "speedups without them: ar 1.00x, redrafter 1.90x" in line
    assert "verify ms per call without them / model ms: ar 11.8 / 11.5, redrafter 17.0 / 16.1" in line
    assert stall_line({n: dict(m, stall_steps=0) for n, m in methods.items()}) == ""
    assert "their due" in line and "median" in stall_line(methods, priced=False)


def test_the_control_line_gives_the_band_a_method_must_leave():
    from mlx_spec.cli.bench_cmd import control_line

    control = {"label": "ar (control)", "speedup": 0.991, "speedup_unstalled": 0.996,
               "speedup_by_round": [0.98, 1.002], "by_category": {"a": 0.97, "b": 1.02},
               "band": [0.97, 1.02], "band_unstalled": [0.981, 1.013]}
    line = control_line(control)
    assert "0.991x (0.996x without stalls), rounds 0.980 / 1.002" in line
    assert "per category 0.970-1.020x (0.981-1.013x without stalls)" in line
    one = control_line(dict(control, by_category={"a": 0.991}, speedup_by_round=None))
    assert "per category" not in one and "rounds" not in one
    from mlx_spec.bench import CONTROL, control_band  # `ar` emitted nothing: no band, no crash
    empty = control_band({CONTROL: {"speedup": None}}, {"a": {CONTROL: {"speedup": None}}})
    assert empty["band"] is None and "no speedup" in control_line(empty)
