"""Distilling a ReDrafter head from a target (`mlxspec distill`).

Teacher forcing over the head's K draft steps, as in the reference trainer: at continuation
position j the head sees the target's hidden state h_j and, at step k, the RNN state after the
embeddings of tokens j+1 .. j+k; it is scored on token j+k+1. The loss is the sum over steps of the
mean cross-entropy (positions after EOS masked), against that token, or (soft labels) against the
target's whole distribution of it, softmax(lm_head(h_{j+k})) from the stored hidden states: a
head used to sample drafts must match the target's distribution, not only its top token, and the
whole distribution teaches that with far less noise than sampled tokens do. AdamW with warm-up + cosine and atomic,
resumable checkpoints come from train/lm.py. At the end the head is scored on held-out stories:
top-1 accuracy per step and the acceptance a beam search would get against the target's own
greedy text.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import MlxSpecError

from .distill_data import (DataOptions, concatenated, distillation_contexts, split_datasets,
                           training_source)
from .lm import Checkpoint, TrainOptions, count_parameters, learning_rate_schedule


@dataclass
class HeadOptions:
    exit_dim: int = 256             # 256 drafts ~2x faster than 512 on a 2-core CPU (measured)
    num_draft_layers: int = 2
    rnn: bool = True
    draft_steps: int = 6            # K: trained for beams of length up to K + 1
    init_from_target_head: bool = True  # start from a rank-exit_dim factor of the target's head
    init_from: Optional[str] = None     # or from a trained head folder (fine-tuning)
    soft_labels: bool = False       # learn the target's distributions, not its tokens (module text)
    draft_vocab: int = 0            # K > 0: draft and learn only the K most frequent answer tokens


def build_head(target_model, options: HeadOptions):
    import mlx.core as mx

    from ..drafters.redrafter import DrafterConfig, RecurrentDrafter, load_drafter
    from ..drafters.model_parts import token_embedding

    embed = token_embedding(target_model)
    vocab, hidden = embed.weight.shape
    if options.init_from:
        head = load_drafter(options.init_from)
        if (head.config.vocab_size, head.config.hidden_size) != (vocab, hidden):
            raise MlxSpecError(f"{options.init_from} was made for another target (vocab "
                               f"{head.config.vocab_size}, hidden {head.config.hidden_size})")
        return head
    head = RecurrentDrafter(DrafterConfig(vocab_size=vocab, hidden_size=hidden,
                                          exit_dim=options.exit_dim,
                                          num_draft_layers=options.num_draft_layers,
                                          rnn=options.rnn))
    projection = getattr(target_model, "lm_head", None)
    weight = projection.weight if projection is not None else embed.weight
    rank = options.exit_dim
    if options.init_from_target_head and head.config.has_input_proj and rank <= hidden \
            and weight.dtype == mx.float32:
        # the head starts as the target's own vocabulary projection through a rank-`rank`
        # bottleneck (W ~ U S V^T): it knows the token geometry before it learns to look ahead
        u, s, vt = np.linalg.svd(np.array(weight), full_matrices=False)
        head.lm_head[-1].weight = mx.array(u[:, :rank] * s[:rank])
        projection_in = np.array(head.input_proj.weight)
        projection_in[:, :hidden] = vt[:rank]
        head.input_proj.weight = mx.array(projection_in)
    mx.eval(head.parameters())
    return head


def step_logits(head, embed_weight, hidden, tokens, steps: int, vocab=None):
    """Teacher-forced logits of every draft step: list of [B, T, V] (or [B, T, K] over the ids of
    `vocab`, an mx.array [K]); step k predicts tokens[:, k + 1 : k + 1 + T].
    tokens: [B, T + 1 + steps], hidden: [B, T, D]."""
    import mlx.core as mx

    positions = hidden.shape[1]
    state = mx.zeros(hidden.shape, dtype=hidden.dtype)
    out = []
    for k in range(1, steps + 1):
        state = head.next_state(state, embed_weight[tokens[:, k:k + positions]])
        out.append(head(hidden, state, vocab))
    return out


def vocab_arrays(head):
    """(ids [K], position of each token id in ids or -1 [V]) of the head's drafting vocabulary,
    as mx arrays; None for a whole-vocabulary head."""
    import mlx.core as mx

    if head.vocab_ids is None:
        return None
    index = np.full(head.config.vocab_size, -1, dtype=np.int32)
    index[head.vocab_ids] = np.arange(len(head.vocab_ids), dtype=np.int32)
    return mx.array(head.vocab_ids, dtype=mx.int32), mx.array(index)


def multi_step_loss(head, embed_weight, hidden, tokens, lengths, steps: int, output=None,
                    vocab=None):
    """Sum over steps of the masked mean cross-entropy; also per-step top-1 accuracies (against
    the tokens). `output`: the target's vocabulary projection, for soft labels. `vocab`: the
    head's drafting vocabulary (vocab_arrays): logits and labels over those K ids only, tokens
    outside it not trained on (the head never drafts them) but counted as misses."""
    import mlx.core as mx
    import mlx.nn as nn

    width = hidden.shape[1]
    positions = mx.arange(width)[None]
    ids, index = vocab if vocab is not None else (None, None)
    if output is not None:  # [B, T + steps, V or K]: the target's log-distribution of token t + 1
        target = mx.stop_gradient(nn.log_softmax(output(hidden), axis=-1))
        target = mx.pad(target if ids is None else target[..., ids], ((0, 0), (0, steps), (0, 0)))
    total, accuracies = mx.array(0.0), []
    for k, logits in enumerate(step_logits(head, embed_weight, hidden, tokens, steps, ids), start=1):
        labels = tokens[:, k + 1:k + 1 + width]
        valid = (positions + k + 1 < lengths[:, None]).astype(mx.float32)
        count = mx.maximum(valid.sum(), 1.0)
        trained = valid if ids is None else valid * (index[labels] >= 0)
        if output is None:
            loss = nn.losses.cross_entropy(logits, labels if ids is None
                                           else mx.maximum(index[labels], 0))
        else:  # [B, T]: -sum_v p(v) log q(v), p the target's distribution of token j + k + 1
            p = mx.exp(target[:, k:k + width])
            loss = -(p * nn.log_softmax(logits, axis=-1)).sum(axis=-1)
        total = total + (loss * trained).sum() / mx.maximum(trained.sum(), 1.0)
        predicted = mx.argmax(logits, axis=-1)
        predicted = predicted if ids is None else ids[predicted]
        accuracies.append(((predicted == labels) * valid).sum() / count)
    return total, mx.stack(accuracies)


def draft_vocabulary(data: dict, size: int) -> np.ndarray:
    """The `size` token ids most frequent among the target's continuation tokens in `data`
    (sorted by id; ties broken by the lower id)."""
    counts = _token_counts(data)
    order = np.lexsort((np.arange(len(counts)), -counts))
    return np.sort(order[:size]).astype(np.int32)


def drafting_vocabulary(datasets: dict, size: int, source: str, kept: tuple = (None, {}),
                        log=print) -> tuple[Optional[np.ndarray], dict]:
    """(ids, info) of a drafter's drafting vocabulary (drafters/draft_vocab.py): the `size` most
    frequent training answer tokens where size > 0, else `kept` (a fine-tuned drafter's own, or
    none); with its coverage of the held-out answers, logged."""
    ids, info = kept
    if size:
        ids = draft_vocabulary(datasets["train"], size)
        info = {"size": int(len(ids)), "source": source,
                "train_coverage": round(vocabulary_coverage(datasets["train"], ids), 4)}
    if ids is not None:
        info = {**info, "heldout_coverage": round(vocabulary_coverage(datasets["heldout"], ids), 4)}
        log(f"drafting vocabulary: {len(ids):,} tokens, {info['heldout_coverage']:.1%} of the "
            "held-out answer tokens")
    return ids, info


def vocabulary_coverage(data: dict, ids: np.ndarray) -> float:
    """Share of the continuation tokens in `data` that lie in `ids`."""
    counts = _token_counts(data, minlength=int(ids.max()) + 1)
    return float(counts[ids].sum() / max(counts.sum(), 1))


def _token_counts(data: dict, minlength: int = 0) -> np.ndarray:
    tokens, lengths = data["tokens"], data["lengths"]
    kept = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    kept[:, 0] = False  # the context's last token is not the target's
    return np.bincount(tokens[kept], minlength=minlength).astype(np.int64)


def pad_tokens(tokens: np.ndarray, steps: int) -> np.ndarray:
    return np.pad(tokens, ((0, 0), (0, steps)))


def train_head(head, embed_weight, data: dict, head_options: HeadOptions, options: TrainOptions,
               checkpoint_dir: Path, log=print, output=None) -> dict:
    """`output`: the target's vocabulary projection (needed with head_options.soft_labels)."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from .progress import TrainingProgress

    steps = head_options.draft_steps
    tokens, hidden, lengths = pad_tokens(data["tokens"], steps), data["hidden"], data["lengths"]
    optimizer = optim.AdamW(learning_rate=learning_rate_schedule(options),
                            weight_decay=options.weight_decay)
    checkpoint = Checkpoint(checkpoint_dir)
    progress = {"step": 0, "seconds": 0.0, "losses": [], "accuracies": []}
    if checkpoint.exists():
        progress = checkpoint.load(head, optimizer)
        log(f"resumed from {checkpoint.folder} at step {progress['step']}")

    loss_and_grad = nn.value_and_grad(head, partial(
        multi_step_loss, steps=steps, output=output if head_options.soft_labels else None,
        vocab=vocab_arrays(head)))
    state = [head.state, optimizer.state]

    # not mx.compile'd: on this CPU the compiled step measured ~1.8x slower (3.5 s vs 1.9 s)
    def train_step(embed, h, x, n):
        (loss, accuracy), grads = loss_and_grad(head, embed, h, x, n)
        grads, _ = optim.clip_grad_norm(grads, options.grad_clip)
        optimizer.update(head, grads)
        return loss, accuracy

    with checkpoint.resume_hint(), \
            TrainingProgress("training ReDrafter head", options.steps, start=progress["step"]) as bar:
        while progress["step"] < options.steps:
            rng = np.random.default_rng([options.seed, progress["step"]])
            pick = np.sort(rng.choice(len(tokens), size=options.batch_size,
                                      replace=len(tokens) < options.batch_size))
            t0 = time.perf_counter()
            loss, accuracy = train_step(embed_weight, mx.array(hidden[pick]).astype(mx.float32),
                                        mx.array(tokens[pick]), mx.array(lengths[pick]))
            mx.eval(state, loss, accuracy)
            progress["seconds"] += time.perf_counter() - t0
            progress["step"] += 1
            progress["losses"].append(round(loss.item(), 4))
            progress["accuracies"].append([round(a, 4) for a in accuracy.tolist()])
            shown = {f"top1@{k + 1}": a for k, a in enumerate(accuracy.tolist()[:3])}
            bar.update(progress["step"], loss=loss.item(), **shown)
            if progress["step"] % options.save_every == 0 or progress["step"] == options.steps:
                checkpoint.save(head, optimizer, progress)
    return progress


def heldout_accuracy(head, embed_weight, data: dict, steps: int, batch: int = 32) -> dict:
    """Teacher-forced loss and top-1 accuracy per draft step over the held-out sequences."""
    import mlx.core as mx

    tokens = pad_tokens(data["tokens"], steps)
    sums, loss_sum, batches = np.zeros(steps), 0.0, 0
    vocab = vocab_arrays(head)
    for i in range(0, len(tokens), batch):
        loss, accuracy = multi_step_loss(head, embed_weight,
                                         mx.array(data["hidden"][i:i + batch]).astype(mx.float32),
                                         mx.array(tokens[i:i + batch]),
                                         mx.array(data["lengths"][i:i + batch]), steps,
                                         vocab=vocab)
        sums += np.array(accuracy.tolist())
        loss_sum += loss.item()
        batches += 1
    return {"loss": round(loss_sum / batches, 4),
            "top1_per_step": [round(float(a) / batches, 4) for a in sums]}


def simulated_acceptance(head, embed, data: dict, width: int, length: int, positions: int = 512,
                         seed: int = 0, top_k: int = 50) -> float:
    """Mean tokens per target call (accepted drafts + the bonus token) that greedy verification of
    the beams would give at random held-out positions, against the target's own continuation."""
    import mlx.core as mx

    from ..drafters.redrafter import beam_search

    tokens, hidden, lengths = data["tokens"], data["hidden"], data["lengths"]
    horizon = tokens.shape[1] - length  # positions whose whole draft window is in the data
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(tokens), size=positions)
    cols = np.array([rng.integers(0, max(1, min(horizon, lengths[r] - 1))) for r in rows])
    beams = beam_search(head, embed, mx.array(hidden[rows, cols]).astype(mx.float32),
                        mx.array(tokens[rows, cols + 1]), width, length, top_k)
    drafts = np.array(beams.tokens[:, :, 1:])
    truth = np.stack([tokens[r, c + 2:c + length + 1] for r, c in zip(rows, cols)])
    valid = (cols[:, None] + 2 + np.arange(length - 1)[None]) < lengths[rows][:, None]
    match = (drafts == truth[:, None, :]) & valid[:, None, :]
    accepted = np.cumprod(match, axis=-1).sum(-1).max(-1)
    return float(1.0 + accepted.mean())


def first_draft_acceptance(head, embed_weight, output, data: dict, temperature: float,
                           head_temperature: float = 1.0, batch: int = 32) -> float:
    """Mean probability that a sampled first draft token is accepted, sum_v min(p(v), q(v)), over
    the held-out positions: p the target's distribution at `temperature`, q the head's logits
    divided by head_temperature * temperature (how redrafter samples its chains)."""
    import mlx.core as mx

    total, count = 0.0, 0
    vocab = vocab_arrays(head)
    ids = None if vocab is None else vocab[0]
    for i in range(0, len(data["tokens"]), batch):
        hidden = mx.array(data["hidden"][i:i + batch]).astype(mx.float32)   # [B, T, D]
        tokens = mx.array(data["tokens"][i:i + batch])                       # [B, T + 1]
        # the first draft step at position j drafts token j + 2, whose target distribution comes
        # from h_{j+1}: the last position has none
        logits = step_logits(head, embed_weight, hidden, tokens, 1, ids)[0][:, :-1]
        q = mx.softmax(logits / (head_temperature * temperature), axis=-1)  # [B, T-1, V or K]
        p = mx.softmax(output(hidden[:, 1:]) / temperature, axis=-1)
        if ids is not None:  # q is 0 outside the drafting vocabulary
            p = p[..., ids]
        positions = mx.arange(hidden.shape[1] - 1)[None]
        valid = positions + 2 < mx.array(data["lengths"][i:i + batch])[:, None]
        total += (mx.minimum(p, q).sum(axis=-1) * valid).sum().item()
        count += int(valid.sum().item())
    return total / max(count, 1)


# (width, length) pairs whose greedy acceptance is simulated on held-out data after training
EVAL_BEAMS = ((1, 4), (1, 5), (1, 6), (1, 7), (2, 5), (2, 6), (2, 7), (4, 5), (4, 6), (8, 6))


@dataclass
class DistillPaths:
    out: Path
    work_dir: Path


def distill(target_path: str | None, text: Path | None, cased: Path | None, paths: DistillPaths,
            data_options: DataOptions, heldout_options: DataOptions, head_options: HeadOptions,
            train_options: TrainOptions, eval_beams=EVAL_BEAMS, self_written: int = 0,
            log=print) -> dict:
    """Train a head on the target's continuations of `text`'s stories, or (text=None) on its
    answers to the chat requests of train/instructions.py (the templates' and, self_written > 0,
    that many written by the target itself)."""
    import mlx.core as mx

    from .. import load
    from ..drafters.redrafter import save_drafter
    from ..drafters.redrafter.method import GREEDY_HEAD_TEMPERATURE, HEAD_ROLE, SAMPLING_HEAD_ROLE
    from ..drafters.model_parts import output_projection, token_embedding
    from ..loading import write_companion

    started = time.perf_counter()
    target = load(target_path)
    eos = set(target.eos_token_ids)
    splits = distillation_contexts(target, text, cased, data_options, heldout_options,
                                   self_written, paths.work_dir)
    parts = split_datasets(target.model, splits, paths.work_dir, target.path, eos,
                           whole=text is None, log=log)
    datasets = {split: concatenated(part) for split, part in parts.items()}
    source = training_source(splits)
    run_data = "+".join(where.name for _, _, _, where in parts["train"])  # names the training run
    data_seconds = time.perf_counter() - started

    head = build_head(target.model, head_options)
    # without --draft-vocab a fine-tuned head keeps the vocabulary it had
    head.vocab_ids, head.vocab_info = drafting_vocabulary(
        datasets, head_options.draft_vocab, source, (head.vocab_ids, head.vocab_info), log)
    embed = token_embedding(target.model)
    embed_weight = mx.array(embed.weight).astype(mx.float32)
    log(f"head: {count_parameters(head) / 1e6:.2f}M parameters "
        f"({head.config.to_dict()})")
    run_key = json.dumps([run_data, asdict(head_options), asdict(train_options)], default=list)
    checkpoint_dir = paths.work_dir / f"head-{hashlib.sha1(run_key.encode()).hexdigest()[:12]}.ckpt"
    output = output_projection(target.model)
    progress = train_head(head, embed_weight, datasets["train"], head_options, train_options,
                          checkpoint_dir, log, output=output)

    heldout = heldout_accuracy(head, embed_weight, datasets["heldout"], head_options.draft_steps)
    acceptance = {f"{w}x{n}": round(simulated_acceptance(head, embed, datasets["heldout"], w, n), 3)
                  for w, n in eval_beams if n <= head_options.draft_steps + 1}
    head_temperature = 1.0 if head_options.soft_labels else GREEDY_HEAD_TEMPERATURE
    sampled = {f"T={t}": round(first_draft_acceptance(head, embed_weight, output, datasets["heldout"],
                                                      t, head_temperature), 4)
               for t in (0.7, 1.0)}
    log(f"held-out: loss {heldout['loss']}, top-1 per step {heldout['top1_per_step']}")
    log(f"held-out first draft accepted when sampling (head temperature {head_temperature}): "
        + ", ".join(f"{k} {v}" for k, v in sampled.items()))
    log("held-out tokens per target call (greedy, simulated): " +
        ", ".join(f"{k} {v}" for k, v in acceptance.items()))
    final = progress["accuracies"][-20:]
    report = {
        "target": Path(target.path).name, "source": source, "head": asdict(head_options),
        "parameters": count_parameters(head),
        "data": {"train_sequences": int(len(datasets["train"]["tokens"])),
                 "train_tokens": int(datasets["train"]["lengths"].sum()),
                 "heldout_sequences": int(len(datasets["heldout"]["tokens"])),
                 "heldout_tokens": int(datasets["heldout"]["lengths"].sum()),
                 "options": asdict(data_options), "seconds": round(data_seconds, 1)},
        "training": {"options": asdict(train_options), "seconds": round(progress["seconds"], 1),
                     "first_loss": progress["losses"][0] if progress["losses"] else None,
                     "final_loss": round(float(np.mean(progress["losses"][-20:])), 4),
                     "final_top1_per_step": [round(float(x), 4) for x in np.mean(final, axis=0)]},
        "heldout": {**heldout, "tokens_per_call_by_beam": acceptance,
                    "first_draft_accepted_sampling": sampled},
        "draft_vocab": dict(head.vocab_info) if head.vocab_ids is not None else None,
        "note": "top1_per_step[k]: accuracy of the (k+1)-th draft token after the root",
    }
    if head_options.soft_labels:  # it learned the target's distribution: sample it as it is
        head.config.extra["head_temperature"] = 1.0
    save_drafter(head, paths.out, training=report)
    write_companion(paths.out, SAMPLING_HEAD_ROLE if head_options.soft_labels else HEAD_ROLE,
                    Path(target.path).name, target.config)
    log(f"wrote {paths.out} in {math.ceil(time.perf_counter() - started)} s")
    return report
