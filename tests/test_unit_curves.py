"""Sparsity curves draw one point per allocation unit: x measured in blocks (a block's k units spread evenly
inside it, a block unit at the block's index), y the unit's parameter-weighted sparsity, the unit's name on hover
and the granularity in the legend; the dashboard and the widgets show what the shared builder draws."""

import time

import pytest

# resolved here, at collection, in the main thread: a dashboard test earlier in the same process may leave a curve
# worker importing transformers (DashboardServices.close does not wait), and two threads resolving the lazy
# package at once can hand this module a partly initialised one ("cannot import name 'AutoModelForCausalLM'")
from transformers import AutoModelForCausalLM  # noqa: F401

from workbench import plots
from workbench.dashboard.app import Dashboard, DashboardConfig, DashboardServices
from workbench.profile import SparsityProfile
from workbench.session import Session
from workbench.widgets import SparsityCurves


@pytest.fixture(scope="module")
def session():
    return Session("tiny-llama", nsamples=4, seqlen=32, dataset="embedded")


def _parts(name: str) -> tuple[int, str]:
    """(block, block's child) of ``model.layers.<b>.<child>.<proj>``, read from the name itself."""
    parts = name.split(".")
    assert parts[:2] == ["model", "layers"], name
    return int(parts[2]), parts[3]


def _weighted(profile: SparsityProfile, members: list[str]) -> float:
    """Parameter-weighted mean sparsity of ``members``, from the profile's raw layers and numels."""
    total = sum(profile.numels[n] for n in members)
    return sum(profile.layers[n] * profile.numels[n] for n in members) / total


def _sublayer_groups(profile: SparsityProfile) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in profile.layers:  # model order
        block, child = _parts(name)
        groups.setdefault(f"block {block} {child}", []).append(name)
    return groups


def _trace(fig, label: str):
    matches = [t for t in fig.data if t.name.startswith(f"{label} ")]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


@pytest.mark.parametrize("allocation", ["owl", "dlp"])
def test_a_sublayer_profile_gives_two_points_per_block_at_its_quarters(session, allocation):
    profile = session.profile(allocation, 0.6, granularity="sublayer")
    x, y, names = plots.unit_curve(profile)
    groups = _sublayer_groups(profile)
    assert names == ["block 0 self_attn", "block 0 mlp", "block 1 self_attn", "block 1 mlp",
                     "block 2 self_attn", "block 2 mlp"] == list(groups)
    assert x == pytest.approx([-0.25, 0.25, 0.75, 1.25, 1.75, 2.25], abs=1e-12)
    assert y == pytest.approx([_weighted(profile, groups[u]) for u in names], abs=1e-12)
    assert len({round(v, 9) for v in y}) == 6  # a curve of distinct values, not a flat line
    fig = plots.sparsity_curves({allocation: profile})
    trace = fig.data[0]
    assert list(trace.x) == pytest.approx(x) and list(trace.y) == pytest.approx(y) and list(trace.text) == names
    assert trace.hovertemplate == f"{allocation}<br>%{{text}}<br>sparsity %{{y:.4f}}<extra></extra>"
    assert trace.name == f"{allocation} · sublayer (mean {profile.mean():.3f})"
    assert fig.layout.xaxis.title.text == "block" and fig.layout.xaxis.dtick == 1


@pytest.mark.parametrize("allocation", ["owl", "dlp"])
def test_a_projection_profile_gives_one_point_per_linear(session, allocation):
    profile = session.profile(allocation, 0.6, granularity="projection")
    x, y, names = plots.unit_curve(profile)
    linears = list(profile.layers)
    assert names == linears and len(names) == 21
    per_block = {b: [n for n in linears if _parts(n)[0] == b] for b in range(3)}
    expected_x = [b + (i + 0.5) / 7 - 0.5 for b in range(3) for i in range(len(per_block[b]))]
    assert all(len(per_block[b]) == 7 for b in range(3))
    assert x == pytest.approx(expected_x, abs=1e-12)
    assert y == pytest.approx([_weighted(profile, [n]) for n in names], abs=1e-12)
    assert len({round(v, 9) for v in y}) >= 10
    assert all(b - 0.5 < xi < b + 0.5 for b in range(3) for xi, n in zip(x, names, strict=True) if _parts(n)[0] == b)
    trace = plots.sparsity_curves({"OWL": profile}).data[0]
    assert list(trace.text) == linears and trace.name.startswith("OWL · projection (mean ")


def test_a_block_profile_draws_as_before(session):
    """x = the block indices, y = the block means, the legend and the hover as before the units existed."""
    profile = session.profile("owl", 0.6, granularity="block")
    fig = plots.sparsity_curves({"owl": profile, "uniform": session.profile("uniform", 0.6)})
    owl, uniform = fig.data
    assert list(owl.x) == [0, 1, 2] and all(type(v) is int for v in owl.x)
    means = profile.block_means()
    assert list(owl.y) == pytest.approx(list(means.values()), abs=1e-12)
    by_block = {b: [n for n in profile.layers if _parts(n)[0] == b] for b in range(3)}
    assert list(owl.y) == pytest.approx([_weighted(profile, by_block[b]) for b in range(3)], abs=1e-12)
    assert len({round(v, 9) for v in owl.y}) == 3
    assert owl.name == f"owl (mean {profile.mean():.3f})" and uniform.name == "uniform (mean 0.600)"
    assert list(owl.text) == ["block 0", "block 1", "block 2"]  # hover: "owl<br>block 0<br>sparsity …" as before
    assert owl.line.color == plots.COLORS["owl"] and owl.mode == "lines+markers"
    assert list(uniform.x) == [0, 1, 2] and list(uniform.y) == pytest.approx([0.6] * 3)


def test_curves_of_different_granularities_share_the_block_axis(session):
    block = session.profile("owl", 0.6, granularity="block")
    sub = session.profile("owl", 0.6, granularity="sublayer")
    proj = session.profile("owl", 0.6, granularity="projection")
    fig = plots.sparsity_curves({"block": block, "sublayer": sub, "projection": proj})
    xs = {t.name.split(" ")[0]: list(t.x) for t in fig.data}
    for b in range(3):  # every block's finer points centre on the block's own point
        for name, k in (("sublayer", 2), ("projection", 7)):
            inside = [v for v in xs[name] if b - 0.5 < v < b + 0.5]
            assert len(inside) == k and sum(inside) / k == pytest.approx(xs["block"][b], abs=1e-12)
    # a block's units together have the block's mean (parameter-weighted), whichever granularity drew them
    _x, y, names = plots.unit_curve(sub)
    groups = _sublayer_groups(sub)
    for b in range(3):
        units = [u for u in names if u.startswith(f"block {b} ")]
        weights = [sum(sub.numels[n] for n in groups[u]) for u in units]
        combined = sum(y[names.index(u)] * w for u, w in zip(units, weights, strict=True)) / sum(weights)
        assert combined == pytest.approx(sub.block_means()[b], abs=1e-12)


def test_units_come_from_the_granularity_when_a_profile_recorded_none(session):
    """Older saved profiles have no ``units``: a block profile still draws per block, an old 'layer' one per
    linear, and one without block structure in model order."""
    data = session.profile("owl", 0.6, granularity="projection").to_dict()
    data.pop("units")
    old_layer = SparsityProfile.from_dict({**data, "granularity": "layer"})
    x, y, names = plots.unit_curve(old_layer)
    assert names == list(old_layer.layers) and len(x) == 21 and x[0] == pytest.approx(0.5 / 7 - 0.5)
    as_block = SparsityProfile.from_dict({**data, "granularity": "block"})
    x, y, names = plots.unit_curve(as_block)
    assert x == [0, 1, 2] and names == ["block 0", "block 1", "block 2"]
    assert y == pytest.approx(list(as_block.block_means().values()), abs=1e-12)
    flat = SparsityProfile.from_dict({**data, "blocks": {}})
    x, y, names = plots.unit_curve(flat)
    assert x == list(range(21)) and y == pytest.approx([flat.layers[n] for n in names])


def test_the_widget_shows_a_finer_profile_per_unit(session):
    curves = SparsityCurves(session, sparsity=0.6)
    sub = session.profile("dlp", 0.6, granularity="sublayer")
    curves.add_profile("dlp", sub)
    trace = _trace(curves.figure, "dlp")
    x, y, names = plots.unit_curve(sub)
    assert list(trace.x) == pytest.approx(x) and list(trace.y) == pytest.approx(y) and list(trace.text) == names
    assert trace.name.startswith("dlp · sublayer (mean ")
    assert list(_trace(curves.figure, "owl").x) == [0, 1, 2]  # the sliders' curves stay per block


@pytest.fixture
def services(tmp_path):
    config = DashboardConfig(models=("tiny-llama",), default_model="tiny-llama", nsamples=4, seqlen=32,
                             eval_seqlen=64, results_dir=tmp_path / "r", reproduce_dir=tmp_path / "t")
    services = DashboardServices(config)
    yield services
    services.close()


def _drawn(page: Dashboard, timeout: float = 120.0) -> None:
    """Wait for the page's latest curve request and draw it, as the page's periodic callback does."""
    deadline = time.monotonic() + timeout
    while page._pending is not None and not page._pending[1].done():
        assert time.monotonic() < deadline, "curves not computed in time"
        time.sleep(0.05)
    page._draw_pending()
    assert not page.message, page.message


def test_the_dashboard_draws_and_lists_one_value_per_unit(services):
    page = Dashboard(services)
    page.allocation = "owl"
    _drawn(page)
    assert page.curve_text.startswith("owl @ 0.7: ") and len(_trace(page.curve_figure, "owl").x) == 3
    page.controls().granularity = "sublayer"
    _drawn(page)
    expected = services.session("tiny-llama").profile("owl", 0.7, **page.controls().values())
    assert expected.granularity == "sublayer"
    trace = _trace(page.curve_figure, "owl")
    groups = _sublayer_groups(expected)
    assert list(trace.text) == list(groups)
    assert list(trace.x) == pytest.approx([-0.25, 0.25, 0.75, 1.25, 1.75, 2.25], abs=1e-12)
    assert list(trace.y) == pytest.approx([_weighted(expected, groups[u]) for u in groups], abs=1e-12)
    assert trace.line.width == 5 and trace.name.startswith("owl · sublayer")
    assert page.curve_text.startswith("owl @ 0.7, per sublayer: ")
    shown = [float(v) for v in page.curve_text.split(":")[1].split("(")[0].split()]
    assert shown == pytest.approx([_weighted(expected, groups[u]) for u in groups], abs=1e-4)
    assert len(shown) == 6
