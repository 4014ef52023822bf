"""Reach an optimized BLAS before mlx is imported.

mlx's Linux CPU wheel links a bundled reference BLAS that runs fp32 GEMM at a few GFLOP/s; with it,
verifying k tokens costs about k single-token forwards and speculation cannot win. Loading an
optimized BLAS with RTLD_GLOBAL before mlx.core is imported makes mlx's cblas_* calls bind to it.
Set MLXSPEC_BLAS to a library path to choose one, or to "none" to keep the bundled BLAS.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys

_CANDIDATES = (
    # Debian/Ubuntu libopenblas0-pthread (what README and .ci/run install)
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "libopenblas.so.0",
    "libopenblas.so",
    # Intel MKL from the PyPI `mkl` wheel
    os.path.join(sys.prefix, "lib", "libmkl_rt.so.2"),
    "libmkl_rt.so.2",
    "libblis.so.4",
)

loaded_path: str | None = None  # the library this process bound to, or None for mlx's own


def _candidates() -> list[str]:
    choice = os.environ.get("MLXSPEC_BLAS", "").strip()
    if choice.lower() == "none":
        return []
    found = [choice] if choice else []
    found += list(_CANDIDATES)
    # other distributions' layouts, one directory level deep (a recursive glob can loop on links)
    found += sorted(glob.glob("/usr/lib*/*/libopenblas*.so*")) + sorted(glob.glob("/usr/lib*/libopenblas*.so*"))
    return found


def ensure() -> str | None:
    """Load the first optimized BLAS found, globally. Safe to call more than once."""
    global loaded_path
    if loaded_path is not None or not sys.platform.startswith("linux"):
        return loaded_path
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
            lib.cblas_sgemm  # must export the CBLAS interface mlx calls
        except (OSError, AttributeError):
            continue
        loaded_path = path
        break
    return loaded_path


def describe() -> str:
    """Which library serves cblas_sgemm in this process (for `mlxspec doctor`)."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    if loaded_path is None:
        return "mlx bundled reference BLAS (slow: install libopenblas0-pthread)"
    return f"optimized: {os.path.realpath(loaded_path)}"
