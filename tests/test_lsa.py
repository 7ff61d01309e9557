"""LSA: the greedy reconstruction error against a slow, obvious greedy written here and against Σ eᵀHe; its block
mapping against the closed form; the count mapping below the block; Hessians reaching the allocator from prune
(the dense model's, in every mode) and from a session (built on first need); the refusals."""

import math

import pytest
import torch

from workbench.allocation import AllocationInput, allocate, groups
from workbench.allocation.lsa import reconstruction_error
from workbench.data import DEFAULT_DATASET, calibration_samples
from workbench.errors import WorkbenchError
from workbench.models import layer_infos, load_model
from workbench.offload import Onload, Residency
from workbench.prune import DenseCache, prune
from workbench.runner import cache_fits
from workbench.session import Session
from workbench.spec import RunSpec
from workbench.units import LayerInfo

GRANULARITIES = ("block", "sublayer", "projection")


# --------------------------------------------------------------------------- oracles written here

def slow_greedy(weight: torch.Tensor, hessian: torch.Tensor, group: int, fraction: float):
    """Row by row, group by group, one pick at a time: the unpruned column of the group whose pruning adds the
    least to eᵀHe given everything this row has pruned so far; (sum of the picked costs, mask)."""
    w, h = weight.double().tolist(), hessian.double().tolist()
    rows, width = len(w), len(h)
    size = width if group == 0 else group
    picks = int(size * fraction)
    total = 0.0
    mask = [[False] * width for _ in range(rows)]
    for r in range(rows):
        for start in range(0, width, size):
            columns = list(range(start, min(start + size, width)))
            for _ in range(min(picks, len(columns))):
                best, best_cost = None, None
                for c in columns:
                    if mask[r][c]:
                        continue
                    cost = w[r][c] ** 2 * h[c][c]
                    for j in range(width):
                        if mask[r][j]:
                            cost += 2 * w[r][c] * w[r][j] * h[j][c]
                    if best_cost is None or cost < best_cost:
                        best, best_cost = c, cost
                mask[r][best] = True
                total += best_cost
    return total, torch.tensor(mask)


def quadratic(weight: torch.Tensor, hessian: torch.Tensor, mask: torch.Tensor) -> float:
    """Σ over rows of eᵀHe, e the row's pruned weights."""
    e = torch.where(mask, weight.double(), torch.zeros((), dtype=torch.float64))
    return float(torch.einsum("ri,ij,rj->", e, hessian.double(), e))


def correlated_hessian(width: int, generator: torch.Generator) -> torch.Tensor:
    """2/N Σ x xᵀ of inputs with a shared component, mixed features and one outlier feature (float32)."""
    tokens = 3 * width
    x = torch.randn(tokens, width, generator=generator) @ torch.randn(width, width, generator=generator) / 2
    x += 0.5 * torch.randn(tokens, 1, generator=generator)
    x[:, 0] *= 6
    h = (2.0 / 5) * x.t() @ x
    return (h + h.t()) / 2  # exactly symmetric (a float32 product may not be), so that Σ costs = eᵀHe to rounding


CASES = [(7, 40, 16, 0.5), (5, 37, 16, 0.5), (6, 30, 0, 0.5), (9, 45, 8, 0.25), (4, 30, 64, 0.5), (3, 33, 12, 0.75)]


@pytest.mark.parametrize("rows,width,group,fraction", CASES)
def test_greedy_error_equals_a_slow_greedy_and_its_quadratic_form(rows, width, group, fraction):
    gen = torch.Generator().manual_seed(rows * 100 + width)
    w = torch.randn(rows, width, generator=gen)
    h = correlated_hessian(width, gen)
    expected, mask = slow_greedy(w, h, group, fraction)
    got = reconstruction_error(w, h, group, fraction)
    assert got == pytest.approx(expected, rel=1e-9)
    assert got == pytest.approx(quadratic(w, h, mask), rel=1e-9)
    assert len(torch.unique(w)) == w.numel() and (w < 0).any() and (h < 0).any()
    diagonal_only = float((w.double() ** 2 * torch.diag(h).double())[mask].sum())
    assert abs(diagonal_only - got) > 1e-3 * got  # the cross terms matter on these inputs


def test_narrow_last_group_is_pruned_whole_and_wider_groups_keep_int_B_s():
    gen = torch.Generator().manual_seed(1)
    w, h = torch.randn(4, 37, generator=gen), correlated_hessian(37, gen)
    _, mask = slow_greedy(w, h, 16, 0.5)
    assert mask[:, 32:].all() and mask[:, :32].sum() == 4 * 2 * 8  # last 5 columns all; 8 of each full group
    got = reconstruction_error(w, h, 16, 0.5)
    assert math.isfinite(got) and got == pytest.approx(quadratic(w, h, mask), rel=1e-9)
    # a group wider than the row: every weight is pruned, the whole output Σ wᵀHw
    assert reconstruction_error(w, h, 128, 0.5) == pytest.approx(quadratic(w, h, torch.ones_like(mask)), rel=1e-9)


def test_error_is_computed_in_float64_from_bfloat16_weights():
    gen = torch.Generator().manual_seed(2)
    w, h = torch.randn(5, 24, generator=gen).bfloat16(), correlated_hessian(24, gen)
    assert reconstruction_error(w, h, 8, 0.5) == pytest.approx(slow_greedy(w.float(), h, 8, 0.5)[0], rel=1e-9)


# --------------------------------------------------------------------------- mappings on synthetic layers

def _synthetic(sizes: dict[str, tuple[int, int]], blocks: int, seed: int = 0) -> AllocationInput:
    """Blocks of linears ``sublayer.proj`` with the given (out, in), random weights and correlated Hessians."""
    gen = torch.Generator().manual_seed(seed)
    layers, weights, hessians = {}, {}, {}
    for b in range(blocks):
        for key, (out, width) in sizes.items():
            name = f"model.layers.{b}.{key}"
            layers[name] = LayerInfo(name, b, out, width, key.split(".")[0])
            weights[name] = torch.randn(out, width, generator=gen) * (1 + b / 2)
            hessians[name] = correlated_hessian(width, gen)
    return AllocationInput(layers, weights=weights.__getitem__, hessians=hessians.__getitem__)


EQUAL = {"attn.q": (8, 16), "attn.o": (16, 8), "mlp.up": (8, 16), "mlp.down": (16, 8)}
GQA = {"attn.q": (16, 16), "attn.k": (8, 16), "attn.v": (8, 16), "attn.o": (16, 16), "mlp.up": (24, 16),
       "mlp.down": (16, 24)}  # sublayers and linears of unequal sizes, N̄/N_k = 2


def _errors(inputs: AllocationInput, group: int, fraction: float) -> dict[str, float]:
    return {n: slow_greedy(inputs.weights(n), inputs.hessians(n), group, fraction)[0] for n in inputs.layers}


@pytest.mark.parametrize("target,alpha", [(0.7, 0.15), (0.6, 0.10), (0.5, 0.04), (0.95, 0.12), (0.05, 0.08)])
def test_block_sparsities_follow_the_closed_form_with_the_public_alpha_table(target, alpha):
    inputs = _synthetic(EQUAL, blocks=5)
    errors = _errors(inputs, 4, 0.5)
    r = [sum(errors[n] for n in names) / len(names) for names in groups(inputs, "block").values()]
    n = [(x - min(r)) / (max(r) - min(r)) for x in r]
    expected = [target + 2 * alpha * (x - sum(n) / len(n)) for x in n]
    unclipped = 0 <= min(expected) and max(expected) <= 0.99
    assert unclipped == (target in (0.7, 0.6, 0.5))  # the ends of the table are clipped by the safe clamp
    profile = allocate("lsa", inputs, target, B=4)
    assert profile.params["alpha"] == alpha and profile.params["lse"] == pytest.approx(r, rel=1e-9)
    assert profile.mean() == pytest.approx(target, abs=1e-12)
    if unclipped:
        assert list(profile.block_means().values()) == pytest.approx(expected, abs=1e-9)
        reference = allocate("lsa", inputs, target, B=4, clamp="reference")
        assert list(reference.block_means().values()) == pytest.approx(expected, abs=1e-12)
    else:
        assert all(0 <= x <= 0.99 for x in profile.layers.values())
        with pytest.raises(WorkbenchError, match="clamp='reference'"):
            allocate("lsa", inputs, target, B=4, clamp="reference")


def test_a_given_alpha_spreads_the_blocks_over_two_alpha():
    profile = allocate("lsa", _synthetic(EQUAL, blocks=5), 0.7, B=4, alpha=0.03)
    assert max(profile.block_means().values()) - min(profile.block_means().values()) == pytest.approx(0.06, abs=1e-9)
    assert profile.params["alpha"] == 0.03


@pytest.mark.parametrize("granularity", ["projection", "sublayer"])
def test_every_linear_pruned_count_moves_by_the_same_rule_and_the_mean_is_exact(granularity):
    inputs = _synthetic(GQA, blocks=3)
    errors = _errors(inputs, 8, 0.5)
    names = list(inputs.layers)
    if granularity == "sublayer":
        value = {n: sum(errors[m] for m in ns) / len(ns) for ns in groups(inputs, "sublayer").values() for n in ns}
    else:
        value = errors
    v = [value[n] for n in names]
    importance = [1 - x / sum(v) for x in v]  # as the public code writes it
    lo, hi = min(importance), max(importance)
    d = [2 * 0.08 * (x - lo) / (hi - lo) for x in importance]
    numels = [inputs.layers[n].numel for n in names]
    mean_n = sum(numels) / len(numels)
    for clamp in ("safe", "reference"):
        profile = allocate("lsa", inputs, 0.6, B=8, granularity=granularity, clamp=clamp)
        moved = [(profile.layers[n] - 0.6) * inputs.layers[n].numel for n in names]
        assert moved == pytest.approx([(sum(d) / len(d) - dj) * mean_n for dj in d], abs=1e-6)
        pruned = sum(profile.layers[n] * k for n, k in zip(names, numels, strict=True))
        assert pruned == pytest.approx(0.6 * sum(numels), abs=1e-9)
        assert profile.granularity == granularity and set(profile.units.values()) == set(groups(inputs, granularity))
    if granularity == "sublayer":  # one value per sublayer: its linears move by the same count, k/v smaller
        for names_in in groups(inputs, "sublayer").values():
            counts = {round((profile.layers[n] - 0.6) * inputs.layers[n].numel, 6) for n in names_in}
            assert len(counts) == 1
        k, q = "model.layers.0.attn.k", "model.layers.0.attn.q"
        assert abs(profile.layers[k] - 0.6) == pytest.approx(2 * abs(profile.layers[q] - 0.6))


def test_safe_clamp_keeps_ratios_in_range_at_the_exact_mean_where_the_reference_is_refused():
    inputs = _synthetic(GQA, blocks=3)
    with pytest.raises(WorkbenchError, match=r"clamp='reference' .* outside \[0, 1\); lower lam"):
        allocate("lsa", inputs, 0.7, B=8, granularity="projection", lam=0.3, clamp="reference")
    profile = allocate("lsa", inputs, 0.7, B=8, granularity="projection", lam=0.3)
    assert all(0.0 <= x <= 0.99 for x in profile.layers.values())
    assert max(profile.layers.values()) == 0.99 or min(profile.layers.values()) == 0.0
    assert profile.mean() == pytest.approx(0.7, abs=1e-12)


def test_the_statistic_is_memoised_per_B_and_s():
    inputs = _synthetic(EQUAL, blocks=3)
    calls = []
    hessian = inputs.hessians
    inputs.hessians = lambda name: calls.append(name) or hessian(name)
    first = allocate("lsa", inputs, 0.7, B=4)
    allocate("lsa", inputs, 0.5, B=4, granularity="projection")
    assert len(calls) == len(inputs.layers)
    other = allocate("lsa", inputs, 0.7, B=8)
    assert len(calls) == 2 * len(inputs.layers) and other.params["lse"] != first.params["lse"]


def test_refused_without_hessians_or_with_bad_parameters():
    inputs = _synthetic(EQUAL, blocks=2)
    bare = AllocationInput(inputs.layers, weights=inputs.weights)
    with pytest.raises(WorkbenchError, match=r"allocation='lsa' needs each layer's input Hessian"):
        allocate("lsa", bare, 0.7)
    with pytest.raises(WorkbenchError, match=r"allocation='lsa': s=0 is not allowed"):
        allocate("lsa", inputs, 0.7, s=0)
    with pytest.raises(WorkbenchError, match=r"allocation='lsa': B=-1 is not allowed"):
        allocate("lsa", inputs, 0.7, B=-1)


# --------------------------------------------------------------------------- the tiny model end to end

@pytest.fixture(scope="module")
def windows():
    _, tok = load_model("tiny-llama")
    return calibration_samples(tok, DEFAULT_DATASET, nsamples=4, seqlen=32, seed=0)  # a Session's windows


@pytest.fixture(scope="module")
def dense_hessians(windows):
    model, _ = load_model("tiny-llama")
    return DenseCache.build(model, windows, ("sq_norm", "xtx"), progress=False)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_prune_reads_the_dense_hessians_and_reaches_the_target(windows, dense_hessians, granularity):
    model, tok = load_model("tiny-llama")
    expected = allocate("lsa", AllocationInput(layer_infos(model), weights=dense_hessians.weights.__getitem__,
                                               hessians=lambda n: dense_hessians.stats[n].hessian()),
                        0.6, B=16, granularity=granularity)
    for mode in ("sequential", "dense"):
        model, tok = load_model("tiny-llama")
        result = prune(model, tok, metric="wanda", allocation="lsa", sparsity=0.6, calibration=windows, mode=mode,
                       allocation_params={"B": 16, "granularity": granularity}, progress=False)
        assert result.profile.layers == pytest.approx(expected.layers, abs=1e-9)
        assert result.report["allocated_mean"] == pytest.approx(0.6, abs=1e-9)
        assert result.report["actual"] == pytest.approx(0.6, abs=0.01)
        assert len(set(round(x, 6) for x in result.profile.layers.values())) > 1


def test_prune_refuses_a_cache_without_xtx_and_an_onloaded_model(windows):
    model, tok = load_model("tiny-llama")
    wanda_only = DenseCache.build(model, windows, ("sq_norm",), progress=False)
    with pytest.raises(WorkbenchError, match=r"cache lacks statistics \['sq_norm', 'xtx'\]"):
        prune(model, tok, allocation="lsa", sparsity=0.6, mode="dense", cache=wanda_only, progress=False)
    with pytest.raises(WorkbenchError, match=r"allocation='lsa' reads every linear's dense input Hessian"):
        prune(model, tok, allocation="lsa", sparsity=0.6, calibration=windows, residency=Onload("cpu"),
              progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune(model, tok, allocation="lsa", sparsity=0.6, calibration=windows, residency=Residency("cpu"),
                   allocation_params={"B": 16}, progress=False)  # activations in CPU memory: the model stays
    assert result.report["allocated_mean"] == pytest.approx(0.6, abs=1e-9)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_run_prunes_from_a_cache_only_when_it_holds_xtx():
    spec = RunSpec.from_flat(model="tiny-llama", allocation="lsa", sparsity=0.6, mode="dense", nsamples=4,
                             seqlen=32, seed=0)
    model, tok = load_model("tiny-llama")
    c = spec.calibration
    windows = calibration_samples(tok, c.dataset, c.nsamples, c.seqlen, c.seed)
    wanda_only = DenseCache.build(model, windows, ("sq_norm",), progress=False)
    with_xtx = DenseCache.build(model, windows, ("sq_norm", "xtx"), progress=False)
    assert not cache_fits(spec, wanda_only) and cache_fits(spec, with_xtx)
    owl = RunSpec.from_flat(model="tiny-llama", allocation="owl", sparsity=0.6, mode="dense", nsamples=4,
                            seqlen=32, seed=0)
    assert cache_fits(owl, wanda_only)


def test_session_builds_hessians_on_first_need(windows, dense_hessians):
    session = Session("tiny-llama", nsamples=4, seqlen=32)
    session.profile("owl", 0.6)
    assert session._xtx is None  # other allocators' curves cost no extra pass
    for granularity in GRANULARITIES:
        profile = session.profile("lsa", 0.6, granularity=granularity, B=16)
        assert profile.mean() == pytest.approx(0.6, abs=1e-9) and profile.granularity == granularity
    assert session._xtx is not None
    model, tok = load_model("tiny-llama")
    same = prune(model, tok, allocation="lsa", sparsity=0.6, calibration=windows, mode="dense",
                 allocation_params={"B": 16, "granularity": "projection"}, progress=False)
    assert session.profile("lsa", 0.6, granularity="projection", B=16).layers == pytest.approx(same.profile.layers,
                                                                                                abs=1e-9)
