"""The app helper: one worker thread decodes, another thread reads the stream, cancels, waits;
generations in sequence share one decoder per method and its cache."""
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import mlx_spec
from mlx_spec.app import CANCELLED, Worker
from mlx_spec.target import Target

PROMPT = "once upon a time there was a little girl named lily. she liked to play"


@pytest.fixture
def target_calls(monkeypatch):
    """Record every prefill and verify: (kind, thread name, tokens sent)."""
    calls = []
    prefill, verify = Target.prefill, Target.verify

    def counting_prefill(self, tokens, *args, **kwargs):
        calls.append(("prefill", threading.current_thread().name, len(tokens)))
        return prefill(self, tokens, *args, **kwargs)

    def counting_verify(self, tree):
        calls.append(("verify", threading.current_thread().name, len(tree)))
        return verify(self, tree)
    monkeypatch.setattr(Target, "prefill", counting_prefill)
    monkeypatch.setattr(Target, "verify", counting_verify)
    return calls


@pytest.fixture(scope="module")
def model(random_models):
    return random_models["llama"]


def test_streams_from_the_worker_thread(model, target_calls):
    expected = mlx_spec.generate(model, PROMPT, method="pld", max_tokens=30, raw=True)
    target_calls.clear()
    with Worker(model) as worker:
        generation = worker.submit(PROMPT, max_tokens=30, raw=True)
        chunks = list(generation)
        result = generation.wait(timeout=60)
    assert [t for c in chunks for t in c.token_ids] == expected.token_ids == result.token_ids
    assert "".join(c.text for c in chunks) == expected.text == result.text
    assert result.finish_reason == expected.finish_reason and generation.done
    assert target_calls and {name for _, name, _ in target_calls} == {"mlx-spec-worker"}


def test_cancel_midway_stops_between_steps(model, monkeypatch):
    full = mlx_spec.generate(model, PROMPT, method="ar", max_tokens=50, raw=True)
    cancel_requested = threading.Event()
    stream_generate = mlx_spec.app.stream_generate

    def gated_stream(*args, **kwargs):  # the second step waits until the UI pressed stop
        for i, chunk in enumerate(stream_generate(*args, **kwargs)):
            if i == 1:
                cancel_requested.wait(30)
            yield chunk
    monkeypatch.setattr(mlx_spec.app, "stream_generate", gated_stream)
    with Worker(model, method="ar") as worker:
        generation = worker.submit(PROMPT, max_tokens=50, raw=True)
        first = next(iter(generation))
        generation.cancel()
        cancel_requested.set()
        result = generation.wait(timeout=60)
        # the step under way completes, then the worker stops: 2 of 50 tokens
        assert result.finish_reason == CANCELLED and generation.cancelled
        assert first.token_ids == full.token_ids[:1]
        assert result.token_ids == full.token_ids[:2]
        # the worker is free for the next generation, and the cache is consistent
        again = worker.submit(PROMPT, max_tokens=50, raw=True).wait(timeout=60)
    assert again.token_ids == full.token_ids


def test_generations_in_sequence_reuse_decoder_and_cache(model, target_calls):
    prompts = [PROMPT + more for more in (" with her ball", " in the park", " under a big tree")]
    expected = [mlx_spec.generate(model, p, method="pld", max_tokens=20, raw=True) for p in prompts]
    lengths = [len(mlx_spec.api.encode_prompt(model, p, raw=True)) for p in prompts]
    target_calls.clear()
    with Worker(model) as worker:
        generations = [worker.submit(p, max_tokens=20, raw=True) for p in prompts]
        results = [g.wait(timeout=60) for g in generations]
        decoder = worker.decoders.get(mlx_spec.methods.DEFAULT)  # what the worker used
        assert len(worker.decoders._decoders) == 1
    assert [r.token_ids for r in results] == [e.token_ids for e in expected]
    prefilled = [n for kind, _, n in target_calls if kind == "prefill"]
    assert prefilled[0] == lengths[0] - 1
    shared = len(mlx_spec.api.encode_prompt(model, PROMPT, raw=True)) - 1
    for n, length in zip(prefilled[1:], lengths[1:]):
        assert n <= length - shared  # only the part after the shared story prefix
    assert decoder.cached_tokens  # the cache outlives each generation


def test_errors_reach_the_reader_and_the_worker_survives(model):
    with Worker(model) as worker:
        bad = worker.submit(PROMPT, method="no-such-method", max_tokens=5)
        with pytest.raises(mlx_spec.MlxSpecError, match="unknown method"):
            list(bad)
        with pytest.raises(mlx_spec.MlxSpecError):
            bad.wait(timeout=60)
        assert worker.submit(PROMPT, max_tokens=5, raw=True).wait(timeout=60).token_ids


def test_cancel_before_start(model):
    with Worker(model) as worker:
        gate = threading.Event()

        def held():  # keeps the worker busy until the gate opens
            gate.wait(30)
            yield from ()
        blocker = worker.run(held())
        queued = worker.submit(PROMPT, max_tokens=5, raw=True)
        queued.cancel()
        gate.set()
        assert blocker.wait(timeout=60).token_ids == []
        result = queued.wait(timeout=60)
    assert result.finish_reason == CANCELLED and result.token_ids == []


def test_app_example_runs(random_model_dirs):
    """As a user runs it: a separate process, which must also exit cleanly (MLX used on a worker
    thread can abort the process at exit unless the thread's streams are released)."""
    example = Path(__file__).resolve().parents[2] / "examples" / "app_example.py"
    proc = subprocess.run([sys.executable, str(example), "--model", str(random_model_dirs["llama"]),
                           "--max-tokens", "200"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "[1] streaming" in text and "[2] cancelling" in text and "[3] in sequence" in text
    assert "finish: cancelled" in text
    assert text.count("...") == 3


def test_prompt_token_ids_outside_the_vocabulary_are_refused(random_models):
    """Token ids the model cannot embed are a clear error before any decoding (on the CPU the
    embedding lookup read past its table and the process died of a segmentation fault)."""
    from mlx_spec.errors import MlxSpecError

    model = random_models["llama"]
    vocab = model.vocab_size
    assert vocab == model.model.model.embed_tokens.weight.shape[0]
    for tokens, message in (([1, vocab], f"token id {vocab} is outside"),
                            ([-1, 2], "token id -1 is outside"), ([], "the prompt is empty"),
                            ((t for t in [1, vocab]), f"token id {vocab} is outside")):  # (read once)
        with pytest.raises(MlxSpecError, match=message):
            mlx_spec.generate(model, tokens, max_tokens=2, method="ar")
    assert len(mlx_spec.generate(model, [1, vocab - 1], max_tokens=2, method="ar").token_ids) == 2


@pytest.mark.parametrize("arguments, message", [
    ({"max_tokens": "8"}, "max_tokens must be a whole number"),
    ({"max_tokens": 8.5}, "max_tokens must be a whole number"),
    ({"temperature": "0.5"}, "temperature must be a number"),
    ({"top_k": 2.5}, "top_k must be a whole number"),
    ({"seed": -1, "temperature": 0.7}, "seed must be a whole number"),
    ({"seed": 2 ** 64, "temperature": 0.7}, "seed must be a whole number"),
    ({"stop": [1]}, "stop must be a string or a list of strings"),
    ({"stop": (s for s in [1])}, "stop must be a string or a list of strings"),  # (read once)
    ({"prompt": None}, "the prompt must be text or token ids"),
    ({"prompt": b"hello"}, "the prompt must be text or token ids"),
    ({"prompt": ["a"]}, "the prompt must be text or token ids"),
    ({"prompt": "bad \udcff bytes"}, "the prompt is not valid UTF-8"),  # (a file's bad bytes)
])
def test_wrong_arguments_are_one_clear_error(random_models, arguments, message):
    """Arguments of the wrong type or range are an MlxSpecError naming them, not a TypeError
    from deep inside (mx.random.key, the tokenizer, a slice)."""
    from mlx_spec.errors import MlxSpecError

    arguments = {"prompt": "Once upon", "max_tokens": 2, "method": "ar", **arguments}
    with pytest.raises(MlxSpecError, match=message.replace("*", "\\*")):
        mlx_spec.generate(random_models["llama"], arguments.pop("prompt"), **arguments)


def test_a_stop_string_alone_is_that_string(random_models):
    """stop="xyz" is one stop string (as the server reads it), not three one-letter ones."""
    model = random_models["llama"]
    text = mlx_spec.generate(model, [1, 2, 3], max_tokens=12, method="ar").text
    assert len(text) > 3
    word = text[1:3]
    cut = mlx_spec.generate(model, [1, 2, 3], max_tokens=12, method="ar", stop=word).text
    assert cut == text[:text.index(word)]


def test_stop_strings_cut_the_streamed_text_wherever_the_chunks_split_it():
    """Whatever chunks a reply streams in, the text ends right before the first stop string to
    complete, and only text that cannot begin one is ever yielded (nothing yielded is taken
    back)."""
    import random
    from mlx_spec.api import _Stops

    rng = random.Random(0)
    for _ in range(500):
        reply = "".join(rng.choice("abcd") for _ in range(rng.randint(1, 30)))
        stops = ["".join(rng.choice("abcd") for _ in range(rng.randint(1, 4)))
                 for _ in range(rng.randint(1, 3))]
        cuts = sorted(set(rng.sample(range(1, len(reply)), rng.randint(0, len(reply) - 1)))
                      | {len(reply)})
        chunks = [reply[a:b] for a, b in zip([0] + cuts, cuts)]
        cutter, out, stopped = _Stops(stops), "", False
        for i, chunk in enumerate(chunks):
            text, stopped = cutter.feed(chunk, last=i == len(chunks) - 1)
            out += text
            if stopped:
                break
        # the reply a character at a time: cut where a stop string first completes (the longest
        # of those that complete there)
        ends = [(at + len(s), at) for s in stops for at in [reply.find(s)] if at >= 0]
        first = min(ends)[1] if ends else None
        assert out == (reply if first is None else reply[:first]) and stopped == (first is not None)

