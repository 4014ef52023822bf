"""Two bench models for the cache layer (kv.py), written beside each other in OUT_DIR:

- `tinystories-swa`: the embedded TinyStories target (27.8M llama) with three of every four layers
  turned into sliding-window attention of 32 positions (mlx-lm's llama `layer_types`), the trained
  weights unchanged: a model that still writes stories, whose window wraps within a reply.
- `hybrid-random`: a Qwen3-Next-style hybrid of the same width and vocabulary (gated-delta linear
  attention in three of every four layers, full attention in the fourth; dense MLPs), random
  weights: for timing only.

    python examples/make_arch_bench_models.py build/arch-bench
    mlxspec bench --model build/arch-bench/tinystories-swa --methods ar,pld,lookahead,draft
"""
import json
import shutil
import sys
from pathlib import Path

import mlx_spec  # noqa: F401  (loads the optimized BLAS before mlx)
import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.utils import _get_classes

from mlx_spec import loading

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def sliding_copy(target: Path, out: Path, window: int = 32) -> None:
    shutil.copytree(target, out, dirs_exist_ok=True)
    config = json.loads((target / "config.json").read_text())
    layers = config["num_hidden_layers"]
    config["sliding_window"] = window
    config["layer_types"] = ["full_attention" if (i + 1) % 4 == 0 else "sliding_attention"
                             for i in range(layers)]
    (out / "config.json").write_text(json.dumps(config, indent=2))


def random_hybrid(target: Path, out: Path, seed: int = 0) -> None:
    base = json.loads((target / "config.json").read_text())
    layers = base["num_hidden_layers"]
    config = dict(model_type="qwen3_next", vocab_size=base["vocab_size"], hidden_size=512,
                  num_hidden_layers=layers, intermediate_size=1408, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                  partial_rotary_factor=0.25, max_position_embeddings=base["max_position_embeddings"],
                  linear_num_value_heads=8, linear_num_key_heads=4, linear_key_head_dim=64,
                  linear_value_head_dim=64, linear_conv_kernel_dim=4, full_attention_interval=4,
                  num_experts=0, num_experts_per_tok=1, decoder_sparse_step=1,
                  mlp_only_layers=list(range(layers)), moe_intermediate_size=0,
                  shared_expert_intermediate_size=0, norm_topk_prob=True,
                  tie_word_embeddings=False, bos_token_id=base["bos_token_id"],
                  eos_token_id=base["eos_token_id"])
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        shutil.copy(target / name, out / name)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build/arch-bench")
    target = Path(loading.resolve(loading.DEFAULT_TARGET))
    sliding_copy(target, out / "tinystories-swa")
    random_hybrid(target, out / "hybrid-random")
    print(f"wrote {out / 'tinystories-swa'} and {out / 'hybrid-random'}")


if __name__ == "__main__":
    main()
