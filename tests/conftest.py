import os
import tempfile
from pathlib import Path

import pytest

_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:  # one BLAS thread per pytest-xdist worker (one worker per core): two workers of two
    # threads each on two cores had the cost models measured at the tests' start (the choosers'
    # verify costs) off by the other worker's load, and a chooser's draft length with them
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"

import mlx_spec  # (loads the optimized BLAS before mlx)  # noqa: E402
from support.random_models import ARCHITECTURES, make_model_folder  # noqa: E402

# measured verify costs (mlx_spec/cost.py) and auto's saved rates of the tests' throwaway models
# stay out of ~/.cache; each pytest-xdist worker has a folder of its own (the workers inherit the
# controller's environment, and one worker's saved rates must not steer another's tests)
if _WORKER or "MLX_SPEC_CACHE" not in os.environ:
    os.environ["MLX_SPEC_CACHE"] = tempfile.mkdtemp(prefix=f"mlx-spec-test-cache-{_WORKER or ''}")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def random_model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("random_models")
    return {arch: make_model_folder(root / arch, arch, seed=i) for i, arch in enumerate(ARCHITECTURES)}


@pytest.fixture(scope="session")
def random_models(random_model_dirs):
    return {arch: mlx_spec.load(str(path)) for arch, path in random_model_dirs.items()}
