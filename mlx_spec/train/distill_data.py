"""Distillation data for a ReDrafter head: the target's own continuations of text contexts.

Contexts are beginnings of stories (of several lengths, so later story positions are covered too);
the target continues each for T tokens (greedy by default) in batches that share one KV cache, and
the post-norm hidden state of every continuation position is kept. Shards are written as they are
made, so an interrupted run resumes where it stopped; the folder is keyed by a hash of the target
weights and the options, so a changed target or setting never reuses stale data.

A shard holds, per sequence: tokens [T + 1] (the last context token, then the T continuation
tokens), hidden [T, D] (fp16; hidden[j] is the state whose logits chose tokens[j + 1]) and length
(tokens up to and including the first EOS; later positions are not trained on).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import MlxSpecError

DEFAULT_CONTEXT_LENGTHS = (8, 16, 24, 32, 48, 64, 96, 128, 160)


@dataclass
class DataOptions:
    contexts: int = 2048           # sequences to generate
    continuation: int = 96         # T: target tokens per context
    batch: int = 64                # contexts per batched forward
    context_lengths: tuple = DEFAULT_CONTEXT_LENGTHS
    temperature: float = 0.0       # 0 = the target's greedy continuations
    seed: int = 0


def target_fingerprint(model_path: str) -> str:
    """Identifies the target's weights without reading all of them."""
    digest = hashlib.sha1()
    folder = Path(model_path)
    for file in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        if file.exists():
            digest.update(file.name.encode())
            digest.update(str(file.stat().st_size).encode())
            with open(file, "rb") as handle:
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def data_folder(work_dir: Path, model_path: str, options: DataOptions, split: str,
                source: str) -> Path:
    # shard i does not depend on how many contexts are asked for: a larger run reuses the shards
    settings = {k: v for k, v in asdict(options).items() if k != "contexts"}
    key = json.dumps({"target": target_fingerprint(model_path), "options": settings,
                      "split": split, "source": source}, sort_keys=True, default=list)
    return Path(work_dir) / f"{split}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def story_token_lists(tokenizer, stories: list[str]) -> list[list[int]]:
    hf = getattr(tokenizer, "_tokenizer", tokenizer)  # mlx-lm's TokenizerWrapper holds the HF one
    encoded = hf(stories, add_special_tokens=False)["input_ids"]
    bos = hf.bos_token_id
    return [([bos] if bos is not None else []) + list(ids) for ids in encoded]


def choose_contexts(stories: list[list[int]], options: DataOptions) -> list[list[list[int]]]:
    """Batches of equal-length contexts (story beginnings), deterministic in options.seed."""
    rng = np.random.default_rng(options.seed)
    batches = []
    for _ in range((options.contexts + options.batch - 1) // options.batch):
        length = int(rng.choice(options.context_lengths))
        usable = [s for s in stories if len(s) > length]
        if not usable:
            usable, length = stories, min(len(s) for s in stories)
        picks = rng.choice(len(usable), size=options.batch, replace=len(usable) < options.batch)
        batches.append([usable[i][:length] for i in picks])
    return batches


def continue_batch(model, contexts: list[list[int]], options: DataOptions, eos: set,
                   key=None) -> dict:
    """Continue equal-length contexts with the target; returns one shard's numpy arrays."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from ..drafters.redrafter.target_io import hidden_and_logits

    def choose(logits):
        nonlocal key
        if options.temperature <= 0:
            return mx.argmax(logits, axis=-1)
        key, sub = mx.random.split(key)
        return mx.random.categorical(logits / options.temperature, key=sub)

    cache = make_prompt_cache(model)
    hidden, logits = hidden_and_logits(model, mx.array(contexts), cache)
    token = choose(logits[:, -1])
    tokens, states = [mx.array([c[-1] for c in contexts]), token], [hidden[:, -1]]
    for _ in range(options.continuation - 1):
        hidden, logits = hidden_and_logits(model, token[:, None], cache)
        token = choose(logits[:, -1])
        tokens.append(token)
        states.append(hidden[:, -1])
        mx.async_eval(token)
    tokens = np.array(mx.stack(tokens, axis=1)).astype(np.int32)
    states = np.array(mx.stack(states, axis=1).astype(mx.float16))
    return {"tokens": tokens, "hidden": states, "lengths": _lengths(tokens, eos)}


def _lengths(tokens: np.ndarray, eos: set) -> np.ndarray:
    lengths = np.full(len(tokens), tokens.shape[1], dtype=np.int32)
    for i, row in enumerate(tokens):
        hits = [j for j in range(1, len(row)) if int(row[j]) in eos]
        if hits:
            lengths[i] = hits[0] + 1
    return lengths


def generate_data(model, stories: list[list[int]], folder: Path, options: DataOptions, eos: set,
                  description: str = "distillation data") -> dict:
    """Make (or resume) every shard in `folder`; returns all shards concatenated."""
    import mlx.core as mx

    from .progress import TrainingProgress

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "options.json").write_text(json.dumps(asdict(options), default=list, indent=2))
    count = (options.contexts + options.batch - 1) // options.batch
    missing = [i for i in range(count) if not (folder / f"shard-{i:05d}.npz").exists()]
    if not missing:
        return load_shards(folder, count)
    if not stories:
        raise MlxSpecError("no text to take distillation contexts from")
    batches = choose_contexts(stories, options)
    with TrainingProgress(description, count, start=count - len(missing)) as bar:
        for i in missing:
            shard, contexts = folder / f"shard-{i:05d}.npz", batches[i]
            key = mx.random.key(options.seed * 100003 + i)
            arrays = continue_batch(model, contexts, options, eos, key)
            tmp = shard.with_name(shard.stem + ".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.rename(shard)
            bar.update(i + 1, ktokens=(i + 1) * options.batch * options.continuation / 1000)
    return load_shards(folder, count)


def load_shards(folder: Path, count: int) -> dict:
    parts = [np.load(folder / f"shard-{i:05d}.npz") for i in range(count)]
    names = ("tokens", "hidden", "lengths")
    return {name: np.concatenate([p[name] for p in parts]) for name in names}
