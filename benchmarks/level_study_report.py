"""The level-space study's figure and tables (issue 36), from finished or running searches.

Reads ``<root>/<granularity>/<space>-s<seed>/state.json`` (``benchmarks/level_study.sh``). Four methods at
block granularity: function-space evolution and random search, level-space evolution and random search (two
at projection granularity: the evolutions). For each: best-so-far validation fitness against distinct
candidates (mean and 95% t-interval over seeds; the figure, PNG), the final best and its held-out re-score,
the candidates each seed needed to come within 1% of its own final best, and paired comparisons across seeds
at 250, 500, 1000 and 2000 candidates: the paired t-test on log fitness and the exact Wilcoxon signed-rank
test (two-sided; with 5 seeds its smallest possible p is 0.0625, so it is reported, not used to decide).
With the transfer grid's runs (``<root>/transfer/level_transfer``, ``benchmarks/level_transfer.py``) it also
prints the transfer table: test perplexity and zero-shot mean per method, metric and sparsity.

    .venv/bin/python benchmarks/level_study_report.py [--root runs/level_study]
        [--png benchmarks/results/level_study.png]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from scipy import stats

from workbench.plots import search_series

METHODS = {("functions", "evolution"): "functions: evolution", ("functions", "random"): "functions: random",
           ("levels", "evolution"): "levels: evolution", ("levels", "random"): "levels: random"}
COLORS = {"functions: evolution": "#d62728", "functions: random": "#ff9896", "levels: evolution": "#1f77b4",
          "levels: random": "#aec7e8"}
CHECKPOINTS = (250, 500, 1000, 2000)
PAIRS = (("functions: evolution", "functions: random"), ("levels: evolution", "levels: random"),
         ("levels: evolution", "functions: evolution"), ("levels: random", "functions: random"))


def finished(folder: Path) -> bool:
    """Whether a search has run to its end (its progress file, kept and restored with its state, says done): a seed
    under way is left out, or its early best would enter the means as a final one."""
    progress = folder / "progress.json"
    return progress.is_file() and json.loads(progress.read_text()).get("phase") == "done"


def load(root: Path, granularity: str, partial: bool = False) -> dict[str, dict[int, dict]]:
    """method -> seed -> {"series": (x, y), "heldout": value, "scored": n, "seconds": s}, finished searches only
    (``partial``: those under way too)."""
    out: dict[str, dict[int, dict]] = {}
    for folder in sorted(p for p in (root / granularity).glob("*-s*") if (p / "state.json").is_file()):
        if not (partial or finished(folder)):
            print(f"(left out, still running: {granularity}/{folder.name})")
            continue
        space, seed = folder.name.rsplit("-s", 1)
        state = json.loads((folder / "state.json").read_text())  # the history and the held-out re-scores
        history, heldout = state["history"], state.get("meta", {}).get("heldout", {})
        if not history:
            continue
        for kind, series in search_series(history).items():
            out.setdefault(METHODS[(space, kind)], {})[int(seed)] = {
                "series": series,
                "heldout": heldout.get(kind, {}).get("heldout_fitness"),
                "scored": sum(1 for h in history if h["kind"] == kind),
                "seconds": sum(h.get("seconds", 0.0) for h in history if h["kind"] == kind)}
    return out


def best_at(series: tuple[list[int], list[float]], n: int) -> float | None:
    """The best-so-far fitness after ``n`` distinct candidates (None before the first full-fidelity one)."""
    value = None
    for at, best in zip(*series, strict=True):
        if at > n:
            break
        value = best
    return value


def within(series: tuple[list[int], list[float]], fraction: float = 0.01) -> int:
    """Candidates needed to come within ``fraction`` of the series' own final best."""
    final = series[1][-1]
    return next(at for at, best in zip(*series, strict=True) if best <= final * (1 + fraction))


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))


def curves(methods: dict[str, dict[int, dict]]) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """Per method: x, mean and 95% half-width of the best-so-far fitness over the seeds that reached x."""
    out = {}
    for name, seeds in methods.items():
        top = min(s["scored"] for s in seeds.values())
        xs = sorted({x for s in seeds.values() for x in s["series"][0] if x <= top} | {top})
        rows = []
        for x in xs:
            values = [best_at(s["series"], x) for s in seeds.values()]
            if None not in values:
                rows.append((x, *interval(values)))
        out[name] = tuple(map(list, zip(*rows, strict=True))) if rows else ([], [], [])
    return out


def figure(block: dict, png: Path, title: str) -> None:
    import plotly.graph_objects as go
    import plotly.io as pio

    fig = go.Figure()
    for name, (x, mean, half) in curves(block).items():
        color = COLORS[name]
        # the band as explicit steps (each value held until the next x), so the fill follows the step lines
        sx = [v for a, b in zip(x, x[1:] + x[-1:], strict=True) for v in (a, b)]
        upper = [m + h for m, h in zip(mean, half, strict=True) for _ in (0, 1)]
        lower = [m - h for m, h in zip(mean, half, strict=True) for _ in (0, 1)]
        fig.add_trace(go.Scatter(x=sx + sx[::-1], y=upper + lower[::-1], mode="lines", fill="toself",
                                 fillcolor=color, opacity=0.18, line={"width": 0}, showlegend=False,
                                 hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=mean, mode="lines", line_shape="hv", line={"color": color},
                                 name=f"{name} (n={len(block[name])})"))
    fig.update_layout(title=title, xaxis_title="distinct candidates scored",
                      yaxis_title="best validation perplexity so far (8 x 512)", yaxis_type="log",
                      template="plotly_white", height=480, width=900)
    png.parent.mkdir(parents=True, exist_ok=True)
    pio.write_image(fig, str(png))


def table(methods: dict[str, dict[int, dict]]) -> list[str]:
    lines = ["| method | seeds | candidates (min) | final best validation ppl, mean ± 95% | held-out re-score, "
             "mean ± 95% | candidates to within 1% of own best (per seed) | s per candidate |",
             "|---|---|---|---|---|---|---|"]
    for name, seeds in methods.items():
        finals = [s["series"][1][-1] for s in seeds.values()]
        held = [s["heldout"] for s in seeds.values() if s["heldout"] is not None]
        reach = [within(s["series"]) for s in seeds.values()]
        per = sum(s["seconds"] for s in seeds.values()) / sum(s["scored"] for s in seeds.values())
        m, h = interval(finals)
        hm = "n/a" if not held else "{:.2f} ± {:.2f}".format(*interval(held))
        lines.append(f"| {name} | {len(seeds)} | {min(s['scored'] for s in seeds.values())} | {m:.2f} ± {h:.2f} | "
                     f"{hm} | {', '.join(map(str, reach))} | {per:.2f} |")
    return lines


def compare(a: str, b: str, label: str, va: list[float], vb: list[float]) -> str:
    """One row: the per-seed log ratio A/B, how many seeds A wins, a paired t test and a Wilcoxon signed-rank test."""
    diff = [math.log(x) - math.log(y) for x, y in zip(va, vb, strict=True)]
    t = stats.ttest_rel([math.log(x) for x in va], [math.log(y) for y in vb]).pvalue
    w = stats.wilcoxon(diff, method="exact").pvalue if any(diff) else 1.0
    return (f"| {a} vs {b} | {label} | {len(va)} | {sum(va) / len(va):.2f} | {sum(vb) / len(vb):.2f} | "
            f"{sum(d < 0 for d in diff)}/{len(va)} | {sum(diff) / len(diff):+.4f} | {t:.3f} | {w:.3f} |")


def paired(methods: dict[str, dict[int, dict]]) -> list[str]:
    """Validation best-so-far at each checkpoint, then the final choices' held-out re-scores, paired by seed."""
    lines = ["| comparison (A vs B) | candidates | seeds | mean ppl A | mean ppl B | A better in | mean log ratio A/B "
             "| paired t p | Wilcoxon p |", "|---|---|---|---|---|---|---|---|---|"]
    for a, b in PAIRS:
        if a not in methods or b not in methods:
            continue
        seeds = sorted(set(methods[a]) & set(methods[b]))
        if len(seeds) < 2:
            continue
        for n in CHECKPOINTS:
            if any(methods[m][s]["scored"] < n for m in (a, b) for s in seeds):
                continue
            va = [best_at(methods[a][s]["series"], n) for s in seeds]
            vb = [best_at(methods[b][s]["series"], n) for s in seeds]
            if None not in va and None not in vb:
                lines.append(compare(a, b, str(n), va, vb))
        ha = [methods[a][s]["heldout"] for s in seeds]
        hb = [methods[b][s]["heldout"] for s in seeds]
        if None not in ha and None not in hb:
            lines.append(compare(a, b, "final, held-out", ha, hb))
    return lines


def transfer_table(folder: Path, grid: Path = Path("data/grids/level_transfer.yaml")) -> list[str]:
    """The transfer grid's runs as one row per allocation, in the grid's order, Wanda and SparseGPT at 60/70/80%:
    test ppl and the zero-shot mean the grid's own table reports (acc_norm where a task has it). The column is the
    run's metric."""
    from workbench import reproduce

    names = {"wanda": "Wanda", "sparsegpt": "SparseGPT"}
    cells: dict[str, dict[tuple[str, str], str]] = {}
    for run in reproduce.expand(reproduce.load_grid(grid)):
        path = folder / run.id / "result.json"
        record = json.loads(path.read_text()) if path.is_file() else {}
        if record.get("status") != "ok":
            continue
        cell = f"{record['metrics']['perplexity']:.2f} ({record['data']['zero_shot']['mean_acc_norm']:.3f})"
        sparsity, label = record["run"]["sparsity"], record["run"]["label"]
        metric = names[record["method"]["metric"]]
        name = label.removeprefix(f"{metric} ")  # "Wanda OWL" -> "OWL"; "BESA (row)" stays (its importance: Wanda)
        cells.setdefault(name, {})[(metric, "dense" if sparsity is None else f"{sparsity:.0%}")] = cell
    dense = cells.pop("dense", {}).get(("Wanda", "dense"), "")
    columns = [(m, s) for m in names.values() for s in ("60%", "70%", "80%")]
    lines = ["| allocation | " + " | ".join(f"{m} {s}" for m, s in columns) + " |", "|---" * 7 + "|"]
    for name, row in cells.items():
        lines.append(f"| {name} | " + " | ".join(row.get(c, "") for c in columns) + " |")
    return lines + ["", f"dense: {dense}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/level_study")
    parser.add_argument("--png", default="benchmarks/results/level_study.png")
    parser.add_argument("--partial", action="store_true", help="count searches still under way too")
    args = parser.parse_args()
    root = Path(args.root)
    for granularity in ("block", "projection"):
        methods = load(root, granularity, args.partial)
        if not methods:
            continue
        print(f"## {granularity} granularity\n")
        print("\n".join(table(methods)) + "\n")
        print("\n".join(paired(methods)) + "\n")
        if granularity == "block":
            figure(methods, Path(args.png), "SmolLM2-135M, 70% Wanda, sotu validation<br><sup>functions vs levels, "
                                            "evolution vs random: mean and 95% interval over seeds</sup>")
            print(f"figure: {args.png}\n")
    transfer = root / "transfer" / "level_transfer"
    if transfer.is_dir():
        print("## transfer: test ppl (zero-shot mean)\n")
        print("\n".join(transfer_table(transfer)) + "\n")


if __name__ == "__main__":
    main()
