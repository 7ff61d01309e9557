"""The evolutionary search's operators and bookkeeping on a synthetic fitness (no model, fast).

The search only calls ``context.allocation(fn)`` and ``context.fitness(counts, fidelity)``; ``FakeContext``
answers them from the function itself: the full fitness is the distance of the function to a hidden
target function, the cheap fitness that distance plus a small deterministic noise.
"""

import hashlib
import json
import math
import random
import statistics
from collections import Counter

import pytest

import workbench.search as search_mod
from workbench.allocation.dsa import ops
from workbench.allocation.dsa.function import MAX_CHAIN, AllocationFunction
from workbench.data import DEFAULT_DATASET
from workbench.errors import WorkbenchError
from workbench.profile import SparsityProfile
from workbench.search import (
    NOVELTY_TRIES,
    Search,
    SearchConfig,
    crossover,
    mutate,
    novel,
    random_function,
    rank_key,
    tournament,
)

TARGET = AllocationFunction(("abslog", "tanh"), "std", ("atan",), 0.15, -1)
INVALID_REDUCTION = "layer_corr"  # the fake context refuses every function with this reduction
CFG = dict(sparsity=0.5, population=16, generations=8, elite=2, promote=2, tournament=3)


def chain_distance(a, b) -> int:
    """Positions at which two op chains differ (a missing position counts as different)."""
    return sum(1 for i in range(max(len(a), len(b))) if i >= len(a) or i >= len(b) or a[i] != b[i])


def distance(fn: AllocationFunction, target: AllocationFunction = TARGET) -> float:
    return (chain_distance(fn.pre, target.pre) + (fn.reduction != target.reduction)
            + chain_distance(fn.post, target.post) + (fn.direction != target.direction)
            + abs(fn.lam - target.lam) * 10)


def noise(key: str, amplitude: float = 0.3) -> float:
    """Deterministic noise in [0, amplitude) from the key's hash."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8 * amplitude


class FakeContext:
    """``allocation``: valid (except reduction INVALID_REDUCTION), the function's key in ``counts`` and as the
    allocation key; ``fitness``: full = distance to TARGET, cheap = cheap_scale * distance + noise.
    ``coarse``: the allocation depends only on (reduction, direction), as if many functions gave the same
    sparsities; the fitness is then a function of that allocation key."""

    def __init__(self, cheap_scale: float = 1.0, coarse: bool = False):
        self.cheap_scale, self.coarse = cheap_scale, coarse
        self.calls: list[tuple[str, str]] = []  # (counts key, fidelity) of every fitness call
        self.baseline_calls = 0

    def allocation(self, fn: AllocationFunction) -> dict:
        if fn.reduction == INVALID_REDUCTION:
            return {"valid": False, "error": "fake: invalid", "ratios": None, "counts": None, "allocation_key": None}
        key = f"{fn.reduction}|{fn.direction}" if self.coarse else fn.key()
        return {"valid": True, "error": None, "ratios": [0.5], "counts": {"key": key}, "allocation_key": key}

    def baseline_counts(self) -> dict[str, dict]:
        self.baseline_calls += 1
        return {}  # no hand-made allocations in a synthetic fitness

    def profile(self, fn: AllocationFunction) -> SparsityProfile:
        """What a search writes as best_profile.json: here one layer at the fake allocation's ratio."""
        return SparsityProfile({"layer": 0.5}, {"layer": 1}, 0.5, "fake", "block", {"key": fn.key()})

    def fitness(self, counts: dict, fidelity: str) -> float:
        assert fidelity in ("cheap", "full", "heldout")
        key = counts["key"]
        self.calls.append((key, fidelity))
        if self.coarse:
            d = 10 * noise(key, 1.0)
        else:
            d = distance(AllocationFunction.from_json(key))
        if fidelity == "heldout":  # fresh windows: the same distance, other noise
            return d + noise(key + "|heldout")
        return d if fidelity == "full" else self.cheap_scale * d + noise(key)


def run_search(tmp_path, name="run", context=None, **overrides):
    cfg = SearchConfig(**(CFG | overrides))
    ctx = context or FakeContext()
    search = Search(ctx, cfg, tmp_path / name, progress=False)
    result = search.run()
    return search, result, ctx


def full_evaluations(history, kind):
    return sum(1 for h in history if h["kind"] == kind and h["full_fitness"] is not None and h["cached"] != "function")


def assert_each_score_paid_once(history, calls):
    """Within a kind no (allocation, fidelity) is scored twice; every search-time fitness call was paid by
    exactly one record of one kind (no score crosses kinds: each kind pays for its own)."""
    paid = [(h["kind"], h["allocation_key"], f) for h in history for f in h["paid"]]
    assert all(n == 1 for n in Counter(paid).values()), Counter(paid).most_common(3)
    assert Counter((k, f) for k, f in calls if f != "heldout") == Counter((a, f) for _kind, a, f in paid)


def records(history, kind, generation=None):
    return [h for h in history if h["kind"] == kind and (generation is None or h["generation"] == generation)]


# --------------------------------------------------------------------------- 1. evolution vs random search

def test_evolution_beats_the_equal_budget_random_search(tmp_path):
    # Measured with this setup (population 16, 8 generations, elite 2, promote 2, cheap noise < 0.3):
    #   seed:             0      1      2      3      4
    #   evolution best: 1.190  0.291  1.045  2.039  1.270   (mean 1.167)
    #   random best:    2.360  2.170  2.630  3.160  2.140   (mean 2.492)
    #   random - evo:   1.170  1.879  1.585  1.121  0.870   (mean 1.325, min 0.870)
    # (over seeds 0..39: mean margin 1.41; evolution better in 38 of 40). Asserted: mean margin >= 0.6 and
    # evolution strictly better for every one of these seeds.
    margins = []
    for seed in range(5):
        search, result, ctx = run_search(tmp_path, f"seed{seed}", seed=seed)
        history = search.state.history
        evo, rnd = result["evolution"], result["random"]
        assert evo["full_fitness"] == pytest.approx(distance(AllocationFunction.from_dict(evo["function"])))
        margins.append(rnd["full_fitness"] - evo["full_fitness"])
        assert margins[-1] > 0, seed
        # equal budgets: as many distinct functions drawn, as many full-fidelity evaluations
        n_evo, n_rnd = len(records(history, "evolution")), len(records(history, "random"))
        assert n_evo == n_rnd == CFG["population"] + (CFG["generations"] - 1) * (CFG["population"] - CFG["elite"])
        assert full_evaluations(history, "evolution") == full_evaluations(history, "random") \
            == max(CFG["promote"], CFG["elite"]) + (CFG["generations"] - 1) * CFG["promote"]
        full_calls = sum(1 for _k, f in ctx.calls if f == "full")
        assert full_calls == full_evaluations(history, "evolution") + full_evaluations(history, "random")
    assert statistics.mean(margins) >= 0.6, margins


# --------------------------------------------------------------------------- 2. best

def test_best_is_the_minimum_full_fitness_and_never_a_cheap_only_record(tmp_path):
    # cheap fitness on a 100x smaller scale (like KL next to perplexity): every cheap-only record has a
    # lower cheap fitness than any full fitness, and still none of them may become the best
    search, result, _ctx = run_search(tmp_path, context=FakeContext(cheap_scale=0.01), random_baseline=True)
    history = search.state.history
    for kind in ("evolution", "random"):
        scored = [h for h in history if h["kind"] == kind and h["valid"] and h["full_fitness"] is not None]
        best = search.best(kind)
        assert best is result[kind]
        assert best["full_fitness"] == min(h["full_fitness"] for h in scored)
        assert best["fidelity"] == "full" and best["fitness"] == best["full_fitness"]
        cheap_only = [h for h in history if h["kind"] == kind and h["valid"] and h["full_fitness"] is None]
        assert cheap_only and min(h["cheap_fitness"] for h in cheap_only) < best["full_fitness"]
        assert all(h["fidelity"] == "cheap" and h["fitness"] == h["cheap_fitness"] for h in cheap_only)
    saved = json.loads((tmp_path / "run" / "best.json").read_text())
    assert saved["evolution"]["function_key"] == result["evolution"]["function_key"]


def test_best_on_hand_made_records(tmp_path):
    cfg = SearchConfig(**CFG)
    search = Search(FakeContext(), cfg, tmp_path, progress=False)
    assert search.best("evolution") is None

    def rec(kind, valid, cheap, full):
        return {"kind": kind, "valid": valid, "cheap_fitness": cheap, "full_fitness": full}

    search.state.history = [rec("evolution", True, 0.001, None), rec("evolution", True, 5.0, 7.0),
                            rec("evolution", False, None, None), rec("evolution", True, 4.0, 6.5),
                            rec("random", True, 1.0, 3.0), rec("evolution", True, 0.0, None)]
    assert search.best("evolution") is search.state.history[3]
    assert search.best("random") is search.state.history[4]


# --------------------------------------------------------------------------- 3. elitism

def spy_generations(monkeypatch):
    """Elites and history length at every checkpoint (one per generation, then one per random chunk)."""
    snapshots = []
    real = Search._checkpoint

    def checkpoint(self):
        snapshots.append({"generation": self.state.generation, "elites": list(self.state.elites),
                          "random_chunks": self.state.random_chunks, "history": len(self.state.history)})
        real(self)

    monkeypatch.setattr(Search, "_checkpoint", checkpoint)
    return snapshots


def test_elites_are_the_best_full_fidelity_records_of_the_pool(tmp_path, monkeypatch):
    snapshots = spy_generations(monkeypatch)
    search, _result, ctx = run_search(tmp_path, elite=3, random_baseline=False)
    history = search.state.history
    by_key = {h["function_key"]: h for h in history}
    # one checkpoint per generation, then one after the held-out re-score
    assert [s["generation"] for s in snapshots] == [*range(CFG["generations"]), CFG["generations"] - 1]
    assert snapshots[-1]["history"] == snapshots[-2]["history"]
    previous: list[str] = []
    for snap in snapshots[:-1]:
        gen = snap["generation"]
        new = records(history, "evolution", gen)
        pool = [by_key[k] for k in previous] + new
        scored = [h for h in pool if h["valid"] and h["full_fitness"] is not None]
        elites = snap["elites"]
        assert len(elites) == len(set(elites)) == min(3, len(scored))
        assert set(elites) <= {h["function_key"] for h in scored}
        best = sorted(h["full_fitness"] for h in scored)[: len(elites)]
        assert sorted(by_key[k]["full_fitness"] for k in elites) == best
        worst_elite = max(by_key[k]["full_fitness"] for k in elites)
        assert all(h["full_fitness"] >= worst_elite for h in scored if h["function_key"] not in elites)
        # elites are carried over, not scored again: the generation has population - elites new records
        assert len(new) == CFG["population"] - len(previous)
        assert not {h["function_key"] for h in new} & set(previous)
        previous = elites
    assert search.state.elites == previous
    keys = [h["function_key"] for h in records(history, "evolution")]
    assert len(keys) == len(set(keys))  # never rescored
    assert all(n == 1 for n in Counter(ctx.calls).values())  # no allocation evaluated twice at one fidelity


# --------------------------------------------------------------------------- 4. truncation and tournament

@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_tournament_is_the_best_of_size_draws_with_replacement(size):
    ranked = [f"r{i}" for i in range(10)]
    rng, mirror = random.Random(size), random.Random(size)
    for _ in range(300):
        draws = [mirror.randrange(len(ranked)) for _ in range(size)]
        assert tournament(ranked, size, rng) == ranked[min(draws)]
    assert rng.getstate() == mirror.getstate()


def test_tournament_of_one_is_uniform_and_a_large_one_takes_the_best():
    ranked = list(range(5))
    rng = random.Random(0)
    n = 5000
    counts = Counter(tournament(ranked, 1, rng) for _ in range(n))
    assert set(counts) == set(ranked)
    expected = n / len(ranked)
    chi2 = sum((counts[i] - expected) ** 2 / expected for i in ranked)
    assert chi2 < 20.0  # chi-square with 4 degrees of freedom: P(> 20) ~ 5e-4
    # size 200 over 10 entries: index 0 missed with probability 0.9^200 ~ 7e-10 per call
    assert all(tournament(list(range(10)), 200, rng) == 0 for _ in range(200))


@pytest.mark.parametrize("population,elite,size", [(16, 2, 3), (3, 1, 1)])  # small pool: top = max(2, n // 2)
def test_parents_come_from_the_top_half_of_the_ranked_pool(tmp_path, monkeypatch, population, elite, size):
    snapshots = spy_generations(monkeypatch)
    picked = []  # (generation the parents were ranked in, parent key)
    real_tournament = search_mod.tournament
    real_next = Search._next_population

    def spy_tournament(ranked, size, rng):
        parent = real_tournament(ranked, size, rng)
        picked.append((current["generation"], parent.key()))
        return parent

    def spy_next(self, rng):
        current["generation"] = self.state.generation
        return real_next(self, rng)

    current = {}
    monkeypatch.setattr(search_mod, "tournament", spy_tournament)
    monkeypatch.setattr(Search, "_next_population", spy_next)
    search, _result, _ctx = run_search(tmp_path, random_baseline=False, population=population, elite=elite,
                                       promote=elite, tournament=size)
    history = search.state.history
    by_key = {h["function_key"]: h for h in history}
    elites_after = {s["generation"]: s["elites"] for s in snapshots}
    generations = sorted({g for g, _ in picked})
    assert generations == list(range(CFG["generations"] - 1))
    for gen in generations:
        # the breeding pool after generation `gen`: its new records plus the elites it ended with, each once
        new = records(history, "evolution", gen)
        pool = new + [by_key[k] for k in elites_after[gen] if k not in {h["function_key"] for h in new}]
        ranked = sorted(pool, key=rank_key)
        top = ranked[: max(2, len(ranked) // 2)]
        boundary = rank_key(top[-1])
        parents = [k for g, k in picked if g == gen]
        assert len(parents) >= 2 * (population - elite)  # two tournaments per child
        for key in parents:
            assert rank_key(by_key[key]) <= boundary, (gen, key)
        if len(top) > elite:  # the generation's new records breed too, not only the elites
            assert len(set(parents)) > elite, (gen, parents)
        # and the worse half never breeds
        bottom = {h["function_key"] for h in ranked[len(top):] if rank_key(h) > boundary}
        assert not bottom & set(parents)


def test_breeding_pool_lists_each_function_once(tmp_path, monkeypatch):
    pools = []
    real_pool = Search._pool

    def spy_pool(self, generation):
        ranked = real_pool(self, generation)
        pools.append([h["function_key"] for h in ranked])
        return ranked

    monkeypatch.setattr(Search, "_pool", spy_pool)
    run_search(tmp_path, generations=2, random_baseline=False)
    assert all(len(keys) == len(set(keys)) for keys in pools), [len(k) - len(set(k)) for k in pools]


# --------------------------------------------------------------------------- 5. crossover

def test_crossover_takes_each_part_from_one_parent_about_half_the_time():
    a = AllocationFunction(("abs",), "mean", ("sin",), 0.05, 1)
    b = AllocationFunction(("log", "tanh"), "var", ("atan", "sqrt"), 0.2, -1)
    rng = random.Random(7)
    n = 4000
    from_a = Counter()
    for _ in range(n):
        child = crossover(a, b, rng)
        for part in ("pre", "reduction", "post", "lam", "direction"):
            value = getattr(child, part)
            assert value in (getattr(a, part), getattr(b, part)), part
            from_a[part] += value == getattr(a, part)
    # binomial(4000, 1/2): sd = 31.6; 5 sd either side
    for part in ("pre", "reduction", "post", "lam", "direction"):
        assert abs(from_a[part] - n / 2) < 5 * math.sqrt(n) / 2, (part, from_a[part])
    # the parts are drawn independently: all 32 combinations occur
    combos = {tuple(getattr(crossover(a, b, rng), p) == getattr(a, p) for p in ("pre", "reduction", "post",
                                                                                 "lam", "direction"))
              for _ in range(2000)}
    assert len(combos) == 32


# --------------------------------------------------------------------------- 6. mutation

def well_formed(fn: AllocationFunction) -> bool:
    return (1 <= len(fn.pre) <= 2 and 1 <= len(fn.post) <= 2 and all(op in ops.PRE for op in fn.pre)
            and all(op in ops.POST for op in fn.post) and fn.reduction in ops.REDUCTIONS
            and 0.01 <= fn.lam <= 0.3 and fn.direction in (1, -1))


def one_deletion(longer, shorter) -> bool:
    return len(longer) == len(shorter) + 1 and any(longer[:i] + longer[i + 1:] == shorter for i in range(len(longer)))


def change_kind(parent: AllocationFunction, child: AllocationFunction) -> str:
    """The one part ``mutate`` changed ('none' if the draw left the function as it was); fails on more."""
    changed = []
    for stage in ("pre", "post"):
        p, c = getattr(parent, stage), getattr(child, stage)
        if len(p) != len(c):
            assert one_deletion(p, c) or one_deletion(c, p), (stage, p, c)
            changed.append(f"{stage} shorter" if len(c) < len(p) else f"{stage} longer")
        elif p != c:
            assert sum(x != y for x, y in zip(p, c, strict=True)) == 1, (stage, p, c)
            changed.append(f"{stage} op")
    changed += [part for part in ("reduction", "lam", "direction") if getattr(parent, part) != getattr(child, part)]
    assert len(changed) <= 1, (parent, child, changed)
    return changed[0] if changed else "none"


def test_mutation_changes_one_part_and_keeps_functions_well_formed():
    rng = random.Random(3)
    kinds = Counter()
    parents = [random_function(rng) for _ in range(600)]
    for parent in parents:
        assert well_formed(parent)
        child = mutate(parent, rng)
        assert well_formed(child), child
        kinds[change_kind(parent, child)] += 1
    expected = {"pre op", "post op", "reduction", "lam", "direction", "pre shorter", "pre longer",
                "post shorter", "post longer"}
    assert expected <= set(kinds), kinds
    assert kinds["none"] < 60, kinds  # only a redrawn op or reduction equal to the old one, or a tiny λ step
    # a long walk of mutations (λ pushed to both bounds) stays well formed
    fn = random_function(rng)
    lams = []
    for _ in range(3000):
        new = mutate(fn, rng)
        change_kind(fn, new)
        fn = new
        assert well_formed(fn), fn
        lams.append(fn.lam)
    assert min(lams) >= 0.01 and max(lams) <= 0.3
    # a chain longer than random functions have (a hand-written function) only ever gets shorter
    long = AllocationFunction(("abs",) * MAX_CHAIN, "mean", ("sin",) * MAX_CHAIN, 0.1, 1)
    for _ in range(100):
        child = mutate(long, rng)
        assert len(child.pre) + len(child.post) in (2 * MAX_CHAIN, 2 * MAX_CHAIN - 1)


# --------------------------------------------------------------------------- 7. rank_key

def test_rank_key_orders_full_then_cheap_only_then_invalid():
    def rec(name, valid, cheap, full):
        return {"name": name, "valid": valid, "cheap_fitness": cheap, "full_fitness": full}

    pool = [rec("invalid", False, None, None), rec("cheap 0.1", True, 0.1, None), rec("full 9", True, 50.0, 9.0),
            rec("cheap 0.05", True, 0.05, None), rec("full 3", True, 80.0, 3.0),
            rec("invalid with fitness", False, 0.0, 0.0), rec("full 4", True, 0.01, 4.0)]
    ranked = sorted(pool, key=rank_key)
    assert [r["name"] for r in ranked[:5]] == ["full 3", "full 4", "full 9", "cheap 0.05", "cheap 0.1"]
    assert {r["name"] for r in ranked[5:]} == {"invalid", "invalid with fitness"}
    assert rank_key(pool[0]) == (2, math.inf)


# --------------------------------------------------------------------------- 8. novel

def test_novel_returns_an_unseen_function_when_it_can():
    fns = [AllocationFunction(("abs",), "mean", ("sin",), 0.05 + i / 100, 1) for i in range(5)]
    seen = {fns[0].key(), fns[1].key()}
    draws = iter(fns)
    got = novel(lambda: next(draws), seen)
    assert got == fns[2] and fns[2].key() in seen and len(seen) == 3
    # the name does not count: a renamed seen function is not new
    named = iter([AllocationFunction(("abs",), "mean", ("sin",), 0.05, 1, name="other"), fns[3]])
    assert novel(lambda: next(named), seen) == fns[3]
    # nothing new to draw: gives up after NOVELTY_TRIES draws and returns the last one
    calls = []
    got = novel(lambda: calls.append(1) or fns[0], seen)
    assert got == fns[0] and len(calls) == NOVELTY_TRIES and len(seen) == 4


# --------------------------------------------------------------------------- 9. multi-fidelity promotion

@pytest.mark.parametrize("elite,promote", [(3, 2), (1, 2)])
def test_promotion_scores_the_best_cheap_records_at_full_fidelity(tmp_path, elite, promote):
    search, _result, ctx = run_search(tmp_path, elite=elite, promote=promote)
    history = search.state.history
    for kind in ("evolution", "random"):
        for gen in range(CFG["generations"]):
            new = [h for h in records(history, kind, gen) if h["cached"] is None]
            valid = [h for h in new if h["valid"]]
            assert all(h["cheap_fitness"] is not None for h in valid)  # every new candidate is scored cheaply
            assert all(h["cheap_fitness"] is None and h["full_fitness"] is None for h in new if not h["valid"])
            promoted = [h for h in valid if h["full_fitness"] is not None]
            assert len(promoted) == (max(promote, elite) if gen == 0 else promote), (kind, gen)
            worst_promoted = max(h["cheap_fitness"] for h in promoted)
            assert all(h["cheap_fitness"] >= worst_promoted for h in valid if h["full_fitness"] is None)
            assert all(h["fidelity"] == "full" and h["full_at"] is not None for h in promoted)
    # every fitness call is a distinct (allocation, fidelity), and full calls are the promotions
    assert all(n == 1 for n in Counter(ctx.calls).values())
    assert sum(f == "full" for _k, f in ctx.calls) == 2 * (max(promote, elite) + (CFG["generations"] - 1) * promote)


def test_a_known_allocation_reuses_its_fitness(tmp_path):
    # 10 reductions x 2 directions: most functions share an allocation with one scored before
    search, _result, ctx = run_search(tmp_path, context=FakeContext(coarse=True))
    history = search.state.history
    assert_each_score_paid_once(history, ctx.calls)  # no allocation scored twice at one fidelity in a kind
    reused = [h for h in history if h["cached"] == "allocation"]
    assert reused
    first = {}
    for h in history:
        if h["valid"]:
            first.setdefault(h["allocation_key"], h)
    for h in history:
        if h["valid"]:
            assert h["cheap_fitness"] == first[h["allocation_key"]]["cheap_fitness"]
            if h["full_fitness"] is not None and first[h["allocation_key"]]["full_fitness"] is not None:
                assert h["full_fitness"] == first[h["allocation_key"]]["full_fitness"]
    for kind in ("evolution", "random"):  # never more full evaluations than promotions
        for gen in range(CFG["generations"]):
            calls = sum(1 for h in records(history, kind, gen) if h["full_fitness"] is not None
                        and h["cached"] is None)
            assert calls <= (max(CFG["promote"], CFG["elite"]) if gen == 0 else CFG["promote"])


# --------------------------------------------------------------------------- 10. resume

class Dying:
    """The fake context whose ``fitness`` is interrupted after ``stop`` calls."""

    def __init__(self, inner: FakeContext, stop: int):
        self.inner, self.stop, self.n = inner, stop, 0

    def allocation(self, fn):
        return self.inner.allocation(fn)

    def baseline_counts(self):
        return self.inner.baseline_counts()

    def profile(self, fn):
        return self.inner.profile(fn)

    def fitness(self, counts, fidelity):
        self.n += 1
        if self.n > self.stop:
            raise KeyboardInterrupt("killed")
        return self.inner.fitness(counts, fidelity)


def strip(history):
    return [(h["kind"], h["generation"], h["function_key"], h["valid"], h["cached"], h["cheap_fitness"],
             h["full_fitness"], h["full_at"]) for h in history]


def test_an_interrupted_search_resumes_to_the_same_history(tmp_path):
    cfg = SearchConfig(**(CFG | {"seed": 1}))
    reference = Search(FakeContext(), cfg, tmp_path / "full", progress=False)
    full = reference.run()
    expected = json.loads((tmp_path / "full" / "history.json").read_text())
    assert strip(expected) == strip(reference.state.history)
    gen0_calls = sum(1 for h in records(expected, "evolution", 0) if h["cheap_fitness"] is not None) \
        + max(CFG["promote"], CFG["elite"])
    evolution_calls = sum(1 for h in records(expected, "evolution") if h["cheap_fitness"] is not None) \
        + full_evaluations(expected, "evolution")
    # stop in the middle of generation 1, and in the middle of the random baseline's third chunk
    for stop, where in ((gen0_calls + 7, "generation 1"), (evolution_calls + 40, "random")):
        out = tmp_path / f"stop{stop}"
        dying = Search(Dying(FakeContext(), stop), cfg, out, progress=False)
        with pytest.raises(KeyboardInterrupt):
            dying.run()
        state = json.loads((out / "state.json").read_text())
        assert strip(dying.state.history) == strip(state["history"])  # the broken step rolled back in memory too
        assert dying.state.history  # ... and only that step
        if where == "generation 1":
            assert state["generation"] == 0 and state["random_chunks"] == 0
        else:
            assert state["generation"] == CFG["generations"] - 1 and 0 < state["random_chunks"] < CFG["generations"]
        ctx = FakeContext()
        resumed_search = Search(ctx, cfg, out, resume=True, progress=False)
        resumed = resumed_search.run()
        assert ctx.calls  # the rest was computed, not read back
        assert ctx.baseline_calls == 0  # the baselines come back with the checkpoint's meta
        assert strip(json.loads((out / "history.json").read_text())) == strip(expected)
        assert strip(resumed_search.state.history) == strip(expected)
        for kind in ("evolution", "random"):
            assert resumed[kind]["function_key"] == full[kind]["function_key"]
            assert resumed[kind]["full_fitness"] == full[kind]["full_fitness"]
        assert resumed_search.state.elites == reference.state.elites
        assert json.loads((out / "best_function.json").read_text()) == full["evolution"]["function"]


def test_a_checkpoint_of_another_version_is_refused_by_name(tmp_path):
    cfg = SearchConfig(**(CFG | {"generations": 1, "random_baseline": False}))
    Search(FakeContext(), cfg, tmp_path, progress=False).run()
    state = tmp_path / "state.json"
    data = json.loads(state.read_text())
    data["version"] = 99
    state.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"checkpoint .*state.json is malformed or truncated \(WorkbenchError: "
                                         rf"version 99 is not {search_mod.STATE_VERSION}\); remove it"):
        Search(FakeContext(), cfg, tmp_path, resume=True, progress=False)


# --------------------------------------------------------------------------- found by mutation testing

def test_random_functions_draw_lambda_over_its_range():
    rng = random.Random(0)
    lams = [random_function(rng).lam for _ in range(300)]
    assert min(lams) >= 0.02 and max(lams) <= 0.2
    assert min(lams) < 0.04 and max(lams) > 0.18 and len(set(lams)) > 100


def test_progress_file_counts_steps_and_seconds(tmp_path):
    search, _result, _ctx = run_search(tmp_path, generations=3)
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    history = search.state.history
    assert progress["phase"] == "done" and progress["steps"] == 6 and progress["steps_done"] == 6
    assert progress["generation"] == 3 and progress["generations"] == 3 and progress["random_chunks"] == 3
    assert progress["seconds"] == pytest.approx(sum(h["seconds"] for h in history)
                                                + search.state.meta.get("baseline_seconds", 0.0))
    assert progress["baselines"] == {}


def test_search_config_bounds_are_the_documented_ones():
    SearchConfig(**(CFG | {"population": 2, "elite": 1}))  # the smallest population that can breed
    with pytest.raises(ValueError, match=r"population=1 must be an integer >= 2"):
        SearchConfig(**(CFG | {"population": 1, "elite": 0}))
    with pytest.raises(ValueError, match=r"^sparsity=1.0 must be a number in \[0, 1\)$"):
        SearchConfig(**(CFG | {"sparsity": 1.0}))


def test_a_repeated_function_carries_its_first_records_results(tmp_path):
    cfg = SearchConfig(**CFG)
    search = Search(FakeContext(), cfg, tmp_path / "s", progress=False)
    fn = AllocationFunction(("abs",), "var", ("sin",), 0.1, 1)
    first, again = search._score(fn, "evolution", 0), search._score(fn, "evolution", 1)
    assert again["cached"] == "function"
    for key in ("valid", "error", "ratios", "allocation_key", "cheap_fitness", "full_fitness"):
        assert again[key] == first[key], key
    assert again["cheap_fitness"] is not None and again["allocation_key"] == fn.key()


def test_promotion_after_resume_recomputes_the_allocation(tmp_path):
    cfg = SearchConfig(**CFG)
    ctx = FakeContext()
    search = Search(ctx, cfg, tmp_path / "s", progress=False)
    fn = AllocationFunction(("abs",), "var", ("sin",), 0.1, 1)
    record = search._score(fn, "evolution", 0)
    assert record["full_fitness"] is None  # cheap only: multi-fidelity
    del record["_counts"]  # as after a checkpoint and --resume (counts are not saved)
    search._promote([record], 1)
    assert record["full_fitness"] == distance(fn) and ctx.calls[-1] == (fn.key(), "full")


# --------------------------------------------------------------------------- second mutation round

class BaselineContext(FakeContext):
    """A fake with two hand-made allocations, scored at full fidelity before the search starts."""

    def baseline_counts(self) -> dict[str, dict]:
        self.baseline_calls += 1
        return {"uniform": {"key": TARGET.key()}, "owl": {"key": AllocationFunction(("abs",), "var").key()}}


def test_baselines_are_scored_once_and_reported_in_the_progress_file(tmp_path):
    ctx = BaselineContext()
    search, _result, _ = run_search(tmp_path / "deep" / "er", context=ctx, generations=2)  # parents created
    progress = json.loads((tmp_path / "deep" / "er" / "run" / "progress.json").read_text())
    expected = {"uniform": 0.0, "owl": distance(AllocationFunction(("abs",), "var"))}
    assert search.state.meta["baselines"] == pytest.approx(expected)
    assert progress["baselines"] == pytest.approx(expected)
    assert ctx.baseline_calls == 1 and sum(1 for _k, f in ctx.calls if f == "full" and _k == TARGET.key()) >= 1


def test_a_checkpoint_without_meta_resumes(tmp_path):
    cfg = SearchConfig(**(CFG | {"generations": 2, "random_baseline": False}))
    Search(FakeContext(), cfg, tmp_path, progress=False).run()
    state = tmp_path / "state.json"
    data = json.loads(state.read_text())
    del data["meta"]  # written before the baselines were recorded
    state.write_text(json.dumps(data))
    resumed = Search(FakeContext(), cfg, tmp_path, resume=True, progress=False)
    assert resumed.state.meta == {} and resumed.state.generation == 1


def test_each_start_and_resume_names_its_machine_and_first_record(tmp_path, monkeypatch):
    from workbench import results

    cfg = SearchConfig(**(CFG | {"generations": 3, "random_baseline": False}))
    monkeypatch.setattr(results, "cpu_model", lambda: "First CPU")
    with pytest.raises(KeyboardInterrupt):  # stopped in generation 1: generation 0 is kept
        Search(Dying(FakeContext(), 25), cfg, tmp_path, progress=False).run()
    scored = len(json.loads((tmp_path / "state.json").read_text())["history"])
    assert scored > 0
    monkeypatch.setattr(results, "cpu_model", lambda: "Second CPU")
    Search(FakeContext(), cfg, tmp_path, resume=True, progress=False).run()
    machines = json.loads((tmp_path / "state.json").read_text())["meta"]["machines"]
    assert [(m["cpu"], m["from_record"]) for m in machines] == [("First CPU", 0), ("Second CPU", scored)]
    assert all(m["torch_threads"] >= 1 and m["cpu_capability"] for m in machines)


def test_a_finished_state_restored_alone_writes_its_outputs_again(tmp_path):
    """A state kept elsewhere (the level study's gzipped copies) resumes to the same best.json and profiles."""
    cfg = SearchConfig(**(CFG | {"generations": 2, "heldout_windows": 2}))
    Search(FakeContext(), cfg, tmp_path / "a", progress=False).run()
    first = json.loads((tmp_path / "a" / "best.json").read_text())
    restored = tmp_path / "b"
    restored.mkdir()
    (restored / "state.json").write_text((tmp_path / "a" / "state.json").read_text())
    ctx = FakeContext()
    Search(ctx, cfg, restored, resume=True, progress=False).run()
    assert not ctx.calls  # nothing scored again
    assert json.loads((restored / "best.json").read_text()) == first
    for name in ("best_profile.json", "best_random_profile.json", "history.json"):
        assert (restored / name).read_text() == (tmp_path / "a" / name).read_text()


class MostlyInvalidContext(FakeContext):
    """Refuses every function whose reduction is not 'var' or 'std': generations with few valid candidates."""

    def allocation(self, fn: AllocationFunction) -> dict:
        if fn.reduction not in ("var", "std"):
            return {"valid": False, "error": "fake: invalid", "ratios": None, "counts": None, "allocation_key": None}
        return super().allocation(fn)


def test_promotion_never_scores_an_invalid_candidate(tmp_path):
    search, _result, ctx = run_search(tmp_path, context=MostlyInvalidContext(), population=4, elite=1, promote=3,
                                      generations=3)
    history = search.state.history
    assert any(not h["valid"] for h in history)
    assert any(sum(h["valid"] for h in records(history, k, g)) < 3 for k in ("evolution", "random") for g in range(3))
    for h in history:
        if not h["valid"]:
            assert h["cheap_fitness"] is None and h["full_fitness"] is None, h
    assert all(AllocationFunction.from_json(k).reduction in ("var", "std") for k, _f in ctx.calls)


class InProcessParallelPool:
    """A parallel pool without Ray: its own context (as a worker holds one), every job answered in order.
    It records each batch, so the test can see that the serial replay found every fitness computed ahead."""

    parallel = True

    def __init__(self, context):
        self.worker = context
        self.batches: list[list[tuple[str, str]]] = []
        self.allocated: list[str] = []

    def fitness(self, jobs):
        self.batches.append([(counts["key"], fidelity) for counts, fidelity in jobs])
        return [(self.worker.fitness(counts, fidelity), 0.25) for counts, fidelity in jobs]

    def allocations(self, functions):
        self.allocated += [fn.key() for fn in functions]
        return [self.worker.allocation(fn) for fn in functions]


@pytest.mark.parametrize("cheap_windows", [1, 0])  # multi-fidelity (cheap first, promotions) and full only
@pytest.mark.parametrize("coarse", [False, True])   # coarse: many functions share an allocation
def test_a_parallel_pool_replays_to_the_serial_history(tmp_path, cheap_windows, coarse):
    overrides = dict(cheap_windows=cheap_windows, generations=4)
    serial, serial_best, _ = run_search(tmp_path, "serial", context=FakeContext(coarse=coarse), **overrides)
    driver, worker = FakeContext(coarse=coarse), FakeContext(coarse=coarse)
    pool = InProcessParallelPool(worker)
    cfg = SearchConfig(**(CFG | overrides))
    parallel = Search(driver, cfg, tmp_path / "parallel", progress=False, pool=pool)
    best = parallel.run()
    strip = lambda hist: [{k: v for k, v in r.items() if k != "seconds"} for r in hist]  # noqa: E731
    assert strip(parallel.state.history) == strip(serial.state.history)
    assert {k: strip([v]) for k, v in best.items()} == {k: strip([v]) for k, v in serial_best.items()}
    assert driver.calls == [] and worker.calls  # every fitness was computed on the "worker"
    assert_each_score_paid_once(parallel.state.history, worker.calls)  # each (allocation, fidelity) once a kind
    assert sum(len(b) == 1 for b in pool.batches) < len(pool.batches)  # batched, not one job at a time
    assert len(pool.allocated) == len(set(pool.allocated))  # each new function allocated once, ahead
    # the worker's 0.25 s per job are counted in the records that used them; a fitness the replay had to
    # compute itself (not found ahead) would carry only the replay's own few microseconds
    for r in parallel.state.history:
        if r["cached"] is None and r["valid"]:
            jobs = (r["cheap_fitness"] is not None) + (r["full_fitness"] is not None and r["fidelity"] == "full")
            shared = r["full_fitness"] is not None and r["cheap_fitness"] is not None and coarse
            assert r["seconds"] >= 0.25 * (1 if shared else jobs), r


def test_baseline_seconds_count_in_the_progress_file(tmp_path):
    search, _result, _ = run_search(tmp_path, context=BaselineContext(), generations=2)
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert search.state.meta["baseline_seconds"] > 0
    assert progress["seconds"] == pytest.approx(sum(h["seconds"] for h in search.state.history)
                                                + search.state.meta["baseline_seconds"])


def test_a_checkpoint_of_another_configuration_is_refused_naming_both(tmp_path):
    cfg = SearchConfig(**(CFG | {"generations": 1, "random_baseline": False}))
    Search(FakeContext(), cfg, tmp_path, progress=False).run()
    other = SearchConfig(**(CFG | {"generations": 1, "random_baseline": False, "seed": 7}))
    pattern = r"^the checkpoint's configuration \{.*'seed': 0.*\} differs from \{.*'seed': 7"
    with pytest.raises(ValueError, match=pattern):
        Search(FakeContext(), other, tmp_path, resume=True, progress=False)


def test_mutated_lambdas_keep_four_decimals_within_the_range():
    rng = random.Random(3)
    fn = AllocationFunction(("abs",), "var", ("sin",), 0.1234, 1)
    lams = []
    for _ in range(400):
        fn = mutate(fn, rng)
        lams.append(fn.lam)
    assert all(round(v, 4) == v and 0.01 <= v <= 0.3 for v in lams)
    assert len(set(lams)) > 20


def test_about_one_child_in_ten_is_a_mutation_without_crossover(tmp_path, monkeypatch):
    calls = {"crossover": 0, "mutate": 0}
    real_cross, real_mutate = search_mod.crossover, search_mod.mutate

    def cross(a, b, rng):
        calls["crossover"] += 1
        return real_cross(a, b, rng)

    def mut(fn, rng, space=None):
        calls["mutate"] += 1
        return real_mutate(fn, rng, space)

    monkeypatch.setattr(search_mod, "crossover", cross)
    monkeypatch.setattr(search_mod, "mutate", mut)
    run_search(tmp_path, random_baseline=False, generations=20)
    share = calls["crossover"] / calls["mutate"]
    assert calls["mutate"] > 200 and 0.84 < share < 0.96, calls


def test_promotions_record_how_many_candidates_of_their_kind_came_before(tmp_path):
    search, _result, _ = run_search(tmp_path)
    for kind in ("evolution", "random"):
        recs = records(search.state.history, kind)
        for i, h in enumerate(recs):
            if h["full_at"] is not None and h["cached"] is None:
                # promoted after its generation was scored: at least itself, at most the kind's records so far
                assert i + 1 <= h["full_at"] <= len(recs), (kind, i, h["full_at"])
        assert max(h["full_at"] for h in recs if h["full_at"] is not None) == len(recs)


def test_a_resumed_random_search_still_avoids_the_functions_drawn_before(tmp_path, monkeypatch):
    """In a small space of functions the random baseline's earlier chunks matter: after a resume its draws
    must still skip the functions of the chunks already done, as the uninterrupted run does."""
    space = [AllocationFunction(("abs",), r, ("sin",), lam, 1) for r in ("var", "std", "mean", "l1")
             for lam in (0.05, 0.1, 0.15, 0.2, 0.25)]
    monkeypatch.setattr(search_mod, "random_function", lambda rng, _set=None: space[rng.randrange(len(space))])
    cfg = SearchConfig(**(CFG | {"generations": 3, "population": 6, "elite": 1, "promote": 1}))
    ctx = FakeContext()
    reference = Search(ctx, cfg, tmp_path / "full", progress=False)
    reference.run()
    randoms = records(reference.state.history, "random")
    assert len({h["function_key"] for h in randoms}) == len(randoms)  # distinct across chunks
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        search_calls = sum(1 for _k, f in ctx.calls if f != "heldout")  # the held-out re-score comes after
        Search(Dying(FakeContext(), search_calls - 2), cfg, out, progress=False).run()  # in the last chunk
    assert json.loads((out / "state.json").read_text())["random_chunks"] == 2
    resumed = Search(FakeContext(), cfg, out, resume=True, progress=False)
    resumed.run()
    assert strip(resumed.state.history) == strip(reference.state.history)


class DivergingContext(FakeContext):
    """The full fitness of every 'std' function (the target's reduction: the search is drawn to them) is not
    finite (a model that diverged under that allocation)."""

    def fitness(self, counts: dict, fidelity: str) -> float:
        value = super().fitness(counts, fidelity)
        return math.inf if fidelity == "full" and '"reduction": "std"' in counts["key"] else value


def test_a_non_finite_fitness_makes_the_record_invalid_with_no_fitness_or_fidelity(tmp_path):
    search, _result, _ = run_search(tmp_path, context=DivergingContext(), generations=4)
    diverged = [h for h in search.state.history if h["error"] == "full fitness not finite"]
    assert diverged, "the run should have promoted a 'std' function"
    for h in diverged:
        assert not h["valid"] and h["fitness"] is None and h["fidelity"] is None, h
    assert all(h["full_at"] is None for h in search.state.history if h["full_fitness"] is None)
    best = search.best("evolution")
    assert best["valid"] and math.isfinite(best["full_fitness"])


def test_the_progress_file_names_each_phase_as_it_runs(tmp_path, monkeypatch):
    phases = []
    real = search_mod.write_json_atomic

    def spy(path, data):
        if path.name == "progress.json":
            phases.append(data["phase"])
        return real(path, data)

    monkeypatch.setattr(search_mod, "write_json_atomic", spy)
    run_search(tmp_path, generations=3)
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert order == ["baselines", "evolution", "random", "heldout", "done"], phases


def test_a_promoted_record_sharing_an_allocation_takes_its_full_fitness(tmp_path):
    # coarse: many functions share an allocation; two of one generation may be promoted together, the second
    # then reads the full fitness the first just computed
    search, _result, ctx = run_search(tmp_path, context=FakeContext(coarse=True), promote=6, elite=2)
    history = search.state.history
    assert all(h["full_fitness"] is not None for h in history if h["full_at"] is not None)
    shared = [h for h in history if h["cached"] == "allocation" and h["full_at"] is not None]
    assert shared, "the run should promote a record whose allocation was scored in the same step"
    assert_each_score_paid_once(history, ctx.calls)  # each allocation's full fitness computed once a kind
    for h in shared:
        assert h["full_fitness"] == FakeContext(coarse=True).fitness({"key": h["allocation_key"]}, "full")


# --------------------------------------------------------------------------- fair budgets (issue 33)

def test_the_random_search_pays_for_every_score_even_one_evolution_already_paid(tmp_path, monkeypatch):
    """A small space that both kinds draw from: random meets allocations the evolution scored, and must
    score them again itself (the two kinds share no cache), so each kind's budget is its own."""
    space = [AllocationFunction(("abs",), r, ("sin",), lam, d) for r in ("var", "std", "mean")
             for lam in (0.05, 0.1, 0.15) for d in (1, -1)]
    monkeypatch.setattr(search_mod, "random_function", lambda rng, _set=None: space[rng.randrange(len(space))])
    ctx = FakeContext(coarse=True)  # allocation = (reduction, direction): 6 allocations in all
    search, _result, _ = run_search(tmp_path, context=ctx, population=6, elite=1, promote=1, generations=3)
    history = search.state.history
    assert_each_score_paid_once(history, ctx.calls)
    evo_scored = {(h["allocation_key"], f) for h in records(history, "evolution") for f in h["paid"]}
    rnd_scored = {(h["allocation_key"], f) for h in records(history, "random") for f in h["paid"]}
    assert evo_scored & rnd_scored, "the test space should make random meet the evolution's allocations"
    for kind in ("evolution", "random"):
        recs = [h for h in records(history, kind) if h["valid"]]
        own = {(h["allocation_key"], f) for h in recs for f in h["paid"]}
        for h in recs:  # every score a record holds was paid by its own kind
            assert (h["allocation_key"], "cheap") in own
            if h["full_fitness"] is not None:
                assert (h["allocation_key"], "full") in own
        paid = search.paid(kind)
        assert paid == {"cheap": sum("cheap" in h["paid"] for h in recs),
                        "full": sum("full" in h["paid"] for h in recs)}
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["paid"] == {kind: search.paid(kind) for kind in ("evolution", "random")}


def test_the_final_choices_are_rescored_on_held_out_windows(tmp_path):
    search, result, ctx = run_search(tmp_path, context=BaselineContext(), generations=3)
    heldout = [k for k, f in ctx.calls if f == "heldout"]
    # the two final choices (and the two baselines, scored with the baselines before the search)
    assert sorted(heldout[2:]) == sorted(result[k]["function_key"] for k in ("evolution", "random"))
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    for kind in ("evolution", "random"):
        key = result[kind]["function_key"]
        expected = distance(AllocationFunction.from_json(key)) + noise(key + "|heldout")
        assert best[kind]["heldout_fitness"] == pytest.approx(expected)
        assert best["heldout"][kind]["search_fitness"] == result[kind]["full_fitness"]
    assert best["heldout"]["uniform"]["heldout_fitness"] == pytest.approx(noise(TARGET.key() + "|heldout"))
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["heldout"] == best["heldout"]
    # a resumed finished search does not score them again
    again = FakeContext()
    Search(again, SearchConfig(**(CFG | {"generations": 3})), tmp_path / "run", resume=True, progress=False).run()
    assert again.calls == []


def test_no_heldout_windows_skips_the_rescore(tmp_path):
    search, _result, ctx = run_search(tmp_path, heldout_windows=0, generations=2)
    assert all(f != "heldout" for _k, f in ctx.calls) and "heldout" not in search.state.meta


def test_the_dsa_public_function_set_stays_in_the_public_space():
    space = search_mod.function_set("dsa-public")
    rng = random.Random(5)
    fns = [random_function(rng, space) for _ in range(300)]
    for fn in list(fns):
        for _ in range(5):
            fn = mutate(crossover(fn, fns[rng.randrange(len(fns))], rng), rng, space)
            fns.append(fn)
    for fn in fns:
        assert set(fn.pre) <= set(ops.PUBLIC_PRE) and set(fn.post) <= set(ops.PUBLIC_POST)
        assert fn.reduction in ops.PUBLIC_REDUCTIONS
        assert fn.lam == search_mod.PUBLIC_LAMBDA == 0.08 and fn.direction == 1
    assert {fn.reduction for fn in fns} == set(ops.PUBLIC_REDUCTIONS)  # the whole public space is reached
    wide = [random_function(rng) for _ in range(300)]
    assert {fn.direction for fn in wide} == {1, -1} and len({fn.lam for fn in wide}) > 100
    assert "layer_corr" not in ops.PUBLIC_REDUCTIONS and "layer_corr" in {fn.reduction for fn in wide}
    with pytest.raises(ValueError, match=r"function_set='paper' is not allowed; allowed: "
                                         r"\['workbench', 'dsa-public'\]"):
        SearchConfig(sparsity=0.5, function_set="paper")


def test_the_search_setup_builds_the_candidate_context_from_its_specs():
    """What the CLI and every Ray worker build: the model and calibration of the run spec's sections, the dense
    statistics of those windows, a context scoring with the search spec on the fitness dataset."""
    from workbench.search import SearchSetup
    from workbench.spec import CalibrationSpec, ModelSpec

    config = SearchConfig(sparsity=0.5, population=4, generations=1, elite=1, fitness_windows=1, fitness_seqlen=64,
                          cheap_windows=1, cheap_seqlen=32, heldout_windows=0)
    setup = SearchSetup(ModelSpec(name="tiny-llama"), CalibrationSpec(nsamples=2, seqlen=32, seed=3), config)
    model, tokenizer, ctx = setup.build(progress=False)
    assert ctx.config is config and ctx.model is model and tokenizer is not None
    prov = ctx.cache.provenance
    assert (prov["dataset"], prov["nsamples"], prov["seqlen"], prov["seed"]) == (DEFAULT_DATASET, 2, 32, 3)
    assert all(s.n_windows == 2 and s.sq_norm is not None for s in ctx.cache.stats.values())
    alloc = ctx.allocation(AllocationFunction(("abs",), "std", ("no_op",)))
    assert math.isfinite(ctx.fitness(alloc["counts"], "cheap"))
    with pytest.raises(WorkbenchError, match="fitness_dataset"):
        SearchSetup(ModelSpec(), CalibrationSpec(), config, fitness_dataset="no-such-file.txt")
