"""OWL and DSA allocators, allocation functions as data, and the evolutionary search."""

import json
import math
import re

import pytest
import torch

from workbench import calibrate as calibrate_mod
from workbench.allocation import AllocationInput, allocate
from workbench.allocation.dsa import ops
from workbench.allocation.dsa.function import PRESETS, AllocationFunction, InvalidFunction, load_function
from workbench.allocation.mapping import map_to_sparsity
from workbench.data import calibration_samples
from workbench.models import load_model, prunable_linears
from workbench.prune import DenseCache, prune
from workbench.search import Search, SearchConfig, SearchContext
from workbench.units import LayerInfo

LOD = [3.0, 7.5, 1.0, 12.0, 5.0, 9.0]


def _closed_form(lod, s, lam):
    lo, hi = min(lod), max(lod)
    m = [(x - lo) / (hi - lo) for x in lod]
    mean = sum(m) / len(m)
    return [s - 2 * lam * (x - mean) for x in m]


@pytest.mark.parametrize("clamp", ["reference", "safe"])
@pytest.mark.parametrize("s,lam", [(0.5, 0.08), (0.7, 0.08), (0.6, 0.2)])
def test_owl_mapping_equals_the_closed_form(clamp, s, lam):
    got = map_to_sparsity(LOD, s, lam, direction=-1, clamp=clamp)
    assert got == pytest.approx(_closed_form(LOD, s, lam), abs=1e-9)
    assert max(got) - min(got) == pytest.approx(2 * lam)


def test_default_direction_prunes_larger_values_more_and_bad_arguments_are_named():
    got = map_to_sparsity(LOD, 0.5, 0.08)  # direction +1: s + 2λ(x − mean)
    assert got == pytest.approx([2 * 0.5 - v for v in _closed_form(LOD, 0.5, 0.08)], abs=1e-9)
    with pytest.raises(ValueError, match=r"^clamp='tight' is not allowed; allowed: \['safe', 'reference'\]$"):
        map_to_sparsity(LOD, 0.5, 0.08, clamp="tight")
    with pytest.raises(ValueError, match=r"^direction=2 must be 1 or -1$"):
        map_to_sparsity(LOD, 0.5, 0.08, direction=2)


def test_reference_clamp_only_raises_zero_to_0_01_and_refuses_ones():
    got = map_to_sparsity(LOD, 0.05, 0.1, direction=-1, clamp="reference")
    expected = [0.01 if v <= 0 else v for v in _closed_form(LOD, 0.05, 0.1)]
    assert got == pytest.approx(expected) and 0.01 in got
    with pytest.raises(ValueError, match="lam=0.3.*no valid allocation"):
        map_to_sparsity(LOD, 0.9, 0.3, direction=-1, clamp="reference")


@pytest.mark.parametrize("s,lam", [(0.05, 0.2), (0.95, 0.3), (0.7, 0.08)])
def test_safe_clamp_keeps_the_weighted_mean(s, lam):
    weights = [1, 2, 3, 1, 2, 5]
    got = map_to_sparsity(LOD, s, lam, direction=-1, weights=weights)
    assert all(0.0 <= v <= 0.99 for v in got)
    assert sum(w * v for w, v in zip(weights, got, strict=True)) / sum(weights) == pytest.approx(s, abs=1e-6)


def _inputs_with_lod(outliers_per_block, numel=1000, m=5.0):
    """Blocks of two 10x50 layers whose scores are 1 except ``k`` entries of 1000 (each > M·mean)."""
    layers, table = {}, {}
    for b, k in enumerate(outliers_per_block):
        for part in ("a", "b"):
            name = f"b{b}.{part}"
            layers[name] = LayerInfo(name, b, 10, 50)
            t = torch.ones(10, 50)
            t.view(-1)[: k // 2 if part == "a" else k - k // 2] = 1000.0
            table[name] = t
    return AllocationInput(layers, table.__getitem__)


def test_owl_allocator_computes_lod_and_maps_it():
    counts = [2, 10, 6, 0]
    prof = allocate("owl", _inputs_with_lod(counts), 0.6, lam=0.1, M=5)
    lod = [100 * k / 1000 for k in counts]
    assert prof.params["lod"] == pytest.approx(lod)
    expected = _closed_form(lod, 0.6, 0.1)
    assert list(prof.block_means().values()) == pytest.approx(expected)
    assert prof.layers["b1.a"] == prof.layers["b1.b"]  # one ratio per block
    per_layer = allocate("owl", _inputs_with_lod(counts), 0.6, lam=0.1, M=5, granularity="layer")  # older name
    assert per_layer.granularity == "projection" and per_layer.mean() == pytest.approx(0.6, abs=1e-6)


def test_reallocation_reuses_derived_statistics_and_equals_a_fresh_one():
    """A redraw at another target or λ must not pass over the scores again (LOD, DSA block values memoised)."""
    counts = [2, 10, 6, 0]
    inputs = _inputs_with_lod(counts)
    readme = AllocationFunction(("no_op",), "var", ("asin",), 0.08, 1)  # asin of a variance > 1: invalid
    valid = AllocationFunction(("abs",), "std", ("no_op",), 0.08, 1)
    allocate("owl", inputs, 0.6, lam=0.1, M=5)
    allocate("dsa", inputs, 0.6, function=valid)
    with pytest.raises(InvalidFunction):
        allocate("dsa", inputs, 0.6, function=readme)
    table = {n: inputs.scores(n) for n in inputs.layers}
    inputs.scores = lambda name: pytest.fail(f"scores of {name} read again")
    for s, lam in ((0.5, 0.05), (0.7, 0.12)):
        fresh = _inputs_with_lod(counts)
        assert allocate("owl", inputs, s, lam=lam, M=5).layers == allocate("owl", fresh, s, lam=lam, M=5).layers
        other = {**valid.to_dict(), "lam": lam}
        assert allocate("dsa", inputs, s, function=other).layers == \
            allocate("dsa", fresh, s, function=other).layers
        with pytest.raises(InvalidFunction):  # the invalid verdict is remembered, not turned into a profile
            allocate("dsa", inputs, s, function=readme)
    inputs.scores = table.__getitem__
    with pytest.raises(ValueError, match="constant"):  # another M is another LOD (here all 0): computed afresh
        allocate("owl", inputs, 0.6, lam=0.1, M=500)


@pytest.mark.parametrize("kwargs,match", [(dict(lam=-0.1), "lam=-0.1"), (dict(M=0), "M=0"), (dict(M=-2), "M=-2"),
                                          (dict(clamp="soft"), "clamp='soft'"),
                                          (dict(granularity="row"), "granularity='row'")])
def test_owl_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        allocate("owl", _inputs_with_lod([1, 2, 3]), 0.5, **kwargs)


# --------------------------------------------------------------------------- DSA functions

EDGE = {
    "zeros": [[torch.zeros(4, 8)], [torch.zeros(4, 8)]],
    "negative": [[-torch.rand(4, 8) - 0.1], [-torch.rand(4, 8) * 3 - 0.1]],
    "huge": [[torch.full((4, 8), 1e30)], [torch.full((4, 8), 3e30)]],
    "one_element": [[torch.tensor([[0.5]])], [torch.tensor([[2.0]])]],
    "typical": [[torch.rand(8, 16, generator=torch.Generator().manual_seed(i)) * (i + 1)] for i in range(3)],
}


def _outcome(fn, scores):
    try:
        ratios = fn.sparsities(scores, 0.5)
    except InvalidFunction as err:
        return ("invalid", str(err))
    assert all(0.0 <= r < 1.0 for r in ratios)
    assert sum(ratios) / len(ratios) == pytest.approx(0.5, abs=1e-6)
    return ("valid", ratios)


@pytest.mark.parametrize("case", list(EDGE))
@pytest.mark.parametrize("stage,op", [("pre", o) for o in ops.PRE] + [("reduction", o) for o in ops.REDUCTIONS]
                         + [("post", o) for o in ops.POST])
def test_every_op_gives_a_valid_allocation_or_a_reported_invalid_one(stage, op, case):
    kwargs = {"pre": ("no_op",), "reduction": "mean", "post": ("no_op",)}
    kwargs[stage] = (op,) if stage != "reduction" else op
    fn = AllocationFunction(**kwargs)
    kind, detail = _outcome(fn, EDGE[case])
    if kind == "invalid":
        assert detail  # a reason, never a silent zero allocation
    if case == "zeros" and stage == "pre" and op in ("log", "abslog"):
        # the public code maps zeros to 1 before the log: finite, and every block equal here
        assert kind == "invalid" and "constant" in detail


def test_guards_catch_domain_errors_and_constant_vectors():
    scores = EDGE["typical"]
    with pytest.raises(InvalidFunction, match="asin"):
        AllocationFunction(("no_op",), "mean", ("exp", "asin")).sparsities([[s[0] * 10] for s in scores], 0.5)
    with pytest.raises(InvalidFunction, match="constant"):
        AllocationFunction(("minmax",), "mean", ("no_op",)).sparsities([[torch.eye(4)], [torch.eye(4)]], 0.5)
    with pytest.raises(InvalidFunction, match="constant up to rounding"):  # z-scores have variance 1 everywhere
        AllocationFunction(("normalize",), "var", ("abs", "no_op")).block_values(scores)
    with pytest.raises(InvalidFunction, match="poster"):
        load_function("poster_torch")


@pytest.mark.slow
def test_poster_numpy_reading_is_not_degenerate_on_smollm2_wanda_scores(smollm):
    """The DSA poster's [normalize, var, abs, no_op] with the public numpy normalize (std + 1e-6) on the embedded
    SmolLM2-135M's dense Wanda scores: 30 distinct block values, a function of each block's score spread σ
    (n/(n−1)·σ²/(σ + 1e-6)²), far above rounding; the allocation follows σ and spans 2λ. The torch reading
    (no guard) is constant up to rounding on the same scores."""
    model, tok = smollm
    calib = calibration_samples(tok, "embedded", nsamples=2, seqlen=128, seed=0)
    stats = calibrate_mod.calibrate(model, calib.input_ids, "dense", ("sq_norm",), progress=False)
    n = calib.input_ids.shape[0]
    blocks: dict[int, list[torch.Tensor]] = {}
    for name, lin in prunable_linears(model).items():
        block = int(re.search(r"layers\.(\d+)\.", name).group(1))
        blocks.setdefault(block, []).append(lin.weight.detach().abs() * torch.sqrt(stats[name].sq_norm / n)[None, :])
    scores = [blocks[b] for b in sorted(blocks)]
    assert len(scores) == 30
    poster = load_function("poster")
    values = poster.block_values(scores)
    sigmas = [float(torch.cat([m.reshape(-1) for m in block]).double().std(correction=0)) for block in scores]
    sizes = [sum(m.numel() for m in block) for block in scores]
    expected = [k / (k - 1) * sd ** 2 / (sd + 1e-6) ** 2 for k, sd in zip(sizes, sigmas, strict=True)]
    assert values == pytest.approx(expected, rel=1e-10)
    assert len(set(values)) == 30 and max(values) - min(values) > 1e3 * 1e-9 * max(values)
    ratios = poster.sparsities(scores, 0.7, weights=sizes)
    assert [ratios[i] for i in sorted(range(30), key=sigmas.__getitem__)] == sorted(ratios)
    assert max(ratios) - min(ratios) == pytest.approx(0.16, abs=1e-9)
    with pytest.raises(InvalidFunction, match="constant up to rounding"):
        AllocationFunction(("normalize",), "var", ("abs", "no_op")).block_values(scores)


def test_json_round_trip_and_presets(tmp_path):
    for fn in [*PRESETS.values(), AllocationFunction(("pow", "tanh"), "layer_slogdet", ("softplus",), 0.13, -1)]:
        again = AllocationFunction.from_json(fn.to_json())
        assert again == fn and again.key() == fn.key()
    assert PRESETS["readme"].to_dict() | {"name": ""} == {"pre": ["abslog"], "reduction": "var",
                                                          "post": ["atan", "asin"], "lam": 0.08, "direction": 1,
                                                          "name": "", "nonfinite": "reference"}
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"pre": ["abslog"], "reduction": "var", "post": ["atan", "asin"]}))
    assert load_function(str(path)).post == ("atan", "asin")
    path.write_text(json.dumps({"pre": ["cube_root"], "reduction": "var", "post": []}))
    with pytest.raises(ValueError, match="pre op 'cube_root' is not allowed"):
        load_function(str(path))
    with pytest.raises(ValueError, match="lam=-1"):
        AllocationFunction(lam=-1)
    with pytest.raises(ValueError, match="not valid JSON"):
        AllocationFunction.from_json('{"pre": [')


# --------------------------------------------------------------------------- search on a model

@pytest.fixture(scope="module")
def context():
    model, tok = load_model("tiny-llama")
    calib = calibration_samples(tok, "embedded", nsamples=4, seqlen=64)
    cache = DenseCache.build(model, calib, ("sq_norm",), progress=False)
    cfg = SearchConfig(**CFG)
    return SearchContext(model, tok, cache, cfg, dataset="embedded"), tok, calib, cache


CFG = dict(sparsity=0.6, population=4, generations=3, elite=1, seed=0, fitness_windows=2, fitness_seqlen=64,
           cheap_windows=1, cheap_seqlen=32, promote=1)
FN = AllocationFunction(("abs",), "std", ("tanh",), 0.1, 1)


def test_candidate_masks_equal_a_full_dense_prune_after_any_sequence(context, monkeypatch):
    """Incremental masks (only changed counts touched) equal pruning the dense model from scratch."""
    ctx, tok, calib, cache = context
    monkeypatch.setattr(calibrate_mod, "capture_block_inputs",
                        lambda *a, **k: pytest.fail("a candidate ran a calibration pass"))
    fns = [FN, AllocationFunction(("pow",), "l1", ("sqrt",), 0.05, -1), AllocationFunction(("abs",), "mean"), FN]
    for fn in fns:  # each allocation is reached from the previous one's masks
        alloc = ctx.allocation(fn)
        assert ctx.fitness(alloc["counts"], "cheap") > 0
        cheap = {n: lin.weight.detach().clone() for n, lin in prunable_linears(ctx.model).items()}
        model, _ = load_model("tiny-llama")
        monkeypatch.undo()
        prune(model, tok, metric="wanda", allocation="dsa", sparsity=0.6, calibration=calib, mode="dense",
              allocation_params={"function": fn},
              progress=False)
        monkeypatch.setattr(calibrate_mod, "capture_block_inputs",
                            lambda *a, **k: pytest.fail("a candidate ran a calibration pass"))
        for name, lin in prunable_linears(model).items():
            assert torch.equal(cheap[name], lin.weight), (fn.key(), name)
    ctx.restore()
    for name, lin in prunable_linears(ctx.model).items():
        assert torch.equal(lin.weight, cache.weights[name]), name


def test_fitness_stages_equal_direct_computations(context):
    """Full fidelity: the papers' perplexity of the validation windows; cheap: KL from the dense model."""
    import math

    import torch.nn.functional as F

    from workbench.data import eval_tokens
    from workbench.evaluate import perplexity_from_ids

    ctx, tok, _calib, _cache = context
    ctx.restore()
    ids, _ = eval_tokens(tok, "embedded", "validation")
    window = ids[:32][None]
    with torch.no_grad():
        dense = F.log_softmax(ctx.model(window).logits[0, :-1].double(), dim=-1)
    alloc = ctx.allocation(FN)
    full = ctx.fitness(alloc["counts"], "full")
    assert full == pytest.approx(perplexity_from_ids(ctx.model, ids[: 2 * 64], 64, progress=False), rel=1e-9)
    kl = ctx.fitness(alloc["counts"], "cheap")
    with torch.no_grad():
        pruned = F.log_softmax(ctx.model(window).logits[0, :-1].double(), dim=-1)
    direct = float((dense.exp() * (dense - pruned)).sum(-1).mean())
    assert kl == pytest.approx(direct, rel=1e-4) and kl > 0
    assert ctx.fitness({n: 0 for n in ctx.counts}, "cheap") == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(full)


def test_fitness_never_reads_the_test_split(tmp_path, monkeypatch):
    import workbench.search as search_mod

    splits = []
    real = search_mod.eval_tokens

    def spy(tokenizer, dataset, split="test", seqlen=None):
        splits.append(split)
        return real(tokenizer, dataset, split, seqlen)

    monkeypatch.setattr(search_mod, "eval_tokens", spy)
    model, tok = load_model("tiny-llama")
    cache = DenseCache.build(model, calibration_samples(tok, "embedded", nsamples=2, seqlen=32), ("sq_norm",),
                             progress=False)
    cfg = SearchConfig(**(CFG | {"generations": 2}))
    Search(SearchContext(model, tok, cache, cfg), cfg, tmp_path, progress=False).run()
    assert splits == ["validation"]


def test_killed_search_resumes_to_the_same_result(context, tmp_path):
    ctx = context[0]
    cfg = SearchConfig(**CFG)
    full = Search(ctx, cfg, tmp_path / "full", progress=False).run()
    reference = json.loads((tmp_path / "full" / "history.json").read_text())
    real = ctx.fitness
    for stop in (5, 11):  # inside generation 1; inside the random baseline
        calls = {"n": 0}

        def dying(counts, fidelity, _stop=stop, calls=calls):
            calls["n"] += 1
            if calls["n"] > _stop:
                raise KeyboardInterrupt("killed")
            return real(counts, fidelity)

        out = tmp_path / f"stop{stop}"
        ctx.fitness = dying
        try:
            with pytest.raises(KeyboardInterrupt):
                Search(ctx, cfg, out, progress=False).run()
        finally:
            ctx.fitness = real
        resumed = Search(ctx, cfg, out, resume=True, progress=False).run()
        for kind in ("evolution", "random"):
            assert resumed[kind]["function_key"] == full[kind]["function_key"]
            assert resumed[kind]["full_fitness"] == full[kind]["full_fitness"]
        again = json.loads((out / "history.json").read_text())
        strip = lambda h: [(r["function_key"], r["cheap_fitness"], r["full_fitness"], r["full_at"]) for r in h]  # noqa: E731
        assert strip(again) == strip(reference)
    assert AllocationFunction.from_json((tmp_path / "full" / "best_function.json").read_text()).key() == \
        full["evolution"]["function_key"]
    fields = {"function", "ratios", "fitness", "fidelity", "cheap_fitness", "full_fitness", "seconds"}
    assert fields <= reference[0].keys()
    for rec in reference:  # every record says at which fidelity its fitness was taken
        assert rec["fidelity"] in (("full", "cheap") if rec["valid"] else (None,))
        assert rec["fitness"] == (rec["full_fitness"] if rec["fidelity"] == "full" else rec["cheap_fitness"])


def test_corrupt_checkpoint_is_refused_and_kept(context, tmp_path):
    ctx = context[0]
    cfg = SearchConfig(**(CFG | {"generations": 1, "random_baseline": False}))
    Search(ctx, cfg, tmp_path, progress=False).run()
    state = tmp_path / "state.json"
    truncated = state.read_text()[:200]
    state.write_text(truncated)
    with pytest.raises(ValueError, match="malformed or truncated"):
        Search(ctx, cfg, tmp_path, resume=True, progress=False)
    assert state.read_text() == truncated
    with pytest.raises(ValueError, match="already holds a search"):
        Search(ctx, cfg, tmp_path, progress=False)


@pytest.mark.parametrize("kwargs,match", [(dict(population=1), "population=1"), (dict(generations=0), "generations=0"),
                                          (dict(elite=4), "elite=4"), (dict(promote=0), "promote=0"),
                                          (dict(fitness="bleu"), "fitness='bleu'"),
                                          (dict(cheap_windows=-1), "cheap_windows=-1"),
                                          (dict(sparsity=1.5), "sparsity")])
def test_search_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SearchConfig(**(CFG | kwargs))


def test_fitness_budget_larger_than_the_validation_split_is_refused(context):
    ctx, tok, _calib, cache = context
    with pytest.raises(ValueError, match=r"^fitness_windows=999 x fitness_seqlen=512 needs 511488 tokens; the "
                                         r"validation split of 'embedded' has (\d+) \(allowed: fitness_windows <= "
                                         r"\d+ at this seqlen\)$") as err:
        SearchContext(ctx.model, tok, cache, SearchConfig(**(CFG | {"fitness_windows": 999, "fitness_seqlen": 512})),
                      dataset="embedded")
    available = int(re.search(r"has (\d+)", str(err.value)).group(1))
    assert f"fitness_windows <= {available // 512} at" in str(err.value)


def test_a_new_context_records_split_metrics_windows_and_lengths_of_its_fitness(context):
    shared, tok, _calib, cache = context
    # built here: mutation testing sees it
    ctx = SearchContext(shared.model, tok, cache, SearchConfig(**CFG), dataset="embedded")
    n = ctx.fitness_data["tokens"]
    assert {k: v for k, v in ctx.fitness_data.items() if k != "text_sha256"} == {
        "dataset": "embedded", "split": "validation", "tokens": n,
        "full": {"metric": "ppl", "windows": 2, "seqlen": 64}, "cheap": {"metric": "kl", "windows": 1, "seqlen": 32},
        "heldout": {"metric": "ppl", "windows": 8, "seqlen": 64, "token_range": [n - 8 * 64, n]}}
    assert len(ctx.fitness_data["text_sha256"]) == 64


def test_minmax_normalises_and_names_what_it_cannot_map():
    from workbench.allocation.mapping import minmax

    assert minmax([-1.0, 0.0, -0.5]) == [0.0, 1.0, 0.5]
    assert minmax([0.0, 1.5e-12]) == [0.0, 1.0]  # just above the constant tolerance (1e-12 · max(1, |hi|))
    for constant in ([0.0, 1e-12], [1e6, 1e6 + 1e-7], [3.0, 3.0]):
        with pytest.raises(ValueError, match=r"^values are constant: min-max normalisation is undefined$"):
            minmax(constant)
    for bad in ([1.0, math.nan], [math.inf, 0.0]):
        with pytest.raises(ValueError, match=r"^values contain NaN or inf$"):
            minmax(bad)


def test_renormalise_accepts_the_ends_of_its_range_and_names_the_rest():
    from workbench.allocation.mapping import renormalise

    raw, weights = [0.2, 0.5, 0.9], [1.0, 2.0, 1.0]
    assert renormalise(raw, weights, 0.0, 0.99) == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert renormalise(raw, weights, 0.99, 0.99) == pytest.approx([0.99, 0.99, 0.99], abs=1e-9)
    with pytest.raises(ValueError, match=r"^sparsity=0.995 must lie in \[0, 0.99\]$"):
        renormalise(raw, weights, 0.995, 0.99)


def test_groups_by_block_sublayer_or_projection():
    from workbench.allocation import groups

    inputs = AllocationInput({f"b{b}.{p}": LayerInfo(f"b{b}.{p}", b, 4, 4) for b in range(2) for p in "xy"})
    assert groups(inputs, "block") == {"block 0": ["b0.x", "b0.y"], "block 1": ["b1.x", "b1.y"]}
    assert groups(inputs, "projection") == {n: [n] for n in inputs.layers}
    with pytest.raises(ValueError, match=r"^granularity='row' is not allowed; allowed: "
                                         r"\['block', 'sublayer', 'projection'\]$"):
        groups(inputs, "row")
    # sublayer = the block's child that holds the linear; names that break the pattern: the block index appears
    # twice (an expert numbered like its block), a linear directly under its block, interleaved children
    names = ["m.layers.1.attn.q", "m.layers.1.mlp.experts.1.down", "m.layers.1.attn.o", "m.layers.1.gate",
             "m.layers.1.mlp.up"]
    inputs = AllocationInput({n: LayerInfo(n, 1, 4, 4) for n in names})
    assert groups(inputs, "sublayer") == {
        "block 1 attn": ["m.layers.1.attn.q", "m.layers.1.attn.o"],
        "block 1 mlp": ["m.layers.1.mlp.experts.1.down", "m.layers.1.mlp.up"],
        "block 1 gate": ["m.layers.1.gate"]}
    # a recorded sublayer (what models.py fills in) wins over the name
    inputs = AllocationInput({"x.1.a": LayerInfo("x.1.a", 1, 2, 2, sublayer="attention")})
    assert groups(inputs, "sublayer") == {"block 1 attention": ["x.1.a"]}


def test_check_lambda_accepts_its_closed_range_and_names_anything_else():
    from workbench.allocation.mapping import check_lambda

    assert check_lambda(0) == 0.0 and check_lambda(0.5) == 0.5
    for bad in ("0.1", True, math.nan, -0.01, 0.51):
        with pytest.raises(ValueError, match=r"must be a number in \[0, 0.5\]"):
            check_lambda(bad)


def test_reference_clamp_at_exactly_zero_and_exactly_one():
    # minmax([0, 1]) = [0, 1], mean 0.5: s = S ± 0.25 exactly
    assert map_to_sparsity([0.0, 1.0], 0.25, 0.25, clamp="reference") == [0.01, 0.5]  # 0 is raised to 0.01
    with pytest.raises(ValueError, match=r"^lam=0.25: sparsity 1.000 >= 1 for some entries; no valid allocation "
                                         r"\(lower lam or the target\)$"):
        map_to_sparsity([0.0, 1.0], 0.75, 0.25, clamp="reference")  # 1.0 exactly is refused


def test_candidate_records_name_the_error_and_carry_the_block_ratios(context, monkeypatch):
    """What the search stores per candidate: the refusal's reason, or the block ratios and an allocation key
    that is the same exactly when the per-row counts are."""
    import workbench.search as search_mod

    ctx, _tok, _calib, _cache = context
    rec = ctx.allocation(FN)
    assert rec["valid"] and rec["error"] is None
    profile = allocate("dsa", ctx.inputs, 0.6, function=FN)
    assert rec["ratios"] == pytest.approx(list(profile.block_means().values()), abs=1e-12)
    assert min(rec["ratios"]) < 0.6 < max(rec["ratios"])
    assert rec["counts"] == ctx.counts_of(profile)
    assert len(rec["allocation_key"]) == 16 and int(rec["allocation_key"], 16) >= 0
    assert ctx.allocation(FN)["allocation_key"] == rec["allocation_key"]
    assert ctx.allocation(AllocationFunction(("abs",), "std", ("tanh",), 0.1, -1))["allocation_key"] != \
        rec["allocation_key"]
    bad = ctx.allocation(AllocationFunction(("normalize",), "var", ("no_op",), 0.1, 1))
    assert bad == {"valid": False, "error": bad["error"], "ratios": None, "counts": None, "allocation_key": None}
    assert "constant up to rounding" in bad["error"]
    # a fitness that is not finite (a diverged model) counts as the worst possible
    monkeypatch.setattr(search_mod, "perplexity_of", lambda *a, **k: math.nan)
    assert ctx.fitness(rec["counts"], "full") == math.inf


# --------------------------------------------------------------------------- held-out re-score, refusals (issue 33)

def test_heldout_windows_are_the_end_of_validation_and_disjoint_from_the_search(context):
    from workbench.data import eval_tokens
    from workbench.evaluate import perplexity_from_ids

    ctx, tok, _calib, _cache = context
    ids, _ = eval_tokens(tok, "embedded", "validation")
    n = ids.numel()
    assert CFG.get("heldout_windows", 8) == ctx.config.heldout_windows == 8
    tail = ids[n - 8 * 64:]
    assert torch.equal(ctx.ids["heldout"], tail)
    used = max(ctx.ids["full"].numel(), ctx.ids["cheap"].numel())
    assert used <= n - tail.numel()  # the search's tokens end before the held-out ones begin
    assert ctx.fitness_data["heldout"]["token_range"] == [n - tail.numel(), n]
    alloc = ctx.allocation(FN)
    value = ctx.fitness(alloc["counts"], "heldout")
    assert value == pytest.approx(perplexity_from_ids(ctx.model, tail, 64, progress=False), rel=1e-9)
    assert value != pytest.approx(ctx.fitness(alloc["counts"], "full"), rel=1e-6)  # other windows, other value
    ctx.restore()


def test_heldout_windows_that_do_not_fit_are_refused_naming_the_limit(context):
    ctx, tok, _calib, cache = context
    from workbench.data import eval_tokens

    n = eval_tokens(tok, "embedded", "validation")[0].numel()
    too_many = (n - 2 * 64) // 64 + 1
    with pytest.raises(ValueError, match=rf"heldout_windows={too_many} x fitness_seqlen=64 does not fit .*"
                                         rf"allowed: heldout_windows <= {too_many - 1}"):
        SearchContext(ctx.model, tok, cache, SearchConfig(**(CFG | {"heldout_windows": too_many})), dataset="embedded")


def test_a_fitness_dataset_without_held_out_validation_is_refused(context, text_file, tmp_path):
    ctx, tok, _calib, cache = context
    with pytest.raises(ValueError, match=r"^fitness_dataset=.*corpus.txt' is a single file, used whole: it has no "
                                         r"held-out validation split"):
        SearchContext(ctx.model, tok, cache, SearchConfig(**CFG), dataset=str(text_file))
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "test.txt").write_text(text_file.read_text())
    with pytest.raises(ValueError, match=r"has no validation file"):
        SearchContext(ctx.model, tok, cache, SearchConfig(**CFG), dataset=str(folder))
    (folder / "validation.txt").write_text(text_file.read_text()[::-1] * 3)
    split_ctx = SearchContext(ctx.model, tok, cache, SearchConfig(**(CFG | {"heldout_windows": 2})),
                              dataset=str(folder))
    assert split_ctx.fitness_data["dataset"] == str(folder) and split_ctx.fitness_data["split"] == "validation"
