"""The dashboard's perplexity-vs-sparsity chart: axes set from the runs (plotly alone spans -0.3..1.7 around a
single point), the sparsity axis inside [0, 1] and the perplexity axis around the points and the dense line."""

import pandas as pd
import pytest

from workbench import plots


def _row(allocation: str, actual: float, perplexity: float) -> dict:
    return {"allocation": allocation, "actual": actual, "perplexity": perplexity}


def _inside_unit(xrange) -> None:
    lo, hi = xrange
    assert 0.0 <= lo < hi <= 1.0, xrange


def test_one_run_gives_a_sparsity_axis_inside_zero_one_around_its_point():
    fig = plots.perplexity_vs_sparsity([_row("owl", 0.7, 85.3)], dense=21.4)
    xrange = list(fig.layout.xaxis.range)
    _inside_unit(xrange)
    assert xrange[0] < 0.7 < xrange[1]
    assert xrange[1] - xrange[0] <= 0.2  # a margin around the point, not the whole unit interval
    lo, hi = fig.layout.yaxis.range
    assert 0.0 <= lo < 21.4 and hi > 85.3  # the point and the dense line are both on the plot
    assert hi < 2 * 85.3  # and not lost in a range set for nothing
    assert list(fig.data[0].x) == [0.7] and list(fig.data[0].y) == [85.3]


def test_one_run_without_a_dense_line_has_a_span_of_its_own_size():
    fig = plots.perplexity_vs_sparsity([_row("uniform", 0.5, 40.0)])
    lo, hi = fig.layout.yaxis.range
    assert lo < 40.0 < hi and hi - lo == pytest.approx(8.0)
    _inside_unit(list(fig.layout.xaxis.range))


@pytest.mark.parametrize("sparsity", [0.0, 0.02, 0.99, 1.0])
def test_points_at_the_edges_keep_the_axis_inside_zero_one(sparsity):
    fig = plots.perplexity_vs_sparsity([_row("uniform", sparsity, 30.0)])
    lo, hi = fig.layout.xaxis.range
    _inside_unit((lo, hi))
    assert lo <= sparsity <= hi


def test_several_runs_are_all_on_the_plot_with_a_margin():
    runs = [_row("uniform", 0.5, 30.0), _row("uniform", 0.7, 120.0), _row("owl", 0.6, 45.0),
            _row("owl", 0.8, 900.0), _row("besa", None, None)]  # a failed run has no point
    fig = plots.perplexity_vs_sparsity(runs, dense=20.0)
    assert [t.name for t in fig.data] == ["uniform", "owl"]
    lo, hi = fig.layout.xaxis.range
    _inside_unit((lo, hi))
    assert lo < 0.5 and hi > 0.8 and lo >= 0.5 - 0.1 and hi <= 0.8 + 0.1
    ylo, yhi = fig.layout.yaxis.range
    assert ylo < 20.0 and yhi > 900.0 and ylo >= 0.0


def test_no_runs_show_the_whole_unit_interval():
    fig = plots.perplexity_vs_sparsity([])
    assert list(fig.layout.xaxis.range) == [0.0, 1.0]
    assert fig.layout.yaxis.range is None  # nothing to range over: plotly's own


def test_a_non_finite_perplexity_does_not_break_the_range():
    fig = plots.perplexity_vs_sparsity([_row("global", 0.9, float("inf")), _row("owl", 0.7, 50.0)])
    lo, hi = fig.layout.yaxis.range
    assert lo < 50.0 < hi and hi < 100.0


def test_the_dashboard_page_draws_its_rows_on_this_chart(tmp_path):
    """The page's chart is this figure of its run table: one finished row gives an x-range inside [0, 1]."""
    from workbench.dashboard.app import COLUMNS, Dashboard, DashboardConfig, DashboardServices

    config = DashboardConfig(models=("tiny-llama",), default_model="tiny-llama", nsamples=4, seqlen=64,
                             results_dir=tmp_path / "r", reproduce_dir=tmp_path / "t")
    services = DashboardServices(config)
    try:
        page = Dashboard(services)
        row = dict.fromkeys(COLUMNS) | {"run": 1, "model": "tiny-llama", "allocation": "owl", "actual": 0.7,
                                        "perplexity": 123.4, "status": "done"}
        page.runs = pd.DataFrame([row], columns=COLUMNS)
        page.dense_ppl = 50.0
        fig = page.ppl_figure()
        lo, hi = fig.layout.xaxis.range
        _inside_unit((lo, hi))
        assert lo < 0.7 < hi
        assert list(fig.data[0].y) == [123.4] and fig.layout.shapes[0].y0 == 50.0
    finally:
        services.close()
