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


def baselines(folder: Path) -> dict[str, float]:
    """Validation fitness of uniform, OWL and the readme preset, measured as this search measured its
    candidates (its calibration, the same 8 x 512 validation windows, the same row-wise Wanda masks)."""
    from workbench.allocation import allocate
    from workbench.data import calibration_samples
    from workbench.models import load_model
    from workbench.prune import DenseCache
    from workbench.search import SearchConfig, SearchContext

    state = json.loads((folder / "state.json").read_text())
    config, calib = SearchConfig(**state["config"]), state["meta"]["calibration"]
    model, tok = load_model(state["meta"]["model"]["id"])
    samples = calibration_samples(tok, calib["dataset"], calib["nsamples"], calib["seqlen"], calib["seed"])
    ctx = SearchContext(model, tok, DenseCache.build(model, samples, ("sq_norm",), progress=False), config)
    out = {}
    for name, allocation, params in (("uniform", "uniform", {}), ("OWL", "owl", {"lam": 0.08, "M": 5}),
                                     ("DSA readme", "dsa", {"function": "readme"})):
        out[name] = ctx.fitness(ctx.counts_of(allocate(allocation, ctx.inputs, config.sparsity, **params)), "full")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/study")
    parser.add_argument("--png", default="benchmarks/results/dsa_convergence.png")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="skip the uniform / OWL / readme validation lines (they need the model: ~1 min)")
    args = parser.parse_args()
    fig = go.Figure()
    print("| seed | kind | distinct candidates | valid | at full fidelity | best validation ppl | best function |")
    print("|---|---|---|---|---|---|---|")
    folders = sorted(p for p in Path(args.root).glob("search-seed*") if p.is_dir())
    lowest, highest = float("inf"), 0.0
    for i, folder in enumerate(folders):
        history = json.loads((folder / "history.json").read_text())
        for kind, (x, y) in search_series(history).items():
            lowest, highest = min(lowest, *y), max(highest, *y)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line_shape="hv", name=f"{kind} {folder.name[-5:]}",
                                     line={"color": COLORS[kind], "dash": DASH[i % len(DASH)]}))
            recs = [h for h in history if h["kind"] == kind]
            full = [h for h in recs if h["valid"] and h["full_fitness"] is not None]
            best = min(full, key=lambda h: h["full_fitness"])
            f = best["function"]
            print(f"| {folder.name[-1]} | {kind} | {len(recs)} | {sum(h['valid'] for h in recs)} | {len(full)} | "
                  f"{best['full_fitness']:.2f} | {f['pre']} → {f['reduction']} → {f['post']}, λ {f['lam']}, "
                  f"dir {f['direction']:+d} |")
    if args.baselines:
        cached = Path(args.root) / "baselines.json"  # measured once (about 5 min), reused by later reports
        if cached.exists():
            per_seed = json.loads(cached.read_text())
        else:
            per_seed = {folder.name: baselines(folder) for folder in folders}
            cached.write_text(json.dumps(per_seed, indent=1))
        for seed, values in per_seed.items():
            for name, value in values.items():
                print(f"| {seed[-1]} | {name} (hand-made) | 1 | 1 | 1 | {value:.2f} | |")
        for name, dash in zip(next(iter(per_seed.values())), ("dot", "dash", "dashdot"), strict=False):
            mean = sum(v[name] for v in per_seed.values()) / len(per_seed)
            highest = max(highest, mean)
            fig.add_hline(y=mean, line={"color": "#1f77b4", "dash": dash, "width": 1},
                          annotation_text=f"{name} {mean:.1f} (mean over the seeds' calibrations)",
                          annotation_position="top right")
    fig.update_layout(title="DSA search on SmolLM2-135M at 70%: best validation perplexity so far",
                      xaxis_title="distinct candidates scored", yaxis_title="validation perplexity (full fidelity)",
                      yaxis_range=[lowest * 0.95, highest * 1.05], template="plotly_white", height=450, width=900)
    png = Path(args.png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(png.with_suffix(".html"), include_plotlyjs="cdn")  # not committed: the PNG is
    pio.write_image(fig, str(png))
    print(f"figure: {png} (and .html)")


if __name__ == "__main__":
    main()
