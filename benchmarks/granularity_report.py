"""Natural English and granularity at 70% (issue 35): one table per dataset from the study's grids.

Reads ``runs/study/<grid>-{dataset}/<grid>/*/result.json`` (``benchmarks/granularity_study.sh``)
and prints Markdown: per method, test perplexity with Wanda and SparseGPT at block, sublayer and projection
granularity, and the zero-shot mean of the block rows; "refused" where the allocator has no meaning at that
unit, "error" with the reason where a run failed, "—" where not run.

    .venv/bin/python benchmarks/granularity_report.py [--root runs/study]
"""

import argparse
import json
from pathlib import Path

from workbench.allocation import granularities_of

GRANULARITIES = ("block", "sublayer", "projection")
METRICS = {"wanda": "Wanda", "sparsegpt": "SparseGPT"}
ORDER = ("uniform", "OWL", "DLP", "ATP", "AlphaPruning", "DSA readme", "DSA evolved", "LSA", "BESA (row)")


def defined(allocation: str, granularity: str) -> bool:
    """Whether the allocator has a unit at ``granularity`` (BESA: its row-wise learning counts as block)."""
    units = granularities_of(allocation)
    return not units or granularity in units or (allocation == "besa" and granularity == "block")


def records(root: Path, dataset: str) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(root.glob(f"*-{dataset}/*/*/result.json"))]


def key(record: dict) -> tuple[str, str, str]:
    """(method, metric, granularity) of a record: the label without its metric and granularity words."""
    params = record["run"]["params"]
    granularity = (params.get("alloc_params") or {}).get("granularity", "block")
    granularity = "block" if granularity == "row" else granularity
    words = [w for w in record["run"]["label"].split() if w not in METRICS.values() and w not in GRANULARITIES]
    return " ".join(words), params.get("metric", "wanda"), granularity


def cell(record: dict | None) -> str:
    if record is None:
        return "—"
    if record.get("status") != "ok":
        return "refused" if "is not allowed" in record.get("error", "") else "error"
    return f"{record['metrics']['perplexity']:.2f}"


def table(rows: list[dict]) -> str:
    by_key = {key(r): r for r in rows if r["run"]["label"] != "dense"}
    allocation = {k[0]: r["run"]["params"]["allocation"] for k, r in by_key.items()}
    methods = sorted(dict.fromkeys(k[0] for k in by_key), key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))
    head = ["method"] + [f"{METRICS[m]} {g}" for m in METRICS for g in GRANULARITIES] + \
        [f"zero-shot mean, {METRICS[m]} block" for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        cells = []
        for m in METRICS:
            for g in GRANULARITIES:
                if not defined(allocation[method], g):
                    cells.append("no such unit")
                elif allocation[method] == "uniform" and g != "block":  # the same masks at every unit
                    cells.append("= block")
                else:
                    cells.append(cell(by_key.get((method, m, g))))
        for m in METRICS:
            r = by_key.get((method, m, "block"))
            zs = (r or {}).get("data", {}).get("zero_shot", {}).get("mean_acc_norm") if r else None
            cells.append("—" if zs is None else f"{zs:.4f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    dense = next((r for r in rows if r["run"]["label"] == "dense" and r.get("status") == "ok"), None)
    if dense:
        zs = dense.get("data", {}).get("zero_shot", {}).get("mean_acc_norm")
        lines.append(f"\ndense: test perplexity {dense['metrics']['perplexity']:.2f}"
                     + (f", zero-shot mean {zs:.4f}" if zs is not None else ""))
    errors = [f"- {r['run']['label']}: {r.get('error', '')[:300]}" for r in rows if r.get("status") != "ok"]
    return "\n".join(lines + (["", "Failed or refused runs:"] + errors if errors else []))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/study")
    args = parser.parse_args()
    for dataset in ("sotu", "embedded"):
        rows = records(Path(args.root), dataset)
        if rows:
            print(f"## {dataset}\n\n{table(rows)}\n")


if __name__ == "__main__":
    main()
