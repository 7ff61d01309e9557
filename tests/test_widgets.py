"""Widgets driven programmatically: a control change redraws from the engine's numbers; a click adds a row."""

import json
import math

import pytest

from workbench import plots
from workbench.models import load_model
from workbench.runner import run
from workbench.session import Session
from workbench.spec import RunSpec
from workbench.widgets import PruneRunner, SearchMonitor, SparsityCurves


@pytest.fixture(scope="module")
def session():
    return Session("tiny-llama", nsamples=4, seqlen=64)


def _ys(fig):
    return {t.name.split(" ")[0]: list(t.y) for t in fig.data}


def test_curves_follow_the_sliders_and_match_the_allocators(session):
    curves = SparsityCurves(session, sparsity=0.7)
    # the readme preset has a NaN in every block of the random tiny model: refused, with the reason shown
    assert set(_ys(curves.figure)) == {"uniform", "owl"} and "dsa: " in curves.message.value
    curves.custom.value = json.dumps({"pre": ["abs"], "reduction": "std", "post": ["no_op"]})
    assert set(_ys(curves.figure)) == {"uniform", "owl", "dsa"}
    before = _ys(curves.figure)
    curves.sparsity.value = 0.5
    after = _ys(curves.figure)
    assert after["uniform"] == pytest.approx([0.5] * len(after["uniform"]))
    owl = session.profile("owl", 0.5, lam=0.08, M=5.0)
    assert after["owl"] == pytest.approx(list(owl.block_means().values()))
    assert after["owl"] != pytest.approx(before["owl"])
    curves.lam.value = 0.2  # OWL spreads further; uniform does not move
    wider = _ys(curves.figure)
    spread = max(wider["owl"]) - min(wider["owl"])
    assert spread > max(after["owl"]) - min(after["owl"]) + 1e-6
    assert wider["uniform"] == after["uniform"]
    assert "weighted mean" in curves.message.value and "owl 0.5000" in curves.message.value


def test_custom_dsa_function_and_bad_input_show_a_message_and_change_nothing(session, tmp_path):
    curves = SparsityCurves(session, sparsity=0.6)
    curves.custom.value = '{"pre": ["sigmoid"], "reduction": "l1", "post": ["sqrt"]}'
    expected = session.profile("dsa", 0.6, function={"pre": ["sigmoid"], "reduction": "l1", "post": ["sqrt"],
                                                    "lam": curves.lam.value})
    assert _ys(curves.figure)["dsa"] == pytest.approx(list(expected.block_means().values()))
    shown, params = _ys(curves.figure), curves.params("dsa")
    for typed, match in (('{"pre": [', "not valid JSON"), ('{"pre": ["cube_root"], "reduction": "var"}', "cube_root"),
                         ("no/such/function.json", "neither a preset"), ('{"lam": 0.9}', "lam")):
        curves.custom.value = typed
        assert match in curves.error.value and "nothing changed" in curves.error.value
        assert _ys(curves.figure) == shown and curves.params("dsa") == params
    for typed, match in (("1.5", "1.5 is out of range; allowed: [0.05, 0.95]"), ("abc", "'abc' is not a number")):
        curves.target_text.value = typed
        assert match in curves.error.value
        assert curves.sparsity.value == 0.6 and curves.target_text.value == "0.6" and _ys(curves.figure) == shown
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"pre": ["abs"], "reduction": "var", "post": ["no_op"], "lam": 0.05}))
    curves.custom.value = str(path)  # a function file: its own λ
    assert curves.error.value == "" and curves.params("dsa")["function"]["lam"] == 0.05
    curves.target_text.value = "0.4"  # typed: the slider follows and the curves redraw
    assert curves.sparsity.value == 0.4 and _ys(curves.figure)["uniform"] == pytest.approx([0.4] * 3)


def test_runner_click_adds_the_same_row_a_direct_run_gives(session, text_file):
    runner = PruneRunner(session, eval_seqlen=64)
    runner.allocation.value, runner.sparsity.value = "owl", 0.6
    runner.config = lambda: RunSpec.from_flat(model="tiny-llama", allocation="owl", sparsity=0.6, nsamples=4,
                                             seqlen=64, eval_dataset=str(text_file), eval_seqlen=64)
    runner.button.click()
    runner.wait(timeout=300)
    assert len(runner.rows) == 1 and "error" not in runner.rows[0]
    model, tok = load_model("tiny-llama")
    direct = run(runner.config(), model=model, tokenizer=tok, progress=False)
    assert runner.rows[0]["perplexity"] == pytest.approx(direct["metrics"]["perplexity"], rel=1e-6)
    assert runner.rows[0]["actual"] == pytest.approx(direct["metrics"]["actual_sparsity"])
    assert "<td>owl</td>" in runner.table.value
    runner.pattern.value = "2:4"  # invalid with OWL: a row with the error, the model stays usable
    runner.config = PruneRunner.config.__get__(runner)
    runner.start()
    runner.wait(timeout=300)
    assert len(runner.rows) == 2 and "allocation='uniform'" in runner.rows[1]["error"]
    assert not runner.button.disabled


def test_search_monitor_plots_best_so_far(tmp_path):
    """Steps at the candidate count where a better *full-fidelity* fitness became known; cheap-only
    records never move the curve, whatever their cheap fitness."""
    def rec(kind, full=None, at=None, cheap=1.0, valid=True):
        return {"kind": kind, "valid": valid, "cheap_fitness": cheap, "full_fitness": full, "full_at": at,
                "fitness": full if full is not None else cheap, "fidelity": "full" if full is not None else "cheap"}

    history = [rec("evolution", 50.0, 3), rec("evolution", cheap=0.01), rec("evolution", valid=False, cheap=None),
               rec("evolution", 60.0, 5), rec("evolution", 40.0, 9), rec("random", 45.0, 2), rec("random", 70.0, 4)]
    monitor = SearchMonitor(tmp_path)
    assert monitor.refresh() == 0 and len(monitor.figure.data) == 0
    (tmp_path / "history.json").write_text(json.dumps(history))
    assert monitor.refresh() == 7
    curves = {t.name: (list(t.x), list(t.y)) for t in monitor.figure.data}
    assert curves == {"evolution": ([3, 5, 9], [50.0, 50.0, 40.0]), "random": ([2, 4], [45.0, 45.0])}
    assert "evolution 40.000" in monitor.status.value


def test_search_monitor_shows_baselines_progress_and_eta(tmp_path):
    """Lines run on to the candidates scored; uniform/OWL as flat lines; the status counts what the x-axis
    shows and estimates the time left from the steps done."""
    history = [{"kind": "evolution", "valid": True, "full_fitness": f, "full_at": i + 1, "cheap_fitness": 1.0}
               for i, f in enumerate([30.0, 20.0])]
    history += [{"kind": "evolution", "valid": True, "full_fitness": None, "full_at": None, "cheap_fitness": 0.5}] * 4
    progress = {"phase": "evolution", "steps_done": 2, "steps": 8, "generation": 2, "generations": 4,
                "random_chunks": 0, "seconds": 90.0, "baselines": {"uniform": 300.0, "owl": 310.5}}
    (tmp_path / "history.json").write_text(json.dumps(history))
    (tmp_path / "progress.json").write_text(json.dumps(progress))
    monitor = SearchMonitor(tmp_path)
    assert monitor.refresh() == 6
    traces = {t.name: (list(t.x), list(t.y)) for t in monitor.figure.data}
    assert traces["evolution"] == ([1, 2, 6], [30.0, 20.0, 20.0])  # on to the 6 scored
    assert traces["uniform 300.00"] == ([0, 6], [300.0, 300.0]) and traces["owl 310.50"] == ([0, 6], [310.5, 310.5])
    status = monitor.status.value
    assert "step 2/8" in status and "evolution 6" in status and "elapsed 1:30" in status and "ETA 4:30" in status
    assert "uniform 300.000" in status and "held-out" not in status
    progress.update(phase="done", steps_done=8, heldout={"evolution": {"heldout_fitness": 21.25},
                                                          "uniform": {"heldout_fitness": 305.5}})
    (tmp_path / "progress.json").write_text(json.dumps(progress))
    monitor.refresh()
    assert "held-out: evolution 21.250, uniform 305.500" in monitor.status.value


def test_sparsity_curve_figure_is_the_block_means(session):
    owl = session.profile("owl", 0.7)
    fig = plots.sparsity_curves({"OWL": owl})
    assert list(fig.data[0].y) == list(owl.block_means().values())
    assert "mean 0.700" in fig.data[0].name and all(not math.isnan(v) for v in fig.data[0].y)


def test_a_besa_run_adds_its_learned_curve(session, text_file):
    curves = SparsityCurves(session, sparsity=0.5)
    runner = PruneRunner(session, curves=curves)
    runner.allocation.value, runner.sparsity.value = "besa", 0.5
    runner.config = lambda: RunSpec.from_flat(model="tiny-llama", allocation="besa", sparsity=0.5, nsamples=4,
                                             seqlen=64, eval_dataset=str(text_file), eval_seqlen=64)
    runner.start()
    runner.wait(timeout=300)
    assert "error" not in runner.rows[0], runner.rows[0]
    learned = runner.records[0]["profile"]
    ys = _ys(curves.figure)
    assert "besa" in ys and len(curves.figure.data) == 3  # uniform, owl, besa (readme is invalid on tiny)
    from workbench.profile import SparsityProfile

    learned_profile = SparsityProfile.from_dict(learned)
    # BESA learns rows: its curve has a point per linear, each the linear's weighted (row-averaged) sparsity
    assert ys["besa"] == pytest.approx(list(learned_profile.unit_means().values()))
    assert len(ys["besa"]) == len(learned_profile.layers) == 21
    block_of_points = {}  # the linears of each block together still reach the block means
    for name, value in zip(learned_profile.layers, ys["besa"], strict=True):
        acc = block_of_points.setdefault(learned_profile.blocks[name], [0.0, 0])
        acc[0] += value * learned_profile.numels[name]
        acc[1] += learned_profile.numels[name]
    assert [total / count for _b, (total, count) in sorted(block_of_points.items())] == pytest.approx(
        list(learned_profile.block_means().values()))


def test_what_the_curves_show_is_what_the_runner_prunes(session, text_file):
    """λ and M moved on the curves, a custom DSA function typed in: the runs use exactly those, on the
    curves' target, and prune to the plotted per-layer sparsities."""
    curves = SparsityCurves(session, sparsity=0.6)
    runner = PruneRunner(session, eval_seqlen=64, mode="dense", curves=curves, eval_dataset=str(text_file))
    curves.sparsity.value, curves.lam.value, curves.M.value = 0.65, 0.17, 7.0
    curves.granularity.value = "sublayer"
    assert runner.sparsity.value == 0.65 and runner.sparsity.disabled
    runner.allocation.value = "owl"
    assert runner.config().method.allocation.params() == {"lam": 0.17, "M": 7.0, "granularity": "sublayer"}
    runner.start()
    runner.wait(timeout=300)
    record = runner.records[-1]
    assert record["method"]["params"] == {"lam": 0.17, "M": 7.0, "granularity": "sublayer"}
    assert record["method"]["sparsity"] == 0.65 and record["profile"]["granularity"] == "sublayer"
    assert record["profile"]["layers"] == pytest.approx(curves.profiles["owl"].layers, abs=1e-12)
    assert "lam=0.17, M=7" in runner.table.value
    curves.custom.value = json.dumps({"pre": ["abs"], "reduction": "mean", "post": ["no_op"], "direction": -1})
    runner.allocation.value = "dsa"
    runner.start()
    runner.wait(timeout=300)
    record = runner.records[-1]
    assert record["method"]["params"]["function"]["lam"] == 0.17  # the λ slider, as the curve was drawn
    assert record["profile"]["layers"] == pytest.approx(curves.profiles["dsa"].layers, abs=1e-12)
    runner.allocation.value, runner.pattern.value = "uniform", "2:4"
    runner.start()
    runner.wait(timeout=300)
    assert runner.rows[-1]["target"] == "0.5 (2:4)" and runner.rows[-1]["actual"] == pytest.approx(0.5, abs=0.01)


def test_the_notebook_figure_keeps_the_full_layout(session):
    """The widget's FigureWidget shows the same axes, integer block ticks and theme as the static figure."""
    curves = SparsityCurves(session, sparsity=0.6)
    static = plots.sparsity_curves(curves.profiles)
    live = curves.figure.layout
    assert live.xaxis.title.text == "block" and live.yaxis.title.text == static.layout.yaxis.title.text
    assert live.xaxis.dtick == 1 and live.template.layout.paper_bgcolor == static.layout.template.layout.paper_bgcolor
    assert live.height == 420


def test_every_registered_allocator_can_be_plotted_and_runs_as_plotted(session):
    from workbench.allocation import allocation_names, curve_allocators, declared_defaults

    curves = SparsityCurves(session, sparsity=0.6)
    others = [n for n in curve_allocators() if n not in ("uniform", "owl", "dsa")]
    assert list(curves.others.options) == others and {"alphapruning", "dlp", "atp", "global"} <= set(others)
    curves.others.value = ("alphapruning", "atp")
    shown = _ys(curves.figure)
    for name in ("alphapruning", "atp"):
        assert curves.params(name) == declared_defaults(name)
        expected = session.profile(name, 0.6, **declared_defaults(name))
        assert shown[name] == pytest.approx(list(expected.block_means().values()))
    runner = PruneRunner(session, curves=curves)
    assert list(runner.allocation.options) == allocation_names()
    runner.allocation.value = "atp"
    assert runner.params() == {"beta": 0.01, "granularity": "block"}


def test_the_granularity_dropdown_redraws_every_curve_per_unit(session):
    curves = SparsityCurves(session, sparsity=0.6)
    curves.others.value = ("atp", "dlp")
    curves.granularity.value = "sublayer"
    owl = session.profile("owl", 0.6, lam=0.08, M=5.0, granularity="sublayer")
    dlp = session.profile("dlp", 0.6, granularity="sublayer")
    shown = {t.name.split(" ")[0]: t for t in curves.figure.data}
    assert list(shown["owl"].y) == pytest.approx(list(owl.unit_means().values()))
    assert list(shown["dlp"].y) == pytest.approx(list(dlp.unit_means().values()))
    assert len(shown["owl"].y) == 2 * len(owl.block_means())  # attention and MLP of each block
    assert curves.params("owl")["granularity"] == "sublayer" and curves.profiles["uniform"].granularity == "sublayer"
    # ATP has no unit below the block: drawn per block, and the page says so
    assert curves.profiles["atp"].granularity == "block" and "atp: drawn per block" in curves.message.value
    assert "granularity" not in curves.params("atp") or curves.params("atp")["granularity"] == "block"
    curves.granularity.value = "projection"
    assert len(curves.profiles["owl"].unit_means()) == len(owl.layers)


def test_runner_quantizes_as_its_controls_say(session):
    """wbits / group / quantizer go into the run; the row shows them and the record's bits per weight."""
    runner = PruneRunner(session, eval_seqlen=64, mode="dense")
    runner.wbits.value, runner.group_size.value, runner.quant_method.value = 4, 32, "rtn"
    spec = runner.config()
    assert (spec.method.wbits, spec.method.group_size, spec.method.quant_method) == (4, 32, "rtn")
    runner.start()
    runner.wait(timeout=300)
    row = runner.rows[-1]
    assert "error" not in row and row["wbits"] == "4 (32, rtn)"
    assert 0 < row["bits/weight"] < 4 + 1 + 1  # values at 4 bits on the kept half, the mask, the group grids
    runner.wbits.value = 16
    assert runner.config().method.wbits == 16
