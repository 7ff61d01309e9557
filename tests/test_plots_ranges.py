"""The search monitor's figure: a log y-axis whose range the searched lines set, so a far-off baseline (the
tiny model's OWL in the thousands) cannot squeeze evolution's line into a flat sliver."""

import math

from workbench import plots


def _history(fitness: list[float], kind: str = "evolution") -> list[dict]:
    """One full-fidelity record per value, scored as the i-th candidate of its kind."""
    return [{"kind": kind, "valid": True, "full_fitness": f, "full_at": i + 1, "cheap_fitness": 0.1}
            for i, f in enumerate(fitness)]


def _y_range(fig) -> tuple[float, float]:
    """The y-axis range in data units (plotly holds a log axis' range as log10)."""
    lo, hi = fig.layout.yaxis.range
    return 10 ** lo, 10 ** hi


def test_a_huge_baseline_is_clipped_to_an_annotation_and_the_search_lines_fill_the_plot():
    history = _history([30.0, 27.0, 24.0, 20.0]) + _history([29.0, 22.0], kind="random")
    fig = plots.search_progress(history, {"uniform": 26.5, "owl": 5000.0})
    assert fig.layout.yaxis.type == "log"
    lo, hi = _y_range(fig)
    assert lo <= 20.0 and hi >= 30.0  # every searched value is on the plot
    assert hi < 5000.0 and hi < 30.0 * plots.BASELINE_CLIP_FACTOR  # OWL is not, nor anything near it
    assert lo > 20.0 / plots.BASELINE_CLIP_FACTOR
    assert math.log10(hi / lo) < 0.5  # the searched span (20..30, 0.18 decades) fills most of the axis
    texts = [a.text for a in fig.layout.annotations]
    assert len(texts) == 1 and "owl 5000.00" in texts[0]  # its value is still shown, at the edge
    top = fig.layout.annotations[0]
    assert top.yref == "paper" and top.y == 1 and top.showarrow  # above the range: an arrow at the top edge
    names = {t.name: list(t.y) for t in fig.data}
    assert names["owl 5000.00"] == [5000.0, 5000.0]  # the legend keeps it
    assert lo <= 26.5 <= hi and names["uniform 26.50"] == [26.5, 26.5]  # a near baseline stays a line


def test_a_baseline_far_below_the_search_goes_to_the_bottom_edge():
    fig = plots.search_progress(_history([300.0, 250.0]), {"oracle": 1.5})
    lo, _hi = _y_range(fig)
    assert lo > 1.5 and lo <= 250.0
    (note,) = fig.layout.annotations
    assert note.y == 0 and "oracle 1.50" in note.text


def test_baselines_inside_the_range_are_drawn_as_lines_inside_it():
    history = _history([30.0, 27.0, 24.0, 20.0])
    fig = plots.search_progress(history, {"uniform": 40.0, "owl": 45.0})
    assert fig.layout.yaxis.type == "log"
    lo, hi = _y_range(fig)
    assert lo <= 20.0 and hi >= 45.0  # the range grows to hold both baselines
    assert hi < 45.0 * 1.5 and lo > 20.0 / 1.5  # with a margin, not more
    assert len(fig.layout.annotations) == 0
    lines = {t.name: (list(t.x), list(t.y)) for t in fig.data}
    assert lines["uniform 40.00"] == ([0, 4], [40.0, 40.0]) and lines["owl 45.00"] == ([0, 4], [45.0, 45.0])
    assert all(t.line.dash == "dash" for t in fig.data if t.name.startswith(("uniform", "owl")))


def test_before_the_first_generation_the_baselines_set_the_range():
    fig = plots.search_progress([], {"uniform": 300.0, "owl": 5000.0})
    lo, hi = _y_range(fig)
    assert fig.layout.yaxis.type == "log" and lo <= 300.0 and hi >= 5000.0
    assert len(fig.layout.annotations) == 0


def test_a_non_positive_value_keeps_a_linear_autoranged_axis():
    fig = plots.search_progress(_history([0.0, 1.0]), {"owl": 5000.0})
    assert fig.layout.yaxis.type in (None, "linear") and fig.layout.yaxis.range is None
    assert plots.search_progress([]).layout.yaxis.type in (None, "linear")
