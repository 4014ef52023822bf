"""The hand-written kernels (metal/*.metal) and how to launch them, independent of the backend.

Each kernel body is written once. A backend runs it by putting its header (metal/backend_*.h) and
a one-line prologue that defines `tid`, the flat thread index, around the body:
- Metal: mx.fast.metal_kernel (the prologue names thread_position_in_grid, so mlx passes it in);
- CUDA: mx.fast.cuda_kernel (block and thread ids; grids are rounded up to whole blocks);
- CPU: kernel_harness.py compiles the body with g++ inside a grid loop, for the tests.
A `Launch` is everything a backend needs for one call: inputs, output shapes and dtypes, the
number of threads and the template arguments; kernels.py builds them and runs them anywhere.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

import mlx.core as mx

from ..errors import MlxSpecError

MASK_TYPE = "T"  # an output declared with this dtype has the mask's element type

PROLOGUES = {
    "metal": "const int tid = int(thread_position_in_grid.x);",
    "cuda": "const int tid = int(blockIdx.x * blockDim.x + threadIdx.x);",
    "cpu": "const int tid = thread_index;",
}


@dataclass(frozen=True)
class KernelSpec:
    name: str                         # metal/<name>.metal
    inputs: tuple[str, ...]           # all int32
    outputs: tuple[tuple[str, object], ...]  # (name, mx dtype or MASK_TYPE)

    @property
    def has_mask(self) -> bool:
        return any(dtype == MASK_TYPE for _, dtype in self.outputs)


SPECS = {spec.name: spec for spec in (
    KernelSpec("tree_mask", ("parents", "dims"), (("mask", MASK_TYPE), ("positions", mx.int32))),
    KernelSpec("beam_owner", ("beams", "dims"), (("owners", mx.int32),)),
    KernelSpec("beam_pack", ("beams", "owners", "dims"),
               tuple((name, mx.int32) for name in
                     ("tokens", "parents", "beam_of", "depth_of", "unpack", "count"))),
    KernelSpec("beam_mask", ("owners", "beam_of", "depth_of", "dims"),
               (("mask", MASK_TYPE), ("positions", mx.int32))),
)}


def kernel_dir() -> Path:
    """Where the bodies are read from: metal/ of the package, or MLXSPEC_KERNEL_DIR (for trying
    an edited body against the tests without reinstalling)."""
    override = os.environ.get("MLXSPEC_KERNEL_DIR")
    return Path(override) if override else Path(str(resources.files("mlx_spec.metal")))


def read_body(name: str, directory: Optional[Path] = None) -> str:
    return ((directory or kernel_dir()) / f"{name}.metal").read_text()


def read_header(backend: str, directory: Optional[Path] = None) -> str:
    return ((directory or kernel_dir()) / f"backend_{backend}.h").read_text()


def gpu_source(backend: str, name: str) -> tuple[str, str]:
    """(header, source) for mx.fast.metal_kernel / cuda_kernel."""
    return read_header(backend), PROLOGUES[backend] + "\n" + read_body(name)


@dataclass
class Launch:
    spec: KernelSpec
    inputs: list
    output_shapes: list
    output_dtypes: list
    threads: int
    template: list = field(default_factory=list)

    def __post_init__(self):
        if self.threads >= 2**31:  # bodies index with int
            raise MlxSpecError(f"{self.spec.name}: {self.threads} elements exceed one launch's int32 index")

    @property
    def mask_dtype(self):
        return dict(self.template).get("T")


def _mask_template(mask_dtype) -> list:
    return [("T", mask_dtype), ("ADDITIVE", mask_dtype != mx.bool_)]


def _dims(*values: int) -> mx.array:
    return mx.array(values, dtype=mx.int32)


def _outputs(spec: KernelSpec, shapes: list, mask_dtype=None) -> dict:
    dtypes = [mask_dtype if dtype == MASK_TYPE else dtype for _, dtype in spec.outputs]
    return {"output_shapes": shapes, "output_dtypes": dtypes}


def tree_mask_launch(parents: mx.array, prefix_len: int, mask_dtype) -> Launch:
    batch, n = parents.shape
    spec = SPECS["tree_mask"]
    return Launch(spec, [parents.astype(mx.int32), _dims(batch, n, prefix_len)],
                  threads=batch * n * (prefix_len + n), template=_mask_template(mask_dtype),
                  **_outputs(spec, [(batch, n, prefix_len + n), (batch, n)], mask_dtype))


def beam_owner_launch(beams: mx.array) -> Launch:
    spec = SPECS["beam_owner"]
    return Launch(spec, [beams.astype(mx.int32), _dims(*beams.shape)], threads=beams.size,
                  **_outputs(spec, [beams.shape]))


def beam_pack_launch(beams: mx.array, owners: mx.array, pad_token: int) -> Launch:
    batch, width, length = beams.shape
    size = width * length
    spec = SPECS["beam_pack"]
    shapes = [(batch, size)] * 4 + [beams.shape, (batch,)]
    return Launch(spec, [beams.astype(mx.int32), owners, _dims(batch, width, length, pad_token)],
                  threads=beams.size, **_outputs(spec, shapes))


def beam_mask_launch(owners: mx.array, beam_of: mx.array, depth_of: mx.array, prefix_len: int,
                     mask_dtype) -> Launch:
    batch, width, length = owners.shape
    n = beam_of.shape[-1]
    spec = SPECS["beam_mask"]
    return Launch(spec, [owners, beam_of, depth_of, _dims(batch, width, length, n, prefix_len)],
                  threads=batch * n * (prefix_len + n), template=_mask_template(mask_dtype),
                  **_outputs(spec, [(batch, n, prefix_len + n), (batch, n)], mask_dtype))
