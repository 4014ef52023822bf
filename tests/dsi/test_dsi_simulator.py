"""The DSI cost model: closed forms, the paper's model, and the event simulation of our scheduler."""
import itertools

import pytest

from mlx_spec.dsi.measure import acceptance_rate
from mlx_spec.dsi.simulator import (Setting, expected_tokens_per_iteration, paper_dsi_time_per_token,
                                    paper_heatmap_max_speedup, required_workers,
                                    si_time_per_token, simulate_dsi_time_per_token)


def test_si_closed_form():
    assert si_time_per_token(Setting(1.0, 0.1, 0.0, 4)) == pytest.approx(1.4)
    assert si_time_per_token(Setting(1.0, 0.1, 1.0, 4)) == pytest.approx(1.4 / 5)
    assert expected_tokens_per_iteration(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


GRID = list(itertools.product([0.02, 0.1, 0.3, 0.7, 1.0], [0.0, 0.3, 0.6, 0.9, 0.99], [1, 3, 6]))


@pytest.mark.parametrize("c,a,k", GRID)
def test_paper_model_is_never_slower_than_si_or_nonsi(c, a, k):
    s = Setting(1.0, c, a, k)
    dsi = paper_dsi_time_per_token(s)
    assert dsi <= si_time_per_token(s) + 1e-12
    assert dsi <= 1.0 + 1e-12


@pytest.mark.parametrize("c,a,k", [(0.05, 0.6, 3), (0.1, 0.8, 3), (0.2, 0.3, 5), (0.9, 0.2, 3),
                                   (0.1, 0.0, 2), (0.05, 0.95, 4)])
def test_our_scheduler_matches_the_paper_model_with_enough_workers(c, a, k):
    s = Setting(1.0, c, a, k, workers=max(1, required_workers(Setting(1.0, c, a, k))))
    simulated = simulate_dsi_time_per_token(s, tokens=1500)
    assert simulated <= 1.02  # never slower than non-SI
    assert simulated == pytest.approx(paper_dsi_time_per_token(s), rel=0.1)


def test_one_worker_and_a_useless_drafter_is_plain_decoding():
    assert simulate_dsi_time_per_token(Setting(1.0, 0.3, 0.0, 4, workers=1), 500) == pytest.approx(1.0, rel=0.02)


def test_more_workers_help_a_fast_accurate_drafter():
    few = simulate_dsi_time_per_token(Setting(1.0, 0.02, 0.9, 4, workers=1), 1500)
    many = simulate_dsi_time_per_token(Setting(1.0, 0.02, 0.9, 4, workers=8), 1500)
    assert many < 0.6 * few


def test_paper_grid_reproduces_figure_2d():
    """The paper: on its grid DSI is up to 1.6x faster than the faster of SI and non-SI."""
    over_si, over_best = paper_heatmap_max_speedup()
    assert over_best == pytest.approx(1.6, rel=0.1)
    assert over_si >= over_best


def test_acceptance_rate_estimate():
    # calls of block 3: emitted tokens = accepted + 1; a rejection ends every call but full ones
    assert acceptance_rate([4, 4, 1, 2], 3) == pytest.approx(7 / 9)


def _cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", "from mlx_spec.cli.app import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


def test_dsi_sim_command():
    import json
    proc = _cli("dsi-sim", "--target-ms", "20", "--drafter-ms", "2", "--acceptance", "0.8",
                "--workers", "4", "--lookahead", "3", "--tokens", "600", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    ms = report["ms_per_token"]
    assert ms["nonsi"] == pytest.approx(20.0)
    assert ms["dsi"] < ms["si"] < ms["nonsi"]
    assert report["setting"]["lookahead"] == 3
    proc = _cli("dsi-sim", "--target-ms", "20", "--drafter-ms", "2", "--acceptance", "0.8",
                "--workers", "4", "--block", "3", "--tokens", "600", "--json")
    assert json.loads(proc.stdout)["setting"]["block"] == 3  # the name, --lookahead its alias
    proc = _cli("dsi-sim", "--target-ms", "20")
    assert proc.returncode == 1 and "--drafter-ms" in proc.stderr
