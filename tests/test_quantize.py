"""Round-to-nearest weight quantization against a slow, obvious oracle of GPTQ's grid (python floats, one
weight at a time); zeros kept exactly; bad input refused in one line."""

import gc
import math
import random
import weakref

import numpy as np
import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.quantize import QuantSpec, bits_per_weight, quantize_rtn


def oracle(weight: torch.Tensor, wbits: int, group: int | None, symmetric: bool) -> list[list[float]]:
    """Each group of each row: its range (always holding 0), scale, integer zero point, then every weight rounded
    to the nearest level (half to even) and clamped, one weight at a time in float32 arithmetic (as GPTQ runs it:
    a symmetric group's largest weight lands exactly on a .5 tie, which float64 would round otherwise)."""
    f = np.float32
    maxq = 2**wbits - 1
    rows, cols = weight.shape
    width = group or cols
    out = [[0.0] * cols for _ in range(rows)]
    for r in range(rows):
        for start in range(0, cols, width):
            values = [f(v) for v in weight[r, start:start + width].tolist()]
            lo, hi = min(min(values), f(0)), max(max(values), f(0))
            if symmetric:
                hi = max(abs(lo), hi)
                lo = -hi if lo < 0 else lo
            if lo == 0 and hi == 0:
                lo, hi = f(-1), f(1)
            scale = f(f(hi - lo) / f(maxq))
            zero = f((maxq + 1) / 2) if symmetric else f(np.round(f(-lo) / scale))
            for j, v in enumerate(values):
                q = min(max(f(np.round(f(v / scale))) + zero, f(0)), f(maxq))
                out[r][start + j] = float(f(scale * f(q - zero)))
    return out


def messy(rows: int, cols: int, seed: int, pruned: float = 0.0) -> torch.Tensor:
    """Weights with many distinct values of both signs, a few outliers, and a fraction set exactly to zero."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.linspace(0.1, 3.0, cols)
    w[0, 3] = 25.0  # an outlier in one group only
    w[rows - 1] = w[rows - 1].abs()  # a row with no negative weight (the symmetric grid's clipping case)
    if pruned:
        w[torch.rand(rows, cols, generator=g) < pruned] = 0.0
    w[1, : min(cols, 4)] = 0.0  # an all-zero group when the group size is 4
    return w


@pytest.mark.parametrize("wbits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [None, 4, 6])
@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn_matches_the_slow_oracle_at_every_width_group_and_grid(wbits, group, symmetric):
    w = messy(5, 12, seed=wbits * 10 + (group or 0))
    got = quantize_rtn(w, QuantSpec(wbits, group, symmetric))
    expected = torch.tensor(oracle(w, wbits, group, symmetric))
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6), (got - expected).abs().max()
    width = group or 12
    for r in range(5):
        for start in range(0, 12, width):
            assert len(set(got[r, start:start + width].tolist())) <= 2**wbits  # on the grid: at most 2^b levels


def test_asymmetric_zero_points_and_group_boundaries_on_known_values():
    """One row, groups of 2: [-1, 3] has scale 4/15 and zero point round(15/4) = 4; [0.5, 2] holds 0 so its range
    is [0, 2]: scale 2/15, zero point 0; at 4 bits."""
    w = torch.tensor([[-1.0, 3.0, 0.5, 2.0]])
    got = quantize_rtn(w, QuantSpec(4, 2, False))[0].tolist()
    s1, s2 = 4 / 15, 2 / 15
    expected = [s1 * (round(-1 / s1) + 4 - 4), s1 * (min(round(3 / s1) + 4, 15) - 4), s2 * round(0.5 / s2), 2.0]
    assert got == pytest.approx(expected, abs=1e-6)
    assert got[1] == pytest.approx(11 * s1)  # 3 clips at the top level: (15 - 4) x 4/15


@pytest.mark.parametrize("wbits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_pruned_weights_stay_exactly_zero(wbits, symmetric):
    w = messy(16, 64, seed=wbits, pruned=0.7)
    for group in (None, 8, 32):
        got = quantize_rtn(w, QuantSpec(wbits, group, symmetric))
        assert torch.equal(got[w == 0], torch.zeros(int((w == 0).sum())))


def test_sixteen_bits_is_no_quantization_and_the_dtype_is_kept():
    w = messy(3, 8, seed=1).to(torch.bfloat16)
    assert quantize_rtn(w, QuantSpec(16)) is w
    assert quantize_rtn(w, QuantSpec(4, 4)).dtype == torch.bfloat16


def test_eight_bits_is_close_and_two_bits_is_coarse():
    w = messy(8, 128, seed=3)
    err = {b: float((quantize_rtn(w, QuantSpec(b, 32)) - w).abs().max()) for b in (2, 4, 8)}
    assert err[8] < err[4] < err[2]
    scale8 = max(float(w[:, i:i + 32].max() - min(w[:, i:i + 32].min(), 0)) for i in range(0, 128, 32)) / 255
    assert err[8] <= scale8 / 2 + 1e-6  # half a step at most where nothing clips (asymmetric: no clipping)


@pytest.mark.parametrize("spec, in_features, message", [
    (QuantSpec(5), 12, r"^wbits=5 is not allowed; allowed: \[2, 3, 4, 8, 16\]"),
    (QuantSpec(True), 12, r"^wbits=True is not allowed"),
    (QuantSpec(4, 5), 12, r"^group_size=5 does not divide the input width 12; allowed: a divisor"),
    (QuantSpec(4, 0), 12, r"^group_size=0 must be None \(per output channel\) or an integer >= 1"),
    (QuantSpec(4, None, "yes"), 12, r"^symmetric='yes' must be true or false"),
])
def test_bad_settings_are_one_line_naming_the_parameter(spec, in_features, message):
    with pytest.raises(WorkbenchError, match=message):
        quantize_rtn(torch.ones(2, in_features), spec)


def test_random_widths_and_groups_agree_with_the_oracle():
    rng = random.Random(0)
    for _ in range(20):
        cols = rng.choice([6, 8, 12, 24])
        group = rng.choice([None, *[d for d in (2, 3, 4, 6, 8) if cols % d == 0]])
        wbits, symmetric = rng.choice([2, 3, 4, 8]), rng.random() < 0.5
        w = torch.randn(3, cols) * rng.uniform(0.01, 10) + rng.uniform(-1, 1)
        got = quantize_rtn(w, QuantSpec(wbits, group, symmetric))
        expected = torch.tensor(oracle(w, wbits, group, symmetric))
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6 * max(1.0, float(w.abs().max()))), \
            (cols, group, wbits, symmetric)
        assert math.isfinite(float(got.abs().max()))


# --------------------------------------------------------------------------- GPTQ and SparseGPT + GPTQ in one pass

def slow_obs(weight, hessian, wbits=16, group=None, symmetric=False, sparsity=0.0, fixed=None, percdamp=0.01,
             blocksize=1, prune_n=0, prune_m=0):
    """The published algorithm one column at a time, with every update applied at once: U the upper Cholesky
    factor of (H + damp I)⁻¹; for column j: its mask (the given one, or SparseGPT's w²/U_jj² threshold over the
    rows and columns of j's block of ``blocksize``, chosen when the block starts; N:M: the N lowest per row of the
    M columns from j, chosen when j is a multiple of M), its entries quantized on the grid of their group (found
    from the weights as they stood when j's block started: the published code reads the group from W, which
    receives the block's own updates only once the block ends), err = (w_j − q_j) / U_jj, W[:, j:] −= err U[j, j:]."""
    w = weight.float().clone()
    h = hessian.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0])
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    rows, cols = w.shape
    maxq, width = 2**wbits - 1, group or cols
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    scale = zero = None
    for j in range(cols):
        if j % blocksize == 0:
            at_block_start = w.clone()
            if sparsity and fixed is None:
                b = slice(j, j + blocksize)
                score = w[:, b] ** 2 / torch.diag(u)[b][None, :] ** 2
                block_mask = score <= torch.sort(score.flatten())[0][int(score.numel() * sparsity)]
        if wbits < 16 and j % width == 0:
            part = at_block_start[:, j:j + width]
            lo, hi = part.min(1).values.clamp(max=0), part.max(1).values.clamp(min=0)
            if symmetric:
                hi = torch.maximum(lo.abs(), hi)
                lo = torch.where(lo < 0, -hi, lo)
            both = (lo == 0) & (hi == 0)
            lo, hi = torch.where(both, -1.0, lo), torch.where(both, 1.0, hi)
            scale = (hi - lo) / maxq
            zero = torch.full_like(scale, (maxq + 1) / 2) if symmetric else torch.round(-lo / scale)
        col = w[:, j].clone()
        if fixed is not None:
            m = fixed[:, j]
        elif prune_n:
            if j % prune_m == 0:
                score = w[:, j:j + prune_m] ** 2 / torch.diag(u)[j:j + prune_m][None, :] ** 2
                nm_mask = torch.zeros_like(score, dtype=torch.bool)
                nm_mask.scatter_(1, torch.topk(score, prune_n, dim=1, largest=False).indices, True)
            m = nm_mask[:, j % prune_m]
        elif sparsity:
            m = block_mask[:, j % blocksize]
        else:
            m = torch.zeros(rows, dtype=torch.bool)
        q = col.masked_fill(m, 0.0)
        if wbits < 16:
            q = scale * (torch.clamp(torch.round(q / scale) + zero, 0, maxq) - zero)
        err = (col - q) / u[j, j]
        w[:, j:] -= err[:, None] * u[j, j:][None, :]
        w[:, j] = q
        mask[:, j] = m
    return w, mask


def layer(rows=8, cols=16, seed=0):
    """A weight with many distinct values of both signs and a Hessian of correlated inputs (one input dead)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.linspace(0.2, 2.0, cols)
    x = torch.randn(64, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
    x[:, 5] = 0.0
    return w, 2 / 64 * x.T @ x


@pytest.mark.parametrize("case", [
    dict(wbits=4, group=4),                                   # GPTQ, groups of 4
    dict(wbits=3, symmetric=True),                            # GPTQ, per channel, symmetric
    dict(wbits=4, group=8, sparsity=0.5),                     # SparseGPT + GPTQ in one pass
    dict(wbits=2, sparsity=0.25),
    dict(wbits=4, group=4, fixed=True),                       # GPTQ on an already pruned layer
    dict(wbits=3, group=4, blocksize=8),                      # groups that start inside a column block
    dict(wbits=4, group=4, sparsity=0.5, blocksize=8),        # ... with the mask chosen per block
    dict(wbits=2, group=8, fixed=True, blocksize=16, symmetric=True),
    dict(wbits=4, sparsity=0.5, blocksize=8),                 # joint, per channel, mask per block of 8
    dict(wbits=3, group=8, prune_n=2, prune_m=4, blocksize=8),  # joint with 2:4
])
def test_the_obs_pass_with_quantization_equals_the_published_algorithm_column_by_column(case):
    from workbench.pruners.sparsegpt import sparsegpt_prune

    w, h = layer(seed=len(case))
    case = dict(case)
    fixed = torch.rand(w.shape, generator=torch.Generator().manual_seed(2)) < 0.5 if case.pop("fixed", False) else None
    expected, expected_mask = slow_obs(w, h, fixed=fixed, **case)
    spec = QuantSpec(case["wbits"], case.get("group"), case.get("symmetric", False))
    got, mask = sparsegpt_prune(w, h, case.get("sparsity", 0.0), blocksize=case.get("blocksize", 1), quant=spec,
                                fixed_mask=fixed, prune_n=case.get("prune_n", 0), prune_m=case.get("prune_m", 0))
    assert torch.equal(mask, expected_mask)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (got - expected).abs().max()
    assert torch.equal(got[mask], torch.zeros(int(mask.sum())))
    for start in range(0, 16, case.get("group") or 16):  # each group of each row on at most 2^b levels
        for r in range(8):
            assert len(set(got[r, start:start + (case.get("group") or 16)].tolist())) <= 2 ** case["wbits"]


def test_gptq_reconstructs_the_layer_better_than_rounding_and_keeps_zeros_in_blocks():
    """On correlated inputs GPTQ's error compensation beats round-to-nearest on the same grid (the reason it
    exists), joint SparseGPT + GPTQ with column blocks keeps its pruned entries exactly zero, and GPTQ on a pruned
    layer keeps the given zeros."""
    from workbench.pruners.sparsegpt import sparsegpt_prune

    w, h = layer(rows=32, cols=64, seed=4)
    spec = QuantSpec(3, 16)

    def error(q):  # ||(W - Q) X||² through H ∝ XᵀX
        d = (w - q).double()
        return float(torch.einsum("ri,ij,rj->", d, h.double(), d))

    gptq, _ = sparsegpt_prune(w, h, 0.0, blocksize=16, quant=spec)
    assert error(gptq) < 0.8 * error(quantize_rtn(w, spec))
    joint, mask = sparsegpt_prune(w, h, 0.5, blocksize=16, quant=spec)
    assert mask.float().mean() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(joint[mask], torch.zeros(int(mask.sum())))
    pruned, pmask = sparsegpt_prune(w, h, 0.5)
    after, amask = sparsegpt_prune(pruned, h, 0.0, quant=spec, fixed_mask=pmask)
    assert torch.equal(amask, pmask) and torch.equal(after[pmask], torch.zeros(int(pmask.sum())))


def test_obs_quantization_refuses_bad_settings_in_one_line():
    from workbench.pruners.sparsegpt import sparsegpt_prune

    w, h = layer()
    with pytest.raises(WorkbenchError, match=r"^group_size=5 does not divide the input width 16"):
        sparsegpt_prune(w, h, 0.0, quant=QuantSpec(4, 5))
    with pytest.raises(WorkbenchError, match=r"^fixed_mask holds a given mask"):
        sparsegpt_prune(w, h, 0.5, fixed_mask=torch.zeros(w.shape, dtype=torch.bool))


# --------------------------------------------------------------------------- the quantization stage of a run

def on_grid(weight: torch.Tensor, wbits: int, group: int | None) -> bool:
    width = group or weight.shape[1]
    return all(len(set(weight[r, s:s + width].tolist())) <= 2**wbits
               for r in range(weight.shape[0]) for s in range(0, weight.shape[1], width))


def test_a_pruned_and_quantized_tiny_model_keeps_every_pruned_zero_and_every_group_on_its_grid():
    from workbench.models import load_model, structure
    from workbench.prune import prune

    def run(**quant):
        model, tok = load_model("tiny-llama")
        result = prune(model, tok, metric="wanda", sparsity=0.5, mode="dense", progress=False, **quant)
        return {n: lin.weight.detach().clone() for n, lin in structure(model).linears.items()}, result

    plain, _ = run()
    for method in ("rtn", "gptq"):
        weights, result = run(wbits=4, group_size=16, quant_method=method)
        for name, w in weights.items():
            assert torch.equal(w[plain[name] == 0], torch.zeros(int((plain[name] == 0).sum()))), (method, name)
            assert on_grid(w, 4, 16), (method, name)
        report = result.report
        assert report["wbits"] == 4 and report["bits_per_weight"] == pytest.approx(
            sum(bits_per_weight(tuple(w.shape), int((w != 0).sum()), QuantSpec(4, 16)) * w.numel()
                for w in weights.values()) / sum(w.numel() for w in weights.values()))


@pytest.mark.parametrize("case", [
    dict(allocation="uniform", pattern="2:4", wbits=4, group_size=16, quant_method="rtn"),
    dict(allocation="owl", allocation_params={"granularity": "projection"}, wbits=3, quant_method="gptq"),
    dict(allocation="dlp", allocation_params={"granularity": "sublayer"}, wbits=2, symmetric=True,
         quant_method="rtn"),
])
def test_quantization_is_a_stage_after_any_allocation_pattern_or_granularity(case):
    """In dense mode the masks come from the dense model's statistics, so a quantized run prunes exactly what the
    same run without quantization prunes (and may only add zeros where kept values round to zero); its kept
    values lie on their grid and its allocation is the same."""
    from workbench.models import load_model, structure
    from workbench.prune import prune

    case = dict(case)
    quant = {k: case.pop(k) for k in ("wbits", "group_size", "symmetric", "quant_method") if k in case}

    def run(**extra):
        model, tok = load_model("tiny-llama")
        result = prune(model, tok, metric="wanda", sparsity=0.5, mode="dense", progress=False, **case, **extra)
        return {n: lin.weight.detach().clone() for n, lin in structure(model).linears.items()}, result

    plain, plain_result = run()
    weights, result = run(**quant)
    assert result.profile.layers == plain_result.profile.layers
    for name, w in weights.items():
        pruned = plain[name] == 0
        assert torch.equal(w[pruned], torch.zeros(int(pruned.sum()))), name
        assert not torch.equal(w, plain[name]), name  # quantized, not left as it was
        assert on_grid(w, quant["wbits"], quant.get("group_size")), name
        if case.get("pattern") == "2:4":
            assert bool(((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all()), name


@pytest.mark.parametrize("metric", ["wanda", "sparsegpt"])
def test_an_onloaded_quantized_run_equals_the_run_in_memory(metric):
    """Onloading moves one block at a time to the device; the sequential GPTQ stage must see the same statistics."""
    from workbench.models import load_model, structure
    from workbench.offload import Onload
    from workbench.prune import prune

    def run(residency):
        model, tok = load_model("tiny-llama")
        prune(model, tok, metric=metric, allocation="owl", sparsity=0.6, wbits=4, group_size=32, quant_method="gptq",
              progress=False, residency=residency)
        return {n: lin.weight.detach().clone() for n, lin in structure(model).linears.items()}

    in_memory, onloaded = run(None), run(Onload("cpu"))
    assert all(torch.equal(onloaded[n], w) for n, w in in_memory.items())
    assert all(on_grid(w, 4, 32) for w in in_memory.values())


def test_sparsegpt_with_gptq_quantizes_inside_its_pass_or_after_it():
    from workbench.models import load_model, structure
    from workbench.prune import prune

    for method in ("gptq", "gptq-after"):
        model, tok = load_model("tiny-llama")
        result = prune(model, tok, metric="sparsegpt", sparsity=0.5, wbits=3, quant_method=method, progress=False)
        assert result.report["actual"] >= 0.5
        for lin in structure(model).linears.values():
            assert on_grid(lin.weight.detach(), 3, None)


def test_the_run_record_carries_the_quantization():
    from workbench.runner import run
    from workbench.spec import RunSpec

    record = run(RunSpec.from_flat(model="tiny-llama", metric="wanda", sparsity=0.5, nsamples=2, seqlen=32,
                                   wbits=8, group_size=32, symmetric=True, quant_method="rtn"), progress=False)
    assert record["method"]["quantization"] == {"wbits": 8, "group_size": 32, "symmetric": True, "method": "rtn"}
    assert record["sparsity_report"]["bits_per_weight"] < 8


def test_bits_per_weight_counts_values_mask_and_grid():
    # 4 x 64 at 50% with 4 bits in groups of 16: 2 bits of values, 1 of mask, 4 groups x 32 bits / 64 per row
    assert bits_per_weight((4, 64), 128, QuantSpec(4, 16)) == pytest.approx(2 + 1 + 2)
    assert bits_per_weight((4, 64), 256, QuantSpec(8)) == pytest.approx(8 + 32 / 64)  # dense: no mask


def test_gptq_without_calibration_data_and_learned_quantization_without_besa_are_refused_in_one_line():
    from workbench.models import load_model
    from workbench.prune import prune

    model, _tok = load_model("tiny-llama")
    with pytest.raises(WorkbenchError, match=r"^quant_method='gptq' needs calibration data"):
        prune(model, None, metric="magnitude", sparsity=0.5, wbits=4, quant_method="gptq", progress=False)
    with pytest.raises(WorkbenchError, match=r"^quant_method='learned' learns the quantization inside BESA's loop"):
        prune(model, None, allocation="owl", sparsity=0.5, wbits=4, quant_method="learned", progress=False)
    with pytest.raises(WorkbenchError, match=r"^group_size=48 does not divide the input width"):
        prune(model, None, metric="magnitude", sparsity=0.5, wbits=4, group_size=48, progress=False)


def test_a_grid_entry_may_quantize_and_a_bad_width_is_refused_when_the_grid_loads(tmp_path):
    from workbench.reproduce import expand, load_grid

    grid = tmp_path / "q.yaml"
    grid.write_text("name: q\nmodel: tiny-llama\ndefaults: {metric: wanda}\nperplexity:\n  dense: false\n"
                    "  sparsities: [0.5]\n  methods:\n    - {label: Wanda 4-bit, wbits: 4, group_size: 32}\n"
                    "    - {label: SparseGPT+GPTQ, metric: sparsegpt, wbits: 3, quant_method: gptq}\n")
    runs = expand(load_grid(grid))
    assert [(r.params.get("wbits"), r.params.get("quant_method")) for r in runs] == [(4, None), (3, "gptq")]
    grid.write_text(grid.read_text().replace("wbits: 4", "wbits: 6"))
    with pytest.raises(WorkbenchError, match=r"wbits=6 is not allowed"):
        expand(load_grid(grid))


def test_the_bits_chart_places_unquantized_runs_at_sixteen_bit_values_and_a_mask():
    from workbench.plots import perplexity_vs_bits

    runs = [{"allocation": "owl", "actual": 0.5, "bits": None, "perplexity": 30.0},
            {"allocation": "owl", "actual": 0.5, "bits": 3.25, "perplexity": 41.0},
            {"allocation": "dsa", "actual": 0.7, "bits": None, "perplexity": None}]  # failed: no point
    fig = perplexity_vs_bits(runs, dense=20.0)
    assert [t.name for t in fig.data] == ["owl"]
    assert list(fig.data[0].x) == [3.25, 16 * 0.5 + 1] and list(fig.data[0].y) == [41.0, 30.0]
    assert fig.layout.shapes[0].y0 == 20.0


def test_a_quantized_run_exports_a_recipe_with_a_gptq_stage_compressed_tensors_accepts(tmp_path):
    import yaml
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    from workbench.cli import main
    from workbench.models import load_model, prunable_linears

    record = tmp_path / "run.json"
    assert main(["prune", "--model", "tiny-llama", "--sparsity", "0.5", "--nsamples", "2", "--seqlen", "32",
                 "--wbits", "4", "--group-size", "32", "--symmetric", "--out", str(record)]) == 0
    out = tmp_path / "r.yaml"
    assert main(["export-recipe", str(record), "--out", str(out)]) == 0
    recipe = yaml.safe_load(out.read_text())
    assert list(recipe) == ["sparsity_stage", "quantization_stage"]  # prune, then quantize what is kept
    gptq = recipe["quantization_stage"]["quantization_modifiers"]["GPTQModifier"]
    (group,) = gptq["config_groups"].values()
    names = list(prunable_linears(load_model("tiny-llama")[0]))
    sparsity = recipe["sparsity_stage"]["sparsity_modifiers"]["WandaPruningModifier"]
    assert group["targets"] == names == sparsity["targets"]
    args = QuantizationArgs(**group["weights"])  # the library's own schema
    assert (args.num_bits, args.symmetric, args.strategy, args.group_size) == (4, True, "group", 32)
    QuantizationScheme(targets=group["targets"], weights=args)
    plain = tmp_path / "plain.json"  # an unquantized run: the sparsity stage only, as before
    assert main(["prune", "--model", "tiny-llama", "--sparsity", "0.5", "--nsamples", "2", "--seqlen", "32",
                 "--out", str(plain)]) == 0
    assert main(["export-recipe", str(plain), "--out", str(tmp_path / "p.yaml")]) == 0
    assert list(yaml.safe_load((tmp_path / "p.yaml").read_text())) == ["sparsity_stage"]


# --------------------------------------------------------------------------- CPU integer linears

@pytest.mark.parametrize("spec", [QuantSpec(8, None, True), QuantSpec(4, 32, False), QuantSpec(4, 64, True)])
def test_cpu_integer_linears_compute_the_quantized_layer(spec):
    from workbench.quantized_linear import Int4Linear, Int8Linear

    g = torch.Generator().manual_seed(1)
    linear = torch.nn.Linear(256, 48)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(48, 256, generator=g) * torch.linspace(0.1, 2, 256))
        linear.weight[torch.rand(48, 256, generator=g) < 0.5] = 0.0  # pruned half
    module = (Int8Linear if spec.wbits == 8 else Int4Linear)(linear, spec)
    x = torch.randn(2, 5, 256, generator=g)
    with torch.no_grad():
        expected = torch.nn.functional.linear(x, quantize_rtn(linear.weight, spec), linear.bias)
        got = module(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_the_cpu_integer_paths_refuse_what_their_kernels_cannot_hold():
    from workbench.quantized_linear import Int4Linear, Int8Linear

    linear = torch.nn.Linear(96, 8)
    with pytest.raises(WorkbenchError, match=r"^the int8 CPU path takes wbits=8, symmetric, one scale per output"):
        Int8Linear(linear, QuantSpec(8, None, False))
    with pytest.raises(WorkbenchError, match=r"^the int4 CPU path takes wbits=4 and group_size in \[32, 64"):
        Int4Linear(linear, QuantSpec(4, 64, False))  # 64 does not divide 96


def test_a_quantized_tiny_model_generates_with_integer_linears_as_with_its_dequantized_weights():
    from workbench.models import load_model, prunable_linears
    from workbench.prune import prune
    from workbench.quantized_linear import int_linears

    model, tok = load_model("tiny-llama")
    prune(model, tok, metric="magnitude", sparsity=0.5, progress=False)
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    reference, _tok = load_model("tiny-llama")  # the same pruned weights, quantized and kept in float
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for linear in prunable_linears(reference).values():
            linear.weight.copy_(quantize_rtn(linear.weight, QuantSpec(4, 32, False)))
        expected = reference(ids).logits
        old = weakref.ref(next(iter(prunable_linears(model).values())))
        assert int_linears(model, QuantSpec(4, 32, False)) == len(prunable_linears(reference))
        gc.collect()
        assert old() is None  # nothing (the kept model structure included) holds the float weights any more
        got = model(ids).logits
    assert torch.allclose(got, expected, atol=1e-3 * float(expected.abs().max()))
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 10)


@pytest.mark.parametrize("spec", [QuantSpec(8, None, True), QuantSpec(4, 32, False)])
def test_cpu_integer_linears_keep_the_integers_gptq_chose(spec):
    """A GPTQ-quantized linear carries its grid; the integer module computes with exactly those weights (GPTQ's
    grid comes from the weights mid-pass, so re-rounding on the final weights' own range would move some)."""
    from workbench.pruners import quantize_linear
    from workbench.quantized_linear import Int4Linear, Int8Linear
    from workbench.units import LayerStats

    g = torch.Generator().manual_seed(2)
    linear = torch.nn.Linear(128, 32, bias=False)  # the int4 kernel packs rows by 16
    x = torch.randn(64, 128, generator=g) @ torch.randn(128, 128, generator=g)  # correlated inputs
    with torch.no_grad():
        linear.weight.copy_(torch.randn(32, 128, generator=g))
        linear.weight[torch.rand(32, 128, generator=g) < 0.5] = 0.0
    quantize_linear(linear, spec, "gptq", LayerStats(xtx=x.t() @ x, n_windows=1))
    gptq = linear.weight.detach().clone()
    rerounded = quantize_rtn(gptq, spec)
    assert not torch.equal(rerounded, gptq)  # the case that matters: the own-range grid is another grid
    module = (Int8Linear if spec.wbits == 8 else Int4Linear)(linear, spec)
    inputs = torch.randn(3, 128, generator=g)
    with torch.no_grad():
        expected = torch.nn.functional.linear(inputs, gptq)
        got = module(inputs)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
