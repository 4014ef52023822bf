"""Distilling a draft model of a chat target on its own answers (`mlxspec train --instructions`).

A pretrained chat model such as SmolLM2-135M has no smaller sibling for `draft` and `adaedl`, so one
is made: a small llama with the target's tokenizer, trained on the generated chat requests of
train/instructions.py followed by the target's answers to them (greedy and sampled; the same data
`mlxspec distill --instructions` makes and caches, so the two share it). The loss is the
cross-entropy against the target's whole next-token distribution at every answer position, which
the data already holds as the target's hidden states: softmax(lm_head(h)) costs one projection, no
target forward. Prompt positions are read (the draft sees the request, as when drafting) but not
scored: a draft only ever guesses answers.

The draft's tied embedding starts as the target's projected on its top principal directions
(E V_d, from the eigenvectors of E^T E): from step 0 its logits share the target's token geometry,
which a few hundred steps on a two-core CPU could not learn from scratch.

With a drafting vocabulary (--draft-vocab K: the K answer tokens most frequent in the training
data, written to the folder as draft_vocab.json; drafters/draft_vocab.py) the draft proposes only
those tokens. It is trained over the whole vocabulary all the same (restricting its argmax to the K
changes a guess only where it would have been a rare token) and scored as it drafts.

After training it is scored on the held-out answers: top-1 agreement with the target, the tokens
per target call a greedy chain of k drafts would give along the target's greedy answers (teacher
forcing on them is exactly what drafting sees while its guesses are right), and the acceptance
sum_v min(p, q) of a sampled first draft at temperature 0.7.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .distill import drafting_vocabulary
from .distill_data import (DataOptions, concatenated, distillation_contexts, shard_order,
                           split_datasets, training_source)
from .lm import (Checkpoint, TrainOptions, adamw, count_parameters, load_weights_from, model_config,
                 write_model_folder)

CHAINS = (2, 3, 4, 5, 6)  # draft lengths whose greedy tokens per call are reported


def chat_sequences(prompts: list[list[int]], data: dict) -> list[dict]:
    """Per answer: the request followed by the answer, and where the scored positions are.

    data["tokens"][r] = [last request token, answer...] and data["hidden"][r, j] is the target's
    state at answer position j (it chose tokens[r, j + 1]); in the whole sequence that position
    sits at len(request) - 1 + j."""
    out = []
    for r, prompt in enumerate(prompts):
        length = int(data["lengths"][r])
        out.append({"tokens": np.asarray(list(prompt) + list(data["tokens"][r, 1:length]), np.int32),
                    "first": len(prompt) - 1, "count": length - 1, "row": r})
    return out


def split_sequences(parts: dict) -> tuple[dict, dict]:
    """({split: sequences}, {split: data}) from distill_data.split_datasets' parts: each split's
    parts concatenated, the sequences' rows counted on across them."""
    sequences, data = {}, {}
    for split, part in parts.items():
        sequences[split], rows = [], 0
        for prompts, options, part_data, _ in part:
            sequences[split] += [{**s, "row": s["row"] + rows} for s in
                                 chat_sequences(shard_order(prompts, options), part_data)]
            rows += len(part_data["tokens"])
        data[split] = concatenated(part)
    return sequences, data


def make_batch(sequences: list[dict], hidden: np.ndarray):
    """Right-padded inputs [B, L], flat indices of the scored positions [N] and the target's
    states there [N, D] (right padding is invisible to the causal positions before it)."""
    width = max(len(s["tokens"]) for s in sequences) - 1
    inputs = np.zeros((len(sequences), width), np.int32)
    flat, states = [], []
    for b, s in enumerate(sequences):
        inputs[b, :len(s["tokens"]) - 1] = s["tokens"][:-1]
        flat.append(b * width + s["first"] + np.arange(s["count"]))
        states.append(hidden[s["row"], :s["count"]])
    return inputs, np.concatenate(flat), np.concatenate(states)


def scored_logits(model, inputs, flat):
    """The draft's logits [N, V] at the scored positions only (the vocabulary projection is the
    expensive part: 49,152 columns for SmolLM2)."""
    import mlx.core as mx

    from ..drafters.model_parts import output_projection

    h = model.model(inputs)
    return output_projection(model)(mx.take(h.reshape(-1, h.shape[-1]), flat, axis=0))


def distribution_loss(model, inputs, flat, target_log_probs):
    """Mean over scored positions of -sum_v p(v) log q(v); also the top-1 agreement."""
    import mlx.core as mx
    import mlx.nn as nn

    logits = scored_logits(model, inputs, flat)
    loss = -(mx.exp(target_log_probs) * nn.log_softmax(logits, axis=-1)).sum(axis=-1).mean()
    agree = (mx.argmax(logits, axis=-1) == mx.argmax(target_log_probs, axis=-1)).mean()
    return loss, agree


def principal_embedding(target_embedding: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    """E V_d: the target's token embedding [V, D] on its top-`dims` principal directions (a draft
    wider than the target gets small random columns beyond D)."""
    e = target_embedding.astype(np.float64)
    values, vectors = np.linalg.eigh(e.T @ e)
    top = vectors[:, np.argsort(values)[::-1][:dims]]
    projected = e @ top
    if dims > projected.shape[1]:
        extra = np.random.default_rng(seed).normal(0, projected.std(), (len(e), dims - top.shape[1]))
        projected = np.concatenate([projected, extra], axis=1)
    return projected.astype(np.float32)


def train_draft(model, output, sequences: list[dict], hidden: np.ndarray, options: TrainOptions,
                checkpoint: Checkpoint, log=print) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from .progress import TrainingProgress

    optimizer = adamw(options)
    progress = {"step": 0, "seconds": 0.0, "losses": [], "agreement": []}
    if options.steps == 0:  # only scored and written again (a new drafting vocabulary)
        return progress
    if checkpoint.exists():
        progress = checkpoint.load(model, optimizer)
        log(f"resumed from {checkpoint.folder} at step {progress['step']}")
    loss_and_grad = nn.value_and_grad(model, distribution_loss)
    state = [model.state, optimizer.state]
    with checkpoint.resume_hint(), \
            TrainingProgress("training draft", options.steps, start=progress["step"]) as bar:
        while progress["step"] < options.steps:
            rng = np.random.default_rng([options.seed, progress["step"]])
            pick = rng.choice(len(sequences), size=options.batch_size,
                              replace=len(sequences) < options.batch_size)
            t0 = time.perf_counter()
            inputs, flat, states = make_batch([sequences[i] for i in pick], hidden)
            target = mx.stop_gradient(nn.log_softmax(output(mx.array(states).astype(mx.float32)),
                                                     axis=-1))
            (loss, agree), grads = loss_and_grad(model, mx.array(inputs), mx.array(flat), target)
            grads, _ = optim.clip_grad_norm(grads, options.grad_clip)
            optimizer.update(model, grads)
            mx.eval(state, loss, agree)
            progress["seconds"] += time.perf_counter() - t0
            progress["step"] += 1
            progress["losses"].append(round(loss.item(), 4))
            progress["agreement"].append(round(agree.item(), 4))
            bar.update(progress["step"], loss=loss.item(), top1=agree.item())
            if progress["step"] % options.save_every == 0 or progress["step"] == options.steps:
                checkpoint.save(model, optimizer, progress)
    return progress


def evaluate_draft(model, output, sequences: list[dict], hidden: np.ndarray, greedy_rows: set,
                   temperature: float = 0.7, batch: int = 16, vocab=None) -> dict:
    """Held-out agreement, greedy chain tokens per call, and sampled first-draft acceptance (of
    drafts from the drafting vocabulary `vocab` [K] where there is one)."""
    import mlx.core as mx

    from ..drafters.draft_vocab import widen

    agree, accept, runs = [], [], {k: [] for k in CHAINS}
    for i in range(0, len(sequences), batch):
        chunk = sequences[i:i + batch]
        inputs, flat, states = make_batch(chunk, hidden)
        logits = scored_logits(model, mx.array(inputs), mx.array(flat))
        if vocab is not None:
            logits = widen(logits[:, vocab], vocab, logits.shape[-1])
        target = output(mx.array(states).astype(mx.float32))
        match = np.array(mx.argmax(logits, axis=-1) == mx.argmax(target, axis=-1))
        q, p = mx.softmax(logits / temperature, axis=-1), mx.softmax(target / temperature, axis=-1)
        accept.extend(np.array(mx.minimum(p, q).sum(axis=-1)).tolist())
        agree.extend(match.tolist())
        start = 0
        for s in chunk:
            row = match[start:start + s["count"]]
            start += s["count"]
            if s["row"] not in greedy_rows:
                continue
            for k in CHAINS:  # a chain of k drafts from position j: accepted = leading matches
                for j in range(len(row)):
                    window = row[j:j + k]
                    runs[k].append(1 + int(np.cumprod(window).sum()))
    return {"top1_agreement": round(float(np.mean(agree)), 4),
            "greedy_tokens_per_call": {f"k={k}": round(float(np.mean(v)), 3)
                                       for k, v in runs.items() if v},
            f"first_draft_accepted_T={temperature}": round(float(np.mean(accept)), 4),
            "positions": len(agree)}


def distill_chat_draft(target_path: str, out: Path, work_dir: Path, preset: str,
                       data_options: DataOptions, heldout_options: DataOptions,
                       options: TrainOptions, checkpoint_dir: Path | None = None,
                       self_written: int = 0, init_dir: Path | None = None,
                       vocab_size: int = 0, log=print) -> dict:
    """Make (or reuse) the target's answers (to the templates' requests and self_written of its
    own), train a `preset` draft on them (options.steps may be 0 with init_dir: the draft is only
    scored and written again, e.g. with a new drafting vocabulary of `vocab_size` tokens; without
    one a fine-tuned draft keeps init_dir's), write an mlx-lm folder with a target.json naming
    the target (so `draft` finds it) and a training.json."""
    import mlx.core as mx
    from mlx_lm.models import llama

    from .. import load
    from ..drafters import draft_vocab
    from ..drafters.model_parts import output_projection, token_embedding
    from ..loading import write_companion

    started = time.perf_counter()
    target = load(target_path)
    splits = distillation_contexts(target, None, None, data_options, heldout_options,
                                   self_written, work_dir)
    parts = split_datasets(target.model, splits, work_dir, target.path,
                           set(target.eos_token_ids), whole=True, log=log)
    source = training_source(splits)
    sequences, data = split_sequences(parts)
    for split in sequences:
        log(f"{split}: {len(sequences[split])} answers, "
            f"{sum(s['count'] for s in sequences[split]):,} scored positions")
    data_seconds = time.perf_counter() - started

    config = model_config(preset, target.config["vocab_size"],
                          target.config.get("max_position_embeddings", 2048),
                          target.config.get("bos_token_id"), target.config.get("eos_token_id"))
    mx.random.seed(options.seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    embedding = np.array(token_embedding(target.model).weight.astype(mx.float32))
    model.model.embed_tokens.weight = mx.array(
        principal_embedding(embedding, config["hidden_size"], options.seed))
    kept = (None, {})
    if init_dir is not None:  # fine-tune a draft of the same preset instead
        load_weights_from(model, init_dir)
        kept = draft_vocab.read(init_dir, config["vocab_size"])
    vocab, vocab_info = drafting_vocabulary(data, vocab_size, source, kept, log)
    mx.eval(model.parameters())
    log(f"{preset}: {count_parameters(model) / 1e6:.2f}M parameters")
    output = output_projection(target.model)
    checkpoint = Checkpoint(checkpoint_dir or out.with_name(out.name + ".ckpt"))
    progress = train_draft(model, output, sequences["train"], data["train"]["hidden"], options,
                           checkpoint, log)

    temps = heldout_options.temperatures
    greedy = {r for r in range(len(sequences["heldout"]))
              if temps[(r // heldout_options.batch) % len(temps)] == 0}
    heldout = evaluate_draft(model, output, sequences["heldout"], data["heldout"]["hidden"], greedy,
                             vocab=None if vocab is None else mx.array(vocab))
    log(f"held-out: {heldout}")
    losses, agreement = progress["losses"][-20:], progress["agreement"][-20:]
    report = {
        "target": Path(target.path).name, "source": source, "preset": preset,
        "parameters": count_parameters(model),
        "init": str(init_dir) if init_dir is not None else
                "tied embedding = the target's on its top principal directions",
        "loss": "cross-entropy against the target's distribution at answer positions",
        "data": {"train_answers": len(sequences["train"]),
                 "train_positions": sum(s["count"] for s in sequences["train"]),
                 "heldout_answers": len(sequences["heldout"]),
                 "options": asdict(data_options), "seconds": round(data_seconds, 1)},
        "training": {"options": asdict(options), "seconds": round(progress["seconds"], 1),
                     "first_loss": progress["losses"][0] if progress["losses"] else None,
                     "final_loss": round(float(np.mean(losses)), 4) if losses else None,
                     "final_top1": round(float(np.mean(agreement)), 4) if agreement else None},
        "draft_vocab": vocab_info or None,
        "heldout": heldout,
    }
    try:  # the record of the draft it started from (one level: not that draft's own start)
        previous = json.loads((Path(init_dir) / "training.json").read_text()) if init_dir else None
        if isinstance(previous, dict):
            report["init_training"] = {k: v for k, v in previous.items() if k != "init_training"}
    except (OSError, ValueError):
        pass  # an init folder without a readable record
    write_model_folder(model, config, Path(target.path), out, report)
    draft_vocab.write(out, vocab, vocab_info)
    write_companion(out, "draft-model", Path(target.path).name, target.config)
    log(f"wrote {out} in {math.ceil(time.perf_counter() - started)} s")
    return report
