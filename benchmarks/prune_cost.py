"""Where the time of Wanda pruning goes on SmolLM2-135M, and the cost of re-pruning from cached stats.

Prints (1) the time of the calibration forward passes and of everything else (scores, allocation,
masks) in one sequential Wanda prune, and their ratio (target: everything else <= 25% of the forward
time); (2) the time to re-prune at a new allocation from a DenseCache (target: under 5 s, no forward).

    .venv/bin/python benchmarks/prune_cost.py [--nsamples 32] [--seqlen 512]
"""

import argparse
import time

from workbench import calibrate as calibrate_mod
from workbench.data import calibration_samples
from workbench.models import load_model
from workbench.prune import DenseCache, prune


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    args = parser.parse_args()

    model, tok = load_model(args.model)
    calib = calibration_samples(tok, "embedded", args.nsamples, args.seqlen, 0)
    res = prune(model, tok, metric="wanda", allocation="uniform", sparsity=0.5, calibration=calib,
                mode="sequential", progress=False)
    fwd, other = res.timings["forward_s"], res.timings["prune_s"]
    print(f"model={args.model} calibration={args.nsamples}x{args.seqlen} (embedded)")
    print(f"sequential wanda 50%: forward passes {fwd:7.2f} s, everything else {other:6.2f} s, "
          f"ratio {other / fwd:.3f} (target <= 0.25)")

    model, tok = load_model(args.model)
    cache = DenseCache.build(model, calib, ("sq_norm",), progress=False)
    calls = []
    original = calibrate_mod.capture_block_inputs
    calibrate_mod.capture_block_inputs = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        timings = []
        for allocation, sparsity in (("uniform", 0.6), ("er", 0.7), ("global", 0.5)):
            t0 = time.perf_counter()
            prune(model, tok, metric="wanda", allocation=allocation, sparsity=sparsity, mode="dense",
                  cache=cache, progress=False)
            timings.append((allocation, sparsity, time.perf_counter() - t0))
    finally:
        calibrate_mod.capture_block_inputs = original
    print(f"dense statistics pass (once): {cache.forward_s:.2f} s")
    for allocation, sparsity, t in timings:
        print(f"re-prune from cache, {allocation:7s} {sparsity:.0%}: {t:5.2f} s "
              f"(ratio to the stats pass {t / cache.forward_s:.3f}; target < 5 s)")
    print(f"forward passes during re-pruning: {len(calls)}")


if __name__ == "__main__":
    main()
