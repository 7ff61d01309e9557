"""The transfer grid of the level study (issue 36), written from the study's searches.

Each method's best search (chosen by validation: the held-out validation re-score of its final choice, never
test) is applied with sequential Wanda and SparseGPT beside uniform, OWL, DLP, ATP and BESA: test perplexity
and sotu zero-shot mean. A *function* (function space, evolution or random) is applied unchanged at 60%, 70%
and 80% (the DSA paper's claim that a function found at one sparsity generalises); a *level profile* applies
only at the 70% it was searched for (the ``profile`` allocator refuses another target: a new search would be
needed), so its row has the 70% cell only.

    .venv/bin/python benchmarks/level_transfer.py [--root runs/level_study] [--out data/grids/level_transfer.yaml]
    .venv/bin/python -m workbench reproduce --grid data/grids/level_transfer.yaml --out runs/level_study/transfer
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml

SPARSITIES = [0.6, 0.7, 0.8]
HAND_MADE = [("uniform", "uniform", {}), ("OWL", "owl", {}), ("DLP", "dlp", {}), ("ATP", "atp", {})]
KINDS = {"evolution": "evolved", "random": "random-search"}


def chosen(root: Path, space: str) -> dict[str, tuple[str, float]]:
    """kind -> (search folder, held-out validation fitness) of the seed whose final choice re-scored best."""
    best: dict[str, tuple[str, float]] = {}
    for folder in sorted((root / "block").glob(f"{space}-s*")):
        state = folder / "state.json"
        if not state.is_file():
            continue
        heldout = json.loads(state.read_text()).get("meta", {}).get("heldout", {})
        for kind in KINDS:
            value = heldout.get(kind, {}).get("heldout_fitness")
            if value is not None and (kind not in best or value < best[kind][1]):
                best[kind] = (str(folder), value)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/level_study")
    parser.add_argument("--out", default="data/grids/level_transfer.yaml")
    parser.add_argument("--keep", default="data/level_study", help="where the chosen functions and profiles are "
                                                                  "copied (the grid names these copies)")
    args = parser.parse_args()
    root, keep = Path(args.root), Path(args.keep)
    keep.mkdir(parents=True, exist_ok=True)
    searched, notes = [], []
    for kind, (folder, value) in chosen(root, "functions").items():
        target = keep / f"function-{KINDS[kind]}.json"
        best = json.loads((Path(folder) / "best.json").read_text())[kind]
        target.write_text(json.dumps(best["function"], indent=1) + "\n")
        searched.append((f"DSA function {KINDS[kind]}", "dsa", {"function": str(target)}, SPARSITIES))
        notes.append(f"function {KINDS[kind]}: {folder} (held-out validation ppl {value:.2f})")
    for kind, (folder, value) in chosen(root, "levels").items():
        target = keep / f"levels-{KINDS[kind]}.json"
        name = "best_profile.json" if kind == "evolution" else "best_random_profile.json"
        shutil.copyfile(Path(folder) / name, target)
        searched.append((f"levels {KINDS[kind]}", "profile", {"path": str(target)}, [0.7]))
        notes.append(f"levels {KINDS[kind]}: {folder} (held-out validation ppl {value:.2f})")
    methods = []
    for metric, label in (("wanda", "Wanda"), ("sparsegpt", "SparseGPT")):
        for name, allocation, params, sparsities in [(n, a, p, SPARSITIES) for n, a, p in HAND_MADE] + searched:
            entry = {"label": f"{label} {name}", "metric": metric, "allocation": allocation,
                     "sparsities": list(sparsities)}
            if params:
                entry["alloc_params"] = dict(params)
            methods.append(entry)
    methods.append({"label": "BESA (row)", "allocation": "besa", "nsamples": 8, "sparsities": list(SPARSITIES),
                    "alloc_params": {"granularity": "row", "sigmoid": False}})
    grid = {"name": "level_transfer", "model": "smollm2-135m",
            "defaults": {"calib_dataset": "sotu", "eval_dataset": "sotu", "tasks": "sotu", "limit": 100},
            "zeroshot": {"sparsities": list(SPARSITIES), "methods": methods}}
    header = ["# The level study's transfer grid (issue 36), by benchmarks/level_transfer.py from the searches:",
              *[f"#   {n}" for n in notes],
              "# Sequential pruning, sotu calibration 32 x 512 seed 0, test perplexity and sotu zero-shot (100 items",
              "# per task). Functions at 60/70/80% unchanged; level profiles at their 70% only. Test chose nothing."]
    Path(args.out).write_text("\n".join(header) + "\n" + yaml.safe_dump(grid, sort_keys=False, width=120))
    print(f"grid: {args.out} ({len(methods)} methods)")


if __name__ == "__main__":
    main()
