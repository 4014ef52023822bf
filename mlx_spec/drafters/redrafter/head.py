"""The ReDrafter draft head (arXiv 2403.09919) and its checkpoint format.

    s_t    = SiLU(W e(x_t) + U s_{t-1} + b),   s_0 = 0      (rnn=true; else s_t = s_{t-1} + e(x_t))
    z      = input_proj([h, s_t])                           (only when exit_dim != 2 * hidden_size)
    z      = z + SiLU(Linear(z))                            (num_draft_layers times)
    logits = lm_head(z)

h is the target's post-norm hidden state at the position whose logits chose x_1, e is the target's
own (frozen) token embedding. Parameter names and config.json follow Apple's ml-recurrent-drafter
(lm_head.N.linear.*, lm_head.K.weight, rnn_u.*, rnn_w.weight, input_proj.*), so heads move freely
between that code and this one.

A head may carry a drafting vocabulary (draft_vocab.py, written by `mlxspec distill --draft-vocab
K`): it then drafts, and learns, only those K tokens, projecting onto K rows of lm_head instead of
the whole vocabulary.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...errors import ModelLoadError
from .. import draft_vocab

MODEL_TYPE = "recurrent_drafting_drafter"


@dataclass
class DrafterConfig:
    vocab_size: int
    hidden_size: int           # the target's hidden size (also the RNN state size)
    exit_dim: int              # width of the residual blocks
    num_draft_layers: int = 1
    rnn: bool = True
    extra: dict = field(default_factory=dict)  # other keys of a reference config, kept on save

    @property
    def has_input_proj(self) -> bool:
        return self.exit_dim != 2 * self.hidden_size

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        return {"model_type": MODEL_TYPE, **self.extra, **data}

    @classmethod
    def from_dict(cls, data: dict) -> "DrafterConfig":
        if data.get("model_type") != MODEL_TYPE:
            raise ModelLoadError(f"not a ReDrafter head: model_type is {data.get('model_type')!r}, "
                                 f"expected {MODEL_TYPE!r}")
        names = {f.name for f in fields(cls)} - {"extra"}
        missing = [n for n in ("vocab_size", "hidden_size", "exit_dim") if n not in data]
        if missing:
            raise ModelLoadError(f"ReDrafter config lacks {', '.join(missing)}")
        extra = {k: v for k, v in data.items() if k not in names and k != "model_type"}
        return cls(**{k: data[k] for k in names if k in data}, extra=extra)


class ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        return x + nn.silu(self.linear(x))


class RecurrentDrafter(nn.Module):
    def __init__(self, config: DrafterConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        if config.has_input_proj:
            self.input_proj = nn.Linear(2 * d, config.exit_dim, bias=True)
        # a list, so parameter names are lm_head.0.linear.weight ... lm_head.K.weight
        self.lm_head = [ResBlock(config.exit_dim) for _ in range(config.num_draft_layers)]
        self.lm_head.append(nn.Linear(config.exit_dim, config.vocab_size, bias=False))
        if config.rnn:
            self.rnn_u = nn.Linear(d, d, bias=True)
            self.rnn_w = nn.Linear(d, d, bias=False)
        # the drafting vocabulary (module text): sorted token ids, or None for all of them; a
        # numpy array, so that it is not a parameter
        self.vocab_ids: Optional[np.ndarray] = None
        self.vocab_info: dict = {}

    def next_state(self, state: mx.array, token_embedding: mx.array) -> mx.array:
        if self.config.rnn:
            return nn.silu(self.rnn_w(token_embedding) + self.rnn_u(state))
        return state + token_embedding

    def __call__(self, context: mx.array, state: mx.array,
                 vocab: Optional[mx.array] = None) -> mx.array:
        """Logits of the next draft token from the target's hidden state and the RNN state: over
        the whole vocabulary, or over the ids in `vocab` [K] only ([..., K], in that order)."""
        z = mx.concatenate([context, state], axis=-1)
        if self.config.has_input_proj:
            z = self.input_proj(z)
        for layer in self.lm_head[:-1]:
            z = layer(z)
        weight = self.lm_head[-1].weight
        return z @ (weight if vocab is None else weight[vocab]).T

    # -- the same function, split for drafting: what is constant over a beam search is computed
    # -- once (the context's share of input_proj, W e(x) for every token), not once per step
    def drafting_tables(self, embed, use_vocab: bool = True) -> dict:
        """Per-head constants for drafting with the target's embedding `embed`; with use_vocab
        (and a drafting vocabulary) drafts come from that vocabulary only."""
        d = self.config.hidden_size
        tables = {}
        if self.config.has_input_proj:
            weight = self.input_proj.weight
            tables["proj_context"] = mx.contiguous(weight[:, :d].T)
            tables["proj_state"] = mx.contiguous(weight[:, d:].T)
        vocab = self.config.vocab_size
        if self.config.rnn and vocab * d <= (1 << 25):  # <= 128 MB in fp32: a table of W e(x)
            tables["token_input"] = self.rnn_w(embed(mx.arange(vocab)).astype(mx.float32))
        # weights stored [in, out] (`_rows`): a Linear computes x @ W.T, and for the few rows of
        # a draft step MLX's CPU product reads a transposed weight 2-4x slower (measured on the
        # TinyStories head, one row: vocabulary projection 1.78 -> 0.51 ms, U 0.48 -> 0.16 ms)
        if self.config.rnn:
            tables["rnn_u"] = mx.contiguous(self.rnn_u.weight.T)
        tables["blocks"] = [mx.contiguous(layer.linear.weight.T) for layer in self.lm_head[:-1]]
        weight = self.lm_head[-1].weight
        if self.vocab_ids is not None and use_vocab:
            tables["vocab_ids"] = mx.array(self.vocab_ids, dtype=mx.int32)
            weight = weight[tables["vocab_ids"]]
        tables["vocab"] = mx.contiguous(weight.T)
        mx.eval(tables)
        return tables

    def start_drafting(self, context: mx.array, width: int,
                       tables: dict) -> tuple[mx.array, mx.array]:
        """For `width` drafts from each of the [B, D] target hidden states: the context's features
        [B, W, F] (shared by every step) and the initial RNN state s_0 = 0, [B, W, D]."""
        features = self.context_features(context.astype(mx.float32), tables)[:, None, :]
        batch = context.shape[0]
        return (mx.broadcast_to(features, (batch, width, features.shape[-1])),
                mx.zeros((batch, width, self.config.hidden_size)))

    def context_features(self, context: mx.array, tables: dict) -> mx.array:
        if "proj_context" in tables:
            return context @ tables["proj_context"] + self.input_proj.bias
        return context

    def state_from_token(self, state: mx.array, tokens: mx.array, embed, tables: dict) -> mx.array:
        if not self.config.rnn:
            return self.next_state(state, embed(tokens).astype(state.dtype))
        token_input = (tables["token_input"][tokens] if "token_input" in tables
                       else self.rnn_w(embed(tokens).astype(state.dtype)))
        return nn.silu(token_input + _rows(state, tables["rnn_u"]) + self.rnn_u.bias)

    def logits_from_features(self, features: mx.array, state: mx.array, tables: dict) -> mx.array:
        z = (features + _rows(state, tables["proj_state"]) if "proj_state" in tables
             else mx.concatenate([features, state], axis=-1))
        for layer, weight in zip(self.lm_head[:-1], tables["blocks"]):
            z = z + nn.silu(_rows(z, weight) + layer.linear.bias)
        logits = _rows(z, tables["vocab"])
        if "vocab_ids" not in tables:
            return logits
        return draft_vocab.widen(logits, tables["vocab_ids"], self.config.vocab_size)


def _rows(x: mx.array, weight: mx.array) -> mx.array:
    """x [..., in] @ weight [in, out] as one 2-D product (on a CPU a batched 3-D product of a
    few rows is slower: the vocabulary projection of one row 0.72 -> 0.49 ms)."""
    return (x.reshape(-1, x.shape[-1]) @ weight).reshape(*x.shape[:-1], weight.shape[-1])


def save_drafter(drafter: RecurrentDrafter, folder: Path, dtype=mx.float16,
                 training: dict | None = None) -> None:
    """config.json + model.safetensors (16-bit storage) [+ training.json, draft_vocab.json]."""
    from mlx.utils import tree_flatten

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.astype(dtype) for k, v in tree_flatten(drafter.parameters())}
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(drafter.config.to_dict(), indent=2))
    if training is not None:
        (folder / "training.json").write_text(json.dumps(training, indent=2))
    draft_vocab.write(folder, drafter.vocab_ids, drafter.vocab_info)


def load_drafter(folder: str | Path, dtype=mx.float32) -> RecurrentDrafter:
    """Load a head folder written here or by Apple's ml-recurrent-drafter (save_pretrained)."""
    folder = Path(folder).expanduser()
    config_file, weights_file = folder / "config.json", folder / "model.safetensors"
    if not config_file.exists() or not weights_file.exists():
        raise ModelLoadError(f"{folder} is not a ReDrafter head folder (needs config.json and "
                             "model.safetensors)")
    try:
        config = DrafterConfig.from_dict(json.loads(config_file.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelLoadError(f"{config_file}: {exc}") from None
    drafter = RecurrentDrafter(config)
    weights = {k: v.astype(dtype) for k, v in mx.load(str(weights_file)).items()}
    try:
        drafter.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        raise ModelLoadError(f"{weights_file} does not match its config.json: {exc}") from None
    mx.eval(drafter.parameters())
    drafter.vocab_ids, drafter.vocab_info = draft_vocab.read(folder, config.vocab_size)
    return drafter
