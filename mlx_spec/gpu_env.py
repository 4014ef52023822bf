"""Two settings that mlx reads once from the environment, at the first GPU operation that uses
them, and that mlx-spec chooses before mlx is imported unless the user has set them.

- MLX_ENABLE_TF32=0. mlx's CUDA build multiplies float32 matrices in TF32 (10-bit mantissa) by
  default, but keeps matrix-vector products (one row) in full float32: a multi-token verify then
  rounds the target's logits differently from a one-token step, and a greedy near-tie can flip.
  Seen on an H200: prompt lookup and `auto` left mlx-lm's greedy text at token 30 of a random
  float32 qwen3 (tests/core/test_greedy_equality.py), every other case of that file equal.
- MLX_CUDA_USE_CUDNN_SDPA=0. For more than one query token mlx's CUDA build runs attention as a
  cuDNN graph built per (query length, key length). Verification meets a new key length every
  step, so every multi-token verify built one: on an H200 they cost 40-150 ms each in the bench
  against a 2.1 ms one-token step (which uses mlx's own vector kernel), and every method drafting
  there ran at 0.19-0.62x of plain decoding. Without cuDNN, mlx computes such attention with its
  own matrix products and softmax, which need no per-shape build.
The second costs long prompts on CUDA some prefill speed (unfused attention); set the variable
to 1 before importing mlx_spec to keep cuDNN. mlx's documentation gives Metal the same reduced-
precision default where the chip has it, so the first applies there too; neither matters on the
CPU. Half-precision models have no such switch: there a multi-token verify and a one-token step
may still run different kernels and differ in the last bit, which can flip an exact tie.
"""
from __future__ import annotations

import os

DEFAULTS = {"MLX_ENABLE_TF32": "0", "MLX_CUDA_USE_CUDNN_SDPA": "0"}


def apply() -> None:
    """Set the defaults the user has not set; must run before mlx's first GPU operation."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


def describe() -> str:
    """One line for `mlxspec doctor`: each setting and whether it is mlx-spec's or the user's."""
    return ", ".join(f"{key}={os.environ.get(key, 'unset')}"
                     + ("" if os.environ.get(key) == value else " (set by you)")
                     for key, value in DEFAULTS.items())
