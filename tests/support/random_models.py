"""Tiny randomly initialised mlx-lm model folders of several architectures, sharing one small
byte-level BPE tokenizer, for comparing our decoding with mlx-lm's on real loading paths."""
from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

COMMON = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=2048)
ARCHITECTURES = {
    "llama": dict(model_type="llama", rope_theta=10000.0, tie_word_embeddings=False),
    "llama3-scaled": dict(model_type="llama", rope_theta=500000.0, tie_word_embeddings=True,
                          num_key_value_heads=4,
                          rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
    "qwen2": dict(model_type="qwen2", rope_theta=1e6, tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", rope_theta=1e6, head_dim=32, tie_word_embeddings=True),
    "mistral": dict(model_type="mistral", rope_theta=1e6, num_key_value_heads=1, tie_word_embeddings=False),
}

CORPUS = ("once upon a time there was a little girl named lily. she liked to play in the park "
          "with her red ball. one day the ball rolled away and lily ran after it. the sun was "
          "warm and the birds sang. lily found the ball under a big green tree and smiled. ") * 20


def write_tokenizer(folder: Path, vocab_size: int = 300) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS.split(". "), trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "model_max_length": 2048}))
    return tok.get_vocab_size()


def make_model_folder(folder: Path, arch: str, seed: int = 0, weight_scale: float = 4.0,
                      **overrides) -> Path:
    from mlx_lm.utils import _get_classes

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder)
    config = dict(COMMON, **ARCHITECTURES[arch], vocab_size=vocab, bos_token_id=0, eos_token_id=1)
    config.update(overrides)
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    # larger-than-default weights so greedy text is not one repeated token
    weights = {k: (v * weight_scale if v.ndim == 2 and "embed" not in k else v)
               for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    (folder / "config.json").write_text(json.dumps(config))
    return folder
