"""Import a llama2.c checkpoint (https://github.com/karpathy/llama2.c) into an mlx-lm llama folder.

llama2.c's model is Llama with fp32 weights stored as PyTorch's (out, in) matrices, which is also
MLX's nn.Linear layout, so every weight is copied as is. Two facts decide the config:
- RoPE: run.c rotates consecutive pairs (x[2i], x[2i+1]) of each head, base 10000. That is
  mlx-lm's `rope_traditional: true`, so wq/wk need none of the head permutation that the
  Hugging Face conversion applies (HF's rotate_half pairs x[i] with x[i + d/2]).
- Stopping: llama2.c models are trained on BOS-separated stories, so a story ends by predicting
  BOS (id 1) and run.c stops there. eos_token_id is therefore [1, 2] (BOS, and </s> which is the
  tokenizer's nominal EOS): mlx-lm and mlx-spec stop exactly where run.c does.

Formats read:
- legacy (export.py --version 0, and every original llama2.c .bin such as stories15M.bin):
  7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len), a negative
  vocab_size meaning a separate classifier; then token embeddings, then each tensor kind for all
  layers in turn (attention norms, wq, wk, wv, wo, ffn norms, w1, w2, w3), the final norm, the
  RoPE tables freq_cis_real/imag (skipped), and the classifier when not shared.
- version 1 (export.py --version 1): a 256-byte header (magic "ak42", version, the 7 int32, a
  shared-classifier byte), the norms first, no RoPE tables. Version 2 (int8) is refused.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from ..errors import MlxSpecError
from .llama2c_tokenizer import read_llama2c_tokenizer, write_tokenizer

MAGIC = 0x616B3432       # b"ak42" as a little-endian uint32: versioned exports
VERSION1_HEADER = 256
LEGACY_HEADER = 7 * 4
BOS_ID, EOS_ID = 1, 2

# llama2.c tensor kind -> mlx-lm parameter name (per layer, then global)
LAYER_NAMES = {
    "attention_norm": "input_layernorm", "wq": "self_attn.q_proj", "wk": "self_attn.k_proj",
    "wv": "self_attn.v_proj", "wo": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "w1": "mlp.gate_proj", "w2": "mlp.down_proj", "w3": "mlp.up_proj",
}
GLOBAL_NAMES = {"tok_embeddings": "model.embed_tokens.weight", "norm": "model.norm.weight",
                "output": "lm_head.weight"}
SKIPPED = ("freq_cis_real", "freq_cis_imag")


@dataclass(frozen=True)
class Llama2cConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool
    version: int = 0

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def header_bytes(self) -> int:
        return VERSION1_HEADER if self.version else LEGACY_HEADER


def read_config(path: Path) -> Llama2cConfig:
    with open(path, "rb") as f:
        head = f.read(VERSION1_HEADER)
    if len(head) < LEGACY_HEADER:
        raise MlxSpecError(f"{path} is not a llama2.c checkpoint (only {len(head)} bytes)")
    magic, version = struct.unpack_from("<Ii", head, 0)
    if magic == MAGIC:
        if version != 1:
            raise MlxSpecError(f"{path} is a llama2.c version-{version} export; only the legacy "
                               "(version 0) and version-1 fp32 formats can be imported")
        if len(head) < VERSION1_HEADER:
            raise MlxSpecError(f"{path} is truncated inside its header")
        fields = struct.unpack_from("<7i", head, 8)
        config = Llama2cConfig(*fields, shared_classifier=bool(head[36]), version=1)
    else:
        fields = struct.unpack_from("<7i", head, 0)
        config = Llama2cConfig(*fields[:5], abs(fields[5]), fields[6],
                               shared_classifier=fields[5] > 0)
    _check_shape(path, config)
    return config


def _check_shape(path: Path, c: Llama2cConfig) -> None:
    sane = (0 < c.dim <= 1 << 16 and 0 < c.hidden_dim <= 1 << 18 and 0 < c.n_layers <= 1024
            and 0 < c.n_heads <= c.dim and c.dim % c.n_heads == 0 and 0 < c.n_kv_heads <= c.n_heads
            and c.n_heads % c.n_kv_heads == 0 and c.head_size % 2 == 0
            and 0 < c.vocab_size <= 1 << 20 and 0 < c.seq_len <= 1 << 20)
    if not sane:
        raise MlxSpecError(f"{path} is not a llama2.c checkpoint (header: dim {c.dim}, hidden_dim "
                           f"{c.hidden_dim}, n_layers {c.n_layers}, n_heads {c.n_heads}, n_kv_heads "
                           f"{c.n_kv_heads}, vocab_size {c.vocab_size}, seq_len {c.seq_len})")
    expected = c.header_bytes + 4 * sum(int(np.prod(shape)) for _, shape in layout(c))
    actual = path.stat().st_size
    if actual != expected:
        raise MlxSpecError(f"{path} has {actual} bytes but its header (dim {c.dim}, {c.n_layers} "
                           f"layers, vocab {c.vocab_size}) needs {expected}: "
                           f"{'truncated' if actual < expected else 'not a llama2.c checkpoint'}")


def layout(c: Llama2cConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor in file order, with its shape (per-layer kinds stacked over layers)."""
    kv_dim, L = c.n_kv_heads * c.head_size, c.n_layers
    shapes = {
        "tok_embeddings": (c.vocab_size, c.dim), "attention_norm": (L, c.dim),
        "wq": (L, c.dim, c.dim), "wk": (L, kv_dim, c.dim), "wv": (L, kv_dim, c.dim),
        "wo": (L, c.dim, c.dim), "ffn_norm": (L, c.dim), "w1": (L, c.hidden_dim, c.dim),
        "w2": (L, c.dim, c.hidden_dim), "w3": (L, c.hidden_dim, c.dim), "norm": (c.dim,),
        "freq_cis_real": (c.seq_len, c.head_size // 2), "freq_cis_imag": (c.seq_len, c.head_size // 2),
        "output": (c.vocab_size, c.dim),
    }
    if c.version == 1:
        order = ["attention_norm", "ffn_norm", "norm", "tok_embeddings", "wq", "wk", "wv", "wo",
                 "w1", "w2", "w3"]
    else:
        order = ["tok_embeddings", "attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1",
                 "w2", "w3", "norm", "freq_cis_real", "freq_cis_imag"]
    if not c.shared_classifier:
        order.append("output")
    return [(name, shapes[name]) for name in order]


def count_weights(c: Llama2cConfig) -> int:
    """How many mlx-lm tensors read_weights yields (for progress bars)."""
    return sum(c.n_layers if name in LAYER_NAMES else 1
               for name, _ in layout(c) if name not in SKIPPED)


def read_weights(path: Path, c: Llama2cConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(mlx-lm name, fp32 array) for every weight, read lazily from a memory map."""
    data = np.memmap(path, dtype="<f4", mode="r", offset=c.header_bytes)
    start = 0
    for name, shape in layout(c):
        size = int(np.prod(shape))
        tensor = data[start:start + size].reshape(shape)
        start += size
        if name in SKIPPED:
            continue
        if name in LAYER_NAMES:
            for layer in range(c.n_layers):
                yield f"model.layers.{layer}.{LAYER_NAMES[name]}.weight", np.array(tensor[layer])
        else:
            yield GLOBAL_NAMES[name], np.array(tensor)


def mlx_lm_config(c: Llama2cConfig) -> dict:
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": c.dim, "intermediate_size": c.hidden_dim, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_size, "vocab_size": c.vocab_size,
        "max_position_embeddings": c.seq_len, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "rope_traditional": True, "tie_word_embeddings": c.shared_classifier,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "bos_token_id": BOS_ID, "eos_token_id": [BOS_ID, EOS_ID], "torch_dtype": "float32",
    }


def convert_llama2c(checkpoint: str | Path, tokenizer: str | Path, out: str | Path,
                    progress: Optional[Callable[[int, int], None]] = None,
                    overwrite: bool = False) -> Path:
    """Write an mlx-lm folder (config.json, model.safetensors, tokenizer files) to `out`.
    `progress(done, total)` is called after each weight tensor."""
    import mlx.core as mx

    checkpoint, tokenizer, out = Path(checkpoint), Path(tokenizer), Path(out)
    for path, what in ((checkpoint, "checkpoint"), (tokenizer, "tokenizer")):
        if not path.is_file():
            raise MlxSpecError(f"{what} not found: {path}")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise MlxSpecError(f"{out} already exists and is not an empty folder (use --force to overwrite)")
    config = read_config(checkpoint)
    vocab = read_llama2c_tokenizer(tokenizer, config.vocab_size)  # check both before writing

    total, weights = count_weights(config), {}
    for name, array in read_weights(checkpoint, config):
        weights[name] = mx.array(array)
        if progress is not None:
            progress(len(weights), total)
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(mlx_lm_config(config), indent=2) + "\n")
    write_tokenizer(vocab, out)
    return out
