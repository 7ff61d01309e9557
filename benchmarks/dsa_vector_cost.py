"""What keeping each block's float64 score vector saves a function-space search (issue 36's cost item).

Before: every new (pre ops, reduction) pair concatenated the block's score matrices and cast them to float64
again, then ran the pre ops in place on that copy. Now the search keeps the float64 vectors (``UnitVectors``,
850 MB on SmolLM2) and runs each chain from them (the first op writes a new tensor; the kept one is never
written). Both ways on the same random valid functions in one run, one thread; Wanda-shaped scores on
SmolLM2-135M's real weights (|W| times a random positive column norm: the cost does not depend on the
calibration text). Prints seconds per (pre, reduction) pair each way and the ratio; asserts equal values.

    .venv/bin/python benchmarks/dsa_vector_cost.py [--model smollm2-135m] [--functions 24] [--seed 0]
"""

import argparse
import random
import time

import torch

from workbench.allocation.base import AllocationInput, groups
from workbench.allocation.dsa.function import InvalidFunction, UnitVectors
from workbench.models import layer_infos, load_model, prunable_linears
from workbench.search import random_function


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--functions", type=int, default=24, help="distinct (pre ops, reduction) pairs timed")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model(args.model)
    gen = torch.Generator().manual_seed(args.seed)
    scores = {name: lin.weight.detach().float().abs() * torch.rand(lin.weight.shape[1], generator=gen).add_(0.1)
              for name, lin in prunable_linears(model).items()}
    inputs = AllocationInput(layer_infos(model), scores.__getitem__)
    blocks = [[scores[n] for n in names] for names in groups(inputs, "block").values()]
    rng, pairs, fns = random.Random(args.seed), set(), []
    while len(fns) < args.functions:
        fn = random_function(rng)
        if fn.reduced_key() not in pairs:
            pairs.add(fn.reduced_key())
            fns.append(fn)
    kept = UnitVectors(blocks)
    start = time.perf_counter()
    kept.get(False), kept.get(True)
    build = time.perf_counter() - start
    fresh_s = kept_s = 0.0
    timed = 0
    for fn in fns:
        start = time.perf_counter()
        try:
            fresh = fn.reduced_values(blocks)[0]  # a throwaway UnitVectors: the old cost (cat + cast each time)
        except InvalidFunction:
            fresh = None
        middle = time.perf_counter()
        try:
            got = fn.reduced_values(kept)[0]
        except InvalidFunction:
            got = None
        end = time.perf_counter()
        assert (fresh is None) == (got is None) and (fresh is None or str(fresh) == str(got)), fn.key()
        fresh_s, kept_s, timed = fresh_s + middle - start, kept_s + end - middle, timed + 1
    print(f"{args.model}: {sum(m.numel() for b in blocks for m in b) / 1e6:.1f}M scores in {len(blocks)} blocks, "
          f"{timed} (pre ops, reduction) pairs, one thread")
    print(f"building the kept vectors once: {build:.2f} s")
    print(f"per pair: rebuilt each time {fresh_s / timed:.3f} s, from the kept vectors {kept_s / timed:.3f} s, "
          f"ratio {fresh_s / kept_s:.2f}x")


if __name__ == "__main__":
    main()
