"""Reach an optimized BLAS before mlx is imported.

mlx's Linux CPU wheel links a bundled reference BLAS that runs fp32 GEMM at a few GFLOP/s; with it,
verifying k tokens costs about k single-token forwards and speculation cannot win. Loading an
optimized BLAS with RTLD_GLOBAL before mlx.core is imported makes mlx's cblas_* calls bind to it.
Set MLXSPEC_BLAS to a library path to choose one, or to "none" to keep the bundled BLAS.

Where the system has no OpenBLAS, the `cmeel-openblas` wheel (a dependency on x86-64 Linux) puts
an unprefixed libopenblas in site-packages/cmeel.prefix/lib, so a pip-only install reaches the
fast path too. Two things can stand in its way, and both are handled here:
- it needs libgfortran.so.5, which a bare system lacks: the wheels already installed vendor one
  (mlx's own, numpy's, scipy's, under a hashed name), so a copy renamed to the soname
  libgfortran.so.5 is made once in the cache folder (paths.cache_root) and loaded first;
- a wheel built for a newer CPU than this one dies of SIGILL at its first GEMM (0.3.31 did on an
  AVX2 machine): a wheel library is first tried in a child process, once per library file and
  CPU (the verdict is cached), and only bound here if that child multiplied correctly.
scipy's openblas wheels cannot serve: their symbols are prefixed (scipy_cblas_sgemm).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import hashlib
import json
import os
import site
import struct
import subprocess
import sys
import sysconfig

try:  # as part of the package; the child process that probes a library loads this file alone
    from .paths import cache_root
except ImportError:
    from paths import cache_root

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
late = False  # mlx.core was imported before ensure() ran: mlx's calls bound to its bundled BLAS
LATE = ("mlx was imported before mlx_spec, so mlx's bundled reference BLAS serves this process "
        "(verifying drafts costs several times more): import mlx_spec before mlx and mlx_lm")


def _site_roots() -> list[str]:
    """This interpreter's site-packages folders, each once."""
    roots = [sysconfig.get_paths()["purelib"], *getattr(site, "getsitepackages", list)()]
    return list(dict.fromkeys(roots))


def _wheel_libraries() -> list[str]:
    """OpenBLAS shipped by a wheel (cmeel-openblas) in this interpreter's site-packages."""
    paths = [os.path.join(root, "cmeel.prefix", "lib", "libopenblas.so.0") for root in _site_roots()]
    return [p for p in paths if os.path.exists(p)]


def _candidates(wheels: list[str] | None = None) -> list[str]:
    choice = os.environ.get("MLXSPEC_BLAS", "").strip()
    if choice.lower() == "none":
        return []
    found = [choice] if choice else []
    wheels = _wheel_libraries() if wheels is None else wheels
    found += list(_CANDIDATES[:2]) + wheels + list(_CANDIDATES[2:])
    # other distributions' layouts, one directory level deep (a recursive glob can loop on links)
    found += sorted(glob.glob("/usr/lib*/*/libopenblas*.so*")) + sorted(glob.glob("/usr/lib*/libopenblas*.so*"))
    return found


def ensure() -> str | None:
    """Load the first optimized BLAS found, globally. Safe to call more than once.

    Only before mlx.core is imported: mlx binds its CBLAS calls when it loads (an optimized
    library loaded after it measured 4.4 against 24.8 GFLOP/s loaded before), so a process that
    imported mlx (or mlx_lm) first keeps mlx's bundled BLAS, unless one of the candidates was
    already in the process before (LD_PRELOAD); `late` says so, and describe() tells it."""
    global loaded_path, late
    if loaded_path is not None or late or not sys.platform.startswith("linux"):
        return loaded_path
    if "mlx.core" in sys.modules:
        candidates = _candidates()
        loaded_path = _mapped(candidates)
        late = loaded_path is None and _available(candidates)  # (where there is none, or
        # MLXSPEC_BLAS=none: the import order lost nothing)
        return loaded_path
    wheels = _wheel_libraries()
    for path in _candidates(wheels):
        if path in wheels and not _probe(path):
            continue
        if _bind(path) is not None:
            loaded_path = path
            break
    return loaded_path


def _available(paths: list[str]) -> bool:
    """Whether one of `paths` (files, or names the loader searches for) is on this system."""
    for path in paths:
        if os.path.isabs(path) or os.sep in path:
            if os.path.exists(path):
                return True
        elif ctypes.util.find_library(path.split(".so")[0].removeprefix("lib")):
            return True
    return False


def _mapped(paths: list[str]) -> str | None:
    """The first of `paths` this process has loaded already (/proc/self/maps), if any."""
    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split(None, 5)[-1].strip() for line in maps if "/" in line}
    except OSError:
        return None
    return next((path for path in paths if os.path.realpath(path) in loaded), None)


def _bind(path: str):
    """The library at `path` loaded globally if it exports CBLAS (lending it a libgfortran when
    it lacks one), else None."""
    for attempt in range(2):
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
            lib.cblas_sgemm  # must export the CBLAS interface mlx calls
            return lib
        except AttributeError:
            return None
        except OSError as exc:
            if attempt or "libgfortran.so.5" not in str(exc) or not _lend_gfortran():
                return None
    return None


# -- libgfortran for a pip-only install ----------------------------------------------------------
def _lend_gfortran() -> bool:
    """Load a wheel-vendored libgfortran under the soname libgfortran.so.5 (see the module text)."""
    vendored = [p for root in _site_roots()
                for folder in ("mlx_cpu.libs", "mlx.libs", "numpy.libs", "scipy.libs")
                for p in sorted(glob.glob(os.path.join(root, folder, "libgfortran-*.so.5*")))]
    for source in vendored:
        try:
            for quadmath in sorted(glob.glob(os.path.join(os.path.dirname(source), "libquadmath-*"))):
                ctypes.CDLL(quadmath, mode=os.RTLD_GLOBAL)  # its NEEDED, by its own hashed name
            ctypes.CDLL(_renamed_copy(source, b"libgfortran.so.5"), mode=os.RTLD_GLOBAL)
            return True
        except (OSError, ValueError):
            continue
    return False


def _renamed_copy(source: str, soname: bytes) -> str:
    """A copy of the shared library `source` (made once in the cache folder) whose DT_SONAME
    reads `soname`: the loader then resolves other libraries' NEEDED entries of that name to it."""
    copy = cache_root() / "blas" / _file_key(source) / soname.decode()
    if not copy.exists():
        with open(source, "rb") as f:
            data = bytearray(f.read())
        _set_soname(data, soname)
        copy.parent.mkdir(parents=True, exist_ok=True)
        scratch = copy.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_bytes(data)
        os.replace(scratch, copy)  # atomic: another process never loads a half-written file
    return str(copy)


def _file_key(path: str, *extra: str) -> str:
    """A short hash of a file's identity (real path, size, modification time) and `extra`:
    cached results about it are found again until the file changes. OSError if it is missing."""
    stat = os.stat(path)
    text = ":".join([os.path.realpath(path), str(stat.st_size), str(stat.st_mtime_ns), *extra])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _set_soname(elf: bytearray, soname: bytes) -> None:
    """Overwrite, in place, the DT_SONAME string of a little-endian ELF64 shared library with a
    name no longer than it (padded with NULs: the string table's layout is unchanged)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):  # program headers: where mapped addresses live in the file
        kind, _, offset, vaddr, _, filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if kind == 1:    # PT_LOAD
            loads.append((vaddr, offset, filesz))
        elif kind == 2:  # PT_DYNAMIC
            dynamic = (offset, filesz)
    if dynamic is None:
        raise ValueError("no dynamic section")
    tags = {}
    for at in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", elf, at)
        if tag == 0:     # DT_NULL
            break
        tags.setdefault(tag, value)
    if 5 not in tags or 14 not in tags:  # DT_STRTAB, DT_SONAME
        raise ValueError("no soname")
    strtab = next((tags[5] - vaddr + offset for vaddr, offset, size in loads
                   if vaddr <= tags[5] < vaddr + size), None)
    if strtab is None:
        raise ValueError("string table outside the loaded segments")
    start = strtab + tags[14]
    end = elf.index(b"\0", start)
    if len(soname) > end - start:
        raise ValueError("the new soname is longer than the old one")
    elf[start:end] = soname.ljust(end - start, b"\0")


# -- a wheel library is tried in a child process first ----------------------------------------------
_PROBE = """
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("blas_probe", sys.argv[1])
blas = importlib.util.module_from_spec(spec)
sys.path.insert(0, sys.argv[2])
spec.loader.exec_module(blas)
lib = blas._bind(sys.argv[3])
sys.exit(0 if lib is not None and blas._multiplies(lib) else 3)
"""


def _multiplies(lib) -> bool:
    """A 64x64 single-precision GEMM through the library's cblas_sgemm, checked."""
    n = 64
    a = (ctypes.c_float * (n * n))(*[(i % 7) - 3.0 for i in range(n * n)])
    b = (ctypes.c_float * (n * n))(*[1.0 if i % (n + 1) == 0 else 0.0 for i in range(n * n)])
    c = (ctypes.c_float * (n * n))()
    f = ctypes.c_float
    # row-major, no transposes: C = 1 * A @ I + 0 * C
    lib.cblas_sgemm(101, 111, 111, n, n, n, f(1.0), a, n, b, n, f(0.0), c, n)
    return list(c) == list(a)


def _probe(path: str) -> bool:
    """Whether `path` multiplies correctly on this CPU, tried in a child (cached verdict)."""
    cpu = _cpu_signature()
    try:
        verdict = cache_root() / "blas" / f"probe-{_file_key(path, cpu)}.json"
    except OSError:
        return False
    try:
        return bool(json.loads(verdict.read_text())["ok"])
    except (OSError, ValueError, KeyError):
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        child = subprocess.run([sys.executable, "-c", _PROBE, os.path.abspath(__file__), here, path],
                               capture_output=True, timeout=60)
        ok, code = child.returncode == 0, child.returncode
    except (OSError, subprocess.SubprocessError) as exc:
        ok, code = False, repr(exc)
    try:
        verdict.parent.mkdir(parents=True, exist_ok=True)
        verdict.write_text(json.dumps({"ok": ok, "library": path, "exit": code, "cpu": cpu}))
    except OSError:
        pass  # a read-only home: probe again next time
    return ok


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags (what decides whether a build can run here)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))][:2]
        return hashlib.sha1("".join(lines).encode()).hexdigest()[:16]
    except OSError:
        return "unknown"


def describe() -> str:
    """Which library serves cblas_sgemm in this process (for `mlxspec doctor`)."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    if late:
        return ("mlx bundled reference BLAS (slow: mlx was imported before mlx_spec; import "
                "mlx_spec first)")
    if loaded_path is None:
        return "mlx bundled reference BLAS (slow: install libopenblas0-pthread)"
    return f"optimized: {os.path.realpath(loaded_path)}"
