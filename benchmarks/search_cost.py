"""What a DSA search candidate costs, and whether the cheap stage ranks candidates as the full one does.

1. Spearman rank correlation, over >= 60 random *valid* functions, between each cheap-stage setting and
   the full-fidelity fitness (validation perplexity, 8 x 512 tokens): the target is >= 0.9 for the default.
2. Seconds per distinct candidate in a multi-fidelity search (default settings) against the single
   fidelity one that was the only way before: every candidate pruned from scratch and scored on one
   8 x 512 validation pass. Target: >= 10x more distinct candidates per hour.

    .venv/bin/python benchmarks/search_cost.py [--model smollm2-135m] [--functions 60] [--generations 3]
        [--promote N] [--skip-correlation]
    .venv/bin/python benchmarks/search_cost.py --spaces [--population 64] [--generations 3] [--calib-dataset sotu]

3. ``--spaces``: seconds per distinct candidate of the function space and the level space at one configuration
   (new candidates a generation, promotions), split into allocation, cheap stage and amortized full stage.
"""

import argparse
import math
import random
import shutil
import tempfile
import time

import torch

from workbench.data import calibration_samples
from workbench.models import load_model
from workbench.prune import DenseCache
from workbench.search import Search, SearchConfig, SearchContext, random_function

CHEAP = {"kl 1x64 (default)": ("kl", 1, 64), "kl 1x128": ("kl", 1, 128), "kl 2x128": ("kl", 2, 128),
         "kl 1x256": ("kl", 1, 256),
         "ppl 1x128": ("ppl", 1, 128), "ppl 2x256": ("ppl", 2, 256)}


def spearman(a: list[float], b: list[float]) -> float:
    """Pearson correlation of the ranks (no ties expected in continuous fitness values)."""
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt(float((ra * ra).sum() * (rb * rb).sum())))


def contexts(model, tok, cache, sparsity):
    """One context per cheap setting (they share the model; each keeps its own dense references)."""
    out = {}
    for name, (metric, windows, seqlen) in CHEAP.items():
        cfg = SearchConfig(sparsity=sparsity, cheap_fitness=metric, cheap_windows=windows, cheap_seqlen=seqlen)
        out[name] = SearchContext(model, tok, cache, cfg)
    return out


def correlation(ctxs: dict, n_functions: int, seed: int) -> None:
    rng, full, cheap, seconds = random.Random(seed), [], {k: [] for k in ctxs}, {k: 0.0 for k in ctxs}
    base = ctxs["kl 1x64 (default)"]
    drawn = invalid = 0
    t_full = 0.0
    while len(full) < n_functions:
        fn = random_function(rng)
        drawn += 1
        alloc = base.allocation(fn)
        if not alloc["valid"]:
            invalid += 1
            continue
        t0 = time.perf_counter()
        value = base.fitness(alloc["counts"], "full")
        t_full += time.perf_counter() - t0
        if not math.isfinite(value):
            continue
        full.append(value)
        for name, ctx in ctxs.items():
            ctx.counts = dict(base.counts)  # all contexts drive the same model
            t0 = time.perf_counter()
            cheap[name].append(ctx.fitness(alloc["counts"], "cheap"))
            seconds[name] += time.perf_counter() - t0
            base.counts = dict(ctx.counts)
    print(f"{len(full)} valid functions ({drawn} drawn, {invalid} invalid); full fidelity: validation ppl "
          f"8 x 512, {t_full / len(full):.2f} s each (masks already set)")
    for name in ctxs:
        print(f"  cheap {name:20s}: Spearman {spearman(cheap[name], full):.3f}   "
              f"{seconds[name] / len(full):.2f} s per candidate (forward only)")


class Timed:
    """Seconds a context spends allocating, masking and scoring, per fidelity (wraps its methods)."""

    def __init__(self, ctx):
        self.seconds = {"allocation": 0.0, "masks": 0.0, "cheap": 0.0, "full": 0.0}
        allocation, set_counts, fitness = ctx.allocation, ctx.set_counts, ctx.fitness

        def timed(label, fn, *args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.seconds[label] += time.perf_counter() - t0

        ctx.allocation = lambda c: timed("allocation", allocation, c)
        ctx.set_counts = lambda counts: timed("masks", set_counts, counts)
        ctx.fitness = lambda counts, fidelity: timed(fidelity, fitness, counts, fidelity)

    def per(self, n: int) -> str:
        s = self.seconds
        return (f"per candidate: allocation {s['allocation'] / n:.3f}, cheap stage {s['cheap'] / n:.3f}, full stage "
                f"(amortized) {s['full'] / n:.3f} s; of these, masks {s['masks'] / n:.3f} s")


def space_cost(model, tok, cache, sparsity: float, generations: int, population: int, promote: int) -> None:
    """Seconds per distinct candidate of each space at one configuration, with where they go; the level space also
    without prefix reuse (every candidate runs every block): the ratio."""
    root = tempfile.mkdtemp(prefix="space-cost-")
    forward = {}
    try:
        for space, elite, keep in (("functions", 2, True), ("levels", 1, False), ("levels", 1, True)):
            cfg = SearchConfig(sparsity=sparsity, random_baseline=False, space=space, elite=elite,
                               population=population + elite, generations=generations, promote=promote,
                               heldout_windows=0)
            ctx = SearchContext(model, tok, cache, cfg)
            if not keep:  # no prefix reuse: the cache keeps no allocation, every candidate runs every block
                ctx.prefix.capacity = dict.fromkeys(ctx.prefix.capacity, 1)
            timed = Timed(ctx)
            t0 = time.perf_counter()
            search = Search(ctx, cfg, f"{root}/{space}-{keep}", progress=False, baselines=False)
            search.run()
            n = len(search.state.history)
            forward[(space, keep)] = (timed.seconds["cheap"] + timed.seconds["full"]) / n
            label = f"{space} ({'with' if keep else 'no'} prefix reuse)"
            print(f"{label:27s}: {n} distinct candidates ({population} new a generation, promote {promote}) in "
                  f"{time.perf_counter() - t0:6.1f} s = {(time.perf_counter() - t0) / n:.3f} s per candidate; "
                  f"{timed.per(n)}", flush=True)
        print(f"level-space fitness (both stages) per candidate: no prefix reuse / prefix reuse = "
              f"{forward[('levels', False)] / forward[('levels', True)]:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def search_cost(model, tok, cache, sparsity: float, generations: int, promote: int | None = None) -> None:
    root = tempfile.mkdtemp(prefix="search-cost-")
    try:
        results = {}
        # the single-fidelity rate is taken on one generation of 16 (each candidate costs a full pass)
        multi = {"population": 32, "generations": generations}
        if promote is not None:
            multi["promote"] = promote
        for label, extra in ((f"multi-fidelity (promote {SearchConfig(sparsity, **multi).promote})", multi),
                             ("single fidelity (every candidate 8 x 512)",
                              {"cheap_windows": 0, "population": 16, "generations": 1})):
            cfg = SearchConfig(sparsity=sparsity, random_baseline=False, **extra)
            ctx = SearchContext(model, tok, cache, cfg)
            if not cfg.multi_fidelity:  # as before: every candidate restored to dense and masked from scratch
                set_counts = ctx.set_counts

                def from_scratch(counts, _set=set_counts, _ctx=ctx):
                    _set({n: 0 for n in _ctx.linears})  # dense again, then every mask rebuilt
                    _set(counts)

                ctx.set_counts = from_scratch
            t0 = time.perf_counter()
            search = Search(ctx, cfg, f"{root}/{len(results)}", progress=False, baselines=False)
            search.run()
            wall = time.perf_counter() - t0
            hist = search.state.history
            valid = sum(h["valid"] for h in hist)
            full = sum(h["full_fitness"] is not None and not h.get("cached") for h in hist)
            results[label] = wall / len(hist)
            print(f"{label:44s}: {len(hist)} distinct candidates ({valid} valid, {full} at full fidelity) in "
                  f"{wall:6.1f} s = {wall / len(hist):5.2f} s per candidate, "
                  f"{wall / max(valid, 1):5.2f} s per valid one")
        single, multi = results.pop("single fidelity (every candidate 8 x 512)"), results.popitem()[1]
        print(f"distinct candidates per hour: multi-fidelity {3600 / multi:.0f} vs single fidelity "
              f"{3600 / single:.0f}: ratio {single / multi:.1f}x (target >= 10x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--functions", type=int, default=60)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--promote", type=int, default=None, help="promotions per generation (default: the search's)")
    parser.add_argument("--skip-correlation", action="store_true", help="only the cost per candidate")
    parser.add_argument("--skip-cost", action="store_true", help="only the rank correlation")
    parser.add_argument("--spaces", action="store_true",
                        help="only the cost per candidate of the function and the level space, with its parts")
    parser.add_argument("--population", type=int, default=64, help="--spaces: new candidates per generation")
    parser.add_argument("--calib-dataset", default="embedded")
    args = parser.parse_args()

    model, tok = load_model(args.model)
    calib = calibration_samples(tok, args.calib_dataset, args.nsamples, args.seqlen, 0)
    cache = DenseCache.build(model, calib, ("sq_norm",), progress=False)
    print(f"model={args.model} calibration={args.calib_dataset} {args.nsamples}x{args.seqlen} "
          f"sparsity={args.sparsity} threads={torch.get_num_threads()}")
    if args.spaces:
        space_cost(model, tok, cache, args.sparsity, args.generations, args.population, args.promote or 1)
        return
    if not args.skip_correlation:
        correlation(contexts(model, tok, cache, args.sparsity), args.functions, args.seed)
    if not args.skip_cost:
        search_cost(model, tok, cache, args.sparsity, args.generations, args.promote)


if __name__ == "__main__":
    main()
