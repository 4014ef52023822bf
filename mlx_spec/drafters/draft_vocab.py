"""A drafter's drafting vocabulary (FR-Spec, arXiv 2502.14856): draft_vocab.json in a head's or a
draft model's folder lists the ids of the target's most frequent answer tokens (written by
`mlxspec distill --draft-vocab K` and `mlxspec train --instructions --draft-vocab K`), and the
drafter proposes only those, projecting onto K rows instead of the whole vocabulary. On SmolLM2's
49,152-token vocabulary that projection is most of a small drafter's step. A token outside the K
is never drafted, which costs acceptance only as often as the target writes one (the file says how
often that was on held-out answers); drafts stay exact either way, since the target verifies them
and a sampled draft's distribution is 0 outside the K.

File format: {"size": K, "source": ..., "train_coverage": ..., "heldout_coverage": ..., "ids": [...]}.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np

from ..errors import ModelLoadError

FILE = "draft_vocab.json"


def read(folder: str | Path, vocab_size: int) -> tuple[Optional[np.ndarray], dict]:
    """(sorted unique ids [K] int32, the file's other fields) of `folder`'s drafting vocabulary,
    or (None, {}) where it has none; ids must lie in [0, vocab_size)."""
    path = Path(folder) / FILE
    if not path.exists():
        return None, {}
    try:
        data = json.loads(path.read_text())
        ids = np.unique(np.asarray(data["ids"], dtype=np.int64))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError,
            OverflowError) as exc:
        raise ModelLoadError(f"{path}: not a drafting vocabulary ({exc})") from None
    if ids.size == 0 or ids[0] < 0 or ids[-1] >= vocab_size:
        raise ModelLoadError(f"{path}: token ids must lie in [0, {vocab_size})")
    return ids.astype(np.int32), {k: v for k, v in data.items() if k != "ids"}


def write(folder: str | Path, ids: Optional[np.ndarray], info: dict) -> None:
    """Write `folder`'s drafting vocabulary; ids None removes an old one (a whole-vocabulary
    drafter written over one that had a vocabulary)."""
    path = Path(folder) / FILE
    if ids is not None:
        path.write_text(json.dumps({**info, "ids": [int(i) for i in ids]}))
    elif path.exists():
        path.unlink()


def widen(logits: mx.array, ids: mx.array, width: int) -> mx.array:
    """[..., K] logits over `ids` -> [..., width]: every other token gets -inf (never drafted,
    probability 0), so callers read token ids as from a whole-vocabulary drafter."""
    full = mx.full((*logits.shape[:-1], width), -mx.inf, dtype=logits.dtype)
    return mx.put_along_axis(full, mx.broadcast_to(ids, logits.shape), logits, axis=-1)
