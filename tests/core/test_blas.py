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


def test_a_library_that_cannot_multiply_is_refused_by_the_child_probe(tmp_path, monkeypatch):
    """A wheel library is tried in a child process first (one built for a newer CPU dies there
    of SIGILL, not here); a file that is no CBLAS library fails the probe, and the verdict is kept."""
    monkeypatch.setenv("MLXSPEC_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "libopenblas.so.0"
    fake.write_bytes(b"not a library")
    assert blas._probe(str(fake)) is False
    verdicts = list((tmp_path / "cache" / "blas").glob("probe-*.json"))
    assert len(verdicts) == 1 and '"ok": false' in verdicts[0].read_text()


@linux_x86
def test_the_wheel_library_multiplies_in_the_probe():
    assert blas._probe(blas._wheel_libraries()[0])


def test_a_renamed_copy_carries_the_new_soname(tmp_path, monkeypatch):
    """Without libgfortran.so.5 on the system, a vendored libgfortran is lent under that soname."""
    import glob
    import sysconfig

    monkeypatch.setenv("MLXSPEC_CACHE", str(tmp_path))
    vendored = sorted(glob.glob(f"{sysconfig.get_paths()['purelib']}/*.libs/libgfortran-*.so.5*"))
    if not vendored:
        pytest.skip("no wheel here vendors a libgfortran")
    old = os.path.basename(vendored[0]).encode()
    copy = blas._renamed_copy(vendored[0], b"libgfortran.so.5")
    data = open(copy, "rb").read()
    assert os.path.basename(copy) == "libgfortran.so.5" and len(data) == os.path.getsize(vendored[0])
    assert b"libgfortran.so.5\0" in data and old + b"\0" not in data
    with pytest.raises(ValueError, match="longer"):
        blas._set_soname(bytearray(data), b"x" * 200)


@linux_x86
def test_mlx_imported_first_keeps_its_own_blas_and_says_so():
    """mlx binds its CBLAS calls when it loads: a process that imported mlx (or mlx_lm) before
    mlx_spec is served by mlx's bundled BLAS whatever mlx_spec loads later. It is warned (once,
    at the import) and describe() (doctor, bench reports, the cost model's file) says so, where
    it used to name the library it loaded too late."""
    script = ("import warnings; warnings.simplefilter('always'); import mlx.core, mlx_spec; "
              "from mlx_spec import blas; print(blas.late, blas.describe())")
    env = {k: v for k, v in os.environ.items() if k not in ("MLXSPEC_BLAS", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("True mlx bundled reference BLAS (slow: mlx was imported before")
    assert "RuntimeWarning: mlx was imported before mlx_spec" in out.stderr
    first = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", script.replace(
        "import mlx.core, mlx_spec", "import mlx_spec, mlx.core")], capture_output=True,
        text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("False optimized: ")


def test_where_no_optimized_blas_is_found_the_import_order_loses_nothing(tmp_path, monkeypatch):
    """On a system without any of the libraries mlx_spec looks for, mlx imported first (as here,
    in the test process) is not `late`: no warning, and describe() keeps its advice to install
    one. With one of them present, it is."""
    missing = [str(tmp_path / "libopenblas.so.0"), "libsurely-no-such-blas.so.0"]
    monkeypatch.setattr(blas, "loaded_path", None)
    monkeypatch.setattr(blas, "late", False)
    monkeypatch.setattr(blas, "_candidates", lambda wheels=None: missing)
    monkeypatch.setattr(sys, "platform", "linux")
    assert blas.ensure() is None and blas.late is False
    assert "install libopenblas0-pthread" in blas.describe()
    present = tmp_path / "libopenblas.so.0"
    present.write_bytes(b"")
    assert blas.ensure() is None and blas.late is True
    assert "imported before mlx_spec" in blas.describe()
