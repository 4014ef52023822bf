"""Both places the rows over a vocabulary are computed (mlx_spec.sampling.rows_on_host): on the
host where MLX computes on the CPU, with MLX's own ops on a GPU. The tests run here on a CPU, so
a test taking `host` (BOTH_ROW_PATHS) runs the GPU's path too."""
from __future__ import annotations

from contextlib import contextmanager

import pytest

import mlx_spec.sampling

BOTH_ROW_PATHS = pytest.mark.parametrize("host", [True, False], ids=["host-rows", "mlx-rows"])


@contextmanager
def rows_on(host: bool):
    """accept() and the drafters as they run where HOST_ROWS is `host`."""
    saved = mlx_spec.sampling.HOST_ROWS
    mlx_spec.sampling.HOST_ROWS = host
    try:
        yield
    finally:
        mlx_spec.sampling.HOST_ROWS = saved
