"""The fast demo: one calibration shared by the dense-mode runs, tables that state their protocol, resumable."""

import json

import pytest

from workbench.demo import DemoConfig, run_demo
from workbench.runner import check_cache, run
from workbench.session import Session
from workbench.spec import RunSpec

VALID_ON_TINY = {"pre": ["abs"], "reduction": "mean", "post": ["no_op"], "lam": 0.05, "direction": 1}
METHODS = (("uniform", "uniform", {}), ("OWL", "owl", {"lam": 0.08, "M": 5}),
           ("DSA", "dsa", {"function": VALID_ON_TINY}), ("BESA (row)", "besa", {"granularity": "row"}))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    config = DemoConfig(model="tiny-llama", sparsities=(0.5,), nsamples=4, seqlen=64, besa_nsamples=2,
                        eval_seqlen=64, limit=4, methods=METHODS)
    return config, out, run_demo(config, out, progress=False)


def test_every_run_finishes_and_feeds_both_tables(demo):
    config, _out, result = demo
    assert result["failed"] == []
    assert [r["run"]["label"] for r in result["records"]] == ["dense", "uniform", "OWL", "DSA", "BESA (row)"]
    ppl, zs = result["tables"]["perplexity"], result["tables"]["zeroshot"]
    for table in (ppl, zs):
        assert config.protocol() in table and "dense mode" in table
    for label in ("uniform", "OWL", "DSA", "BESA (row)"):
        assert f"| {label} |" in ppl and f"| {label} | 50% |" in zs
    assert (demo[1] / "tables" / "sparsity_curves.html").exists()


def test_dense_mode_runs_share_one_calibration_and_match_a_standalone_run(demo):
    config, _out, result = demo
    runs = {r["run"]["label"]: r for r in result["records"]}
    for label in ("uniform", "OWL", "DSA"):
        assert runs[label]["timings"]["forward_s"] == 0.0  # pruned from the session's statistics
        assert runs[label]["method"]["mode"] == "dense"
    assert runs["BESA (row)"]["method"]["mode"] == "sequential" and runs["BESA (row)"]["timings"]["forward_s"] > 0
    # an independent path: a fresh model, its own dense-mode calibration, the same settings
    standalone = run(RunSpec.from_flat(model="tiny-llama", allocation="owl", sparsity=0.5,
                                                 alloc_params={"lam": 0.08, "M": 5}, mode="dense", nsamples=4,
                                                 seqlen=64, eval_seqlen=64), progress=False)
    assert standalone["timings"]["forward_s"] > 0
    assert runs["OWL"]["metrics"]["perplexity"] == pytest.approx(standalone["metrics"]["perplexity"], rel=1e-6)
    assert runs["OWL"]["profile"]["layers"] == pytest.approx(standalone["profile"]["layers"], abs=1e-12)


def test_a_second_run_keeps_finished_records(demo):
    config, out, result = demo
    before = {r["run"]["id"]: r["created"] for r in result["records"]}
    again = run_demo(config, out, progress=False)
    assert {r["run"]["id"]: r["created"] for r in again["records"]} == before
    stored = json.loads((out / "demo-owl-0.5" / "result.json").read_text())
    assert stored["metrics"] == next(r for r in result["records"] if r["run"]["label"] == "OWL")["metrics"]


def test_a_cache_of_another_calibration_is_refused():
    session = Session("tiny-llama", nsamples=4, seqlen=64)
    other = RunSpec.from_flat(model="tiny-llama", allocation="uniform", sparsity=0.5, mode="dense", nsamples=8,
                             seqlen=64, eval_seqlen=64)
    with pytest.raises(ValueError, match="cache"):
        check_cache(other, session.cache)
    record = session.run(other)  # the session does not use it: its own calibration is not the run's
    assert record["timings"]["forward_s"] > 0
    assert record["data"]["calibration"]["nsamples"] == 8
