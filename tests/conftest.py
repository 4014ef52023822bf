import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import mlx_spec  # noqa: E402  (loads the optimized BLAS before mlx)

from random_models import ARCHITECTURES, make_model_folder  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def random_model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("random_models")
    return {arch: make_model_folder(root / arch, arch, seed=i) for i, arch in enumerate(ARCHITECTURES)}


@pytest.fixture(scope="session")
def random_models(random_model_dirs):
    return {arch: mlx_spec.load(str(path)) for arch, path in random_model_dirs.items()}
