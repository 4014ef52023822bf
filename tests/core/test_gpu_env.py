"""mlx-spec's defaults for the two mlx settings that decide exactness and verify cost on a GPU
(mlx_spec/gpu_env.py): set on import unless the user set them first, and shown by the doctor."""
import os
import subprocess
import sys

from mlx_spec import gpu_env

SCRIPT = ("import os, mlx_spec; from mlx_spec import gpu_env; "
          "print(os.environ['MLX_ENABLE_TF32'], os.environ['MLX_CUDA_USE_CUDNN_SDPA']); "
          "print(gpu_env.describe())")


def _run(**env):
    clean = {k: v for k, v in os.environ.items() if k not in gpu_env.DEFAULTS}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         env={**clean, **env}, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_importing_mlx_spec_turns_tf32_and_cudnn_attention_off():
    values, line = _run()
    assert values == "0 0"
    assert line == "MLX_ENABLE_TF32=0, MLX_CUDA_USE_CUDNN_SDPA=0"


def test_a_setting_the_user_made_is_kept_and_named_as_theirs():
    values, line = _run(MLX_CUDA_USE_CUDNN_SDPA="1")
    assert values == "0 1"
    assert line == "MLX_ENABLE_TF32=0, MLX_CUDA_USE_CUDNN_SDPA=1 (set by you)"
