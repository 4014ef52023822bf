"""Causal-LM training with MLX for the shipped models: AdamW, warm-up + cosine, gradient clipping,
resumable checkpoints, and a rich progress bar. The result is a plain mlx-lm model folder.

With a teacher (the target), a draft model is distilled instead: its loss is the cross-entropy
against the teacher's whole next-token distribution on the same text (token-level knowledge
distillation, as DistillSpec does for drafters), so the draft learns to agree with the target
rather than with the corpus; acceptance of its drafts is what that buys."""
from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import MlxSpecError

# Architectures of the shipped models (mlx-lm's llama). The target is sized so that verifying 8
# tokens costs well under 2x one token on a 2-core CPU; the draft is ~15x cheaper per token.
PRESETS: dict[str, dict] = {
    "target": dict(hidden_size=512, num_hidden_layers=8, intermediate_size=1408,
                   num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False),
    "draft": dict(hidden_size=128, num_hidden_layers=2, intermediate_size=384,
                  num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    # a draft for a real chat target with a large vocabulary (SmolLM2: 49,152): the tied
    # vocabulary projection is most of its cost, so it is kept to 256 wide and given 3 layers
    "chat-draft": dict(hidden_size=256, num_hidden_layers=3, intermediate_size=768,
                       num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
}


@dataclass
class TrainOptions:
    steps: int = 600
    batch_size: int = 4
    seq_len: int = 512
    learning_rate: float = 2e-3
    min_lr_fraction: float = 0.1
    # Runs here are a few hundred steps: without bias correction Adam's second moment (beta2
    # 0.999) stays underestimated for the whole run, inflating steps 2-3x; a 512-wide model then
    # stalls near 4.6 nats (seen on the first target run). Correct the bias, shorten beta2.
    beta2: float = 0.99
    bias_correction: bool = True
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    save_every: int = 25
    seed: int = 0
    extra: dict = field(default_factory=dict)


def model_config(preset: str, vocab_size: int, context: int, bos: int, eos: int) -> dict:
    return dict(model_type="llama", vocab_size=vocab_size, rms_norm_eps=1e-5, rope_theta=10000.0,
                max_position_embeddings=context, bos_token_id=bos, eos_token_id=eos,
                torch_dtype="float16", **PRESETS[preset])


def tokenize_stories(tokenizer, stories: list[str]) -> np.ndarray:
    """One token stream: <s> story </s> <s> story </s> ..."""
    encoded = tokenizer(stories, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    out = []
    for ids in encoded:
        out.extend([bos, *ids, eos])
    return np.asarray(out, dtype=np.uint16 if tokenizer.vocab_size < 65536 else np.int32)


def sample_batch(stream: np.ndarray, options: TrainOptions, step: int) -> np.ndarray:
    """Random windows; seeded by (seed, step) so a resumed run sees the same batches."""
    rng = np.random.default_rng([options.seed, step])
    starts = rng.integers(0, len(stream) - options.seq_len - 1, size=options.batch_size)
    return np.stack([stream[s:s + options.seq_len + 1] for s in starts]).astype(np.int32)


def soft_cross_entropy(logits, teacher_probs):
    """Mean over positions of -sum_v p_teacher(v) log p_student(v)."""
    import mlx.core as mx

    log_q = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return -(teacher_probs * log_q).sum(axis=-1).mean()


def heldout_agreement(model, teacher, stream: np.ndarray, seq_len: int, windows: int = 16) -> float:
    """How often the model's argmax equals the teacher's over the first held-out windows."""
    import mlx.core as mx

    n = min(windows, (len(stream) - 1) // seq_len)
    batch = mx.array(np.stack([stream[i * seq_len:(i + 1) * seq_len] for i in range(n)]).astype(np.int32))
    same = mx.argmax(model(batch), axis=-1) == mx.argmax(teacher(batch), axis=-1)
    return same.astype(mx.float32).mean().item()


def load_weights_from(model, folder: Path) -> None:
    """Start from an existing mlx-lm folder of the same architecture (fine-tuning)."""
    import mlx.core as mx

    path = Path(folder) / "model.safetensors"
    if not path.exists():
        raise MlxSpecError(f"no model weights to start from: {path} not found")
    weights = mx.load(str(path))
    try:
        model.load_weights([(k, v.astype(mx.float32)) for k, v in weights.items()], strict=True)
    except ValueError as exc:  # another architecture or size
        raise MlxSpecError(f"cannot start from {folder}: not this preset's model ({exc})") from None


def count_parameters(model) -> int:
    from mlx.utils import tree_flatten
    return sum(v.size for _, v in tree_flatten(model.parameters()))


def heldout_loss(model, stream: np.ndarray, seq_len: int, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over non-overlapping windows of the held-out stream."""
    import mlx.core as mx
    import mlx.nn as nn

    n = (len(stream) - 1) // seq_len
    windows = np.stack([stream[i * seq_len:(i + 1) * seq_len + 1] for i in range(n)]).astype(np.int32)
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        batch = mx.array(windows[i:i + batch_size])
        logits = model(batch[:, :-1])
        loss = nn.losses.cross_entropy(logits, batch[:, 1:], reduction="sum")
        total += loss.item()
        count += batch[:, 1:].size
    return total / count


class Checkpoint:
    """Weights, optimizer state and progress in one folder, written atomically (an interrupt
    leaves the previous checkpoint intact)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.saved_step: int | None = None

    def exists(self) -> bool:
        self._recover()
        return (self.folder / "progress.json").exists()

    def _recover(self) -> None:
        """A save stopped between its two renames leaves the previous checkpoint as .old."""
        old = self.folder.with_name(self.folder.name + ".old")
        if not self.folder.exists() and (old / "progress.json").exists():
            old.rename(self.folder)

    def save(self, model, optimizer, progress: dict) -> None:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mx.save_safetensors(str(tmp / "weights.safetensors"), dict(tree_flatten(model.parameters())))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
        (tmp / "progress.json").write_text(json.dumps(progress, indent=2))
        old = self.folder.with_name(self.folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            self.folder.rename(old)
        tmp.rename(self.folder)
        self.saved_step = progress["step"]
        shutil.rmtree(old, ignore_errors=True)

    def load(self, model, optimizer) -> dict:
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        model.load_weights(str(self.folder / "weights.safetensors"))
        optimizer.state = tree_unflatten(list(mx.load(str(self.folder / "optimizer.safetensors")).items()))
        progress = self._progress()
        self.saved_step = progress["step"]
        return progress

    def _progress(self) -> dict:
        return json.loads((self.folder / "progress.json").read_text())

    @contextmanager
    def resume_hint(self):
        """Ctrl-C inside: re-raised with one line telling where the run will resume from: the
        checkpoint on disk, which a Ctrl-C inside a save may have completed (after the last
        rename, before saved_step was set: the line said "before the first checkpoint" while
        the same command resumed from step 25) or left to recover (_recover)."""
        try:
            yield
        except KeyboardInterrupt:
            step = self._step_on_disk()
            if step is None:
                raise KeyboardInterrupt("interrupted before the first checkpoint") from None
            raise KeyboardInterrupt(f"interrupted; the same command resumes from step {step} "
                                    f"({self.folder})") from None

    def _step_on_disk(self) -> int | None:
        try:
            if self.exists():
                return int(self._progress()["step"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return self.saved_step


def learning_rate_schedule(options: TrainOptions):
    import mlx.optimizers as optim

    warmup = optim.linear_schedule(options.learning_rate * 0.01, options.learning_rate,
                                   options.warmup_steps)
    cosine = optim.cosine_decay(options.learning_rate, max(1, options.steps - options.warmup_steps),
                                options.learning_rate * options.min_lr_fraction)
    return optim.join_schedules([warmup, cosine], [options.warmup_steps])


def adamw(options: TrainOptions):
    """AdamW on the warm-up + cosine schedule, with the betas and bias correction of `options`."""
    import mlx.optimizers as optim

    return optim.AdamW(learning_rate=learning_rate_schedule(options),
                       weight_decay=options.weight_decay, betas=[0.9, options.beta2],
                       bias_correction=options.bias_correction)


def train_causal_lm(train_stories: list[str], heldout_stories: list[str], tokenizer_dir: Path,
                    out_dir: Path, preset: str, options: TrainOptions,
                    checkpoint_dir: Path | None = None, log=print, teacher_dir: Path | None = None,
                    init_dir: Path | None = None) -> dict:
    """Train a llama model (from scratch, or from init_dir's weights) and write an mlx-lm folder
    to out_dir; with teacher_dir, distill from that model. Resumes from checkpoint_dir when it
    holds a checkpoint of the same run."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_lm.models import llama
    from transformers import AutoTokenizer

    from .progress import TrainingProgress

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    train_stream = tokenize_stories(tokenizer, train_stories)
    heldout_stream = tokenize_stories(tokenizer, heldout_stories)
    config = model_config(preset, len(tokenizer), options.seq_len,
                          tokenizer.bos_token_id, tokenizer.eos_token_id)
    mx.random.seed(options.seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    if init_dir is not None:
        load_weights_from(model, init_dir)
    teacher = None
    if teacher_dir is not None:
        from ..loading import load_mlx_lm

        teacher = load_mlx_lm(str(teacher_dir))[0]
        teacher.set_dtype(mx.float32)
        teacher.freeze()
    n_params = count_parameters(model)
    optimizer = adamw(options)
    checkpoint = Checkpoint(checkpoint_dir or out_dir.with_name(out_dir.name + ".ckpt"))
    progress = {"step": 0, "seconds": 0.0, "losses": []}
    if checkpoint.exists():
        progress = checkpoint.load(model, optimizer)
        log(f"resumed from {checkpoint.folder} at step {progress['step']}")
    log(f"{preset}: {n_params / 1e6:.2f}M parameters, {len(train_stream):,} training tokens, "
        f"{len(heldout_stream):,} held-out tokens")

    def loss_fn(model, batch, teacher_probs):
        if teacher is not None:
            return soft_cross_entropy(model(batch[:, :-1]), teacher_probs)
        return nn.losses.cross_entropy(model(batch[:, :-1]), batch[:, 1:], reduction="mean")

    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def train_step(batch, teacher_probs):
        loss, grads = nn.value_and_grad(model, loss_fn)(model, batch, teacher_probs)
        grads, _ = optim.clip_grad_norm(grads, options.grad_clip)
        optimizer.update(model, grads)
        return loss

    def teacher_probs_for(batch):
        if teacher is None:
            return mx.zeros((1,))
        return mx.softmax(teacher(batch[:, :-1]).astype(mx.float32), axis=-1)

    tokens_per_step = options.batch_size * options.seq_len
    with checkpoint.resume_hint(), \
            TrainingProgress(f"training {preset}", options.steps, start=progress["step"]) as bar:
        while progress["step"] < options.steps:
            t0 = time.perf_counter()
            batch = mx.array(sample_batch(train_stream, options, progress["step"]))
            loss = train_step(batch, teacher_probs_for(batch))
            mx.eval(state, loss)
            progress["seconds"] += time.perf_counter() - t0
            progress["step"] += 1
            progress["losses"].append(round(loss.item(), 4))
            rate = tokens_per_step * progress["step"] / max(progress["seconds"], 1e-9)
            bar.update(progress["step"], loss=loss.item(), tokens_per_s=rate)
            if progress["step"] % options.save_every == 0 or progress["step"] == options.steps:
                checkpoint.save(model, optimizer, progress)

    loss = heldout_loss(model, heldout_stream, options.seq_len)
    report = dict(preset=preset, parameters=n_params, steps=options.steps,
                  train_tokens_seen=options.steps * tokens_per_step,
                  corpus_tokens=int(len(train_stream)), heldout_tokens=int(len(heldout_stream)),
                  heldout_loss_nats=round(loss, 4), heldout_perplexity=round(math.exp(loss), 3),
                  train_seconds=round(progress["seconds"], 1),
                  final_train_loss=float(np.mean(progress["losses"][-20:])),
                  options=asdict(options))
    if teacher is not None:
        report.update(teacher=str(teacher_dir), init=str(init_dir) if init_dir else None,
                      loss="cross-entropy against the teacher's distribution",
                      heldout_top1_agreement_with_teacher=round(
                          heldout_agreement(model, teacher, heldout_stream, options.seq_len), 4))
        log(f"held-out top-1 agreement with the teacher: "
            f"{report['heldout_top1_agreement_with_teacher']:.4f}")
    write_model_folder(model, config, tokenizer_dir, out_dir, report)
    log(f"held-out loss {loss:.4f} nats/token (perplexity {math.exp(loss):.2f}); wrote {out_dir}")
    return report


def write_model_folder(model, config: dict, tokenizer_dir: Path, out_dir: Path, report: dict) -> None:
    """An mlx-lm folder: config.json, model.safetensors (16-bit), tokenizer files, training.json."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.astype(mx.float16) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out_dir / name)
    (out_dir / "training.json").write_text(json.dumps(report, indent=2))
