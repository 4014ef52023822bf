"""A matrix of tiny randomly initialised text models, one per mlx-lm architecture (mlx-lm 0.32).

Each ``MATRIX`` entry is a config-override dict for ``random_models.make_model_folder(folder, "llama",
**MATRIX[name])``: it is merged over ``COMMON`` and the "llama" defaults (hidden 64, 2 layers,
4 heads / 2 kv heads, intermediate 128), so every entry names its ``model_type`` and all the fields
that architecture needs. ``vocab_size`` (300) and bos/eos come from the shared tokenizer.

Sizes are kept tiny (hidden <= 128, head_dim 16-32, intermediate <= 256) so a forward is fast.
Sliding-window models use a window of 8 and always have at least one sliding and one global layer;
MoE models use 4 experts, top-2; hybrid models have at least one recurrent/linear layer and one
attention layer. ``CACHE_KINDS`` records, per entry, the caches ``make_prompt_cache`` builds
(layer order, "xN" for repeats).

Use ``build(folder, name, seed)``: it is ``make_model_folder`` plus ``fill_zero_weights``, which gives
random values to the weights mlx-lm initialises to zero (without it the rwkv7 and recurrent_gemma
recurrent state never reaches the output, and the deepseek_v3 / glm4_moe / nemotron_h routers tie).
Besides the plain model types there are "gemma4_text_kv_shared" (KV-sharing layers, fewer caches than
layers) and "llama4" (chunked attention; a nested text_config).
"""
from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from .random_models import make_model_folder

# Vocabulary size of the shared tokenizer (random_models.write_tokenizer); only needed where a
# config nests the text model under ``text_config``, which the top-level vocab_size does not reach.
TOKENIZER_VOCAB = 300

MATRIX: dict[str, dict] = {
    # KVCache x2
    "llama": dict(model_type="llama"),
    # RotatingKVCache(8) + KVCache  (llama.py with layer_types: sliding + full attention)
    "mistral": dict(model_type="mistral", rope_theta=1e6, num_key_value_heads=1,
                    sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
    # KVCache x2
    "mixtral": dict(model_type="mixtral", rope_theta=1e6, num_local_experts=4, num_experts_per_tok=2,
                    intermediate_size=64),
    # KVCache x2
    "qwen2": dict(model_type="qwen2", rope_theta=1e6, tie_word_embeddings=True),
    # KVCache x2
    "qwen2_moe": dict(model_type="qwen2_moe", rope_theta=1e6, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=64, shared_expert_intermediate_size=128),
    # KVCache x2
    "qwen3": dict(model_type="qwen3", rope_theta=1e6, head_dim=32, tie_word_embeddings=True),
    # KVCache x2  (layer 0 dense MLP, layer 1 MoE: with every layer MoE the unscaled 3-D expert
    # weights leave greedy text short cycles)
    "qwen3_moe": dict(model_type="qwen3_moe", rope_theta=1e6, head_dim=16, tie_word_embeddings=False,
                      num_experts=4, num_experts_per_tok=2, decoder_sparse_step=2, mlp_only_layers=[],
                      moe_intermediate_size=64, norm_topk_prob=True),
    # ArraysCache + KVCache  (gated-delta linear attention, then full attention)
    "qwen3_next": dict(model_type="qwen3_next", rope_theta=1e6, head_dim=16, partial_rotary_factor=0.5,
                       linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16,
                       linear_value_head_dim=16, linear_conv_kernel_dim=4, full_attention_interval=2,
                       num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1,
                       shared_expert_intermediate_size=64, mlp_only_layers=[], moe_intermediate_size=64,
                       norm_topk_prob=True, tie_word_embeddings=False),
    # ArraysCache + KVCache  (flat config = text_config of qwen3_5.Model)
    "qwen3_5": dict(model_type="qwen3_5", head_dim=16, linear_num_value_heads=4, linear_num_key_heads=2,
                    linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4,
                    full_attention_interval=2, tie_word_embeddings=True,
                    rope_parameters={"type": "default", "rope_theta": 1e6,
                                     "partial_rotary_factor": 0.5}),
    # ArraysCache + KVCache
    "qwen3_5_moe": dict(model_type="qwen3_5_moe", head_dim=16, linear_num_value_heads=4,
                        linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
                        linear_conv_kernel_dim=4, full_attention_interval=2, tie_word_embeddings=False,
                        num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1,
                        moe_intermediate_size=64, shared_expert_intermediate_size=64,
                        rope_parameters={"type": "default", "rope_theta": 1e6,
                                         "partial_rotary_factor": 0.5}),
    # KVCache x2
    "gemma": dict(model_type="gemma", head_dim=16),
    # KVCache x2  (mlx-lm's gemma2 has no sliding-window path)
    "gemma2": dict(model_type="gemma2", head_dim=16, query_pre_attn_scalar=16),
    # RotatingKVCache(8) + KVCache
    "gemma3_text": dict(model_type="gemma3_text", head_dim=16, query_pre_attn_scalar=16,
                        sliding_window=8, sliding_window_pattern=2, rope_theta=1e6,
                        rope_local_base_freq=10000.0),
    # RotatingKVCache(8) + KVCache
    "gemma4_text": dict(model_type="gemma4_text", head_dim=16, global_head_dim=32, num_key_value_heads=1,
                        sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                        num_kv_shared_layers=0, hidden_size_per_layer_input=16,
                        vocab_size_per_layer_input=TOKENIZER_VOCAB, use_double_wide_mlp=False),
    # RotatingKVCache(8) + KVCache  (attention sinks; YaRN rope as in the released config)
    "gpt_oss": dict(model_type="gpt_oss", head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                    intermediate_size=64, sliding_window=8, rope_theta=150000.0,
                    max_position_embeddings=131072,
                    rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                  "truncate": False, "original_max_position_embeddings": 4096},
                    layer_types=["sliding_attention", "full_attention"]),
    # KVCache x2
    "phi3": dict(model_type="phi3"),
    # KVCache x2
    "starcoder2": dict(model_type="starcoder2", norm_epsilon=1e-5, rope_theta=100000.0,
                       tie_word_embeddings=True),
    # RotatingKVCache(8) + KVCache
    "cohere2": dict(model_type="cohere2", head_dim=16, layer_norm_eps=1e-5, sliding_window=8,
                    sliding_window_pattern=2, logit_scale=1.0),
    # KVCache x2
    "olmo2": dict(model_type="olmo2", tie_word_embeddings=False),
    # KVCache x2  (MLA attention; layer 0 dense MLP, layer 1 MoE)
    "deepseek_v3": dict(model_type="deepseek_v3", num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=32,
                        qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, n_routed_experts=4,
                        n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=32,
                        first_k_dense_replace=1, moe_layer_freq=1, n_group=1, topk_group=1,
                        routed_scaling_factor=1.0),
    # KVCache x2  (layer 0 dense MLP, layer 1 MoE)
    "glm4_moe": dict(model_type="glm4_moe", head_dim=16, partial_rotary_factor=0.5, use_qk_norm=True,
                     n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
                     moe_intermediate_size=32, first_k_dense_replace=1, n_group=1, topk_group=1,
                     routed_scaling_factor=1.0, norm_topk_prob=True, rope_scaling=None,
                     attention_bias=True, tie_word_embeddings=False),
    # ArraysCache + KVCache  (mamba2 layer, then attention layer; MoE + shared MLP; mamba_expand=1
    # only satisfies transformers' config check n_heads * d_head == expand * hidden; time_step_limit
    # caps dt so the SSM state lasts more than a few tokens)
    "granitemoehybrid": dict(model_type="granitemoehybrid", layer_types=["mamba", "attention"],
                             attention_bias=False, embedding_multiplier=12.0,
                             attention_multiplier=0.0625, logits_scaling=2.0, residual_multiplier=0.5,
                             num_local_experts=4, num_experts_per_tok=2, intermediate_size=64,
                             shared_intermediate_size=128, mamba_n_heads=4, mamba_d_head=16,
                             mamba_expand=1, mamba_d_state=16, mamba_d_conv=4, mamba_n_groups=1,
                             mamba_conv_bias=True,
                             mamba_proj_bias=False, position_embedding_type="rope",
                             time_step_limit=[0.001, 0.1]),
    # CacheList(ArraysCache, KVCache) x2  (parallel mamba2 + attention in every layer)
    "falcon_h1": dict(model_type="falcon_h1", head_dim=16, mamba_n_heads=4, mamba_d_head=16,
                      mamba_d_ssm=64, mamba_d_state=16, mamba_d_conv=4, mamba_n_groups=1,
                      mamba_chunk_size=16, rope_theta=1e6, tie_word_embeddings=False),
    # ArraysCache + KVCache  (short-conv layer, then attention)
    "lfm2": dict(model_type="lfm2", norm_eps=1e-5, conv_bias=False, conv_L_cache=3, block_dim=64,
                 block_ff_dim=128, block_multiple_of=16, block_ffn_dim_multiplier=1.0,
                 block_auto_adjust_ff_dim=False, layer_types=["conv", "full_attention"]),
    # ArraysCache x2  (pure SSM; time_step_limit caps dt so the state lasts more than a few tokens)
    "mamba2": dict(model_type="mamba2", num_heads=4, head_dim=32, state_size=16, n_groups=1,
                   conv_kernel=4, use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5,
                   time_step_limit=[0.001, 0.1], time_step_rank="auto", tie_word_embeddings=True),
    # ArraysCache + KVCache  (mamba layer, then attention + MoE layer; its 2-D A_log is scaled too, so
    # the mamba state decays within a few tokens)
    "jamba": dict(model_type="jamba", attn_layer_offset=1, attn_layer_period=2, expert_layer_offset=1,
                  expert_layer_period=2, mamba_d_conv=4, mamba_d_state=8, mamba_expand=2,
                  num_experts=4, num_experts_per_tok=2, tie_word_embeddings=True),
    # ArraysCache + KVCache  (4 layers, pattern M * - E: mamba, attention, MLP, MoE; the MLP and MoE
    # layers have no cache)
    "nemotron_h": dict(model_type="nemotron_h", hybrid_override_pattern=["M", "*", "-", "E"],
                       head_dim=16, attention_bias=False, mamba_num_heads=4, mamba_head_dim=16,
                       mamba_proj_bias=False, ssm_state_size=16, conv_kernel=4, n_groups=1,
                       mlp_bias=False, layer_norm_epsilon=1e-5, use_bias=False, use_conv_bias=True,
                       moe_intermediate_size=64, moe_shared_expert_intermediate_size=64,
                       n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=1,
                       topk_group=1, norm_topk_prob=True, routed_scaling_factor=1.0,
                       time_step_limit=[0.001, 0.1], tie_word_embeddings=False),
    # ArraysCache + RotatingKVCache(8)  (RG-LRU recurrent block, then local attention; its conv and
    # gates start at zero, see fill_zero_weights)
    "recurrent_gemma": dict(model_type="recurrent_gemma", attention_bias=False, conv1d_width=4,
                            logits_soft_cap=30.0, num_key_value_heads=1, attention_window_size=8,
                            block_types=["recurrent", "attention"]),
    # ArraysCache x2  (time-mix params start at zero, see fill_zero_weights)
    "rwkv7": dict(model_type="rwkv7", head_dim=16, norm_eps=1e-5, a_low_rank_dim=16, v_low_rank_dim=16,
                  gate_low_rank_dim=32, decay_low_rank_dim=16, tie_word_embeddings=False),
    # KVCache x2  (layer 0 RoPE, layer 1 NoPE)
    "smollm3": dict(model_type="smollm3", no_rope_layer_interval=2, tie_word_embeddings=True),
    # RotatingKVCache(8) + KVCache  (pattern "LG": local RoPE layer, global NoPE layer)
    "exaone4": dict(model_type="exaone4", head_dim=16, rope_theta=1e6, rope_scaling=None,
                    tie_word_embeddings=False, sliding_window=8, sliding_window_pattern="LG",
                    layer_types=["sliding_attention", "full_attention"]),
    # RotatingKVCache(8) + KVCache + RotatingKVCache(8) + KVCache for 4 layers: layers 2-3 reuse the
    # keys/values of the last earlier layer of their kind, so make_prompt_cache returns only 2 caches:
    # RotatingKVCache(8) + KVCache
    "gemma4_text_kv_shared": dict(model_type="gemma4_text", num_hidden_layers=4, head_dim=16,
                                  global_head_dim=32, num_key_value_heads=1, sliding_window=8,
                                  layer_types=["sliding_attention", "full_attention"] * 2,
                                  num_kv_shared_layers=2, hidden_size_per_layer_input=16,
                                  vocab_size_per_layer_input=TOKENIZER_VOCAB, use_double_wide_mlp=True),
    # KVCache x2  (llama-4 style query scaling 1 + beta*log(1 + floor((offset + arange(L)) / 16)),
    # with original_max_position_embeddings=16 so the scale changes within a short generation;
    # YaRN rope with factor = 2048 / 16, which keeps transformers' config check quiet)
    "ministral3": dict(model_type="ministral3", head_dim=16, tie_word_embeddings=False,
                       max_position_embeddings=2048,
                       rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 128.0,
                                        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0,
                                        "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1,
                                        "original_max_position_embeddings": 16}),
    # KVCache x2  (learned absolute position embeddings)
    "gpt2": dict(model_type="gpt2", n_ctx=2048, n_embd=64, n_head=4, n_layer=2, n_positions=2048,
                 layer_norm_epsilon=1e-5, num_key_value_heads=4),
    # ChunkedKVCache(8) x3 + KVCache  (llama4.Model; text model nested in text_config, so its vocab is
    # written out; layers 0-2 chunked-attention RoPE, layer 3 global NoPE; odd layers MoE top-1)
    "llama4": dict(model_type="llama4", text_config=dict(
        model_type="llama4_text", vocab_size=TOKENIZER_VOCAB, hidden_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=64,
        intermediate_size_mlp=128, num_local_experts=4, num_experts_per_tok=1,
        interleave_moe_layer_step=2, attention_chunk_size=8, attention_bias=False,
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=None,
        use_qk_norm=True, attn_temperature_tuning=True, floor_scale=8192, attn_scale=0.1)),
}


# What mlx_lm.models.cache.make_prompt_cache(model) returns for each entry, in layer order ("xN" for
# repeats; RotatingKVCache(n) / ChunkedKVCache(n) give max_size / chunk_size). Layers without a cache
# of their own (nemotron_h's MLP/MoE layers, gemma4_text_kv_shared's KV-sharing layers) have no entry,
# so len(make_prompt_cache(model)) can be less than the number of layers.
CACHE_KINDS: dict[str, str] = {
    "llama": "KVCache x2",
    "mistral": "RotatingKVCache(8) + KVCache",
    "mixtral": "KVCache x2",
    "qwen2": "KVCache x2",
    "qwen2_moe": "KVCache x2",
    "qwen3": "KVCache x2",
    "qwen3_moe": "KVCache x2",
    "qwen3_next": "ArraysCache + KVCache",
    "qwen3_5": "ArraysCache + KVCache",
    "qwen3_5_moe": "ArraysCache + KVCache",
    "gemma": "KVCache x2",
    "gemma2": "KVCache x2",
    "gemma3_text": "RotatingKVCache(8) + KVCache",
    "gemma4_text": "RotatingKVCache(8) + KVCache",
    "gpt_oss": "RotatingKVCache(8) + KVCache",
    "phi3": "KVCache x2",
    "starcoder2": "KVCache x2",
    "cohere2": "RotatingKVCache(8) + KVCache",
    "olmo2": "KVCache x2",
    "deepseek_v3": "KVCache x2",
    "glm4_moe": "KVCache x2",
    "granitemoehybrid": "ArraysCache + KVCache",
    "falcon_h1": "CacheList(ArraysCache, KVCache) x2",
    "lfm2": "ArraysCache + KVCache",
    "mamba2": "ArraysCache x2",
    "jamba": "ArraysCache + KVCache",
    "nemotron_h": "ArraysCache + KVCache",
    "recurrent_gemma": "ArraysCache + RotatingKVCache(8)",
    "rwkv7": "ArraysCache x2",
    "smollm3": "KVCache x2",
    "exaone4": "RotatingKVCache(8) + KVCache",
    "gemma4_text_kv_shared": "RotatingKVCache(8) + KVCache",
    "ministral3": "KVCache x2",
    "gpt2": "KVCache x2",
    "llama4": "ChunkedKVCache(8) x3 + KVCache",
}


def fill_zero_weights(folder, seed: int = 0, scale: float = 0.5) -> list[str]:
    """Give every all-zero, non-bias weight in ``folder/model.safetensors`` uniform(-scale, scale)
    values; return the names changed.

    mlx-lm initialises some parameters to zero, and ``make_model_folder`` only scales 2-D weights,
    so they stay zero: the RWKV-7 time-mix (g_norm, k_k, k_a, r_k, token-shift mixes: the recurrent
    state then never reaches the output), the RG-LRU conv and gates of recurrent_gemma (same), the
    MoE router of deepseek_v3 / glm4_moe / nemotron_h (every token ties, so routing is constant)
    and gpt_oss's attention sinks. Other entries have no such weights and are left unchanged.
    """
    path = Path(folder) / "model.safetensors"
    weights = mx.load(str(path))
    zero = sorted(k for k, v in weights.items()
                  if not k.endswith("bias") and v.size and not bool(mx.any(v != 0).item()))
    if zero:
        mx.random.seed(seed + 7919)
        for k in zero:
            # RG-LRU: a = exp(-8 * gate * softplus(recurrent_param)); a negative param keeps a near 1
            low, high = (-8.0, -4.0) if k.endswith("recurrent_param") else (-scale, scale)
            weights[k] = mx.random.uniform(low, high, weights[k].shape).astype(weights[k].dtype)
        mx.save_safetensors(str(path), weights)
    return zero


def build(folder, name: str, seed: int = 0, fill_zeros: bool = True,
          weight_scale: float = 4.0) -> Path:
    """Write the tiny random model ``MATRIX[name]`` (with the shared tokenizer) into ``folder``:
    ``make_model_folder(folder, "llama", seed=seed, **MATRIX[name])``, then (unless
    ``fill_zeros=False``) ``fill_zero_weights`` so no architecture has a dead path."""
    folder = Path(folder)
    make_model_folder(folder, "llama", seed=seed, weight_scale=weight_scale, **MATRIX[name])
    if fill_zeros:
        fill_zero_weights(folder, seed)
    return folder


# Not in MATRIX:
# - qwen3_5_text / qwen3_5_moe_text: no such model files in mlx-lm 0.32; qwen3_5 and qwen3_5_moe take a
#   flat text config (ModelArgs.from_dict wraps it as text_config), so they are used directly.
# - gemma2 sliding window: mlx-lm's gemma2 has no sliding-window layers (plain KVCache everywhere).
# - llama4_text: has no ChunkedKVCache (make_cache is the default KVCache); "llama4" (llama4.Model with
#   text_config) is the one with chunked attention.
# - mistral3 / mistral4: mistral3 is the multimodal wrapper around ministral3 / mistral4 (used via
#   ministral3 directly); mistral4 (MLA + MoE) is not included.
