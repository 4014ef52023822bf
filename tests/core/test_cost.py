"""The measured verify cost (mlx_spec/cost.py): its interpolation, its measurement through the
engine's Target on a real forward, the disk cache, and which cost a drafter's chooser reads."""
import json
import time

import pytest

import mlx_spec
from mlx_spec.cost import (EXTRA_SIZES, SIZES, CostModel, cost_model, describe, from_times,
                           measure)
from mlx_spec.drafters.draft_length import verify_cost_for
from mlx_spec.drafters.shared import shared
from support.random_models import make_model_folder


def test_relative_cost_interpolates_and_extrapolates():
    cost = CostModel(sizes=(1, 2, 4), seconds=(0.010, 0.012, 0.020), context=16)
    assert cost.relative(1) == 1.0
    assert cost.relative(3) == pytest.approx(1.6)
    assert cost.relative(6) == pytest.approx(2.8)  # the last segment's slope, continued
    assert CostModel.from_dict(json.loads(json.dumps(cost.to_dict()))) == cost
    assert cost.step_seconds(3, tree=True) == cost.step_seconds(3)  # no trees measured: chains'
    trees = CostModel((1, 2, 4), (0.010, 0.012, 0.020), 16, tree_seconds=(0.010, 0.012, 0.030))
    assert trees.relative(4, tree=True) == pytest.approx(3.0) and trees.relative(4) == pytest.approx(2.0)
    assert CostModel.from_dict(json.loads(json.dumps(trees.to_dict()))) == trees
    # sampling: a chain reads its own measured times; a tree adds the one-token step's extra
    # (the cost of one row made a distribution) per row its walk visits
    sampled = CostModel((1, 2, 4), (0.010, 0.012, 0.020), 16, tree_seconds=(0.010, 0.012, 0.030),
                        sampled_seconds=(0.013, 0.017, 0.029))
    assert sampled.sampled_step_seconds(3) == pytest.approx(0.023)
    assert sampled.row_seconds == pytest.approx(0.003)
    assert sampled.sampled_step_seconds(4, tree=True, visited=2) == pytest.approx(0.036)
    assert CostModel.from_dict(json.loads(json.dumps(sampled.to_dict()))) == sampled
    assert cost.sampled_step_seconds(3) == cost.step_seconds(3)  # not measured: greedy's
    assert sampled.verify_seconds(4, True, sampled=True, visited=2) == pytest.approx(0.036)
    assert sampled.verify_seconds(4, True, sampled=False) == pytest.approx(0.030)


def test_every_size_keeps_its_own_time_and_trees_add_their_interpolated_extra():
    """A verify's time is not smooth in its size (this CPU: 16 tokens cost what 8 do, 12 cost
    1.45x): each size keeps its own time, so a cheaper larger size stays cheaper; only a size
    below the one-token step is raised to it. Trees and sampling, timed at EXTRA_SIZES, add
    their extra over the chain, interpolated between those sizes."""
    sizes = tuple(range(1, 17))
    chain = [10.0 + (6 if 8 < n < 16 else 3 if n > 1 else 0) for n in sizes]
    chain[1] = 9.5  # a noisy 2-token point, below one token
    tree = [c + 2.0 if n in (8, 16) else None for n, c in zip(sizes, chain)]
    sampled = [c + 0.5 * n if n in EXTRA_SIZES else None for n, c in zip(sizes, chain)]
    cost = from_times(sizes, chain, tree, sampled, context=128)
    assert cost.seconds[1] == 10.0  # raised to the one-token step
    assert cost.step_seconds(16) < cost.step_seconds(12)  # the sawtooth is kept
    assert cost.step_seconds(12) == 16.0
    assert cost.step_seconds(8, tree=True) == 15.0 and cost.step_seconds(16, tree=True) == 15.0
    assert cost.step_seconds(12, tree=True) == 18.0  # the extra of 2, between 8 and 16
    assert cost.step_seconds(6, tree=True) == pytest.approx(14.0)  # from 0 at 4 (no tree timed)
    assert cost.sampled_step_seconds(12) == pytest.approx(16.0 + 6.0)  # 0.5 a row, interpolated
    assert from_times(sizes, chain, None, sampled, 128).tree_seconds == ()


def test_a_verify_is_priced_at_its_cached_length():
    """Each size's chain timed again at a longer cached length gives what one more cached token
    adds to it (never negative), interpolated between sizes; a verify is priced at its cached
    length, linearly beyond both, and its relative cost is over a one-token step at that length
    too. Measured here (SmolLM2): 8 tokens 1.59x a one-token step at 128 cached, 2.03x at 1024."""
    sizes = (1, 2, 4, 8)
    chain, long = [10.0, 12.0, 14.0, 18.0], [10.9, 13.8, 17.6, 25.2]
    cost = from_times(sizes, chain, None, [None] * 4, 128, long, 1024)
    assert cost.long_context == 1024
    assert cost.per_cached == pytest.approx((0.9 / 896, 1.8 / 896, 3.6 / 896, 7.2 / 896))
    assert cost.step_seconds(8) == 18.0 and cost.step_seconds(8, cached=128) == 18.0
    assert cost.step_seconds(8, cached=576) == pytest.approx(21.6)
    assert cost.step_seconds(6, cached=1024) == pytest.approx(16.0 + 5.4)  # interpolated
    assert cost.step_seconds(8, cached=1920) == pytest.approx(18.0 + 14.4)  # beyond: linear
    assert cost.step_seconds(8, cached=20) == 18.0  # below the measured length: as measured
    assert cost.relative(8, cached=1024) == pytest.approx(25.2 / 10.9)
    assert cost.relative(8, cached=1024) > cost.relative(8)
    assert cost.verify_seconds(8, False, True, cached=1024) == pytest.approx(25.2)
    assert CostModel.from_dict(json.loads(json.dumps(cost.to_dict()))) == cost
    assert "1024 cached: 2: 1.27x, 8: 2.31x" in describe(cost)
    # a longer length timed faster (noise) adds nothing; without one, no cached pricing
    flat = from_times(sizes, chain, None, [None] * 4, 128, [9.0, 12.0, 14.0, 18.0], 1024)
    assert flat.step_seconds(1, cached=4096) == 10.0
    older = from_times(sizes, chain, None, [None] * 4, 128)
    assert older.per_cached == () and older.step_seconds(8, cached=4096) == 18.0
    assert CostModel.from_dict({"sizes": sizes, "seconds": chain, "context": 128}).per_cached == ()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cost") / "llama"
    make_model_folder(folder, "llama")
    return mlx_spec.load(str(folder))


def test_measure_times_every_size_and_leaves_the_model_usable(tiny):
    cost = measure(tiny.model, context=24, sizes=(1, 2, 4, 16), repeats=1)
    assert cost.sizes == (1, 2, 4, 16) and all(s > 0 for s in cost.seconds)
    # trees of 4 and more nodes are timed as trees, never below their chains; smaller are chains
    assert len(cost.tree_seconds) == 4 and cost.tree_seconds[:2] == cost.seconds[:2]
    assert all(t >= c for t, c in zip(cost.tree_seconds, cost.seconds))
    assert len(cost.sampled_seconds) == 4  # sampled acceptance, timed at every size (on a CPU
    # it draws only the rows its walk visits, within the timing noise of the greedy chain's)
    assert all(t >= 0.8 * c for t, c in zip(cost.sampled_seconds, cost.seconds))
    # the model still decodes exactly after being measured (nothing left in its cache or shims)
    plain = mlx_spec.generate(tiny, "hello", max_tokens=8, method="ar", raw=True)
    assert plain.token_ids == mlx_spec.generate(tiny, "hello", max_tokens=8, method="pld",
                                                raw=True).token_ids


def test_measure_times_the_chains_again_at_a_longer_cached_length(tiny):
    cost = measure(tiny.model, context=24, sizes=(1, 2, 4, 8), repeats=1, long_context=160)
    assert cost.long_context == 160 and len(cost.per_cached) == 4
    assert all(x >= 0 for x in cost.per_cached)
    assert cost.step_seconds(8, cached=160) >= cost.step_seconds(8)
    assert measure(tiny.model, context=24, sizes=(1, 2), repeats=1,
                   long_context=0).per_cached == ()


def test_measure_never_times_one_shape_twice(tiny, monkeypatch):
    """Decoding verifies at a new cached length every step; a backend that builds work per shape
    (mlx's CUDA build: a cuDNN attention graph per query and key length) pays that in each step,
    so the measurement must too: a repeated (tokens, cached length) pair would time a warm one."""
    from mlx_spec.target import Target

    timed = []
    verify = Target.verify

    def recording(self, tree):
        timed.append((len(tree), tree.is_chain, self.offset))
        return verify(self, tree)

    monkeypatch.setattr(Target, "verify", recording)
    measure(tiny.model, context=24, sizes=(1, 2, 4), repeats=3, max_repeats=3, long_context=40)
    chains = [shape for shape in timed if shape[1]]
    # each chain size is timed once greedy and once sampled per round, at that round's length,
    # then once per round at the longer cached length (greedy)
    assert len(chains) == 2 * 3 * 4 + 3 * 4 and len(set(chains)) == 3 * 4 + 3 * 4
    assert sorted({offset for _, _, offset in timed}) == [24, 25, 26, 27, 40, 41, 42, 43]


def test_cost_is_cached_on_disk_per_model(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_SPEC_CACHE", str(tmp_path))
    first = cost_model(tiny)
    files = list((tmp_path / "cost").glob("*.json"))
    assert len(files) == 1 and first.sizes == SIZES
    planted = CostModel(SIZES, tuple(0.001 * (i + 1) for i in range(len(SIZES))), 128)
    files[0].write_text(json.dumps(planted.to_dict()))
    assert cost_model(tiny) == planted  # read back, not measured again
    files[0].write_text("{broken")
    assert cost_model(tiny).sizes == SIZES  # a damaged file is measured again


def test_chooser_reads_the_measured_cost_unless_constants_are_set(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_SPEC_CACHE", str(tmp_path))
    planted = CostModel((1, 2, 8), (0.01, 0.02, 0.08), 128)
    monkeypatch.setattr(shared(tiny), "cost", planted)  # what the loaded model measured
    measured = verify_cost_for(tiny, None, None, default=(0.07, 0.2))
    assert measured(0) == 1.0 and measured(1) == pytest.approx(2.0) and measured(7) == pytest.approx(8.0)
    planted_trees = CostModel((1, 2, 8), (0.01, 0.02, 0.08), 128, (0.01, 0.02, 0.12))
    monkeypatch.setattr(shared(tiny), "cost", planted_trees)
    assert verify_cost_for(tiny, None, None, default=(0.07, 0.2), tree=True)(7) == pytest.approx(12.0)
    assert verify_cost_for(tiny, None, None, default=(0.07, 0.2))(7) == pytest.approx(8.0)
    fixed = verify_cost_for(tiny, 0.1, None, default=(0.07, 0.2))
    assert fixed(4) == pytest.approx(1.0 + 0.2 + 0.4)
    assert verify_cost_for(None, None, None, default=(0.07, 0.2))(1) == pytest.approx(1.27)


def test_a_sampling_chooser_prices_sampled_verifies(tiny, monkeypatch):
    """At T > 0 a chooser weighs a size by what a sampled verify of it costs over a sampled
    one-token step: text drafters' choosers (pld here) of a sampling regime read those prices,
    the greedy regime's the greedy ones."""
    from mlx_spec.drafters import create
    from mlx_spec.drafters.shared import Shared
    from mlx_spec.sampling import SamplingParams

    planted = CostModel((1, 2, 8), (0.010, 0.011, 0.02), 128, (), (0.012, 0.018, 0.03))
    monkeypatch.setattr(tiny, "extras", Shared(cost=planted))  # nothing learned, this cost
    assert planted.relative(2) == pytest.approx(1.1)
    assert planted.relative(2, sampled=True) == pytest.approx(1.5)
    assert verify_cost_for(tiny, None, None, default=(0.07, 0.2), sampled=True)(1) == \
        pytest.approx(1.5)
    choosers = create("pld", tiny).choosers
    assert choosers.use(SamplingParams(temperature=0.7)).cost(1) == pytest.approx(1.5)
    assert choosers.use(SamplingParams()).cost(1) == pytest.approx(1.1)


def test_a_chooser_prices_a_size_at_the_cached_length_it_drafts_at(tiny, monkeypatch):
    """The same acceptance drafts shallower where the cache is long: there a multi-token verify
    costs more over a one-token step (cost.py). A chooser's table is priced at the middle of its
    CACHED_STEP span; without a length, as measured."""
    from mlx_spec.drafters.draft_length import CACHED_STEP, DraftChooser

    sizes = (1, 2, 4, 8, 9)
    planted = from_times(sizes, [0.010, 0.0115, 0.013, 0.015, 0.016], None, [None] * 5, 128,
                         [0.011, 0.0135, 0.017, 0.023, 0.025], 1024)
    monkeypatch.setattr(shared(tiny), "cost", planted)
    verify = verify_cost_for(tiny, None, None, default=(0.07, 0.2))
    assert verify(7) == pytest.approx(planted.relative(8))
    at = (1024 // CACHED_STEP + 0.5) * CACHED_STEP
    assert verify(7, 1024) == pytest.approx(planted.relative(8, cached=at))
    assert verify(7, 1024) > verify(7, 100)
    chooser = DraftChooser.for_depths(8, verify=verify)
    chooser.tokens = {n: 1 + sum(0.7 ** d for d in range(1, n + 1)) for n in chooser.sizes}
    short, long = chooser.choose(cached=100), chooser.choose(cached=3000)
    assert short > long >= 1 and chooser.cached == 3000
    assert chooser.choose() == long  # (the last length is kept)


def test_measure_keeps_each_sizes_fastest_round(tiny, monkeypatch):
    """The machine's other work only slows a forward: a one-token step slowed in two of its
    three rounds (a busy spell) must not become the unit every size is priced in, which would
    make every draft look free."""
    from mlx_spec.target import Target

    verify, calls = Target.verify, []

    def busy_at_times(self, tree):
        if len(tree) == 1 and tree.is_chain:
            calls.append(1)
            if len(calls) in (3, 5):  # (each round times it greedy, then sampled)
                time.sleep(0.3)
        return verify(self, tree)

    monkeypatch.setattr(Target, "verify", busy_at_times)
    cost = measure(tiny.model, context=24, sizes=(1, 2, 4), repeats=3, max_repeats=3)
    assert cost.seconds[0] < 0.15  # (the median, over 0.3 s)
