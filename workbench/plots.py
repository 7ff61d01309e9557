"""Plotly figure builders shared by the Jupyter widgets, the dashboard and the reproduction tables.

Pure functions: data in, ``go.Figure`` out. Front ends only place the figures; ``sync_figure`` copies
a freshly built figure into a live one (an ipywidgets ``FigureWidget``) so it updates in place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import plotly.graph_objects as go

from .models import in_language_tower
from .profile import SparsityProfile

COLORS = {"uniform": "#7f7f7f", "owl": "#1f77b4", "dsa": "#d62728", "besa": "#2ca02c", "er": "#9467bd",
          "er_plus": "#8c564b", "global": "#e377c2", "global_per_row": "#f7b6d2", "alphapruning": "#ff7f0e",
          "dlp": "#17becf", "atp": "#bcbd22", "lsa": "#393b79"}  # others get plotly's default colours


def unit_curve(profile: SparsityProfile) -> tuple[list[float], list[float], list[str]]:
    """(x, parameter-weighted sparsity, unit name) of each allocation unit of a profile, in model order.

    x is measured in blocks so curves of different granularities share one axis: the k units of block b sit
    evenly inside it at b + (i + 0.5)/k - 0.5 (a block unit at b exactly). A profile without block structure
    places its units at 0, 1, 2, ... in model order."""
    means = profile.unit_means()
    block_of: dict[str, int] = {}
    for linear, unit in profile.unit_names().items():
        if linear in profile.blocks:
            block_of.setdefault(unit, profile.blocks[linear])
    if not block_of:
        return list(range(len(means))), list(means.values()), list(means)
    in_block: dict[int, list[str]] = {}
    for unit in means:  # a unit none of whose linears has a block is where the profile derives it (block 0)
        in_block.setdefault(block_of.get(unit, 0), []).append(unit)
    points = []
    for block, units in sorted(in_block.items()):
        k = len(units)
        for i, unit in enumerate(units):
            points.append((block if k == 1 else block + (i + 0.5) / k - 0.5, means[unit], unit))
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def curve_name(label: str, profile: SparsityProfile) -> str:
    """A curve's legend entry: the label, the granularity where it is finer than a block, the weighted mean."""
    finer = "" if profile.granularity in ("block", "uniform") else f" · {profile.granularity}"
    return f"{label}{finer} (mean {profile.mean():.3f})"


def sparsity_curves(profiles: Mapping[str, SparsityProfile], title: str | None = None) -> go.Figure:
    """Layer-wise sparsity of each named profile, one point per allocation unit (see :func:`unit_curve`),
    the unit's name on hover and the granularity and weighted mean in the legend."""
    fig = go.Figure()
    for label, profile in profiles.items():
        x, y, names = unit_curve(profile)
        fig.add_trace(go.Scatter(
            x=x, y=y, text=names, mode="lines+markers", name=curve_name(label, profile),
            line={"color": COLORS.get(profile.allocator)},
            hovertemplate=f"{label}<br>%{{text}}<br>sparsity %{{y:.4f}}<extra></extra>",
        ))
    target = next(iter(profiles.values())).target if profiles else None
    blocks = max((len(p.block_means()) for p in profiles.values()), default=1)
    fig.update_xaxes(dtick=max(1, blocks // 10))
    tower = any(in_language_tower(n) for p in profiles.values() for n in p.layers)  # a vision-language model's
    fig.update_layout(title=title or (f"Layer-wise sparsity, target {target:.2f}" if target is not None else ""),
                      xaxis_title="language-tower block" if tower else "block",
                      yaxis_title="sparsity (fraction of zeros)",
                      template="plotly_white", legend={"orientation": "h", "y": -0.2}, height=420)
    return fig


def search_series(history: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """Best-so-far full-fidelity validation fitness against distinct candidates scored, per search kind
    (a step each time a better full-fidelity fitness becomes known; x = the candidates that kind had
    scored by then, ``full_at`` in the records), so evolution and random search compare at equal budget.
    Each line runs on to the candidates its kind has scored so far (the x-axis agrees with the count)."""
    events: dict[str, list[tuple[int, float]]] = {}
    scored: dict[str, int] = {}
    for rec in history:
        kind = rec.get("kind", "evolution")
        scored[kind] = scored.get(kind, 0) + 1
        if rec.get("valid") and rec.get("full_fitness") is not None and rec.get("full_at") is not None:
            events.setdefault(kind, []).append((int(rec["full_at"]), float(rec["full_fitness"])))
    out = {}
    for kind, evs in events.items():
        best, points = float("inf"), {}
        for at, value in sorted(evs):
            best = min(best, value)
            points[at] = best
        if scored[kind] > max(points):
            points[scored[kind]] = best
        out[kind] = (list(points), list(points.values()))
    return out


BASELINE_CLIP_FACTOR = 3.0  # a baseline beyond 3x the search lines' range is shown at the edge, not scaled to


def _log_range(values: list[float]) -> list[float]:
    """A log10 y-range around ``values`` with a margin (a single value gets a small span)."""
    lo, hi = math.log10(min(values)), math.log10(max(values))
    pad = max(0.08 * (hi - lo), 0.02)
    return [lo - pad, hi + pad]


def _baseline_placement(searched: list[float], baselines: Mapping[str, float]) -> tuple[list[str], list[str]]:
    """Split baseline names into (inside the plot, clipped to an edge): a baseline more than
    ``BASELINE_CLIP_FACTOR`` times above the search lines' best-so-far maximum (or below their minimum /
    the factor), or not finite, would squeeze the searched lines into a sliver, so it is clipped."""
    if not searched:  # nothing searched yet: the baselines are all there is to show
        return [k for k, v in baselines.items() if math.isfinite(v)], [k for k, v in baselines.items()
                                                                        if not math.isfinite(v)]
    lo, hi = min(searched) / BASELINE_CLIP_FACTOR, max(searched) * BASELINE_CLIP_FACTOR
    inside = [k for k, v in baselines.items() if math.isfinite(v) and lo <= v <= hi]
    return inside, [k for k in baselines if k not in inside]


def search_progress(history: list[dict], baselines: dict[str, float] | None = None) -> go.Figure:
    """Best validation fitness so far versus candidates scored: evolution beside the random baseline, step
    lines, with the hand-made allocations' fitness (uniform, OWL) as dashed horizontal lines.

    The y-axis is logarithmic (perplexity and KL are positive; their ratios matter) and its range is set by
    the searched lines: a baseline far outside it (``_baseline_placement``) keeps its legend entry but is
    drawn as an arrow with its value at the top or bottom edge, so the searched lines fill the plot. With a
    non-positive value anywhere the axis stays linear and autoranged (a log axis cannot show it)."""
    fig = go.Figure()
    series = search_series(history)
    baselines = dict(baselines or {})
    for kind, (x, y) in series.items():
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=kind, line_shape="hv",
                                 hovertemplate=f"{kind}<br>%{{x}} scored<br>best %{{y:.3f}}<extra></extra>"))
    right = max([x[-1] for x, _y in series.values()], default=1)
    for name, value in baselines.items():
        fig.add_trace(go.Scatter(x=[0, right], y=[value, value], mode="lines", name=f"{name} {value:.2f}",
                                 line={"dash": "dash", "width": 1.5},
                                 hovertemplate=f"{name}: {value:.3f}<extra></extra>"))
    fig.update_layout(title="DSA search: best full-fidelity validation fitness so far",
                      xaxis_title="distinct candidates scored",
                      yaxis_title="validation fitness (full fidelity, log scale)", template="plotly_white",
                      height=380)
    searched = [v for _x, y in series.values() for v in y if math.isfinite(v)]
    shown = searched + [v for v in baselines.values() if math.isfinite(v)]
    if not shown or min(shown) <= 0:
        fig.update_layout(yaxis_title="validation fitness (full fidelity)")
        return fig
    inside, clipped = _baseline_placement(searched, baselines)
    fig.update_yaxes(type="log", autorange=False, range=_log_range(searched + [baselines[k] for k in inside]))
    edges = {"top": 0, "bottom": 0}
    for name in clipped:
        value = baselines[name]
        top = not value < min(searched or [value])  # above the range (or not finite): top edge
        edge = "top" if top else "bottom"
        fig.add_annotation(xref="paper", yref="paper", x=1 - 0.2 * edges[edge], y=1 if top else 0,
                           xanchor="right", text=f"{name} {value:.2f} (off scale)", showarrow=True,
                           arrowhead=2, ax=0, ay=22 if top else -22, font={"size": 11},
                           bgcolor="rgba(255,255,255,0.8)")
        edges[edge] += 1
    return fig


def perplexity_vs_sparsity(runs: list[dict], dense: float | None = None) -> go.Figure:
    """Perplexity against actual sparsity across runs (``allocation``, ``actual``, ``perplexity`` each),
    one line per allocation, with the dense model's perplexity as a dashed line.

    The axes are set from the points, not left to plotly (which spans -0.3..1.7 around a single point): the
    sparsity axis is a margin around the points inside [0, 1], the perplexity axis spans the finite
    perplexities and the dense line with a margin (a single value gets a span of its own size)."""
    fig = go.Figure()
    by_alloc: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        if run.get("actual") is not None and run.get("perplexity") is not None:
            by_alloc.setdefault(str(run.get("allocation")), []).append((float(run["actual"]), float(run["perplexity"])))
    _allocation_lines(fig, by_alloc, "sparsity %{x:.3f}")
    if dense is not None:
        fig.add_hline(y=dense, line_dash="dash", line_color="#333", annotation_text=f"dense {dense:.2f}")
    fig.update_layout(title="Perplexity vs sparsity (this page's runs)", xaxis_title="actual sparsity",
                      yaxis_title="perplexity", template="plotly_white", height=360)
    points = [p for pts in by_alloc.values() for p in pts]
    fig.update_xaxes(range=_sparsity_range([x for x, _y in points]))
    heights = [y for _x, y in points] + ([dense] if dense is not None else [])
    heights = [y for y in heights if math.isfinite(y)]
    if heights:
        fig.update_yaxes(range=_value_range(heights))
    return fig


def perplexity_vs_bits(runs: list[dict], dense: float | None = None) -> go.Figure:
    """Perplexity against storage bits per weight across runs (``bits`` and ``perplexity`` each; an unquantized
    run stores 16-bit values and, pruned, a 1-bit mask: 16 x (1 - actual) + 1), one line per allocation, the
    dense model at 16 bits as a dashed line."""
    fig = go.Figure()
    by_alloc: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        bits = run.get("bits")
        if bits is None and run.get("actual") is not None:
            bits = 16 * (1 - float(run["actual"])) + 1
        if bits is not None and run.get("perplexity") is not None:
            by_alloc.setdefault(str(run.get("allocation")), []).append((float(bits), float(run["perplexity"])))
    _allocation_lines(fig, by_alloc, "%{x:.2f} bits a weight")
    if dense is not None:
        fig.add_hline(y=dense, line_dash="dash", line_color="#333", annotation_text=f"dense (16 bits) {dense:.2f}")
    fig.update_layout(title="Perplexity vs bits per weight (this page's runs)", xaxis_title="bits per weight",
                      yaxis_title="perplexity", template="plotly_white", height=360)
    heights = [y for pts in by_alloc.values() for _x, y in pts] + ([dense] if dense is not None else [])
    heights = [y for y in heights if math.isfinite(y)]
    if heights:
        fig.update_yaxes(range=_value_range(heights))
    return fig


def _allocation_lines(fig: go.Figure, by_alloc: dict[str, list[tuple[float, float]]], x_hover: str) -> None:
    """One line per allocation through its (x, perplexity) points, in x order, in the allocation's colour."""
    for name, points in by_alloc.items():
        points.sort()
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=name,
                                 line={"color": COLORS.get(name)},
                                 hovertemplate=f"{name}<br>{x_hover}<br>ppl %{{y:.2f}}<extra></extra>"))


def _sparsity_range(xs: list[float], margin: float = 0.05) -> list[float]:
    """An x-range inside [0, 1] around the sparsities ``xs`` (at least ``margin`` either side where [0, 1]
    leaves room); [0, 1] without points."""
    xs = [min(max(x, 0.0), 1.0) for x in xs if math.isfinite(x)]
    if not xs:
        return [0.0, 1.0]
    lo, hi = min(xs), max(xs)
    pad = max(margin, 0.1 * (hi - lo))
    return [max(0.0, lo - pad), min(1.0, hi + pad)]


def _value_range(values: list[float]) -> list[float]:
    """A linear y-range around ``values`` with an 8% margin; one value (or equal ones) gets +-10% of itself,
    and the range never goes below zero when the values do not (perplexity is positive)."""
    lo, hi = min(values), max(values)
    pad = 0.08 * (hi - lo) if hi > lo else max(0.1 * abs(hi), 1e-3)
    low = lo - pad
    return [max(low, 0.0) if lo >= 0 else low, hi + pad]


def sync_figure(target: go.Figure, source: go.Figure) -> None:
    """Make ``target`` (e.g. a FigureWidget) show ``source``'s traces and layout, updating in place."""
    with target.batch_update():
        if len(target.data) != len(source.data):
            target.data = ()
            target.add_traces(list(source.data))
        else:
            for live, new in zip(target.data, source.data, strict=True):
                live.update(new.to_plotly_json())
        target.layout = source.layout  # the whole layout: axis titles, ticks, theme, legend, size
