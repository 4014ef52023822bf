"""`mlxspec convert` imports llama2.c checkpoints exactly.

Two oracles: the real stories260K checkpoint with the text llama2.c's run.c prints for it (from
../shared, never copied into the repo), and a numpy transcription of run.c's forward pass run on
a small random checkpoint written here (so the converter is checked even without ../shared,
including the separate-classifier and version-1 layouts that stories260K does not use).
"""
import struct
import subprocess
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import generate_step

import mlx_spec
from mlx_spec.convert import convert_llama2c
from mlx_spec.convert.llama2c import MAGIC, VERSION1_HEADER, Llama2cConfig, layout
from mlx_spec.errors import MlxSpecError

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
STORIES = SHARED / "models" / "stories260K"
# run.c's default: 256 steps. Each step feeds one token and prints the token it samples, so from
# BOS at position 0 it prints 256 tokens (the last one sampled at position 255, never fed back).
RUN_C_STEPS = 256


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    if not STORIES.is_dir():
        pytest.skip(f"{STORIES} is absent: the stories260K oracle lives outside the repository")
    out = tmp_path_factory.mktemp("stories260K")
    convert_llama2c(STORIES / "stories260K.bin", STORIES / "tok512.bin", out, overwrite=True)
    return mlx_spec.load(str(out))


def test_greedy_decoding_reproduces_run_c_text(stories):
    # run.c ends its output with printf("\n") after the loop; that newline is the file's last
    # character, not a generated token (token 257 would be '"', then the <0x0A> byte token).
    expected = (STORIES / "EXPECTED_GREEDY.txt").read_text(encoding="utf-8")
    assert expected.endswith("you.\n")
    expected = expected[:-1]
    results = {method: mlx_spec.generate(stories, [1], method=method, max_tokens=RUN_C_STEPS,
                                         **({} if method == "ar" else {"backoff": False}))
               for method in ("ar", "pld")}  # pld's call count below is read without the timed back-off
    for method, result in results.items():
        # the text is streamed by mlx-lm's SPM detokenizer: it drops the leading space of the piece
        # after BOS and turns <0xXX> pieces into bytes, as run.c's decoding does
        assert result.text == expected, method
        assert result.finish_reason == "length"
    ar, pld = results["ar"], results["pld"]
    assert ar.token_ids == pld.token_ids
    assert len(ar.token_ids) == RUN_C_STEPS
    assert ar.stats.target_calls == RUN_C_STEPS
    assert pld.stats.target_calls < ar.stats.target_calls
    assert stories.tokenizer.decode(ar.token_ids) == expected


def test_mlx_lm_itself_decodes_the_same_tokens(stories):
    ids = []
    for token, _ in generate_step(mx.array([1]), stories.model, max_tokens=RUN_C_STEPS,
                                  sampler=lambda logprobs: mx.argmax(logprobs, axis=-1)):
        ids.append(int(token))
    assert ids == mlx_spec.generate(stories, [1], method="ar", max_tokens=RUN_C_STEPS).token_ids


def test_story_end_stops_like_run_c(stories):
    # llama2.c models end a story by predicting BOS, where run.c stops
    assert {1, 2} <= set(stories.eos_token_ids)
    assert stories.config["rope_traditional"] is True
    assert stories.config["tie_word_embeddings"] is True


TEXTS = ["Once upon a time, there was a little girl named Lily.",
         'Lily\'s mom said, "Lily, let\'s go to the park."\nThe end.',
         "  two  leading spaces", "Hello World! 123 (test) - x", "café naïve 日本 😀", ""]


def test_tokenizer_matches_sentencepiece_and_round_trips(stories):
    import sentencepiece as spm

    reference = spm.SentencePieceProcessor(model_file=str(Path(stories.path) / "tokenizer.model"))
    tokenizer = stories.tokenizer
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == [1] + reference.encode(text), text
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # byte fallback: "日" is three <0xXX> tokens
    assert len(tokenizer.encode("日", add_special_tokens=False)) == 4  # "▁" + 3 bytes


# --- a small random checkpoint, written here, checked against run.c's arithmetic in numpy ------

TINY = Llama2cConfig(dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300,
                     seq_len=64, shared_classifier=False)


def random_tensors(config: Llama2cConfig, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tensors = {name: rng.normal(0, 0.3, shape).astype(np.float32) for name, shape in layout(config)}
    for norm in ("attention_norm", "ffn_norm", "norm"):
        tensors[norm] = 1 + 0.1 * tensors[norm]
    return tensors


def write_legacy(path: Path, config: Llama2cConfig, tensors: dict) -> Path:
    vocab = config.vocab_size if config.shared_classifier else -config.vocab_size
    header = struct.pack("<7i", config.dim, config.hidden_dim, config.n_layers, config.n_heads,
                         config.n_kv_heads, vocab, config.seq_len)
    path.write_bytes(header + b"".join(tensors[name].tobytes() for name, _ in layout(config)))
    return path


def write_version1(path: Path, config: Llama2cConfig, tensors: dict) -> Path:
    v1 = Llama2cConfig(**{**config.__dict__, "version": 1})
    header = struct.pack("<Ii7iB", MAGIC, 1, config.dim, config.hidden_dim, config.n_layers,
                         config.n_heads, config.n_kv_heads, config.vocab_size, config.seq_len,
                         int(config.shared_classifier))
    header = header.ljust(VERSION1_HEADER, b"\0")
    path.write_bytes(header + b"".join(tensors[name].tobytes() for name, _ in layout(v1)))
    return path


def write_tokenizer(path: Path, vocab_size: int) -> Path:
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % i for i in range(256)]
    words = [b" " + bytes([c]) for c in range(ord("a"), ord("z") + 1)] + [b"th", b"he", b" the"]
    pieces += (words + [b"x%d" % i for i in range(vocab_size)])[:vocab_size - len(pieces)]
    body = b"".join(struct.pack("<fi", -float(i), len(p)) + p for i, p in enumerate(pieces))
    path.write_bytes(struct.pack("<i", max(map(len, pieces))) + body)
    return path


def run_c_logits(t: dict, c: Llama2cConfig, tokens: list[int]) -> np.ndarray:
    """run.c's forward(), transcribed: RoPE on consecutive pairs, GQA by head // group."""
    hs, group = c.head_size, c.n_heads // c.n_kv_heads
    rmsnorm = lambda x, w: x / np.sqrt(np.mean(x * x) + 1e-5) * w  # noqa: E731
    keys = [[] for _ in range(c.n_layers)]
    values = [[] for _ in range(c.n_layers)]
    logits = []
    for pos, token in enumerate(tokens):
        x = t["tok_embeddings"][token].astype(np.float64)
        for layer in range(c.n_layers):
            xb = rmsnorm(x, t["attention_norm"][layer])
            q, k, v = t["wq"][layer] @ xb, t["wk"][layer] @ xb, t["wv"][layer] @ xb
            for vec in (q, k):
                for i in range(0, len(vec), 2):
                    angle = pos / 10000.0 ** ((i % hs) / hs)
                    cos, sin = np.cos(angle), np.sin(angle)
                    vec[i], vec[i + 1] = vec[i] * cos - vec[i + 1] * sin, vec[i] * sin + vec[i + 1] * cos
            keys[layer].append(k)
            values[layer].append(v)
            K, V = np.stack(keys[layer]), np.stack(values[layer])
            heads = []
            for h in range(c.n_heads):
                kv = slice((h // group) * hs, (h // group + 1) * hs)
                scores = K[:, kv] @ q[h * hs:(h + 1) * hs] / np.sqrt(hs)
                weights = np.exp(scores - scores.max())
                heads.append((weights / weights.sum()) @ V[:, kv])
            x = x + t["wo"][layer] @ np.concatenate(heads)
            xb = rmsnorm(x, t["ffn_norm"][layer])
            gate = t["w1"][layer] @ xb
            x = x + t["w2"][layer] @ (gate / (1 + np.exp(-gate)) * (t["w3"][layer] @ xb))
        classifier = t["tok_embeddings"] if c.shared_classifier else t["output"]
        logits.append(classifier @ rmsnorm(x, t["norm"]))
    return np.stack(logits)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_llama2c")
    tensors = random_tensors(TINY)
    return root, tensors, write_legacy(root / "tiny.bin", TINY, tensors), \
        write_tokenizer(root / "tok.bin", TINY.vocab_size)


def test_random_checkpoint_matches_run_c_arithmetic(tiny):
    root, tensors, checkpoint, tokenizer = tiny
    model = mlx_spec.load(str(convert_llama2c(checkpoint, tokenizer, root / "legacy")))
    assert model.config["tie_word_embeddings"] is False  # negative vocab_size: own classifier
    tokens = [1, 270, 5, 299, 42, 288, 7, 100, 3]
    logits = np.array(model.model(mx.array([tokens]))[0])
    np.testing.assert_allclose(logits, run_c_logits(tensors, TINY, tokens), atol=2e-4, rtol=1e-4)


def test_version1_export_gives_the_same_weights(tiny):
    root, tensors, checkpoint, tokenizer = tiny
    legacy = convert_llama2c(checkpoint, tokenizer, root / "from_legacy")
    v1 = convert_llama2c(write_version1(root / "tiny_v1.bin", TINY, tensors), tokenizer, root / "from_v1")
    a, b = mx.load(str(legacy / "model.safetensors")), mx.load(str(v1 / "model.safetensors"))
    assert a.keys() == b.keys() and "lm_head.weight" in a
    assert all(mx.array_equal(a[name], b[name]).item() for name in a)


def test_tokenizer_of_another_size_is_refused(tiny):
    root, _, checkpoint, _ = tiny
    with pytest.raises(MlxSpecError, match="the model has 300 tokens, the tokenizer has 290"):
        convert_llama2c(checkpoint, write_tokenizer(root / "small.bin", 290), root / "refused")
    assert not (root / "refused").exists()


def test_truncated_checkpoint_is_one_line_error(tiny, tmp_path):
    _, _, checkpoint, tokenizer = tiny
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    out = tmp_path / "out"
    done = subprocess.run(["mlxspec", "convert", "--checkpoint", str(truncated), "--tokenizer",
                           str(tokenizer), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "truncated" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
