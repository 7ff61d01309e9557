"""Seconds per DSA search candidate: with cached dense statistics (SearchContext) versus a naive
re-prune from scratch (load, dense calibration pass, prune, same fitness evaluation) and versus the
papers' sequential pipeline; prints the ratios (target: >= 5x).

    .venv/bin/python benchmarks/search_cost.py [--model smollm2-135m] [--nsamples 32] [--seqlen 512]
"""

import argparse
import time

from workbench.allocation.dsa.function import PRESETS, AllocationFunction
from workbench.allocation.dsa.search import SearchContext
from workbench.data import calibration_samples
from workbench.evaluate import perplexity_from_ids
from workbench.models import load_model
from workbench.prune import DenseCache, prune

FUNCTIONS = [PRESETS["poster"], AllocationFunction(("abs",), "std", ("tanh",), 0.1, 1),
             AllocationFunction(("pow",), "l1", ("sqrt",), 0.05, -1)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--sparsity", type=float, default=0.7)
    args = parser.parse_args()

    model, tok = load_model(args.model)
    calib = calibration_samples(tok, "embedded", args.nsamples, args.seqlen, 0)
    t0 = time.perf_counter()
    ctx = SearchContext(model, tok, DenseCache.build(model, calib, ("sq_norm",), progress=False), args.sparsity)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = [ctx.evaluate(fn)["fitness"] for fn in FUNCTIONS]
    t_cached = (time.perf_counter() - t0) / len(FUNCTIONS)

    t0 = time.perf_counter()
    naive = []
    for fn in FUNCTIONS[:2]:
        m, t = load_model(args.model)
        prune(m, t, "wanda", "dsa", args.sparsity, calibration=calib, mode="dense",
              allocation_params={"function": fn}, progress=False)
        naive.append(perplexity_from_ids(m, ctx.ids, ctx.seqlen, progress=False))
    t_naive = (time.perf_counter() - t0) / 2
    assert all(abs(a - b) < 1e-6 * a for a, b in zip(cached, naive, strict=False)), (cached, naive)
    t0 = time.perf_counter()  # what a search built on the papers' pipeline pays: sequential pruning
    m, t = load_model(args.model)
    prune(m, t, "wanda", "dsa", args.sparsity, calibration=calib, mode="sequential",
          allocation_params={"function": FUNCTIONS[0]}, progress=False)
    perplexity_from_ids(m, ctx.ids, ctx.seqlen, progress=False)
    t_seq = time.perf_counter() - t0
    print(f"model={args.model} calibration={args.nsamples}x{args.seqlen} sparsity={args.sparsity} "
          f"fitness={ctx.fitness_data['windows']} validation windows of {ctx.seqlen}")
    print(f"one-time setup (dense statistics, scores, row orders): {setup:6.2f} s")
    print(f"per candidate, cached statistics : {t_cached:6.2f} s")
    print(f"per candidate, naive from scratch: {t_naive:6.2f} s")
    print(f"per candidate, naive sequential  : {t_seq:6.2f} s (the papers' pipeline, per candidate)")
    print(f"ratio naive/cached               : {t_naive / t_cached:6.2f}x (target >= 5x); same fitness: yes")
    print(f"ratio sequential/cached          : {t_seq / t_cached:6.2f}x")
    print("(a candidate is ~95% its validation forward pass; the dense pass it saves is the rest)")


if __name__ == "__main__":
    main()
