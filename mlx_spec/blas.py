"""Reach an optimized BLAS before mlx is imported.

mlx's Linux CPU wheel links a bundled reference BLAS that runs fp32 GEMM at a few GFLOP/s; with it,
verifying k tokens costs about k single-token forwards and speculation cannot win. Loading an
optimized BLAS with RTLD_GLOBAL before mlx.core is imported makes mlx's cblas_* calls bind to it.
Set MLXSPEC_BLAS to a library path to choose one, or to "none" to keep the bundled BLAS.

Where the system has no OpenBLAS, the `cmeel-openblas` wheel (a dependency on x86-64 Linux) puts
an unprefixed libopenblas in site-packages/cmeel.prefix/lib, so a pip-only install reaches the
fast path too (it needs the system's libgfortran.so.5; without it the next candidate is tried).
scipy's openblas wheels cannot serve: their symbols are prefixed (scipy_cblas_sgemm).
"""
from __future__ import annotations

import ctypes
import glob
import os
import site
import sys
import sysconfig

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


def _wheel_libraries() -> list[str]:
    """OpenBLAS shipped by a wheel (cmeel-openblas) in this interpreter's site-packages."""
    roots = [sysconfig.get_paths()["purelib"], *getattr(site, "getsitepackages", list)()]
    paths = [os.path.join(root, "cmeel.prefix", "lib", "libopenblas.so.0") for root in roots]
    return [p for p in dict.fromkeys(paths) if os.path.exists(p)]


def _candidates() -> list[str]:
    choice = os.environ.get("MLXSPEC_BLAS", "").strip()
    if choice.lower() == "none":
        return []
    found = [choice] if choice else []
    found += list(_CANDIDATES[:2]) + _wheel_libraries() + list(_CANDIDATES[2:])
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
