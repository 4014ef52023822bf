"""Distilling a draft model of a chat target (`mlxspec train --instructions --teacher`): the
request + answer sequences line up with the stored target states, training on them lowers the
loss and resumes, the held-out scores are right for a draft that is the target itself, and the
command writes a folder that `draft` decodes with losslessly."""
import json
import shutil
import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlx_spec
from mlx_spec.train.chat_draft import (distribution_loss, evaluate_draft, make_batch,
                                       principal_embedding, split_sequences, train_draft)
from mlx_spec.drafters.model_parts import output_projection
from mlx_spec.train.distill_data import DataOptions, distillation_contexts, split_datasets
from mlx_spec.train.instructions import self_written_requests
from mlx_spec.train.lm import Checkpoint, TrainOptions

TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant: {% endif %}")
DATA = DataOptions(contexts=16, continuation=12, batch=8, temperatures=(0.0, 0.7))
HELDOUT = DataOptions(contexts=8, continuation=12, batch=4, temperatures=(0.0, 0.7), seed=1)


class EndsTurns:
    """The random target with its end-of-turn token made likely, so the turns it writes end."""

    def __init__(self, model, eos: int = 1):
        self.model, self.eos = model, eos

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, inputs, cache=None):
        logits = self.model(inputs, cache=cache)
        return logits + 4.0 * (mx.arange(logits.shape[-1]) == self.eos)


@pytest.fixture(scope="module")
def chat_dir(random_model_dirs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat_target") / "target"
    shutil.copytree(random_model_dirs["llama"], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    return folder


@pytest.fixture(scope="module")
def chat(chat_dir, tmp_path_factory):
    """(target, {split: sequences}, {split: data})"""
    target = mlx_spec.load(str(chat_dir))
    work = tmp_path_factory.mktemp("chat_data")
    model, target.model = target.model, EndsTurns(target.model)  # so it can write requests
    splits = distillation_contexts(target, None, None, DATA, HELDOUT, self_written=6,
                                   work_dir=work)
    target.model = model
    assert [(split, source.split(":")[0]) for split, _, _, source in splits] == [
        ("train", "instructions-v1"), ("heldout", "instructions-v1"), ("train", "self-written-v1")]
    parts = split_datasets(target.model, splits, work, target.path, set(target.eos_token_ids),
                           whole=True, log=lambda *a: None)
    sequences, data = split_sequences(parts)
    assert len(sequences["train"]) == len(data["train"]["tokens"]) == DATA.contexts + 6
    return target, sequences, data


def test_the_target_writes_distinct_requests_deterministically_and_resumes(chat_dir, tmp_path):
    target = mlx_spec.load(str(chat_dir))
    model, eos = EndsTurns(target.model), set(target.eos_token_ids)
    first = self_written_requests(model, target.tokenizer, 10, tmp_path / "a", eos, seed=3, batch=4)
    assert first == self_written_requests(model, target.tokenizer, 10, tmp_path / "b", eos,
                                          seed=3, batch=4)
    assert first != self_written_requests(model, target.tokenizer, 10, tmp_path / "c", eos,
                                          seed=4, batch=4)
    texts = [r["prompt"] for r in first]
    assert len(set(texts)) == 10 and all(r["category"] == "self-written" for r in first)
    assert all(len(t) >= 12 and "</s>" not in t and "<s>" not in t for t in texts)

    class Refuses:
        def __call__(self, *args, **kwargs):
            raise AssertionError("stored batches are read, not written again")

    assert self_written_requests(Refuses(), target.tokenizer, 10, tmp_path / "a", eos, seed=3,
                                 batch=4) == first


def test_sequences_line_up_with_the_stored_target_states(chat):
    target, sequences, data = chat
    output = output_projection(target.model)
    for s in sequences["train"]:
        tokens = data["train"]["tokens"][s["row"]]
        # the last request token is where the answer's first state sits
        assert s["tokens"][s["first"]] == tokens[0]
        scored = s["tokens"][s["first"] + 1:s["first"] + 1 + s["count"]]
        assert list(scored) == list(tokens[1:s["count"] + 1])
    # the target's own logits at the scored positions of a whole sequence are the stored states'
    # (the first two from the templates' requests, the last two from the self-written part)
    inputs, flat, states = make_batch(sequences["train"][:2] + sequences["train"][-2:],
                                      data["train"]["hidden"])
    h = target.model.model(mx.array(inputs))
    ours = output(mx.take(h.reshape(-1, h.shape[-1]), mx.array(flat), axis=0))
    stored = output(mx.array(states).astype(mx.float32))
    # (equal up to the fp16 the states are stored in; near-ties may flip an argmax)
    assert np.abs(np.array(ours) - np.array(stored)).max() < 0.05


def test_the_target_as_its_own_draft_scores_perfectly(chat):
    target, sequences, data = chat
    greedy = set(range(HELDOUT.batch))  # shard 0 is greedy
    report = evaluate_draft(target.model, output_projection(target.model), sequences["heldout"],
                            data["heldout"]["hidden"], greedy)
    assert report["top1_agreement"] == 1.0
    assert report["first_draft_accepted_T=0.7"] > 0.99
    # every chain of k drafts is accepted whole, except where the answer ends first
    rows = [s for s in sequences["heldout"] if s["row"] in greedy]
    for k in (2, 6):
        expected = np.mean([1 + min(k, s["count"] - j) for s in rows for j in range(s["count"])])
        assert report["greedy_tokens_per_call"][f"k={k}"] == pytest.approx(expected, abs=1e-3)


def test_training_lowers_the_loss_and_resumes(chat, tmp_path):
    from mlx_lm.models import llama

    target, sequences, data = chat
    output = output_projection(target.model)
    config = dict(model_type="llama", vocab_size=target.config["vocab_size"], hidden_size=32,
                  num_hidden_layers=1, intermediate_size=64, num_attention_heads=2,
                  num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=True)

    def fresh():
        mx.random.seed(0)
        model = llama.Model(llama.ModelArgs.from_dict(config))
        model.model.embed_tokens.weight = mx.array(principal_embedding(
            np.array(target.model.model.embed_tokens.weight), 32))
        return model

    def loss(model):
        inputs, flat, states = make_batch(sequences["train"], data["train"]["hidden"])
        teacher = nn.log_softmax(output(mx.array(states).astype(mx.float32)), axis=-1)
        return distribution_loss(model, mx.array(inputs), mx.array(flat), teacher)[0].item()

    options = TrainOptions(steps=30, batch_size=4, learning_rate=1e-2, warmup_steps=3,
                           save_every=15)
    checkpoint = Checkpoint(tmp_path / "draft.ckpt")
    model = fresh()
    before = loss(model)
    train_draft(model, output, sequences["train"], data["train"]["hidden"],
                TrainOptions(**{**options.__dict__, "steps": 15}), checkpoint, log=lambda *_: None)
    resumed = fresh()  # picks the checkpoint up at step 15
    progress = train_draft(resumed, output, sequences["train"], data["train"]["hidden"], options,
                           checkpoint, log=lambda *_: None)
    assert progress["step"] == 30 and len(progress["losses"]) == 30
    assert loss(resumed) < before - 0.1


def test_principal_embedding_keeps_the_leading_geometry():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(50, 3)) @ rng.normal(size=(3, 8))  # rank 3 in 8 dimensions
    p = principal_embedding(e, 3)
    assert np.allclose(p @ p.T, e @ e.T, atol=1e-6)  # the Gram matrix is kept exactly
    assert principal_embedding(e, 10).shape == (50, 10)


def test_train_command_writes_a_draft_that_decodes_losslessly(chat_dir, tmp_path):
    out = tmp_path / "draft"
    proc = subprocess.run(
        [sys.executable, "-c", "from mlx_spec.cli.app import main; main()", "train",
         "--instructions", "--teacher", str(chat_dir), "--out", str(out), "--preset", "draft",
         "--work-dir", str(tmp_path / "work"), "--contexts", "16", "--heldout-contexts", "8",
         "--continuation", "12", "--gen-batch", "8", "--steps", "4", "--batch-size", "4"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "training.json").read_text())
    assert report["data"]["train_answers"] == 16 and report["heldout"]["positions"] > 0
    assert set(report["heldout"]["greedy_tokens_per_call"]) == {"k=2", "k=3", "k=4", "k=5", "k=6"}
    companion = json.loads((out / "target.json").read_text())
    assert companion["role"] == "draft-model"
    target = mlx_spec.load(str(chat_dir))
    ar = mlx_spec.generate(target, "once upon a time", method="ar", max_tokens=24, raw=True)
    drafted = mlx_spec.generate(target, "once upon a time", method="draft", max_tokens=24,
                                raw=True, draft_model=str(out))
    assert drafted.token_ids == ar.token_ids
    # fine-tuning starts from the given draft (a step at a vanishing rate leaves its weights)
    command = [sys.executable, "-c", "from mlx_spec.cli.app import main; main()", "train",
               "--instructions", "--teacher", str(chat_dir), "--preset", "draft",
               "--work-dir", str(tmp_path / "work"), "--contexts", "16", "--heldout-contexts", "8",
               "--continuation", "12", "--gen-batch", "8", "--steps", "1", "--batch-size", "4",
               "--learning-rate", "1e-9"]
    proc = subprocess.run(command + ["--init", str(out), "--out", str(tmp_path / "tuned")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "tuned" / "training.json").read_text())["init"] == str(out)
    before, after = (mx.load(str(folder / "model.safetensors")) for folder in (out, tmp_path / "tuned"))
    assert all(np.allclose(np.array(before[k]), np.array(after[k]), atol=1e-3) for k in before)
    # --steps 0 writes the draft again with a drafting vocabulary; its history is kept
    zero = list(command)
    zero[zero.index("--steps") + 1] = "0"
    proc = subprocess.run(zero + ["--init", str(tmp_path / "tuned"), "--out", str(tmp_path / "v"),
                                  "--draft-vocab", "20"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    vocab = json.loads((tmp_path / "v" / "draft_vocab.json").read_text())
    report = json.loads((tmp_path / "v" / "training.json").read_text())
    assert len(vocab["ids"]) == 20 and report["draft_vocab"]["size"] == 20
    assert report["init_training"]["init"] == str(out) and report["training"]["final_loss"] is None
    assert 0 < vocab["heldout_coverage"] <= 1 and report["heldout"]["positions"] > 0
    kept = mx.load(str(tmp_path / "v" / "model.safetensors"))
    assert all(np.array_equal(np.array(after[k]), np.array(kept[k])) for k in after)
    with_vocab = mlx_spec.generate(target, "once upon a time", method="draft", max_tokens=24,
                                   raw=True, draft_model=str(tmp_path / "v"), draft_cost=0.0)
    assert with_vocab.token_ids == ar.token_ids
    proc = subprocess.run(zero + ["--out", str(tmp_path / "x")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and "--steps 0" in proc.stderr and not (tmp_path / "x").exists()
    proc = subprocess.run(command + ["--init", str(tmp_path / "missing"), "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "missing" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    # bad input: one line and a non-zero exit, nothing written
    proc = subprocess.run(
        [sys.executable, "-c", "from mlx_spec.cli.app import main; main()", "train",
         "--instructions", "--out", str(tmp_path / "nothing")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--teacher" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "nothing").exists()
    for command in (["train", "--text", "x.txt", "--tokenizer", "t"], ["distill", "--text", "x.txt"]):
        proc = subprocess.run(
            [sys.executable, "-c", "from mlx_spec.cli.app import main; main()", *command,
             "--self-written", "8", "--out", str(tmp_path / "nothing")],
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "--self-written" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "nothing").exists()
    proc = subprocess.run(
        [sys.executable, "-c", "from mlx_spec.cli.app import main; main()", "train", "--text",
         "x.txt", "--tokenizer", "t", "--draft-vocab", "8", "--out", str(tmp_path / "nothing")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--draft-vocab" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "nothing").exists()
