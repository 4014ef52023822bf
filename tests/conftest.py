import os
import tempfile
from pathlib import Path

import pytest

import mlx_spec  # (loads the optimized BLAS before mlx)
from support.random_models import ARCHITECTURES, make_model_folder

# measured verify costs (mlx_spec/cost.py) of the tests' throwaway models stay out of ~/.cache
os.environ.setdefault("MLX_SPEC_CACHE", tempfile.mkdtemp(prefix="mlx-spec-test-cache-"))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def random_model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("random_models")
    return {arch: make_model_folder(root / arch, arch, seed=i) for i, arch in enumerate(ARCHITECTURES)}


@pytest.fixture(scope="session")
def random_models(random_model_dirs):
    return {arch: mlx_spec.load(str(path)) for arch, path in random_model_dirs.items()}
