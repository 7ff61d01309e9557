"""No traceback on any input (property-based, hypothesis): every generated run specification, CLI command
line, allocation-function JSON and grid YAML is either accepted (and runs on the tiny model) or refused with
a one-line ``WorkbenchError`` that names the parameter; a refused command writes nothing. An accepted run
specification round-trips through JSON, YAML and its flat form unchanged."""

import contextlib
import io
import json
import math

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from workbench.allocation import ALLOCATORS, allocation_names, declared_defaults
from workbench.allocation.dsa import ops
from workbench.allocation.dsa.function import AllocationFunction, InvalidFunction, load_function
from workbench.cli import main as cli_main
from workbench.errors import WorkbenchError
from workbench.models import load_model
from workbench.reproduce import expand, load_grid
from workbench.runner import run
from workbench.spec import FLAT, RunSpec

# bounded and deterministic: the default run stays fast and a failure reproduces
# (no shrinking phase: a failing example is printed as found, and a red run cannot take minutes to shrink)
PHASES = (Phase.explicit, Phase.reuse, Phase.generate)
FAST = settings(max_examples=60, deadline=None, derandomize=True, phases=PHASES,
                suppress_health_check=list(HealthCheck))
RUNS = settings(max_examples=12, deadline=None, derandomize=True, phases=PHASES,
                suppress_health_check=list(HealthCheck))

junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=8), st.lists(st.integers(0, 3), max_size=3),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
CONFIG_FIELDS = tuple(name for name in FLAT if name != "model")  # every run setting but the model
PLAUSIBLE = {
    "metric": st.sampled_from(["magnitude", "wanda", "sparsegpt", "Wanda", "obs"]),
    "allocation": st.sampled_from([*allocation_names(), "dense", "owl2", ""]),
    "sparsity": st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 0.5, 0.7, 0.999, 1.0])),
    "pattern": st.sampled_from(["unstructured", "2:4", "4:8", "4:4", "0:4", "2:x", "2:4:8", "1:3"]),
    "alloc_params": st.dictionaries(st.sampled_from(["lam", "M", "lamda", "beta", "epsilon", "alpha", "granularity",
                                                     "function", "sigmoid", "score", "cap"]),
                                    st.one_of(st.floats(-2, 2), st.integers(-3, 20), st.sampled_from(
                                        ["auto", "row", "layer", "block", "readme", "wanda", "yes"])), max_size=2),
    "mode": st.sampled_from(["sequential", "dense", "seq"]),
    "group": st.sampled_from([None, "row", "matrix", "column"]),
    "nsamples": st.one_of(st.none(), st.integers(-2, 4)),
    "seqlen": st.one_of(st.none(), st.integers(-2, 80)),
    "evals": st.sampled_from([(), ("ppl",), ("ppl", "ppl"), ("acc",)]),
    "eval_seqlen": st.one_of(st.none(), st.integers(-2, 80)),
    "limit": st.one_of(st.none(), st.integers(-2, 5)),
    "zs_batch_size": st.integers(-1, 9),
    "dtype": st.sampled_from(["float32", "fp32", "int8", "bfloat16"]),
    "device": st.sampled_from(["cpu", "gpu", "cuda:x"]),
    "seed": st.integers(-3, 3),
    "activations": st.sampled_from([None, "device", "cpu", "disk", "gpu"]),
    "onload": st.sampled_from([False, True, "yes"]),
    "format": st.sampled_from(["dense", "compressed", "sparse-24-bitmask", "zip"]),
    "wbits": st.sampled_from([16, 8, 4, 3, 2, 1, 5, 32, "4"]),
    "group_size": st.sampled_from([None, 0, -1, 32, 64, 100, 128, 4096]),
    "quant_method": st.sampled_from(["rtn", "gptq", "gptq-after", "learned", "awq", ""]),
    "symmetric": st.sampled_from([False, True, "yes"]),
    "calib_images": st.sampled_from([[], "missing.png", ["missing.png"], [3]]),
    "calib_dataset": st.sampled_from(["sotu", "embedded", "wikitext2", "no-such-set"]),
    "eval_dataset": st.sampled_from(["sotu", "embedded", "c4", "no-such-set"]),
}


def _one_line_naming(err: Exception, names) -> bool:
    text = str(err)
    return "\n" not in text.strip() and any(n in text for n in names)


def _config_kwargs():
    """Field values: mostly plausible (valid or near-valid), sometimes any junk of any type."""
    fields = {name: st.one_of(PLAUSIBLE[name], junk) if name in PLAUSIBLE else junk for name in CONFIG_FIELDS}
    return st.fixed_dictionaries({}, optional=fields)


@FAST
@given(_config_kwargs())
def test_experiment_config_accepts_or_names_the_parameter(kwargs):
    try:
        config = RunSpec.from_flat(model="tiny-llama", **kwargs)
    except WorkbenchError as err:
        params = kwargs.get("alloc_params")
        keys = [str(k) for k in params] if isinstance(params, dict) else []
        assert _one_line_naming(err, [*CONFIG_FIELDS, *keys, "allocation"]), err
        return
    # accepted: every field is what a run can use, and the spec round-trips unchanged
    method = config.method
    if method.prunes and method.pattern == "unstructured":
        assert 0 <= method.sparsity < 1 and math.isfinite(method.sparsity)
    assert RunSpec.model_validate_json(config.model_dump_json()) == config
    assert RunSpec.from_yaml(config.to_yaml()) == config
    assert RunSpec.model_validate(json.loads(json.dumps(config.to_dict()))) == config
    assert RunSpec.from_flat(config.flat()) == config
    for name, value in kwargs.items():  # the flat form says what was given
        if name != "alloc_params" and isinstance(value, str | int | float) and not isinstance(value, bool):
            assert config.flat()[name] == value or name in ("sparsity",), (name, value, config.flat()[name])


_TINY = {}


def _tiny():
    if not _TINY:
        _TINY["model"] = load_model("tiny-llama")
    return _TINY["model"]


@RUNS
@given(st.fixed_dictionaries({
    "metric": st.sampled_from(["magnitude", "wanda", "sparsegpt"]),
    "allocation": st.sampled_from([a for a in ALLOCATORS if a != "besa"]),
    "sparsity": st.floats(0.0, 0.95),
    "mode": st.sampled_from(["sequential", "dense"]),
    # long evaluation windows: the whole embedded test text is evaluated, few windows keep an example fast
    "nsamples": st.integers(1, 3), "seqlen": st.integers(8, 48), "eval_seqlen": st.sampled_from([512, 1024]),
}))
def test_an_accepted_config_runs_on_the_tiny_model(kwargs):
    try:
        config = RunSpec.from_flat(model="tiny-llama", **kwargs)
    except WorkbenchError as err:
        assert _one_line_naming(err, [*CONFIG_FIELDS, "allocation"]), err
        return
    model, tok = _tiny()
    fresh, _ = load_model("tiny-llama")
    model.load_state_dict(fresh.state_dict())
    try:
        record = run(config, model=model, tokenizer=tok, progress=False)
    except WorkbenchError as err:  # a property of the data (e.g. a DSA function degenerate on these scores)
        assert _one_line_naming(err, ["allocation", "function", "sparsity", "seqlen", "nsamples"]), err
        return
    report = record["sparsity_report"]
    assert abs(report["allocated_mean"] - config.method.sparsity) < 1e-3 or \
        config.method.allocation.name.startswith("global")
    assert math.isfinite(record["metrics"]["perplexity"])


# --------------------------------------------------------------------------- CLI command lines

FLAGS = {
    "--metric": st.sampled_from(["wanda", "magnitude", "sparsegpt", "wandaa", ""]),
    "--allocation": st.sampled_from([*allocation_names(), "dense", "xyz"]),
    "--sparsity": st.sampled_from(["0.5", "0.7", "1", "-0.1", "nan", "inf", "abc", "0.5.5"]),
    "--pattern": st.sampled_from(["unstructured", "2:4", "3:3", "a:b", "2:5"]),
    "--alloc-param": st.sampled_from(["lam=0.08", "lamda=0.1", "M=5", "M=-1", "beta=auto", "=3", "lam", "x=y=z",
                                      "epsilon=0", "granularity=row", "function=nosuch"]),
    "--granularity": st.sampled_from(["row", "layer", "block", "x"]),
    "--mode": st.sampled_from(["sequential", "dense", "fast"]),
    "--group": st.sampled_from(["row", "matrix", "col"]),
    "--nsamples": st.sampled_from(["1", "2", "0", "-1", "x"]),
    "--seqlen": st.sampled_from(["16", "32", "0", "1", "99999999"]),
    "--eval-seqlen": st.sampled_from(["16", "0", "-4"]),
    "--calib-dataset": st.sampled_from(["embedded", "nosuch.txt", "c4x"]),
    "--dtype": st.sampled_from(["float32", "int4"]),
    "--device": st.sampled_from(["cpu", "tpu"]),
}


@FAST
@given(st.dictionaries(st.sampled_from(sorted(FLAGS)), st.none(), max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: FLAGS[k] for k in keys})))
def test_cli_prune_accepts_or_prints_one_error_line(tmp_path_factory, flags):
    out = tmp_path_factory.mktemp("cli")
    argv = ["prune", "--model", "tiny-llama", "--out", str(out / "r.json")]
    flags.setdefault("--nsamples", "1")
    flags.setdefault("--seqlen", "16")
    for flag, value in flags.items():
        argv += [flag, value]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(argv)
        except SystemExit as exc:  # argparse: usage + one error line
            code = exc.code
    lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
    if code == 0:
        assert (out / "r.json").is_file()
        return
    assert code == 2, (argv, stderr.getvalue())
    errors = [line for line in lines if line.startswith("error:") or ": error:" in line]
    assert len(errors) == 1 and "Traceback" not in stderr.getvalue(), (argv, stderr.getvalue())
    assert not any(out.iterdir()), f"a refused command wrote {list(out.iterdir())}"


# --------------------------------------------------------------------------- allocation-function JSON

stage_ops = st.lists(st.sampled_from([*ops.PRE, "no_op", "sqrt2", ""]), min_size=0, max_size=4)
function_dicts = st.fixed_dictionaries({}, optional={
    "pre": st.one_of(stage_ops, junk), "reduction": st.one_of(st.sampled_from([*ops.REDUCTIONS, "mode"]), junk),
    "post": st.one_of(stage_ops, junk), "lam": st.one_of(st.floats(-1, 1), junk),
    "direction": st.one_of(st.sampled_from([1, -1, 0]), junk), "nonfinite": st.one_of(st.text(max_size=6), junk),
    "extra": junk})


@FAST
@given(st.one_of(function_dicts, junk))
def test_function_json_is_a_function_or_a_named_error(data):
    text = json.dumps(data, allow_nan=True)
    try:
        fn = load_function(text)
    except WorkbenchError as err:  # InvalidFunction is a WorkbenchError
        names = ["function", "pre", "post", "reduction", "lam", "direction", "nonfinite", "fields", "allocation"]
        assert _one_line_naming(err, names), err
        return
    assert isinstance(fn, AllocationFunction)
    assert AllocationFunction.from_json(fn.to_json()) == fn


@RUNS
@given(function_dicts, st.floats(0.3, 0.8))
def test_a_valid_function_allocates_the_target_or_says_why(data, sparsity):
    from workbench.allocation import AllocationInput, allocate
    from workbench.calibrate import calibrate
    from workbench.data import calibration_samples
    from workbench.models import layer_infos
    from workbench.pruners import layer_scores

    try:
        fn = AllocationFunction.from_dict(data)
    except WorkbenchError:
        return
    model, tok = _tiny()
    if "stats" not in _TINY:
        _TINY["stats"] = calibrate(model, calibration_samples(tok, "embedded", 2, 32).input_ids, "dense",
                                   progress=False)
    stats = _TINY["stats"]
    linears = dict(model.named_modules())
    inputs = AllocationInput(layer_infos(model), lambda n: layer_scores("wanda", linears[n].weight, stats[n]))
    try:
        profile = allocate("dsa", inputs, sparsity, function=fn.to_dict())
    except InvalidFunction as err:
        assert "\n" not in str(err).strip()
        return
    assert abs(profile.mean() - sparsity) < 1e-4
    assert all(0 <= s < 1 for s in profile.layers.values())


# --------------------------------------------------------------------------- grid YAML

grid_methods = st.lists(st.fixed_dictionaries({"label": st.text("abc ", min_size=1, max_size=5)}, optional={
    "allocation": st.sampled_from([*ALLOCATORS, "nosuch"]), "metric": st.sampled_from(["wanda", "foo"]),
    "sparsity": junk, "sparsities": st.one_of(st.lists(st.floats(-1, 2), max_size=2), junk),
    "alloc_params": st.one_of(st.dictionaries(st.sampled_from(["lam", "M", "beta", "bad"]), st.floats(0, 1),
                                              max_size=1), junk),
    "nsamples": junk, "colour": junk}), max_size=3)
grids = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.text("abc", min_size=1, max_size=4), junk), "model": st.sampled_from(["tiny-llama"]),
    "defaults": st.one_of(st.dictionaries(st.sampled_from(["metric", "seqlen", "mode", "speed"]),
                                          st.one_of(st.sampled_from(["wanda", "dense", "sequential"]), junk),
                                          max_size=2), junk),
    "perplexity": st.one_of(st.fixed_dictionaries({"methods": grid_methods},
                                                  optional={"sparsities": st.lists(st.floats(0, 0.9), max_size=2),
                                                            "dense": st.booleans()}), junk),
    "zeroshot": junk, "extra": junk})


@FAST
@given(st.one_of(grids, junk))
def test_grid_yaml_is_runs_or_a_named_error(tmp_path_factory, grid):
    path = tmp_path_factory.mktemp("grid") / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    try:
        runs = expand(load_grid(path))
    except WorkbenchError as err:
        assert "\n" not in str(err).strip(), err
        assert "grid" in str(err) or any(k in str(err) for k in (*CONFIG_FIELDS, "methods", "label")), err
        return
    for entry in runs:  # every accepted run is a valid run specification
        params = {k: v for k, v in entry.params.items() if k in CONFIG_FIELDS}
        RunSpec.from_flat(model="tiny-llama", **params)


def test_declared_defaults_make_valid_configs():
    """The registry's defaults are accepted for every allocator (the strategies above build on them)."""
    for name in allocation_names():
        RunSpec.from_flat(model="tiny-llama", allocation=name, alloc_params=declared_defaults(name))


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-x", "-q"])


@pytest.mark.parametrize("field", ["calib_dataset", "eval_dataset"])
def test_an_unknown_dataset_is_refused_under_its_own_field_name(field):
    # found by the property test above (hypothesis drew eval_dataset='\x92...'): the error said "dataset="
    with pytest.raises(WorkbenchError, match=rf"^{field}='no-such-text' is neither a known dataset \["):
        RunSpec.from_flat(model="tiny-llama", **{field: "no-such-text"})
