"""AlphaPruning, DLP, ATP and the papers' Global against direct computations of their formulas, and the
declared parameters every allocator is checked against."""

import math
import subprocess
import sys

import pytest
import torch

from workbench.allocation import ALLOCATORS, AllocationInput, allocate, check_params
from workbench.allocation.alphapruning import hill_alpha, matrix_alpha
from workbench.calibrate import calibrate
from workbench.models import layer_infos, load_model, prunable_linears
from workbench.prune import prune

SPARSITY = 0.7


# --------------------------------------------------------------------------- oracles (slow and obvious)

def alpha_oracle(weight: torch.Tensor) -> float:
    """The public code's PL_Alpha_Hill with xmin_peak, as a plain loop over candidate xmins."""
    return spectrum_alpha_oracle([float(s) ** 2 for s in torch.linalg.svdvals(weight.detach().double())])


def spectrum_alpha_oracle(eigenvalues: list[float]) -> float:
    eigs = sorted(eigenvalues)
    logs = [math.log(e) for e in eigs]
    log10 = torch.tensor([math.log10(e) for e in eigs], dtype=torch.float64)
    counts = torch.histc(log10, 100, min=float(log10.min()), max=float(log10.max()))
    width = (float(log10.max()) - float(log10.min())) / 100
    peak = 10 ** (float(log10.min()) + int(torch.argmax(counts)) * width)
    low, high = math.log10(0.95 * peak), 1.5 * peak
    best_d, best_alpha = 1.0, 0.0
    for i, xmin in enumerate(eigs[:-1]):
        if xmin < low:
            continue
        if xmin > high:
            break
        n = len(eigs) - i
        alpha = 1 + n / (sum(logs[i:]) - n * logs[i])
        if alpha > 1:
            d = max(abs(1 - (eigs[i + k] / xmin) ** (1 - alpha) - k / n) for k in range(n))
            if d < best_d:
                best_d, best_alpha = d, alpha
    return best_alpha


def planted(alpha: float, n: int = 400, out: int = 600, seed: int = 0) -> torch.Tensor:
    """A matrix whose WᵀW eigenvalues are the quantiles of a power law p(λ) ∝ λ^−alpha above 1."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    eigs = (1 - q) ** (-1 / (alpha - 1))
    u, _ = torch.linalg.qr(torch.randn(out, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (u * eigs.sqrt()) @ v.T


def tiny_inputs(model, calib):
    """Layer infos, dense Wanda scores |W|·sqrt(Σx²/N) (computed here, not by the pruners) and weights."""
    stats = calibrate(model, calib.input_ids, "dense", ("sq_norm",), progress=False)
    linears = prunable_linears(model)
    n = calib.input_ids.shape[0]
    scores = {name: lin.weight.detach().abs() * torch.sqrt(stats[name].sq_norm / n)[None, :]
              for name, lin in linears.items()}
    return AllocationInput(layer_infos(model), scores.__getitem__, weights=lambda name: linears[name].weight), scores


def by_block(inputs):
    out = {}
    for name, info in inputs.layers.items():
        out.setdefault(info.block, []).append(name)
    return [out[b] for b in sorted(out)]


# --------------------------------------------------------------------------- AlphaPruning

@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_alpha_of_a_planted_power_law_is_recovered(alpha):
    estimate = matrix_alpha(planted(alpha).float())
    assert estimate == pytest.approx(alpha, rel=0.10)


def test_hill_alpha_equals_the_loop_oracle():
    g = torch.Generator().manual_seed(3)
    for shape in ((48, 32), (32, 96), (64, 64)):
        w = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, shape[1],
                                                                                  dtype=torch.float64)
        eigs = torch.linalg.svdvals(w) ** 2
        assert hill_alpha(eigs) == pytest.approx(alpha_oracle(w), rel=1e-9)


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e3])  # 1e3: the window's lower bound log10(0.95·peak) bites
def test_hill_alpha_equals_the_loop_oracle_at_any_scale(scale):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(80, 40, generator=g, dtype=torch.float64) ** 3 * scale
    assert hill_alpha(torch.linalg.svdvals(w) ** 2) == pytest.approx(alpha_oracle(w), rel=1e-9)


def test_hill_alpha_window_lower_bound_is_the_public_codes():
    """A power law from 3 upward plus a cluster near 1000 (the histogram's peak): the window's lower bound
    log10(0.95 · peak) ≈ 2.98 admits the eigenvalues near 3, and the best fit starts there."""
    g = torch.Generator().manual_seed(3)
    a = 1.5 + 3 * torch.rand(1, generator=g).item()
    q = (torch.arange(50, dtype=torch.float64) + 0.5) / 50
    bump = 1000 * (1 + 0.01 * torch.rand(int(20 + 40 * torch.rand(1, generator=g).item()), generator=g,
                                         dtype=torch.float64))
    eigs = torch.cat([3.0 * (1 - q) ** (-1 / (a - 1)), bump])
    assert hill_alpha(eigs) == pytest.approx(spectrum_alpha_oracle(eigs.tolist()), rel=1e-9)


def test_hill_alpha_edge_cases_of_the_public_fit():
    assert hill_alpha(torch.tensor([1.0, 4.0])) == pytest.approx(1 + 2 / math.log(4))  # two eigenvalues suffice
    # one candidate xmin (λ = 1 is the peak; 2 > 1.5·peak): α = 1 + 3 / (ln 2 + ln 1e6)
    assert hill_alpha(torch.tensor([1.0, 2.0, 1e6])) == pytest.approx(1 + 3 / (math.log(2) + math.log(1e6)))
    # no candidate: the fullest bin's eigenvalues all lie above 1.5 x its left edge -> the public code's 0
    assert hill_alpha(torch.tensor([1.0, 6.0e9, 6.2e9, 1e20])) == 0.0
    for bad in (torch.tensor([3.0]), torch.tensor([0.0, 1.0, 2.0]), torch.tensor([-1.0, 2.0])):
        with pytest.raises(ValueError, match=r"^hill_alpha needs at least two positive eigenvalues$"):
            hill_alpha(bad)


def test_matrix_alpha_cache_tells_shapes_apart():
    w = planted(3.0, n=60, out=80).float()
    same_bytes = w.reshape(60, 80)  # identical content, another matrix
    assert matrix_alpha(w) == pytest.approx(hill_alpha(torch.linalg.svdvals(w.double()) ** 2), rel=1e-4)
    assert matrix_alpha(same_bytes) == pytest.approx(hill_alpha(torch.linalg.svdvals(same_bytes.double()) ** 2),
                                                     rel=1e-4)
    assert matrix_alpha(same_bytes) != matrix_alpha(w)


def test_alphapruning_ratios_on_tiny_llama(calib):
    model, _ = load_model("tiny-llama")
    inputs, _ = tiny_inputs(model, calib)
    eps = 0.2
    profile = allocate("alphapruning", inputs, SPARSITY, epsilon=eps)
    blocks = by_block(inputs)
    alphas = [sum(alpha_oracle(inputs.weights(n).float()) for n in names) / len(names) for names in blocks]
    lo, hi = min(alphas), max(alphas)
    raw = [(a - lo) / (hi - lo) * 2 * eps + 1 - eps for a in alphas]
    sizes = [sum(inputs.layers[n].numel for n in names) for names in blocks]
    scale = SPARSITY * sum(sizes) / sum(s * r for s, r in zip(sizes, raw, strict=True))
    for names, r in zip(blocks, raw, strict=True):
        for n in names:
            assert profile.layers[n] == pytest.approx(r * scale, abs=1e-6)
    assert profile.mean() == pytest.approx(SPARSITY, abs=1e-9)
    # larger α -> more pruning
    order = sorted(range(len(alphas)), key=alphas.__getitem__)
    means = list(profile.block_means().values())
    assert [means[i] for i in order] == sorted(means)


def test_alphapruning_epsilon_and_defaults_by_metric(calib):
    model, _ = load_model("tiny-llama")
    inputs, _ = tiny_inputs(model, calib)
    for bad in (0.0, -0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"allocation='alphapruning': epsilon=.*allowed: a number in \(0, 1\)"):
            allocate("alphapruning", inputs, SPARSITY, epsilon=bad)
    for metric in ("magnitude", "wanda", "sparsegpt"):  # the public main.py's one default, for every metric
        assert check_params("alphapruning", {}, metric)["epsilon"] == 0.3


def test_alphapruning_default_epsilon_is_the_public_main_py_default_and_says_so(calib):
    """haiquanlu/AlphaPruning main.py: --epsilon default 0.3 (its README example too); the scripts' 0.2 is
    one of seven Wanda runs. The default drives the allocation, and the help names its source."""
    from workbench.allocation import alphapruning as ap
    from workbench.allocation import declared_defaults

    assert ap.EPSILON == 0.3 and declared_defaults("alphapruning")["epsilon"] == 0.3
    param = ALLOCATORS["alphapruning"].param("epsilon")
    assert param.default == 0.3 and param.by_metric == () and "main.py default" in param.help
    assert "0.2 otherwise" not in ap.__doc__ and "public ``main.py`` default" in ap.__doc__
    model, _ = load_model("tiny-llama")
    inputs, _ = tiny_inputs(model, calib)
    default = allocate("alphapruning", inputs, SPARSITY)
    assert default.params["epsilon"] == 0.3
    assert default.layers == allocate("alphapruning", inputs, SPARSITY, epsilon=0.3).layers


# --------------------------------------------------------------------------- DLP

@pytest.mark.parametrize("strategy", ["median", "mean"])
def test_dlp_is_the_public_mapping_of_block_scores(calib, strategy):
    model, _ = load_model("tiny-llama")
    inputs, scores = tiny_inputs(model, calib)
    alpha = 0.15
    profile = allocate("dlp", inputs, SPARSITY, alpha=alpha, strategy=strategy, clamp="reference")
    blocks = by_block(inputs)
    flat = [torch.cat([scores[n].flatten() for n in names]).double() for names in blocks]
    v = [float(torch.median(f)) if strategy == "median" else float(f.mean()) for f in flat]
    imp = [1 - x / sum(v) for x in v]  # the public code, step by step
    scaled = [(i - min(imp)) / (max(imp) - min(imp)) * alpha * 2 for i in imp]
    density = [d - sum(scaled) / len(scaled) + (1 - SPARSITY) for d in scaled]
    for names, d in zip(blocks, density, strict=True):
        for n in names:
            assert profile.layers[n] == pytest.approx(1 - d, rel=1e-5)
    safe = allocate("dlp", inputs, SPARSITY, alpha=alpha, strategy=strategy)  # equal blocks: no clamping needed
    assert safe.layers == pytest.approx(profile.layers, abs=1e-9)


# --------------------------------------------------------------------------- ATP

@pytest.mark.parametrize("beta", [0.0, 0.05, -0.1, 0.3])
def test_atp_is_an_arithmetic_progression(calib, beta):
    model, _ = load_model("tiny-llama")
    inputs = AllocationInput(layer_infos(model))
    profile = allocate("atp", inputs, SPARSITY, beta=beta)
    blocks = len(by_block(inputs))
    expected = [min(SPARSITY + beta * (i - (blocks - 1) / 2), 0.99) for i in range(blocks)]
    if max(expected) == 0.99:  # at the bound the top block is capped; the others move up to keep S
        shift = (SPARSITY * blocks - sum(expected)) / (blocks - 1)
        expected = [e if e == 0.99 else e + shift for e in expected]
    assert list(profile.block_means().values()) == pytest.approx(expected, abs=1e-9)
    assert profile.mean() == pytest.approx(SPARSITY, abs=1e-9)


def test_atp_refuses_a_beta_with_no_valid_allocation():
    model, _ = load_model("tiny-llama")  # 3 blocks: |beta| <= min(1.4, 0.6) / 2 = 0.3 at 70%
    with pytest.raises(ValueError, match=r"allocation='atp': beta=0.31 .*allowed: \|beta\| <= 0.3"):
        allocate("atp", AllocationInput(layer_infos(model)), SPARSITY, beta=0.31)
    with pytest.raises(ValueError, match="beta='auto' is chosen by a run"):
        allocate("atp", AllocationInput(layer_infos(model)), SPARSITY, beta="auto")
    with pytest.raises(ValueError, match=r"beta='steep' is not allowed; allowed: a number .* or 'auto'"):
        allocate("atp", AllocationInput(layer_infos(model)), SPARSITY, beta="steep")


def test_atp_beta_limit_is_the_public_legality_bound():
    from workbench.allocation.atp import beta_limit

    assert beta_limit(0.3, 3) == pytest.approx(0.3)  # min(2S, 2(1 - S)) / (L - 1): the 2S side
    assert beta_limit(0.7, 3) == pytest.approx(0.3)  # the 2(1 - S) side
    assert beta_limit(0.5, 2) == pytest.approx(1.0)
    assert beta_limit(0.5, 1) == 0.0  # one block: no progression


# --------------------------------------------------------------------------- the papers' Global

def dense_tiny() -> torch.nn.Module:
    """tiny-llama with every prunable weight random and non-zero, o_proj and down_proj larger: their inputs are
    small, and their scores would otherwise all fall below the threshold (capped at max_layer_sparsity)."""
    model, _ = load_model("tiny-llama")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, lin in prunable_linears(model).items():
            scale = 5.0 if name.endswith(("o_proj", "down_proj")) else 0.05
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * scale)
    return model


def test_global_threshold_is_the_mask(calib):
    """Dense mode: the pruned weights are exactly those whose dense Wanda score is below one global threshold."""
    model = dense_tiny()
    _, scores = tiny_inputs(model, calib)
    everything = torch.cat([s.flatten() for s in scores.values()])
    k = int(SPARSITY * everything.numel())
    threshold = torch.sort(everything).values[k - 1]
    assert max(float((s <= threshold).float().mean()) for s in scores.values()) < 0.95  # no layer capped
    prune(model, metric="wanda", allocation="global", sparsity=SPARSITY, calibration=calib, mode="dense",
          progress=False)
    for name, lin in prunable_linears(model).items():
        expected = scores[name] <= threshold
        assert torch.equal(lin.weight == 0, expected), name

    per_row = dense_tiny()
    prune(per_row, metric="wanda", allocation="global_per_row", sparsity=SPARSITY, calibration=calib, mode="dense",
          progress=False)
    differs = [n for n, lin in prunable_linears(per_row).items() if not torch.equal(lin.weight == 0, scores[n]
                                                                                    <= threshold)]
    assert differs  # per-row re-selection changes the mask


# --------------------------------------------------------------------------- declared parameters

def test_every_allocator_declares_its_keywords():
    import inspect

    for name, allocator in ALLOCATORS.items():
        keywords = [p for p in inspect.signature(allocator.fn).parameters][2:]
        assert sorted(keywords) == sorted(p.name for p in allocator.params), name


@pytest.mark.parametrize("allocation,key,close", [("owl", "lamda", "lam"), ("alphapruning", "eps", "epsilon"),
                                                   ("dlp", "alhpa", "alpha"), ("atp", "betta", "beta"),
                                                   ("global", "scores", "score"), ("er", "lam", None)])
def test_unknown_key_names_allocator_key_allowed_and_closest(allocation, key, close):
    with pytest.raises(ValueError) as err:
        check_params(allocation, {key: 0.1})
    text = str(err.value)
    assert f"allocation={allocation!r} has no parameter {key!r}; allowed:" in text
    assert (f"did you mean {close!r}" in text) if close else "did you mean" not in text


def test_cli_prints_one_line_for_a_misspelt_key(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "workbench", "prune", "--model", "tiny-llama", "--allocation", "owl",
                           "--alloc-param", "lamda=0.1", "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "allocation='owl' has no parameter 'lamda'" in proc.stderr and "did you mean 'lam'" in proc.stderr
    assert not out.exists()


def test_front_ends_list_the_registry():
    from workbench.allocation import allocation_names, check_allocator
    from workbench.widgets.runner import ALLOCATIONS

    assert list(ALLOCATIONS) == allocation_names() == [*ALLOCATORS, "besa"]
    assert {"alphapruning", "dlp", "atp", "global", "global_per_row"} <= set(ALLOCATORS)
    proc = subprocess.run([sys.executable, "-m", "workbench", "prune", "--help"], capture_output=True, text=True,
                          timeout=120)
    for name in allocation_names():
        allocator = check_allocator(name)
        assert name in proc.stdout
        for p in allocator.public_params():
            assert f"{p.name}=" in proc.stdout
