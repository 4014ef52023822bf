"""Distilling a ReDrafter head: the data cache, a tiny training run that lowers the loss and
resumes, the `mlxspec distill` command end to end, and the trained head decoding losslessly
(greedy token for token, sampled with exactly the target's distribution)."""
import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

import mlx_spec
from mlx_spec.drafters.model_parts import token_embedding
from mlx_spec.sampling import SamplingParams
from mlx_spec.train.distill import HeadOptions, build_head, heldout_accuracy, train_head
from mlx_spec.train.distill_data import DataOptions, generate_data, story_token_lists
from mlx_spec.train.lm import TrainOptions
from support.random_models import CORPUS
from support.exactness import chi_square_pvalue, exact_distribution, sample_continuations

STORIES = [s.strip() + "." for s in CORPUS.split(". ") if s.strip()][:40]
DATA = DataOptions(contexts=24, continuation=20, batch=8, context_lengths=(4, 8, 12))
HEAD = HeadOptions(exit_dim=64, num_draft_layers=1, draft_steps=3)


@pytest.fixture(scope="module")
def small(random_models):
    return random_models["llama"]


@pytest.fixture(scope="module")
def data(small, tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill") / "train"
    stories = story_token_lists(small.tokenizer, STORIES)
    return generate_data(small.model, stories, folder, DATA, set(small.eos_token_ids)), folder


@pytest.fixture(scope="module")
def trained(small, data, tmp_path_factory):
    """(head, loss before, loss after, folder of the saved head)."""
    from mlx_spec.drafters.redrafter import save_drafter

    arrays, _ = data
    mx.random.seed(0)
    head = build_head(small.model, HEAD)
    embed = mx.array(token_embedding(small.model).weight)
    before = heldout_accuracy(head, embed, arrays, HEAD.draft_steps)
    ckpt = tmp_path_factory.mktemp("ckpt") / "head.ckpt"
    options = TrainOptions(steps=40, batch_size=8, learning_rate=3e-3, warmup_steps=4, save_every=20)
    halfway = TrainOptions(**{**options.__dict__, "steps": 20})
    train_head(head, embed, arrays, HEAD, halfway, ckpt, log=lambda *_: None)
    resumed = build_head(small.model, HEAD)  # a fresh head picks up the checkpoint at step 20
    progress = train_head(resumed, embed, arrays, HEAD, options, ckpt, log=lambda *_: None)
    assert progress["step"] == 40 and len(progress["losses"]) == 40
    after = heldout_accuracy(resumed, embed, arrays, HEAD.draft_steps)
    folder = tmp_path_factory.mktemp("head") / "head"
    save_drafter(resumed, folder)
    return resumed, before, after, str(folder)


def test_data_shapes_and_cache(small, data):
    arrays, folder = data
    assert arrays["tokens"].shape == (24, DATA.continuation + 1)
    assert arrays["hidden"].shape == (24, DATA.continuation, small.config["hidden_size"])
    assert arrays["hidden"].dtype == np.float16
    assert (arrays["lengths"] >= 2).all() and (arrays["lengths"] <= DATA.continuation + 1).all()
    # the hidden state at j chose token j + 1 (greedy): the target's own continuation
    from mlx_spec.drafters.model_parts import output_projection

    head = output_projection(small.model)
    logits = head(mx.array(arrays["hidden"][:4, :5]).astype(mx.float32))
    agree = np.array(mx.argmax(logits, axis=-1)) == arrays["tokens"][:4, 1:6]
    assert agree.mean() > 0.9  # fp16 storage may flip a near-tie
    # a second call reads the shards instead of generating
    shards = sorted(folder.glob("shard-*.npz"))
    mtimes = [s.stat().st_mtime_ns for s in shards]
    again = generate_data(small.model, [], folder, DATA, set())
    assert [s.stat().st_mtime_ns for s in shards] == mtimes
    np.testing.assert_array_equal(again["tokens"], arrays["tokens"])


def test_tiny_distillation_lowers_the_loss(trained):
    _, before, after, _ = trained
    assert after["loss"] < 0.7 * before["loss"]
    assert after["top1_per_step"][0] > before["top1_per_step"][0]


def story_prompt(small, length=8):
    """A context like the training ones (the corpus repeats its sentences)."""
    return story_token_lists(small.tokenizer, STORIES)[0][:length]


def test_trained_head_is_lossless_greedy(small, trained):
    folder = trained[3]
    prompt = story_prompt(small)
    ar = mlx_spec.generate(small, prompt, method="ar", max_tokens=48, raw=True)
    result = mlx_spec.generate(small, prompt, method="redrafter", max_tokens=48, raw=True,
                               head=folder, beam_width=4, beam_length=4,
                               backoff=False)  # acceptance is read from drafting rounds only
    assert result.token_ids == ar.token_ids
    assert result.stats.mean_accepted > 1.5  # the trained head really drafts what the target says


@pytest.mark.parametrize("temperature", [0.7, 1.0])
@pytest.mark.parametrize("sampled_drafts", [True, False])  # sampled chains, or beams walked
def test_trained_head_samples_the_target_distribution(small, trained, temperature, sampled_drafts):
    params = SamplingParams(temperature=temperature, top_k=3)
    prompt = story_prompt(small)
    exact = exact_distribution(small.model, prompt, 3, params)
    decoder = mlx_spec.make_decoder(small, "redrafter", head=trained[3], beam_width=4, beam_length=3,
                                    sampled_drafts=sampled_drafts)
    counts = sample_continuations(decoder, prompt, 3, params, 600)
    assert chi_square_pvalue(counts, exact) > 1e-4


def test_distill_command_end_to_end(random_model_dirs, tmp_path):
    text = tmp_path / "stories.txt"
    text.write_text("\n".join(STORIES) + "\n")
    out = tmp_path / "head"
    proc = subprocess.run(
        [sys.executable, "-c", "from mlx_spec.cli.app import main; main()", "distill",
         "--model", str(random_model_dirs["llama"]), "--text", str(text), "--out", str(out),
         "--work-dir", str(tmp_path / "work"), "--contexts", "16", "--heldout-contexts", "8",
         "--continuation", "16", "--gen-batch", "8", "--exit-dim", "32", "--draft-steps", "3",
         "--steps", "6", "--batch-size", "4", "--soft-labels", "--draft-vocab", "40"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "training.json").read_text())
    assert report["head"]["soft_labels"]
    assert set(report["heldout"]["first_draft_accepted_sampling"]) == {"T=0.7", "T=1.0"}
    assert all(0 < v <= 1 for v in report["heldout"]["first_draft_accepted_sampling"].values())
    # a head that learned the target's distributions samples its chains from them as they are
    assert json.loads((out / "config.json").read_text())["head_temperature"] == 1.0
    assert report["data"]["train_sequences"] == 16
    assert len(report["heldout"]["top1_per_step"]) == 3
    assert report["heldout"]["tokens_per_call_by_beam"]
    vocab = json.loads((out / "draft_vocab.json").read_text())
    assert len(vocab["ids"]) == vocab["size"] == 40 and report["draft_vocab"]["size"] == 40
    assert 0 < report["draft_vocab"]["heldout_coverage"] <= vocab["train_coverage"] <= 1
    model = mlx_spec.load(str(random_model_dirs["llama"]))
    ar = mlx_spec.generate(model, "once upon a time", method="ar", max_tokens=20, raw=True)
    result = mlx_spec.generate(model, "once upon a time", method="redrafter", max_tokens=20,
                               raw=True, head=str(out))
    assert result.token_ids == ar.token_ids
    assert mlx_spec.make_decoder(model, "redrafter", head=str(out)).drafter.heads[True].temperature == 1.0
    assert mlx_spec.make_decoder(model, "redrafter", head=str(out),
                                 head_temperature=1.5).drafter.heads[True].temperature == 1.5
    # it is the target's sampling head (the greedy head's role stays for heads of tokens)
    assert json.loads((out / "target.json").read_text())["role"] == "redrafter-sampling-head"
    # bad input is one line and a non-zero exit
    proc = subprocess.run([sys.executable, "-c", "from mlx_spec.cli.app import main; main()",
                           "distill", "--text", str(tmp_path / "missing.txt"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "not found" in proc.stderr


def test_drafting_vocabulary_is_the_most_frequent_answer_tokens_and_trains_on_them(small, data):
    """draft_vocabulary keeps the K most frequent continuation tokens; the loss over a
    vocabulary of every id equals the whole-vocabulary loss, and over a smaller one it leaves out
    the positions whose token it lacks while counting them as misses."""
    from mlx_spec.train.distill import (draft_vocabulary, multi_step_loss, pad_tokens,
                                        vocab_arrays, vocabulary_coverage)

    arrays, _ = data
    tokens, lengths = arrays["tokens"], arrays["lengths"]
    answers = np.concatenate([row[1:n] for row, n in zip(tokens, lengths)])
    counts = np.bincount(answers)
    ids = draft_vocabulary(arrays, 5)
    assert len(ids) == 5 and counts[ids].min() >= np.sort(counts)[-5]
    assert vocabulary_coverage(arrays, ids) == pytest.approx(counts[ids].sum() / len(answers))

    steps = HEAD.draft_steps
    mx.random.seed(0)
    head = build_head(small.model, HEAD)
    embed = mx.array(token_embedding(small.model).weight)
    batch = (mx.array(arrays["hidden"][:8]).astype(mx.float32),
             mx.array(pad_tokens(tokens[:8], steps)), mx.array(lengths[:8]))
    whole, whole_accuracy = multi_step_loss(head, embed, *batch, steps)
    head.vocab_ids = np.arange(head.config.vocab_size, dtype=np.int32)
    same, same_accuracy = multi_step_loss(head, embed, *batch, steps, vocab=vocab_arrays(head))
    assert same.item() == pytest.approx(whole.item(), rel=1e-4)
    np.testing.assert_allclose(np.array(same_accuracy), np.array(whole_accuracy))
    head.vocab_ids = ids
    limited, accuracy = multi_step_loss(head, embed, *batch, steps, vocab=vocab_arrays(head))
    assert np.isfinite(limited.item()) and limited.item() < whole.item()  # 5 choices, not V
    assert (np.array(accuracy) <= vocabulary_coverage(arrays, ids) + 0.05).all()


def test_soft_labels_are_the_cross_entropy_against_the_target_distribution(small, data, tmp_path):
    """With a target whose distribution is all on the continuation's next token, the soft-label
    loss is the hard one; with the real target's distributions, training lowers it."""
    from mlx_spec.drafters.model_parts import output_projection
    from mlx_spec.train.distill import multi_step_loss, pad_tokens

    arrays, _ = data
    steps = HEAD.draft_steps
    mx.random.seed(0)
    head = build_head(small.model, HEAD)
    embed = mx.array(token_embedding(small.model).weight)
    hidden = mx.array(arrays["hidden"][:8]).astype(mx.float32)
    tokens = mx.array(pad_tokens(arrays["tokens"][:8], steps))
    lengths = mx.array(arrays["lengths"][:8])
    vocab = embed.shape[0]
    next_tokens = tokens[:, 1:1 + hidden.shape[1]]
    certain = lambda h: 1e4 * (mx.arange(vocab)[None, None] == next_tokens[..., None])
    hard, _ = multi_step_loss(head, embed, hidden, tokens, lengths, steps)
    soft, _ = multi_step_loss(head, embed, hidden, tokens, lengths, steps, output=certain)
    assert abs(hard.item() - soft.item()) < 1e-3 * hard.item()

    output = output_projection(small.model)
    before, _ = multi_step_loss(head, embed, hidden, tokens, lengths, steps, output=output)
    assert abs(before.item() - hard.item()) > 0.01 * hard.item()  # a distribution, not a token
    options = TrainOptions(steps=30, batch_size=8, learning_rate=3e-3, warmup_steps=3, save_every=30)
    soft_head = HeadOptions(**{**HEAD.__dict__, "soft_labels": True})
    train_head(head, embed, arrays, soft_head, options, tmp_path / "head.ckpt", log=lambda *_: None,
               output=output)
    after, _ = multi_step_loss(head, embed, hidden, tokens, lengths, steps, output=output)
    assert after.item() < 0.9 * before.item()
