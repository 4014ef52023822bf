"""`mlxspec kernels`: timing rows per backend present, one backend marked as the engine's, and
one-line errors for bad input."""
import json
import subprocess
import sys

import pytest

from mlx_spec.kernels import active_backend, available_backends
from support.random_models import make_model_folder


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-c", "from mlx_spec.cli.app import main; main()", *args],
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("kernels_cli") / "llama", "llama")


def test_kernels_json_rows(model_dir):
    code, out, err = run_cli("kernels", "--model", str(model_dir), "--nodes", "3,9", "--beams", "2x3",
                             "--prefix", "20", "--repeats", "2", "--json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    shapes = [("tree", 3), ("tree", 9), ("beams 2x3", None)]
    assert [row["shape"] for row in rows] == [s for s, _ in shapes for _ in available_backends()]
    backends = available_backends()  # cpu and reference here, plus metal / cuda where present
    assert [row["backend"] for row in rows[:len(backends)]] == backends
    for row in rows:
        assert row["prefix"] == 20 and row["mask_ms"] > 0 and row["step_ms"] > 0
        assert row["share_of_step"] == pytest.approx(row["mask_ms"] / row["step_ms"], rel=0.02, abs=1e-3)
        assert row["engine_uses"] == (row["backend"] == active_backend())
    per_shape = len(available_backends())
    assert [row["nodes"] for row in rows[::per_shape]][:2] == [3, 9]
    assert 2 <= rows[-1]["nodes"] <= 6  # 2 beams of 3 tokens share at least their root


@pytest.mark.parametrize("args, message", [
    (["--nodes", "a,b"], "--nodes"),
    (["--beams", "4by5"], "--beams"),
    (["--prefix", "4000"], "context"),
])
def test_kernels_bad_input_is_one_line(model_dir, args, message):
    code, _, err = run_cli("kernels", "--model", str(model_dir), *args)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and message in lines[0], err
