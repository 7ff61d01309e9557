"""The level space (EvoPress): level switches keep the target exact, the search on a synthetic fitness whose
optimum is known, resume, the parallel replay, the result applied as a profile, and bad input."""

import json
import random
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.errors import WorkbenchError
from workbench.level_space import LevelSpace, LevelVector, check_step
from workbench.profile import SparsityProfile
from workbench.search import Search, SearchConfig

UNITS = 16
STEP, TARGET = 0.05, 0.5  # base level 10 of a top level 19
# the hidden optimum: mean exactly the target (the deviations sum to 0), many distinct levels, both signs
OPTIMUM = (13, 7, 12, 8, 11, 9, 10, 10, 14, 6, 12, 8, 10, 11, 9, 10)
CFG = dict(sparsity=TARGET, space="levels", level_step=STEP, population=17, generations=40, elite=1, promote=2)


def fitness_of(levels) -> float:
    """Squared distance to the optimum: 0 exactly there."""
    return float(sum((a - b) ** 2 for a, b in zip(levels, OPTIMUM, strict=True)))


class LevelContext:
    """A context over UNITS equal units whose fitness is the distance to OPTIMUM (cheap: plus a small
    deterministic noise; held-out: plus another). ``counts`` carries the levels, as a worker needs them."""

    def __init__(self, sizes=(100,) * UNITS):
        self.levels = LevelSpace([f"unit {i}" for i in range(len(sizes))], list(sizes), TARGET, STEP)
        self.calls: list[tuple[str, str]] = []

    def allocation(self, candidate: LevelVector) -> dict:
        self.levels.check(candidate)
        key = candidate.key()
        return {"valid": True, "error": None, "ratios": self.levels.ratios(candidate),
                "counts": {"key": key, "levels": candidate.to_list()}, "allocation_key": key}

    def baseline_counts(self) -> dict:
        return {}

    def profile(self, candidate: LevelVector) -> SparsityProfile:
        ratios = self.levels.ratios(candidate)
        return SparsityProfile({u: r for u, r in zip(self.levels.units, ratios, strict=True)},
                               dict(zip(self.levels.units, self.levels.sizes, strict=True)), TARGET, "levels", "block")

    def fitness(self, counts: dict, fidelity: str) -> float:
        self.calls.append((counts["key"], fidelity))
        value = fitness_of(counts["levels"])
        jitter = {"full": 0.0, "cheap": 0.4, "heldout": 0.2}[fidelity]
        return value + jitter * (int(counts["key"][1:9], 16) / 16**8)


def run(tmp_path, name="run", context=None, **overrides):
    search = Search(context or LevelContext(), SearchConfig(**(CFG | overrides)), tmp_path / name, progress=False)
    return search, search.run()


# --------------------------------------------------------------------------- the grid and its operators

@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.sampled_from([7, 64, 64 * 3, 1000]), min_size=2, max_size=12),
       seed=st.integers(0, 10**6), step=st.sampled_from([0.01, 0.02, 0.05, 0.1]),
       target=st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]))
def test_every_level_switch_and_random_draw_keeps_the_weighted_mean_exact(sizes, seed, step, target):
    """Units of several sizes (some unique), many successive switches from random starts: the parameter-weighted
    level sum never moves, every level stays on the grid, and the float mean is the target."""
    if len(set(sizes)) == len(sizes):
        sizes = sizes + sizes[:1]  # at least one group a switch can act in
    grid = LevelSpace([f"u{i}" for i in range(len(sizes))], sizes, target, step)
    rng = random.Random(seed)
    exact = grid.base * sum(sizes)
    for start in (grid.uniform(), grid.random(rng)):
        assert grid.weighted_levels(start) == exact
        current = start
        for _ in range(40):
            child = grid.switch(current, rng)
            assert grid.weighted_levels(child) == exact
            assert all(0 <= v <= grid.top for v in child.levels)
            alone = [i for i, s in enumerate(sizes) if sizes.count(s) == 1]
            assert all(child.levels[i] == current.levels[i] for i in alone)  # no unit of unique size moves
            current = child
        ratios = grid.ratios(current)
        mean = sum(r * s for r, s in zip(ratios, sizes, strict=True)) / sum(sizes)
        assert mean == pytest.approx(target, abs=1e-12)


def test_an_offspring_makes_one_to_three_switches_mostly_one():
    grid = LevelSpace([f"u{i}" for i in range(30)], [5] * 30, 0.7, 0.02)
    rng = random.Random(3)
    start = grid.random(rng)  # away from the grid's edges: every drawn switch can act
    moved = Counter()
    for _ in range(3000):
        child = grid.switch(start, rng)
        moved[sum(abs(a - b) for a, b in zip(child.levels, start.levels, strict=True)) // 2] += 1
    assert set(moved) <= {0, 1, 2, 3}  # a switch may undo another (down and up the same unit)
    # min(randint(1, 3), randint(1, 3)): P(1) = 5/9, P(2) = 3/9, P(3) = 1/9 before collisions
    assert 0.50 < moved[1] / 3000 < 0.62 and 0.26 < moved[2] / 3000 < 0.38 and 0.07 < moved[3] / 3000 < 0.15


def test_random_draws_spread_over_the_grid_and_differ():
    grid = LevelSpace([f"u{i}" for i in range(UNITS)], [100] * UNITS, TARGET, STEP)
    rng = random.Random(0)
    draws = [grid.random(rng) for _ in range(200)]
    assert len({d.key() for d in draws}) == 200
    values = [v for d in draws for v in d.levels]
    assert min(values) == 0 and max(values) == grid.top  # the whole grid is reachable
    assert all(grid.weighted_levels(d) == grid.base * 100 * UNITS for d in draws)


def test_level_vectors_round_trip_and_refuse_malformed_lists():
    v = LevelVector((3, 0, 12))
    assert LevelVector.from_list(v.to_list()) == v and v.key() != LevelVector((3, 12, 0)).key()
    for bad in ([1, -1], [1.5, 2], "12", [True, 1]):
        with pytest.raises(ValueError, match="levels="):
            LevelVector.from_list(bad)


# --------------------------------------------------------------------------- the search on a known optimum

def test_level_evolution_finds_the_known_optimum_and_beats_random_search(tmp_path):
    """Budget: 17 + 39 x 16 = 641 distinct candidates a kind. Evolution reaches the optimum (distance 0);
    the best of as many random level vectors stays at distance >= 100 (stated margin)."""
    search, best = run(tmp_path)
    evo = [h for h in search.state.history if h["kind"] == "evolution"]
    rnd = [h for h in search.state.history if h["kind"] == "random"]
    assert len({h["function_key"] for h in evo}) == len(evo) == 17 + 39 * 16 == len(rnd)
    assert best["evolution"]["levels"] == list(OPTIMUM) and best["evolution"]["full_fitness"] == 0.0
    assert best["random"]["full_fitness"] >= 100.0
    assert evo[0]["levels"] == [10] * UNITS and evo[0]["full_fitness"] == fitness_of([10] * UNITS)  # uniform start
    profile = SparsityProfile.load(tmp_path / "run" / "best_profile.json")
    assert [round(profile.layers[f"unit {i}"] / STEP) for i in range(UNITS)] == list(OPTIMUM)
    assert not (tmp_path / "run" / "best_function.json").exists()  # no function in this space


def test_every_offspring_is_a_switch_of_the_best_record_so_far(tmp_path):
    search, _ = run(tmp_path, generations=6, random_baseline=False)
    history = search.state.history
    for gen in range(1, 6):
        before = [h for h in history if h["generation"] < gen and h["full_fitness"] is not None]
        parent = min(before, key=lambda h: h["full_fitness"])["levels"]
        for child in (h["levels"] for h in history if h["generation"] == gen):
            diff = [a - b for a, b in zip(child, parent, strict=True)]
            assert sum(diff) == 0 and 2 <= sum(map(abs, diff)) <= 6, (gen, diff)


class Dying(LevelContext):
    """Interrupted after ``stop`` fitness calls."""

    def __init__(self, stop: int):
        super().__init__()
        self.stop = stop

    def fitness(self, counts, fidelity):
        if len(self.calls) >= self.stop:
            raise KeyboardInterrupt("killed")
        return super().fitness(counts, fidelity)


def strip(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.parametrize("stop", [30, 150, 300])  # generation 1, later in the evolution, the random search
def test_an_interrupted_level_search_resumes_to_the_identical_history(tmp_path, stop):
    reference, best = run(tmp_path, "full", generations=12)
    out = tmp_path / f"stop{stop}"
    cfg = SearchConfig(**(CFG | {"generations": 12}))
    with pytest.raises(KeyboardInterrupt):
        Search(Dying(stop), cfg, out, progress=False).run()
    resumed = Search(LevelContext(), cfg, out, resume=True, progress=False)
    again = resumed.run()
    assert strip(resumed.state.history) == strip(reference.state.history)
    assert strip(json.loads((out / "history.json").read_text())) == strip(reference.state.history)
    assert again["evolution"]["levels"] == best["evolution"]["levels"]
    assert (out / "best_profile.json").read_text() == (tmp_path / "full" / "best_profile.json").read_text()


class InProcessPool:
    """A parallel pool without Ray: a worker context of its own answers every fitness job, in order."""

    parallel = True

    def __init__(self):
        self.worker, self.batches = LevelContext(), []

    def fitness(self, jobs):
        self.batches.append(len(jobs))
        return [(self.worker.fitness(counts, fidelity), 0.1) for counts, fidelity in jobs]

    def allocations(self, candidates):  # pragma: no cover - the level space allocates on the driver
        raise AssertionError("levels need no allocation on the workers")


def test_a_parallel_pool_replays_the_serial_level_history(tmp_path):
    serial, serial_best = run(tmp_path, "serial", generations=8)
    driver, pool = LevelContext(), InProcessPool()
    parallel = Search(driver, SearchConfig(**(CFG | {"generations": 8})), tmp_path / "parallel", progress=False,
                      pool=pool)
    best = parallel.run()
    assert strip(parallel.state.history) == strip(serial.state.history)
    assert best["evolution"]["levels"] == serial_best["evolution"]["levels"]
    assert driver.calls == [] and max(pool.batches) > 1  # computed on the worker, in batches


# --------------------------------------------------------------------------- bad input

def test_a_step_that_cannot_reach_the_target_is_one_line_naming_level_step():
    with pytest.raises(WorkbenchError, match=r"^level_step=0.03 cannot reach sparsity=0.7 .*allowed"):
        SearchConfig(space="levels", level_step=0.03, sparsity=0.7)
    with pytest.raises(WorkbenchError, match=r"^level_step=0 must be a number in \(0, 0.5\]"):
        check_step(0, 0.5)
    SearchConfig(space="functions", level_step=0.03, sparsity=0.7)  # the function space has no levels


def test_an_unknown_space_is_refused_with_the_allowed_ones():
    with pytest.raises(WorkbenchError, match=r"^space='genes' is not allowed.*'functions' or 'levels'"):
        SearchConfig(space="genes")


def test_a_granularity_without_two_units_of_one_size_is_refused():
    with pytest.raises(WorkbenchError, match=r"^granularity='block' gives no two units of equal size"):
        LevelSpace(["block 0"], [100], 0.5, 0.1, "block")
    with pytest.raises(WorkbenchError, match=r"^granularity='row' is not allowed"):
        SearchConfig(space="levels", granularity="row")


@pytest.mark.parametrize("flags, message", [
    (["--space", "genes"], "space='genes' is not allowed"),
    (["--space", "levels", "--level-step", "0.03", "--sparsity", "0.7"], "level_step=0.03 cannot reach"),
    (["--space", "levels", "--granularity", "row"], "granularity='row' is not allowed"),
])
def test_the_cli_refuses_bad_level_input_in_one_line_and_writes_nothing(tmp_path, flags, message):
    out = tmp_path / "search"
    proc = subprocess.run([sys.executable, "-m", "workbench", "search", "--model", "tiny-llama", "--out", str(out),
                           *flags], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- on a model: the result applied

def test_a_level_search_on_the_tiny_model_gives_a_profile_that_prune_and_the_curves_apply(tmp_path):
    from workbench.models import load_model
    from workbench.prune import prune
    from workbench.search import SearchSetup
    from workbench.session import Session
    from workbench.spec import CalibrationSpec, ModelSpec
    from workbench.widgets import SparsityCurves

    config = SearchConfig(sparsity=0.5, space="levels", level_step=0.05, population=6, generations=3, elite=1,
                          fitness_windows=1, fitness_seqlen=64, cheap_windows=1, cheap_seqlen=32, heldout_windows=1,
                          granularity="sublayer")
    _model, _tok, ctx = SearchSetup(ModelSpec(name="tiny-llama"), CalibrationSpec(nsamples=2, seqlen=32),
                                    config).build(progress=False)
    best = Search(ctx, config, tmp_path / "s", progress=False).run()["evolution"]
    path = tmp_path / "s" / "best_profile.json"
    searched = SparsityProfile.load(path)
    assert searched.granularity == "sublayer" and searched.mean() == pytest.approx(0.5, abs=1e-12)
    assert list(searched.unit_means().values()) == pytest.approx([v * 0.05 for v in best["levels"]])
    model, tok = load_model("tiny-llama")
    result = prune(model, tok, metric="wanda", sparsity=0.5, allocation="profile",
                   allocation_params={"path": str(path)}, progress=False)
    assert result.profile.layers == searched.layers and result.profile.params["source"] == "levels"
    for name, layer in result.report["layers"].items():  # each linear pruned at its searched level
        assert layer["actual"] == pytest.approx(searched.layers[name], abs=1 / 32)
    with pytest.raises(WorkbenchError, match=r"was made for sparsity 0.5; it does not transfer to sparsity=0.6"):
        prune(load_model("tiny-llama")[0], tok, sparsity=0.6, allocation="profile",
              allocation_params={"path": str(path)}, progress=False)
    from workbench.cli import main

    record = tmp_path / "record.json"  # the command line: --profile F, at the profile's own target
    assert main(["prune", "--model", "tiny-llama", "--profile", str(path), "--nsamples", "2", "--seqlen", "32",
                 "--out", str(record)]) == 0
    applied = json.loads(record.read_text())
    assert applied["profile"]["layers"] == searched.layers and applied["method"]["sparsity"] == 0.5
    curves = SparsityCurves(Session("tiny-llama", nsamples=2, seqlen=32), sparsity=0.5)
    curves.add_profile("levels", searched)
    drawn = {t.name.split(" ")[0]: list(t.y) for t in curves.figure.data}
    assert drawn["levels"] == pytest.approx([v * 0.05 for v in best["levels"]])


def test_the_search_monitor_follows_a_level_search(tmp_path):
    """The monitor reads a level search's files as a function search's: one line per kind, best so far."""
    from workbench.widgets import SearchMonitor

    search, best = run(tmp_path, generations=5)
    monitor = SearchMonitor(tmp_path / "run")
    assert monitor.refresh() == len(search.state.history)
    lines = {t.name: list(t.y) for t in monitor.figure.data if t.name in ("evolution", "random")}
    assert lines["evolution"][-1] == best["evolution"]["full_fitness"]
    assert lines["random"][-1] == best["random"]["full_fitness"]
    assert f"evolution {best['evolution']['full_fitness']:.3f}" in monitor.status.value


def test_the_prefix_cache_scores_as_the_plain_forward_bit_for_bit():
    """Candidates scored one after another (level switches of a parent, random level vectors, back to the
    parent) through the cached block prefixes give exactly the protocol's perplexity and KL of the plain forward,
    whatever was cached before; and blocks shared with a cached allocation were not run again."""
    from workbench.evaluate import perplexity_from_ids, window_kl
    from workbench.search import SearchSetup
    from workbench.spec import CalibrationSpec, ModelSpec

    config = SearchConfig(sparsity=0.5, space="levels", level_step=0.05, fitness_windows=2, fitness_seqlen=32,
                          cheap_windows=1, cheap_seqlen=16, heldout_windows=0)
    model, _tok, ctx = SearchSetup(ModelSpec(name="tiny-llama"), CalibrationSpec(nsamples=2, seqlen=32),
                                   config).build(progress=False)
    grid, rng = ctx.levels, random.Random(11)
    parent = grid.uniform()
    candidates = [parent, *[grid.switch(parent, rng) for _ in range(4)], grid.random(rng), grid.random(rng), parent]
    blocks, calls = len(ctx.prefix.blocks), 0
    for candidate in candidates:
        counts = ctx.allocation(candidate)["counts"]
        for fidelity in ("cheap", "full"):
            got = ctx.fitness(counts, fidelity)
            calls += 1
            _metric, _w, seqlen = ctx.stages[fidelity]
            if fidelity == "full":
                assert got == perplexity_from_ids(model, ctx.ids["full"], seqlen, progress=False)
            else:
                assert got == float(window_kl(model, ctx.ids["cheap"], seqlen, ctx.reference["cheap"]).mean())
    assert ctx.prefix.blocks_run < calls * blocks  # the repeated parent, and switches after block 0, reused
    assert ctx.prefix.capacity["cheap"] > 3 and ctx.prefix.capacity["full"] >= 3
    functions = SearchConfig(sparsity=0.5, fitness_windows=2, fitness_seqlen=32, cheap_windows=1, cheap_seqlen=16,
                             heldout_windows=1)
    _m, _t, fn_ctx = SearchSetup(ModelSpec(name="tiny-llama"), CalibrationSpec(nsamples=2, seqlen=32),
                                 functions).build(progress=False)
    assert set(fn_ctx.prefix.capacity.values()) == {1}  # functions share no prefix: only block 0's inputs kept
