"""The fair allocator comparison at 70% (issue 33): default vs tuned hand-made methods, DSA by search space.

Reads the grid folder written by ``workbench reproduce --grid data/grids/fair70.yaml`` (``benchmarks/
fair_allocators.sh``) and prints Markdown: test perplexity with each method's parameters (the tuned value
chosen on validation), the spread of its block sparsities (max − min of the block means) and the tuning
budget used.

    .venv/bin/python benchmarks/fair_allocators_report.py [--root runs/fair]
"""

import argparse
import json
from pathlib import Path

from workbench.profile import SparsityProfile

SHOWN = {"owl": ("lam", "M"), "dlp": ("alpha",), "alphapruning": ("epsilon",), "atp": ("beta",)}


def spread(record: dict) -> float:
    means = SparsityProfile.from_dict(record["profile"]).block_means().values()
    return max(means) - min(means)


def params(record: dict) -> str:
    allocation = record["method"]["allocation"]
    if allocation == "dsa":
        fn = record["profile"]["params"].get("function", {})
        return (f"[{', '.join(fn.get('pre', []))}] → {fn.get('reduction')} → [{', '.join(fn.get('post', []))}], "
                f"λ {fn.get('lam')}, dir {fn.get('direction', 1):+d}") if isinstance(fn, dict) else str(fn)
    shown = record["method"]["params"]
    return ", ".join(f"{k} {shown[k]:.4g}" for k in SHOWN.get(allocation, ()) if k in shown) or "—"


def grid_table(folder: Path) -> None:
    records = {}
    for path in sorted(folder.glob("perplexity-*/result.json")):
        record = json.loads(path.read_text())
        if record.get("status") == "ok":
            records[record["run"]["label"]] = record
    dense = records.pop("dense", None)
    if dense:
        print(f"dense: test perplexity {dense['metrics']['perplexity']:.2f}\n")
    print("| run | test ppl | parameters (tuned: chosen on validation) | block spread | tuning budget (KL + ppl) |")
    print("|---|---|---|---|---|")
    for label, record in records.items():
        tuning = record.get("tuning")
        budget = f"{tuning['budget']['cheap']} + {tuning['budget']['full']}" if tuning else "—"
        ppl = record["metrics"]["perplexity"]
        print(f"| {label} | {ppl:.2f} | {params(record)} | {spread(record):.3f} | {budget} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/fair")
    args = parser.parse_args()
    root = Path(args.root)
    grid_table(root / "grid" / "fair70")


if __name__ == "__main__":
    main()
