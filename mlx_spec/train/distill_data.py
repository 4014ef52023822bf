"""Distillation data for a ReDrafter head: the target's own continuations of text contexts.

Contexts are beginnings of stories (of several lengths, so later story positions are covered too)
or whole chat requests (the target's chat template around a request, so the continuation is the
target's answer); the target continues each for T tokens in batches that share one KV cache (requests
of different lengths are left-padded and masked), and the post-norm hidden state of every
continuation position is kept. Shards alternate between the given temperatures (0 = greedy), so a
head can learn the target's greedy and its sampled text. Shards are written as they are
made, so an interrupted run resumes where it stopped; the folder is keyed by a hash of the target
weights and the options, so a changed target or setting never reuses stale data.

A shard holds, per sequence: tokens [T + 1] (the last context token, then the T continuation
tokens), hidden [T, D] (fp16; hidden[j] is the state whose logits chose tokens[j + 1]) and length
(tokens up to and including the first EOS; later positions are not trained on).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import MlxSpecError
from ..loading import weights_fingerprint

DEFAULT_CONTEXT_LENGTHS = (8, 16, 24, 32, 48, 64, 96, 128, 160)


@dataclass
class DataOptions:
    contexts: int = 2048           # sequences to generate
    continuation: int = 96         # T: target tokens per context
    batch: int = 64                # contexts per batched forward
    context_lengths: tuple = DEFAULT_CONTEXT_LENGTHS
    temperatures: tuple = (0.0,)   # shard i samples at temperatures[i % n]; 0 = greedy
    seed: int = 0


def data_folder(work_dir: Path, model_path: str, options: DataOptions, split: str,
                source: str) -> Path:
    # from a text, shard i does not depend on how many contexts are asked for, so a larger run
    # reuses the shards (a source whose batches do depend on it names the count in `source`)
    settings = {k: v for k, v in asdict(options).items() if k != "contexts"}
    key = json.dumps({"target": weights_fingerprint(model_path), "options": settings,
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


def prompt_batches(prompts: list[list[int]], options: DataOptions) -> list[list[list[int]]]:
    """Whole requests in batches of similar length (little padding), deterministic in the seed."""
    rng = np.random.default_rng(options.seed)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))[:options.contexts]
    batches = [[prompts[i] for i in order[s:s + options.batch]]
               for s in range(0, len(order), options.batch)]
    return [batches[i] for i in rng.permutation(len(batches))]


def shard_order(prompts: list[list[int]], options: DataOptions) -> list[list[int]]:
    """The requests in the order their answers are stored (shard by shard, row by row)."""
    return [p for batch in prompt_batches(prompts, options) for p in batch]


def _padded_cache(model, padding: list[int]):
    """KV caches whose attention mask also hides each row's left padding. One rope offset serves
    every row: rotary attention depends only on the distance between two positions, so shifting a
    row's positions by its padding leaves its scores unchanged. (mlx-lm's BatchKVCache does this
    with per-row offsets, measured ~50x slower here on the CPU.)"""
    import mlx.core as mx
    from mlx_lm.models.base import create_causal_mask
    from mlx_lm.models.cache import KVCache

    left = mx.array(padding)

    class PaddedKV(KVCache):
        def make_mask(self, n, return_array=False, window_size=None):
            return create_causal_mask(n, self.offset, window_size=window_size, left_padding=left)

    return [PaddedKV() for _ in model.layers]


def continue_batch(model, contexts: list[list[int]], options: DataOptions, eos: set,
                   key=None, temperature: float = 0.0) -> dict:
    """Continue contexts (left-padded to one length) with the target; returns one shard's numpy
    arrays."""
    import mlx.core as mx

    from ..drafters.model_parts import hidden_and_logits

    def choose(logits):
        nonlocal key
        if temperature <= 0:
            return mx.argmax(logits, axis=-1)
        key, sub = mx.random.split(key)
        return mx.random.categorical(logits / temperature, key=sub)

    width = max(len(c) for c in contexts)
    padding = [width - len(c) for c in contexts]
    cache = _padded_cache(model, padding)
    padded = [[0] * pad + list(c) for pad, c in zip(padding, contexts)]
    hidden, logits = hidden_and_logits(model, mx.array(padded), cache, last_only=True)
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
                  description: str = "distillation data", whole: bool = False) -> dict:
    """Make (or resume) every shard in `folder`; returns all shards concatenated. `stories` are
    texts whose beginnings are the contexts, or (whole=True) the contexts themselves."""
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
    batches = prompt_batches(stories, options) if whole else choose_contexts(stories, options)
    with TrainingProgress(description, count, start=count - len(missing)) as bar:
        for i in missing:
            shard, contexts = folder / f"shard-{i:05d}.npz", batches[i]
            key = mx.random.key(options.seed * 100003 + i)
            temperature = options.temperatures[i % len(options.temperatures)]
            arrays = continue_batch(model, contexts, options, eos, key, temperature)
            tmp = shard.with_name(shard.stem + ".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.rename(shard)
            bar.update(i + 1, ktokens=(i + 1) * options.batch * options.continuation / 1000)
    return load_shards(folder, count)


def load_shards(folder: Path, count: int) -> dict:
    parts = [np.load(folder / f"shard-{i:05d}.npz") for i in range(count)]
    names = ("tokens", "hidden", "lengths")
    return {name: np.concatenate([p[name] for p in parts]) for name in names}


def distillation_contexts(target, text, cased, train: DataOptions, heldout: DataOptions,
                          self_written: int = 0, work_dir: Path | None = None):
    """[(split, token lists, options, source)]: what the target continues, split by split (a split
    may come in several parts), each part with the name of its source for its data folder's key.
    From `text`: story beginnings. Else chat requests in the target's chat template: the
    templates' requests, and (self_written > 0) that many more written by the target itself,
    cached in work_dir."""
    from .corpus import load_corpus
    from .instructions import instruction_prompts, self_written_requests

    if text is not None:
        corpus = load_corpus(text, cased)
        source = f"{Path(text).name}:{Path(text).stat().st_size}"
        return [("train", story_token_lists(target.tokenizer, corpus.train), train, source),
                ("heldout", story_token_lists(target.tokenizer, corpus.heldout), heldout, source)]
    if not getattr(target.tokenizer, "chat_template", None):
        raise MlxSpecError("distilling on chat requests needs a target with a chat template; "
                           "pass --text for a plain language model")
    requests = instruction_prompts(train.contexts, seed=train.seed)
    seen = {r["prompt"] for r in requests}
    others = [r for r in instruction_prompts(train.contexts + 4 * heldout.contexts,
                                             seed=heldout.seed + 7919) if r["prompt"] not in seen]

    def wrap(records):
        return [list(target.tokenizer.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}], add_generation_prompt=True))
            for r in records]

    # the batches (sorted by length) and the held-out requests (those not trained on) depend on
    # how many training requests there are, so the count names the source of both splits
    source = f"instructions-v1:{train.contexts}"
    splits = [("train", wrap(requests), train, source),
              ("heldout", wrap(others[:heldout.contexts]), heldout, source)]
    if self_written:
        key = json.dumps({"target": weights_fingerprint(target.path), "seed": train.seed,
                          "batch": train.batch}, sort_keys=True)
        folder = Path(work_dir) / f"requests-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        written = self_written_requests(target.model, target.tokenizer, self_written, folder,
                                        set(target.eos_token_ids), seed=train.seed,
                                        batch=train.batch)
        splits.append(("train", wrap(written), replace(train, contexts=self_written),
                       f"self-written-v1:{self_written}"))
    return splits


def split_datasets(model, splits, work_dir: Path, model_path: str, eos: set, whole: bool,
                   log=print) -> dict:
    """{split: [(contexts, options, data, folder)]}: every part's data made (or reused)."""
    import time

    parts = {}
    for split, contexts, options, source in splits:
        where = data_folder(work_dir, model_path, options, split, source)
        t0 = time.perf_counter()
        data = generate_data(model, contexts, where, options, eos,
                             f"target continuations ({split}, {source})", whole=whole)
        log(f"{split}: {len(data['tokens'])} sequences, {int(data['lengths'].sum()):,} target "
            f"tokens in {where} ({time.perf_counter() - t0:.0f} s)")
        parts.setdefault(split, []).append((contexts, options, data, where))
    return parts


def training_source(splits) -> str:
    """The training parts' sources, named together (for reports)."""
    return " + ".join(source for split, _, _, source in splits if split == "train")


def concatenated(parts: list) -> dict:
    """One split's parts as one dataset (rows in part order)."""
    return {name: np.concatenate([data[name] for _, _, data, _ in parts])
            for name in ("tokens", "hidden", "lengths")}
