"""The typed run specification, the one runner, the plan and the refusal/bug split (issue 34)."""

import argparse
import json

import pytest
import yaml

from workbench import cli
from workbench.allocation import ALLOCATORS, LEARNERS, allocation_names, check_allocator
from workbench.errors import WorkbenchError
from workbench.models import load_model, structure
from workbench.plan import Plan, execute
from workbench.prune import prune
from workbench.reproduce import RUN_FIELDS
from workbench.results import RunRecord
from workbench.search import SearchConfig
from workbench.spec import ALLOCATION_MODELS, FLAT, MethodSpec, RunSpec, field_help


def test_sections_refuse_unknown_settings_naming_the_section_and_the_closest():
    with pytest.raises(WorkbenchError, match=r"^method\.metricc is not a setting; allowed in method: .*"
                                             r"did you mean 'metric'"):
        RunSpec.model_validate({"method": {"metricc": "wanda"}})
    with pytest.raises(WorkbenchError, match=r"'calib_datset' is not a run setting.*did you mean 'calib_dataset'"):
        RunSpec.from_flat(calib_datset="embedded")
    with pytest.raises(WorkbenchError, match=r"^placement\.activations='gpu' is not allowed"):
        RunSpec.model_validate({"placement": {"activations": "gpu"}})
    with pytest.raises(WorkbenchError, match=r"allocation='owl' has no parameter 'lamm'.*did you mean 'lam'"):
        RunSpec.from_flat(allocation="owl", alloc_params={"lamm": 0.1})
    with pytest.raises(WorkbenchError, match=r"^popilation is not a setting; allowed in SearchConfig"):
        SearchConfig(popilation=3)


def test_a_spec_is_frozen_and_round_trips_nested_and_flat():
    spec = RunSpec.from_flat(model="tiny-llama", allocation="dlp", alloc_params={"alpha": 0.1}, sparsity=0.6,
                             onload=True, activations="cpu", save="out", format="compressed", evals=["ppl"])
    with pytest.raises(Exception, match="frozen"):
        spec.method.sparsity = 0.1
    assert spec.method.allocation.name == "dlp" and spec.method.allocation.params() == {"alpha": 0.1}
    assert spec.placement.placed and spec.save.format == "compressed"
    assert RunSpec.model_validate(json.loads(json.dumps(spec.to_dict()))) == spec
    assert RunSpec.from_yaml(spec.to_yaml()) == spec and yaml.safe_load(spec.to_yaml())["method"]["sparsity"] == 0.6
    assert RunSpec.from_flat(spec.flat()) == spec
    assert spec.flat()["alloc_params"] == {"alpha": 0.1} and spec.flat()["offload_dir"] is None
    assert RunSpec.from_flat(spec.flat(), sparsity=0.7) != spec


def test_each_allocation_model_is_generated_from_the_allocators_declarations():
    assert list(ALLOCATION_MODELS) == ["dense", *allocation_names()]
    for name in allocation_names():
        model, allocator = ALLOCATION_MODELS[name], check_allocator(name)
        fields = {k: v for k, v in model.model_fields.items() if k != "name"}
        assert list(fields) == [p.name for p in allocator.public_params()], name
        for param in allocator.public_params():
            assert fields[param.name].default == param.default and fields[param.name].description == param.help
    assert "besa" in LEARNERS and "besa" not in ALLOCATORS  # a learner is an allocation, not a flagged allocator


def test_the_auto_tuning_and_placement_checks_happen_when_the_spec_is_built(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("words " * 100)
    with pytest.raises(WorkbenchError, match="eval_dataset"):  # tuning reads a validation split the file lacks
        RunSpec.from_flat(allocation="owl", alloc_params={"lam": "auto"}, eval_dataset=str(text))
    with pytest.raises(WorkbenchError, match="zero-shot accuracy needs the model in memory"):
        RunSpec.from_flat(onload=True, evals=["zero-shot"])
    with pytest.raises(WorkbenchError, match="mode='dense': an onloaded or streamed model"):
        RunSpec.from_flat(activations="cpu", mode="dense")
    with pytest.raises(WorkbenchError, match="format='sparse-24-bitmask' needs a 2:4 profile"):
        RunSpec.from_flat(save=str(tmp_path), format="sparse-24-bitmask")


def test_grids_and_notebooks_take_every_run_setting_including_placement():
    assert set(RUN_FIELDS) == set(FLAT) - {"model", "evals"}
    assert {"onload", "offload_dir", "activations", "save", "format"} <= set(RUN_FIELDS)


def test_the_cli_flags_are_generated_from_the_spec():
    parser = cli.build_parser()
    prune_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["prune"]
    flags = {a.dest: a for a in prune_parser._actions}
    for name in cli.PRUNE_ARGS:
        action = flags[name]
        assert field_help(name) in action.help, name
        assert action.default is None or name in cli.MODEL_ARGS  # unset flags leave the spec's defaults
    args = parser.parse_args(["prune", "--model", "tiny-llama", "--allocation", "owl", "--alloc-param", "lam=0.1",
                              "--onload", "--activations", "cpu"])
    spec = cli.prune_spec(args)
    assert spec.method.allocation.params() == {"lam": 0.1} and spec.placement.onload
    assert spec.evaluation.evals == () and spec.method.sparsity == MethodSpec().sparsity
    search = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["search"]
    search_flags = {a.dest: a for a in search._actions}
    for name, info in SearchConfig.model_fields.items():
        if name != "random_baseline":
            assert info.description in search_flags[name].help and f"default {info.default}" in search_flags[name].help


def test_a_refusal_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, tmp_path, capsys):
    assert cli.main(["prune", "--model", "tiny-llama", "--metric", "wandaa", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: metric='wandaa' is not allowed") and err.count("\n") == 1
    assert not (tmp_path / "r.json").exists()

    import workbench.runner as runner_mod

    def broken(*_a, **_k):
        raise KeyError("a bug deep inside")

    monkeypatch.setattr(runner_mod, "run", broken)
    with pytest.raises(KeyError, match="a bug deep inside"):
        cli.main(["prune", "--model", "tiny-llama", "--out", str(tmp_path / "r.json")])


def test_the_runner_record_is_the_typed_record_and_carries_the_spec():
    from workbench.runner import run

    spec = RunSpec.from_flat(model="tiny-llama", allocation="owl", sparsity=0.5, nsamples=2, seqlen=32,
                             evals=["ppl"], eval_seqlen=512)
    record = run(spec, progress=False)
    assert set(record) <= set(RunRecord.__annotations__)
    assert RunSpec.model_validate(record["spec"]) == spec and record["config"] == spec.flat()
    assert record["method"]["allocation"] == "owl" and record["metrics"]["perplexity"] > 1


def test_a_plan_says_per_unit_what_is_pruned_and_execute_does_exactly_that():
    """An allocator's plan is known before pruning; executing it prunes each unit to its planned sparsity,
    the same masks as prune(); a learner's plan exists only after the loop has run."""
    from workbench.data import calibration_samples
    from workbench.offload import Residency

    model, tok = load_model("tiny-llama")
    calib = calibration_samples(tok, "embedded", 2, 32)
    ref = prune(model, tok, metric="wanda", allocation="er", sparsity=0.6, calibration=calib, progress=False)
    fresh, _ = load_model("tiny-llama")
    layout = structure(fresh)
    plan = Plan.from_profile(ref.profile, "wanda", (0, 0), None, "sequential", ("sq_norm",))
    units = plan.units(layout)
    assert [u.name for u in units] == list(layout.linears) and len({u.sparsity for u in units}) > 1
    assert all(u.sparsity == ref.profile.layers[u.name] for u in units)
    execute(plan, layout, fresh, calib, None, Residency(), progress=False)
    for name, lin in layout.linears.items():
        assert lin.weight.eq(0).equal(model.get_submodule(name).weight.eq(0)), name

    learner = prune(load_model("tiny-llama")[0], tok, metric="wanda", allocation="besa", sparsity=0.5,
                    calibration=calib, allocation_params={"epochs": 1}, progress=False)
    assert learner.profile.allocator == "besa" and learner.timings["learn_s_per_block"] > 0


def test_prune_takes_a_method_spec_or_keyword_settings_not_both():
    model, tok = load_model("tiny-llama")
    with pytest.raises(WorkbenchError, match="not both"):
        prune(model, tok, MethodSpec(), metric="wanda")
    with pytest.raises(WorkbenchError, match="metric='x' is not allowed"):
        prune(model, tok, metric="x")


def test_a_record_says_which_cpu_kernels_and_how_many_threads_computed_it(monkeypatch):
    """Float results differ between CPUs (instruction set) and thread counts: the record names both, as set now."""
    import torch

    from workbench import results

    monkeypatch.setattr(results, "cpu_model", lambda: "Test CPU 9000")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = results.make_record("prune", {"id": "m"}, {}, {})["platform"]
        torch.set_num_threads(2)
        two = results.make_record("prune", {"id": "m"}, {}, {})["platform"]
    finally:
        torch.set_num_threads(before)
    assert (one["torch_threads"], two["torch_threads"]) == (1, 2)
    assert one["cpu"] == "Test CPU 9000"
    assert one["cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""


def test_the_cpu_model_is_read_from_proc_cpuinfo_where_linux_has_it(tmp_path, monkeypatch):
    from workbench import results

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Example EPYC 7000\nflags\t: sse\n")
    real_path = results.Path
    monkeypatch.setattr(results, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
    assert results.cpu_model() == "Example EPYC 7000"
