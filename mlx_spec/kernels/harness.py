"""Runs the GPU kernel bodies on the CPU, so their logic is tested on machines without Metal or CUDA.

Every body in metal/ is compiled by the system C++ compiler with metal/backend_cpu.h (address-space
qualifiers removed, host types) inside a loop over the grid, into one small shared library called
through ctypes. The library is cached under ~/.cache/mlx-spec/kernels, keyed by a hash of its
source, so a test session compiles it at most once.

Like CUDA, the loop runs the grid rounded up to whole blocks of 256 threads. Outputs start filled
with a canary byte and get a guard zone after their end: a body that forgets its bounds check,
writes past its output or leaves an element unwritten fails loudly.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np

from ..errors import MlxSpecError
from ..paths import cache_root
from .catalog import MASK_TYPE, PROLOGUES, SPECS, Launch, read_body, read_header

BLOCK = 256
GUARD = 2 * BLOCK      # guard elements after every output
CANARY = 0x5A          # byte pattern of the guard zone
CXX_FLAGS = ["-O2", "-std=c++17", "-shared", "-fPIC", "-w"]

# mask element types the harness builds (bfloat16 has no portable host type in g++ 12)
MASK_DTYPES = {mx.bool_: "bool", mx.float32: "float", mx.float16: "_Float16"}
NUMPY = {mx.bool_: np.bool_, mx.float32: np.float32, mx.float16: np.float16, mx.int32: np.int32}


class HarnessUnavailable(MlxSpecError):
    """No C++ compiler, or the kernels do not compile."""


def cache_dir() -> Path:
    return cache_root() / "kernels"


def find_compiler() -> str:
    compiler = os.environ.get("CXX") or "g++"
    path = shutil.which(compiler)
    if path is None:
        raise HarnessUnavailable(
            f"the CPU kernel harness needs a C++ compiler and {compiler!r} was not found on PATH "
            "(install g++, e.g. `apt-get install g++`, or set CXX)")
    return path


def _symbol(name: str, mask_dtype=None) -> str:
    return f"mlxspec_{name}" + (f"__{MASK_DTYPES[mask_dtype]}" if mask_dtype is not None else "")


def _c_type(dtype, mask_dtype) -> str:
    return MASK_DTYPES[mask_dtype] if dtype == MASK_TYPE else "int32_t"


def _wrapper(name: str, body: str, mask_dtype=None) -> str:
    """One extern "C" function: the body as a lambda (its `return` ends one thread) in a grid loop."""
    spec = SPECS[name]
    params = [f"const int32_t* {arg}" for arg in spec.inputs]
    params += [f"{_c_type(dtype, mask_dtype)}* {out}" for out, dtype in spec.outputs]
    template = ""
    if mask_dtype is not None:
        template = (f"    using T = {MASK_DTYPES[mask_dtype]};\n"
                    f"    constexpr bool ADDITIVE = {'false' if mask_dtype == mx.bool_ else 'true'};\n")
    return (f'extern "C" void {_symbol(name, mask_dtype)}({", ".join(params)}, int thread_count) {{\n'
            f"{template}"
            f"    for (int thread_index = 0; thread_index < thread_count; ++thread_index) {{\n"
            f"        [&]() {{\n{PROLOGUES['cpu']}\n#line 1 \"{name}.metal\"\n{body}\n        }}();\n"
            f"    }}\n}}\n")


def library_source(bodies: dict[str, str], header: str) -> str:
    parts = [header]
    for name, spec in SPECS.items():
        variants = list(MASK_DTYPES) if spec.has_mask else [None]
        parts += [_wrapper(name, bodies[name], dtype) for dtype in variants]
    return "\n".join(parts)


def compile_library(source: str, directory: Optional[Path] = None) -> Path:
    """g++ -> .so, cached by the hash of (compiler, flags, source)."""
    compiler = find_compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([version, *CXX_FLAGS, source]).encode()).hexdigest()[:20]
    directory = directory or cache_dir()
    target = directory / f"kernels-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        source_file = Path(scratch) / "kernels.cpp"
        source_file.write_text(source)
        built = Path(scratch) / "kernels.so"
        result = subprocess.run([compiler, *CXX_FLAGS, "-o", str(built), str(source_file)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise HarnessUnavailable("the kernel bodies do not compile as C++:\n" + result.stderr[-4000:])
        os.replace(built, target)  # atomic: parallel sessions never load a half-written file
    return target


class KernelHarness:
    """Compiled kernel bodies (from metal/, or `bodies` overriding some of them) run on the CPU."""

    def __init__(self, bodies: Optional[dict[str, str]] = None, directory: Optional[Path] = None):
        self.bodies = {name: read_body(name, directory) for name in SPECS}
        self.bodies.update(bodies or {})
        self.source = library_source(self.bodies, read_header("cpu", directory))
        self.library = ctypes.CDLL(str(compile_library(self.source)))

    def run(self, launch: Launch) -> list[mx.array]:
        """Runs one launch exactly as a GPU backend would; returns its outputs as MLX arrays."""
        mask_dtype = launch.mask_dtype
        if launch.spec.has_mask and mask_dtype not in MASK_DTYPES:
            raise MlxSpecError(f"the CPU harness does not build {mask_dtype} masks")
        function = getattr(self.library, _symbol(launch.spec.name, mask_dtype if launch.spec.has_mask else None))
        # zeros after every input too, so a thread past the grid reads harmless values
        inputs = [np.concatenate([np.array(x, dtype=np.int32).ravel(), np.zeros(GUARD, np.int32)])
                  for x in launch.inputs]
        outputs = []
        for shape, dtype in zip(launch.output_shapes, launch.output_dtypes):
            size = int(np.prod(shape))
            buffer = np.empty(size + GUARD, dtype=NUMPY[dtype])
            buffer.view(np.uint8)[:] = CANARY
            outputs.append((buffer, size, shape))
        rounded = -(-launch.threads // BLOCK) * BLOCK
        pointers = [a.ctypes.data_as(ctypes.c_void_p) for a in inputs]
        pointers += [buffer.ctypes.data_as(ctypes.c_void_p) for buffer, _, _ in outputs]
        function.argtypes = [ctypes.c_void_p] * len(pointers) + [ctypes.c_int]
        function(*pointers, rounded)
        results = []
        for (buffer, size, shape), name in zip(outputs, launch.spec.outputs):
            if np.any(buffer[size:].view(np.uint8) != CANARY):
                raise AssertionError(f"kernel {launch.spec.name} wrote past the end of {name[0]}")
            element_bytes = buffer[:size].view(np.uint8).reshape(size, buffer.itemsize)
            unwritten = int(np.all(element_bytes == CANARY, axis=1).sum())
            if unwritten:
                raise AssertionError(f"kernel {launch.spec.name} left {unwritten} of {size} "
                                     f"elements of {name[0]} unwritten")
            results.append(mx.array(buffer[:size].reshape(shape)))
        return results


@functools.lru_cache(maxsize=1)
def default_harness() -> KernelHarness:
    return KernelHarness()
