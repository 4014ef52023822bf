"""Sampled output over the full vocabulary (mlx_spec/bench/exactness.py): every method with the
shipped head and draft model, one step at a time from a fixed context, against mlx-lm's own
distributions; the sizing catches a 1-point shift; a planted shift is caught by the real harness.
Small trial counts here; `mlxspec exactness` runs the sizes that catch a 1-point shift."""
import json
from collections import Counter

import mlx.core as mx
import numpy as np
import pytest

import mlx_spec
from mlx_spec.accept import Acceptance, accept
from mlx_spec.bench import exactness as ex
from mlx_spec.drafters.base import StepContext
from mlx_spec.sampling import SamplingParams
from mlx_spec.tree import Tree
from support.cli import run_cli

CHEAP, HEAVY = ("ar", "pld", "lookahead", "auto"), ("draft", "adaedl", "redrafter")


@pytest.fixture(scope="module")
def embedded():
    model = mlx_spec.load()
    return model, model.tokenizer.encode(ex.DEFAULT_CONTEXT)


def decoder(model, method):
    return mlx_spec.make_decoder(model, method, backoff=False)


CASES = [(m, 1.0, 600) for m in CHEAP] + [(m, t, 200) for m in HEAVY for t in (0.7, 1.0)]


@pytest.mark.parametrize("method, temperature, trials", CASES)
def test_one_step_follows_the_target_over_the_full_vocabulary(embedded, method, temperature,
                                                             trials):
    """Followed drafts (ar, pld, lookahead, auto here) draw the target's token per position;
    sampled drafts (draft, adaedl, redrafter) go through rejection sampling at both
    temperatures. Few trials (gross errors only): the command runs 30-70k."""
    model, context = embedded
    report = ex.check(decoder(model, method), context, temperature, trials)
    assert report.exact, report.as_dict()
    if method in ("pld", "lookahead", "draft", "redrafter"):  # the steps really drafted
        assert report.drafted_per_step >= 1


def test_replayed_walk_equals_the_walk_with_every_row_exact(embedded):
    """The harness fills in only the rows the walk reads; the tokens it tests are those accept()
    gives when every node's row is the target's real one."""
    model, context = embedded
    dec = decoder(model, "redrafter")
    sampling = SamplingParams(temperature=1.0)
    emitted, rows, _ = ex.sample_steps(dec, context, sampling, trials=6, depth=2)
    target, drafter = dec.target, dec.drafter
    target.sync(context[:-2])
    before = target.verify(Tree.from_chain(context[-2], []))
    drafter.begin(list(context))
    for seed in range(6):
        draft_key, accept_key = mx.random.split(mx.random.key(seed), 2)
        ctx = StepContext(tokens=list(context), max_drafts=16, sampling=sampling, key=draft_key)
        drafter.prepare(ctx, Acceptance(path=[0], tokens=[context[-1]]), before)
        tree = drafter.propose(ctx)
        logits = mx.stack([rows.row(path) for path in ex._paths(tree)])
        full = accept(tree, logits, sampling, accept_key, seed=seed,
                         root_position=len(context) - 1)
        assert tuple(full.tokens[:2]) == emitted[seed]


def zipf(vocab: int = 4096, top: float = 0.3) -> np.ndarray:
    probs = 1.0 / np.arange(1, vocab + 1) ** 1.1
    probs[1:] *= (1 - top) / probs[1:].sum()
    probs[0] = top
    return probs


def test_default_trials_catch_a_one_point_shift():
    """At default_trials, 0.01 of probability taken from the top token and spread over all the
    others (the hardest place to put it) is caught in at least 34 of 40 runs (sized for 95%
    power), and the exact distribution passes in at least 39 of 40."""
    probs = zipf()
    trials = ex.default_trials(probs, 0.01)
    shifted = probs.copy()
    shifted[0] -= 0.01
    shifted[1:] += 0.01 * probs[1:] / probs[1:].sum()
    rng = np.random.default_rng(0)

    def passes(sampled_from) -> bool:
        counts = Counter({t: int(c) for t, c in enumerate(rng.multinomial(trials, sampled_from))
                          if c})
        return ex._test(1, {(): (counts, probs)}).p_value > ex.ALPHA
    assert sum(not passes(shifted) for _ in range(40)) >= 34
    assert sum(passes(probs) for _ in range(40)) >= 39


def test_a_planted_shift_is_caught_by_the_harness(embedded):
    model, context = embedded
    probs = ex.ExactRows(model.model, context, 1.0).probs(())
    trials = ex.default_trials(probs, 0.05)
    assert ex.check(decoder(model, "ar"), context, 1.0, trials).exact
    assert not ex.check(decoder(model, "ar"), context, 1.0, trials, plant=0.05).exact


def test_cli_reports_and_exit_codes(tmp_path):
    out = tmp_path / "exact.json"
    code, stdout, _ = run_cli("exactness", "--methods", "ar,pld", "--temps", "1.0", "--trials",
                              "200", "--json", str(out))
    assert code == 0 and "exact" in stdout
    reports = json.loads(out.read_text())["reports"]
    assert [r["method"] for r in reports] == ["ar", "pld"] and all(r["exact"] for r in reports)
    code, stdout, _ = run_cli("exactness", "--methods", "ar", "--temps", "1.0", "--trials",
                              "600", "--plant", "0.08")
    assert code == 0 and "caught" in stdout  # with --plant, 0 means the shift was caught
    code, _, stderr = run_cli("exactness", "--temps", "0")
    assert code == 1 and "temperatures > 0" in stderr and "Traceback" not in stderr
