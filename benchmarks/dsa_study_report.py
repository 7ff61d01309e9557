"""The DSA search study's convergence figure and table, from finished (or running) searches.

Reads ``<root>/search-seed*/history.json`` (written by ``benchmarks/dsa_study.sh``), prints each seed's
best full-fidelity validation fitness of the evolution and of the equal-budget random search, and writes
the best-so-far curves (evolution and random, every seed, against distinct candidates scored) as HTML
and PNG (kaleido drives the installed chromium).

    .venv/bin/python benchmarks/dsa_study_report.py [--root runs/study] [--png benchmarks/results/dsa_convergence.png]
"""

import argparse
import json
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from workbench.plots import search_series

COLORS = {"evolution": "#d62728", "random": "#7f7f7f"}
DASH = ["solid", "dash", "dot", "dashdot"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/study")
    parser.add_argument("--png", default="benchmarks/results/dsa_convergence.png")
    args = parser.parse_args()
    fig = go.Figure()
    print("| seed | kind | distinct candidates | valid | at full fidelity | best validation ppl | best function |")
    print("|---|---|---|---|---|---|---|")
    for i, folder in enumerate(sorted(Path(args.root).glob("search-seed*"))):
        history = json.loads((folder / "history.json").read_text())
        for kind, (x, y) in search_series(history).items():
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line_shape="hv", name=f"{kind} {folder.name[-5:]}",
                                     line={"color": COLORS[kind], "dash": DASH[i % len(DASH)]}))
            recs = [h for h in history if h["kind"] == kind]
            full = [h for h in recs if h["valid"] and h["full_fitness"] is not None]
            best = min(full, key=lambda h: h["full_fitness"])
            f = best["function"]
            print(f"| {folder.name[-1]} | {kind} | {len(recs)} | {sum(h['valid'] for h in recs)} | {len(full)} | "
                  f"{best['full_fitness']:.2f} | {f['pre']} → {f['reduction']} → {f['post']}, λ {f['lam']}, "
                  f"dir {f['direction']:+d} |")
    fig.update_layout(title="DSA search on SmolLM2-135M at 70%: best validation perplexity so far",
                      xaxis_title="distinct candidates scored", yaxis_title="validation perplexity (full fidelity)",
                      yaxis_type="log", template="plotly_white", height=450, width=800)
    png = Path(args.png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(png.with_suffix(".html"))
    pio.write_image(fig, str(png))
    print(f"figure: {png} (and .html)")


if __name__ == "__main__":
    main()
