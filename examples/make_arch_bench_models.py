"""Two bench models for the cache layer (kv.py), written beside each other in OUT_DIR:

- `tinystories-swa`: the embedded TinyStories target (27.8M llama) with three of every four layers
  turned into sliding-window attention of 32 positions (mlx-lm's llama `layer_types`), the trained
  weights unchanged: a model that still writes stories, whose window wraps within a reply.
- `tinystories-hybrid`: a Falcon-H1 hybrid (a Mamba-2 mixer beside the attention in every layer,
  mlx-lm's CacheList(ArraysCache, KVCache)) carrying the target's embeddings, attention, MLPs and
  norms, with a freshly initialised Mamba-2 branch whose output projection is scaled by
  `mamba_scale` (20: logits move by up to ~0.6 and greedy text changes on some prompts): a hybrid
  whose recurrent state really shapes the output, yet that still writes stories.

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


def hybrid_from_target(target: Path, out: Path, mamba_scale: float = 20.0, seed: int = 0) -> None:
    base = json.loads((target / "config.json").read_text())
    config = dict(model_type="falcon_h1", vocab_size=base["vocab_size"],
                  hidden_size=base["hidden_size"], num_hidden_layers=base["num_hidden_layers"],
                  intermediate_size=base["intermediate_size"],
                  num_attention_heads=base["num_attention_heads"],
                  num_key_value_heads=base["num_key_value_heads"],
                  head_dim=base["hidden_size"] // base["num_attention_heads"],
                  rms_norm_eps=base["rms_norm_eps"], rope_theta=base["rope_theta"],
                  max_position_embeddings=base["max_position_embeddings"],
                  tie_word_embeddings=False, mamba_n_heads=8, mamba_d_head=32, mamba_d_ssm=256,
                  mamba_d_state=16, mamba_d_conv=4, mamba_n_groups=1, mamba_chunk_size=64,
                  bos_token_id=base["bos_token_id"], eos_token_id=base["eos_token_id"])
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    renames = {"post_attention_layernorm": "pre_ff_layernorm", ".mlp.": ".feed_forward.",
               "model.norm.": "model.final_layernorm."}
    for name, value in mx.load(str(target / "model.safetensors")).items():
        for old, new in renames.items():
            name = name.replace(old, new)
        assert weights[name].shape == value.shape, name
        weights[name] = value.astype(mx.float32)
    for name in weights:
        if name.endswith("mamba.out_proj.weight"):
            weights[name] = weights[name] * mamba_scale
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        shutil.copy(target / name, out / name)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build/arch-bench")
    target = Path(loading.resolve(loading.DEFAULT_TARGET))
    sliding_copy(target, out / "tinystories-swa")
    hybrid_from_target(target, out / "tinystories-hybrid")
    print(f"wrote {out / 'tinystories-swa'} and {out / 'tinystories-hybrid'}")


if __name__ == "__main__":
    main()
