"""The sparsity x quantization study's tables and Pareto figure, from the records of data/grids/quant.yaml.

For each sparsity: one row per allocation and pipeline, one column per bit setting (test perplexity on sotu;
the 16-bit column is the pipeline's pruner without quantization), and the effective bits per weight of each
column (kept values at b bits, a 1-bit mask, 16-bit scale and zero point per group; 16 bits: kept values at 16
plus the mask). For BESA, how far each quantized run's learned allocation moved from plain BESA's. The figure:
test perplexity against bits per weight, every run, with the lower-left frontier.

    .venv/bin/python benchmarks/quant_report.py --root runs/quant/quant [--png benchmarks/results/quant_pareto.png]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from workbench.profile import SparsityProfile

COLUMNS = ["W16", "W8", "W4", "W4 g64", "W3"]
W16_OF = {"Wanda": "Wanda", "SparseGPT": "SparseGPT", "BESA": "BESA"}  # a pipeline's 16-bit row: its pruner's


def records(root: Path) -> list[dict]:
    """The finished runs under ``root`` (one folder per run, each with its result.json)."""
    out = []
    for path in sorted(root.glob("*/result.json")):
        record = json.loads(path.read_text())
        if record.get("status") == "ok" and record["run"]["label"] != "dense":
            out.append(record)
    return out


def bits_per_weight(record: dict) -> float:
    """The run's effective bits per weight (16-bit runs: kept values at 16 bits plus the 1-bit mask)."""
    metrics = record["metrics"]
    if metrics.get("bits_per_weight") is not None:
        return float(metrics["bits_per_weight"])
    return 16 * (1 - metrics["actual_sparsity"]) + 1


def table(recs: list[dict], sparsity: float) -> str:
    """Markdown: rows allocation | pipeline, columns bit settings (test perplexity)."""
    cells: dict[tuple[str, str], dict[str, float]] = {}
    bpw: dict[str, list[float]] = {}
    w16: dict[tuple[str, str], float] = {}
    for r in recs:
        if abs(r["run"]["sparsity"] - sparsity) > 1e-9:
            continue
        alloc, pipeline, bits = (part.strip() for part in r["run"]["label"].split("|"))
        ppl = r["metrics"]["perplexity"]
        bpw.setdefault(bits, []).append(bits_per_weight(r))
        if bits == "W16":
            w16[(alloc, pipeline)] = ppl
        else:
            cells.setdefault((alloc, pipeline), {})[bits] = ppl
    for (alloc, pipeline), row in cells.items():
        pruner = next((p for p in W16_OF if pipeline.startswith(p)), None)
        if (alloc, pruner) in w16:
            row["W16"] = w16[(alloc, pruner)]
    head = "| allocation | pipeline | " + " | ".join(COLUMNS) + " |"
    bits_row = "| | bits / weight | " + " | ".join(
        f"{sum(bpw[c]) / len(bpw[c]):.2f}" if c in bpw else "–" for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2), bits_row]
    for (alloc, pipeline), row in sorted(cells.items()):
        lines.append(f"| {alloc} | {pipeline} | " + " | ".join(f"{row[c]:.2f}" if c in row else "–" for c in COLUMNS)
                     + " |")
    return "\n".join(lines)


def allocation_shift(recs: list[dict], sparsity: float) -> str:
    """Markdown: how far each quantized BESA run's learned allocation moved from plain BESA's at the same target
    (points of sparsity, per linear and per block). BESA then GPTQ moves only through the quantized inputs of later
    blocks: it is the yardstick for what learning with the quantization in the loop (BESA joint) adds."""
    mine = [r for r in recs if abs(r["run"]["sparsity"] - sparsity) < 1e-9 and r["run"]["label"].startswith("BESA")]
    base = next((r for r in mine if r["run"]["label"].split("|")[2].strip() == "W16"), None)
    if base is None:
        return ""
    plain = SparsityProfile.from_dict(base["profile"])
    plain_blocks = plain.block_means()
    lines = ["| pipeline | bits | mean abs shift, linears | max, linears | mean abs shift, blocks | max, blocks |",
             "|---|---|---|---|---|---|"]
    for r in mine:
        if r is base:
            continue
        _, pipeline, bits = (part.strip() for part in r["run"]["label"].split("|"))
        profile = SparsityProfile.from_dict(r["profile"])
        dl = [abs(v - plain.layers[k]) * 100 for k, v in profile.layers.items()]
        db = [abs(v - plain_blocks[b]) * 100 for b, v in profile.block_means().items()]
        lines.append(f"| {pipeline} | {bits} | {sum(dl) / len(dl):.2f} | {max(dl):.2f} | {sum(db) / len(db):.2f} | "
                     f"{max(db):.2f} |")
    return "\n".join(lines)


def frontier(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The runs no other run beats on both bits per weight and perplexity, by increasing bits. Bits are compared
    at the 0.01 the tables print: weights that round to zero lower a run's count by ~1e-5, which is no gain."""
    best, out = math.inf, []
    for x, y, label in sorted(points, key=lambda p: (round(p[0], 2), p[1], p[2])):
        if y < best:
            best = y
            out.append((x, y, label))
    return out


def figure(recs: list[dict], png: Path) -> None:
    """Perplexity vs bits per weight, one panel per sparsity, colour = pipeline, frontier drawn."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sparsities = sorted({r["run"]["sparsity"] for r in recs})
    fig = make_subplots(rows=1, cols=len(sparsities), subplot_titles=[f"{s:.0%} sparsity" for s in sparsities])
    pipelines = sorted({r["run"]["label"].split("|")[1].strip() for r in recs})
    symbols = {"uniform": "circle", "OWL": "square", "DSA searched": "diamond", "BESA": "star"}
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]
    for col, s in enumerate(sparsities, start=1):
        mine = [r for r in recs if r["run"]["sparsity"] == s]
        for i, pipeline in enumerate(pipelines):
            rs = [r for r in mine if r["run"]["label"].split("|")[1].strip() == pipeline]
            if not rs:
                continue
            fig.add_trace(go.Scatter(
                x=[bits_per_weight(r) for r in rs], y=[r["metrics"]["perplexity"] for r in rs], mode="markers",
                name=pipeline, legendgroup=pipeline, showlegend=col == 1, text=[r["run"]["label"] for r in rs],
                marker={"color": palette[i % len(palette)], "size": 9,
                        "symbol": [symbols.get(r["run"]["label"].split("|")[0].strip(), "circle") for r in rs]}),
                row=1, col=col)
        front = frontier([(bits_per_weight(r), r["metrics"]["perplexity"], r["run"]["label"]) for r in mine])
        fig.add_trace(go.Scatter(x=[p[0] for p in front], y=[p[1] for p in front], mode="lines", name="frontier",
                                 legendgroup="frontier", showlegend=col == 1,
                                 line={"color": "black", "dash": "dot", "shape": "hv"}), row=1, col=col)
        fig.update_xaxes(title_text="bits per weight (values + mask + scales)", row=1, col=col)
        fig.update_yaxes(title_text="test perplexity (sotu, log)", type="log", row=1, col=col)
    fig.update_layout(width=1300, height=560, title="SmolLM2-135M: sparsity + quantization "
                      "(marker: circle uniform, square OWL, diamond DSA, star BESA)")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.write_image(str(png))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="runs/quant/quant")
    p.add_argument("--png", default=None)
    args = p.parse_args()
    recs = records(Path(args.root))
    for s in sorted({r["run"]["sparsity"] for r in recs}):
        print(f"\n### {s:.0%} sparsity (test perplexity)\n")
        print(table(recs, s))
        front = frontier([(bits_per_weight(r), r["metrics"]["perplexity"], r["run"]["label"]) for r in recs
                          if r["run"]["sparsity"] == s])
        print("\nfrontier: " + "; ".join(f"{label} ({x:.2f} bits, {y:.2f})" for x, y, label in front))
        shift = allocation_shift(recs, s)
        if shift:
            print(f"\nBESA's learned allocation against plain BESA's at {s:.0%} (points of sparsity)\n\n{shift}")
    if args.png:
        figure(recs, Path(args.png))
        print(f"\nfigure: {args.png}")


if __name__ == "__main__":
    main()
