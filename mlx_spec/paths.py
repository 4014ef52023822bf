"""Where mlx-spec keeps what it measured or built on this machine (cost models, the kernels'
harness library, BLAS probes): $MLXSPEC_CACHE, else $MLX_SPEC_CACHE, else ~/.cache/mlx-spec.
Standard library only: mlx_spec.blas reads it before mlx is imported."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("MLXSPEC_CACHE") or os.environ.get("MLX_SPEC_CACHE") or "~/.cache/mlx-spec"
    return Path(root).expanduser()
