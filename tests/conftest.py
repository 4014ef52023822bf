import os
import tempfile
from pathlib import Path

import pytest

import mlx_spec  # (loads the optimized BLAS before mlx)
from support.random_models import ARCHITECTURES, make_model_folder

# measured verify costs (mlx_spec/cost.py) and auto's saved rates of the tests' throwaway models
# stay out of ~/.cache; each pytest-xdist worker has a folder of its own (the workers inherit the
# controller's environment, and one worker's saved rates must not steer another's tests)
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
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
