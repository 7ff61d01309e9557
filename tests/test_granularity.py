"""Granularity as an allocation axis: block, sublayer (a block's child: attention, MLP) or projection (one linear).

Per-unit statistics are checked against slow, obvious torch computations written here (not the allocators' code),
on the tiny model's real Wanda scores, whose sublayers differ in size; the weighted mean is exact at every
granularity; a granularity without meaning for an allocator is refused naming it and what it supports.
"""

import math

import pytest
import torch

from workbench.allocation import AllocationInput, allocate, groups
from workbench.allocation.alphapruning import matrix_alpha
from workbench.errors import WorkbenchError
from workbench.profile import SparsityProfile
from workbench.session import Session

GRANULARITIES = ("block", "sublayer", "projection")
TINY_DSA = {"pre": ["abs"], "reduction": "mean", "post": ["no_op"], "lam": 0.05, "direction": 1}


@pytest.fixture(scope="module")
def inputs() -> AllocationInput:
    return Session("tiny-llama", nsamples=4, seqlen=32).inputs()


def _units_by_hand(inputs: AllocationInput, granularity: str) -> dict[str, list[str]]:
    """Units from the linear names alone: ``model.layers.<b>.<child>.<proj>``."""
    out: dict[str, list[str]] = {}
    for name in inputs.layers:
        _, _, block, child, _ = name.split(".")
        key = {"block": f"block {block}", "sublayer": f"block {block} {child}", "projection": name}[granularity]
        out.setdefault(key, []).append(name)
    return out


def _minmax_map(values: list[float], weights: list[int], target: float, lam: float, direction: int) -> list[float]:
    """The shared mapping without clamping (λ small enough): s = S + d·2λ(n − n̄_w), n = minmax(v)."""
    lo, hi = min(values), max(values)
    n = [(v - lo) / (hi - lo) for v in values]
    mean = sum(w * x for w, x in zip(weights, n, strict=True)) / sum(weights)
    return [target + direction * 2 * lam * (x - mean) for x in n]


def test_units_follow_the_model_structure(inputs):
    for granularity in GRANULARITIES:
        assert groups(inputs, granularity) == _units_by_hand(inputs, granularity)
    sub = groups(inputs, "sublayer")
    assert len(sub) == 2 * len(groups(inputs, "block"))  # attention and MLP of every block
    sizes = {u: sum(inputs.layers[n].numel for n in names) for u, names in sub.items()}
    assert len(set(sizes.values())) > 1  # units of unequal size: the weighted mean is not the plain mean


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_owl_lod_per_unit_against_torch(inputs, granularity):
    M = 3.0
    prof = allocate("owl", inputs, 0.6, lam=0.05, M=M, granularity=granularity)
    expected = []
    for names in _units_by_hand(inputs, granularity).values():
        flat = torch.cat([inputs.scores(n).flatten().double() for n in names])
        expected.append(100.0 * float((flat > M * flat.mean()).sum()) / flat.numel())
    assert prof.params["lod"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert len(set(expected)) > len(expected) // 2  # many distinct values, not an easy pattern


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_dlp_median_per_unit_against_torch(inputs, granularity):
    prof = allocate("dlp", inputs, 0.6, alpha=0.05, granularity=granularity)
    units = _units_by_hand(inputs, granularity)
    expected = []
    for names in units.values():
        flat = torch.sort(torch.cat([inputs.scores(n).flatten().float() for n in names])).values
        expected.append(float(flat[(flat.numel() - 1) // 2]))  # the lower median
    assert prof.params["scores"] == pytest.approx(expected, rel=1e-6)
    weights = [sum(inputs.layers[n].numel for n in names) for names in units.values()]
    ratios = _minmax_map(expected, weights, 0.6, 0.05, direction=1)
    for names, ratio in zip(units.values(), ratios, strict=True):
        assert all(prof.layers[n] == pytest.approx(ratio, abs=1e-6) for n in names)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_alphapruning_alpha_per_unit_is_the_mean_over_its_linears(inputs, granularity):
    prof = allocate("alphapruning", inputs, 0.6, epsilon=0.1, granularity=granularity)
    expected = [sum(matrix_alpha(inputs.weights(n)) for n in names) / len(names)
                for names in _units_by_hand(inputs, granularity).values()]
    assert prof.params["alpha"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_dsa_reads_each_units_concatenated_scores(inputs, granularity):
    prof = allocate("dsa", inputs, 0.6, function=TINY_DSA, granularity=granularity)
    units = _units_by_hand(inputs, granularity)
    values = [float(torch.cat([inputs.scores(n).flatten().double().abs() for n in names]).mean())
              for names in units.values()]
    weights = [sum(inputs.layers[n].numel for n in names) for names in units.values()]
    ratios = _minmax_map(values, weights, 0.6, TINY_DSA["lam"], direction=1)
    for names, ratio in zip(units.values(), ratios, strict=True):
        assert all(prof.layers[n] == pytest.approx(ratio, abs=1e-9) for n in names)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("allocator, params", [
    ("owl", {"lam": 0.2}), ("dlp", {}), ("alphapruning", {"epsilon": 0.1}), ("dsa", {"function": TINY_DSA}),
    ("uniform", {})])
def test_weighted_mean_exact_and_one_ratio_per_unit(inputs, allocator, params, granularity):
    for target in (0.3, 0.7, 0.8):
        prof = allocate(allocator, inputs, target, granularity=granularity, **params)
        numels = {n: info.numel for n, info in inputs.layers.items()}
        mean = sum(prof.layers[n] * numels[n] for n in numels) / sum(numels.values())
        assert mean == pytest.approx(target, abs=1e-9)
        assert prof.granularity == granularity
        units = _units_by_hand(inputs, granularity)
        assert prof.units == {n: u for u, names in units.items() for n in names}
        for names in units.values():
            assert len({prof.layers[n] for n in names}) == 1
        if allocator != "uniform":
            assert len({prof.layers[n] for n in prof.layers}) > 1


@pytest.mark.parametrize("allocator, granularity, supported", [
    ("atp", "sublayer", ["block"]), ("atp", "projection", ["block"]), ("er", "block", ["projection"]),
    ("er_plus", "sublayer", ["projection"]), ("global", "block", ["projection"]),
    ("global_per_row", "sublayer", ["projection"])])
def test_a_granularity_without_meaning_is_refused_naming_allocator_and_supported(inputs, allocator, granularity,
                                                                                 supported):
    with pytest.raises(WorkbenchError) as err:
        allocate(allocator, inputs, 0.5, granularity=granularity)
    text = str(err.value)
    assert text.startswith(f"allocation={allocator!r}: granularity={granularity!r} is not allowed")
    assert f"one of {supported}" in text and "(" in text.split("allowed:")[1]  # and why


def test_besa_refuses_block_and_sublayer_and_takes_the_older_name():
    from workbench.spec import RunSpec

    for granularity in ("block", "sublayer"):
        with pytest.raises(WorkbenchError, match=r"allocation='besa': granularity=.*\['row', 'projection'\]"):
            RunSpec.from_flat({"allocation": "besa", "alloc_params": {"granularity": granularity}})
    spec = RunSpec.from_flat({"allocation": "besa", "alloc_params": {"granularity": "layer"}})
    assert spec.method.allocation.granularity == "projection"


def test_profiles_record_units_and_older_layer_profiles_load():
    layers = {"m.layers.0.attn.q": 0.2, "m.layers.0.mlp.up": 0.6}
    prof = SparsityProfile(layers, {n: 10 for n in layers}, 0.4, "hand", granularity="layer",
                           blocks=dict.fromkeys(layers, 0))
    assert prof.granularity == "projection" and prof.unit_means() == layers
    data = prof.to_dict() | {"granularity": "layer"}
    data.pop("units")
    again = SparsityProfile.from_dict(data)
    assert again.granularity == "projection" and again.unit_names() == {n: n for n in layers}
    sub = SparsityProfile(layers, {"m.layers.0.attn.q": 30, "m.layers.0.mlp.up": 10}, 0.3, "hand",
                          granularity="block", blocks=dict.fromkeys(layers, 0))
    assert sub.unit_means() == {"block 0": pytest.approx((0.2 * 30 + 0.6 * 10) / 40)}
    with pytest.raises(WorkbenchError, match="units and layers"):
        SparsityProfile(layers, {n: 10 for n in layers}, 0.4, "hand", units={"m.layers.0.attn.q": "x"})


def test_search_candidates_allocate_at_the_searched_granularity(inputs):
    from workbench.data import calibration_samples
    from workbench.models import load_model
    from workbench.prune import DenseCache
    from workbench.search import SearchConfig, SearchContext

    model, tok = load_model("tiny-llama")
    cache = DenseCache.build(model, calibration_samples(tok, "embedded", nsamples=2, seqlen=32), ("sq_norm",),
                             progress=False)
    from workbench.allocation.dsa.function import load_function

    out = {}
    for granularity in ("block", "sublayer"):
        cfg = SearchConfig(sparsity=0.6, population=4, generations=1, elite=1, fitness_windows=1, fitness_seqlen=32,
                           cheap_windows=0, heldout_windows=0, granularity=granularity)
        ctx = SearchContext(model, tok, cache, cfg)
        out[granularity] = ctx.allocation(load_function(TINY_DSA))
        counts = ctx.baseline_counts()
        assert set(counts) == {"uniform", "owl"}
        ctx.restore()
    blocks = len({info.block for info in inputs.layers.values()})
    assert len(out["block"]["ratios"]) == blocks and len(out["sublayer"]["ratios"]) == 2 * blocks
    assert out["block"]["allocation_key"] != out["sublayer"]["allocation_key"]
    assert not math.isclose(out["sublayer"]["ratios"][0], out["sublayer"]["ratios"][1])
