"""The optimized BLAS reaches mlx without apt: the cmeel-openblas wheel (a dependency on x86-64
Linux) is a candidate, and a process told to use it binds mlx's CBLAS calls to it."""
import os
import platform
import subprocess
import sys

import pytest

from mlx_spec import blas

linux_x86 = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
                               reason="the wheel is a dependency on x86-64 Linux only")


@linux_x86
def test_the_wheel_library_is_a_candidate_after_the_system_one():
    wheel = blas._wheel_libraries()
    assert wheel and all(p.endswith("cmeel.prefix/lib/libopenblas.so.0") for p in wheel)
    order = blas._candidates()
    assert order.index(wheel[0]) > order.index(blas._CANDIDATES[0])


@linux_x86
def test_a_process_bound_to_the_wheel_library_uses_it():
    wheel = blas._wheel_libraries()[0]
    script = ("import mlx_spec, mlx.core as mx; from mlx_spec import blas; "
              "a = mx.ones((64, 64)); mx.eval(a @ a); print(blas.describe())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "MLXSPEC_BLAS": wheel}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"optimized: {os.path.realpath(wheel)}"
