"""Every DSA op against a formula written out here (plain ``math`` / numpy on small float64 inputs), and
allocation functions on hand-made block scores (no model)."""

import dataclasses
import math
import statistics

import numpy as np
import pytest
import torch

from workbench.allocation.dsa import ops
from workbench.allocation.dsa.function import PRESETS, AllocationFunction, InvalidFunction, UnitVectors, load_function

X = [0.0, -1.5, 2.0, 0.25, 3.0, -0.5, 0.0, 1.0]  # zeros, negatives, positives


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def close(got, expected, rel=1e-12, abs_=1e-12):
    got = got.tolist() if isinstance(got, torch.Tensor) else got
    expected = expected if isinstance(expected, list) else [expected]
    got = got if isinstance(got, list) else [got]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        if math.isnan(e):
            assert math.isnan(g), (got, expected)
        else:
            assert g == pytest.approx(e, rel=rel, abs=abs_), (got, expected)


# --------------------------------------------------------------------------- pre ops

def _normalize(x):
    mean = sum(x) / len(x)
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / (len(x) - 1))
    return [0.0] * len(x) if std == 0 else [(v - mean) / std for v in x]


PRE_FORMULAS = {
    "no_op": lambda x: list(x),
    "abs": lambda x: [abs(v) for v in x],
    "log": lambda x: [math.log((1.0 if v <= 0 else v) + 1e-6) for v in x],
    "abslog": lambda x: [math.log(abs(1.0 if v == 0 else v)) for v in x],
    "pow": lambda x: [v * v for v in x],
    "exp": lambda x: [math.exp(v) for v in x],
    "normalize": _normalize,
    "normalize_np": lambda x: [(v - statistics.fmean(x)) / (statistics.pstdev(x) + 1e-6) for v in x],
    "sigmoid": lambda x: [1 / (1 + math.exp(-v)) for v in x],
    "tanh": lambda x: [math.tanh(v) for v in x],
    "minmax": lambda x: [(v - min(x)) / (max(x) - min(x) + 1e-9) for v in x],
}
PRE_INPUTS = [X, [1.0, 2.0, 4.0, 8.0], [2.5, 2.5, 2.5], [-3.0, -0.001, 0.0, 0.001]]


def test_every_op_has_a_formula():
    assert set(PRE_FORMULAS) == set(ops.PRE)
    assert set(REDUCTION_FORMULAS) == set(ops.TENSOR_REDUCTIONS)
    assert set(MATRIX_FORMULAS) == set(ops.MATRIX_REDUCTIONS)
    assert set(POST_FORMULAS) == set(ops.POST)
    assert set(ops.REDUCTIONS) == set(ops.TENSOR_REDUCTIONS) | set(ops.MATRIX_REDUCTIONS)


@pytest.mark.parametrize("name", sorted(ops.PRE))
@pytest.mark.parametrize("values", PRE_INPUTS, ids=["mixed", "powers", "constant", "near_zero"])
def test_pre_op_equals_its_formula(name, values):
    assert name in PRE_FORMULAS, f"pre op {name!r} has no formula in this test"
    close(ops.PRE[name](t(values)), PRE_FORMULAS[name](values))


def test_pre_op_zero_handling_as_the_public_code():
    close(ops.PRE["log"](t([0.0, -2.0, 1.0])), [math.log(1 + 1e-6)] * 2 + [math.log(1 + 1e-6)])
    close(ops.PRE["abslog"](t([0.0, -2.0, 1e-300])), [0.0, math.log(2.0), math.log(1e-300)])
    close(ops.PRE["normalize"](t([4.0] * 5)), [0.0] * 5)
    close(ops.PRE["minmax"](t([4.0] * 3)), [0.0] * 3)


# --------------------------------------------------------------------------- reductions

def _entropy(x):
    p = [v for v in x if v >= 0]
    total = sum(p)
    if not p or total <= 0:
        return math.nan
    p = [v / total for v in p]
    return -sum(v * math.log(v) for v in p if v > 0)


def _geomean(x):
    if any(v < 0 for v in x):
        return math.nan
    if any(v == 0 for v in x):
        return 0.0
    return math.exp(sum(math.log(v) for v in x) / len(x))


REDUCTION_FORMULAS = {
    "no_op": lambda x: sum(x) / len(x),  # the vector stays; the public compute_importance takes its mean
    "mean": lambda x: sum(x) / len(x),
    "var": statistics.variance,  # unbiased
    "std": statistics.stdev,  # unbiased
    "fro": lambda x: math.sqrt(sum(v * v for v in x)),
    "gram": lambda x: sum(v * v for v in x),
    "l1": lambda x: sum(abs(v) for v in x) / len(x),
    "entropy": _entropy,
    "geomean": _geomean,
}
REDUCTION_INPUTS = [X, [1.0, 2.0, 4.0, 8.0], [0.5, 0.0, 1.5, 3.0], [0.1, 0.2, 0.3, 0.4, 7.0], [-1.0, -2.0, -0.5],
                    [0.1, 0.2, 0.3]]


@pytest.mark.parametrize("name", sorted(ops.TENSOR_REDUCTIONS))
@pytest.mark.parametrize("values", REDUCTION_INPUTS,
                         ids=["mixed", "powers", "with_zero", "positive", "negative", "mass_below_one"])
def test_tensor_reduction_equals_its_formula(name, values):
    assert name in REDUCTION_FORMULAS, f"reduction {name!r} has no formula in this test"
    expected = REDUCTION_FORMULAS[name](values)
    close(ops.TENSOR_REDUCTIONS[name](t(values)), expected)
    value, scale = ops.reduce(name, t(values), [(1, len(values))])
    close(value, expected)
    if not math.isnan(expected):  # the spread of mean values is judged against the magnitude of the terms
        close(scale, sum(abs(v) for v in values) / len(values) if name in ("mean", "no_op") else abs(expected))


def test_entropy_and_geomean_edge_cases():
    close(ops.TENSOR_REDUCTIONS["entropy"](t([1.0, 1.0, 1.0, 1.0])), math.log(4))
    close(ops.TENSOR_REDUCTIONS["entropy"](t([-5.0, 2.0, 0.0, 2.0])), math.log(2))  # negatives dropped, 0 log 0 = 0
    close(ops.TENSOR_REDUCTIONS["entropy"](t([0.0, 0.0])), math.nan)  # no mass
    assert ops.TENSOR_REDUCTIONS["entropy"](torch.tensor([-1.0, 0.0], dtype=torch.float64)).dtype == torch.float64
    close(ops.TENSOR_REDUCTIONS["geomean"](t([2.0, 8.0])), 4.0)
    close(ops.TENSOR_REDUCTIONS["geomean"](t([2.0, 0.0, 8.0])), 0.0)
    close(ops.TENSOR_REDUCTIONS["geomean"](t([2.0, 0.0, -8.0])), math.nan)
    big = t([1e-200] * 1000)  # the product would underflow; exp(mean log x) does not
    close(ops.TENSOR_REDUCTIONS["geomean"](big), 1e-200, rel=1e-9)


# --------------------------------------------------------------------------- matrix reductions

def _np_view(m):
    rs, cs = max(1, m.shape[0] // 256), max(1, m.shape[1] // 256)
    return m[::rs, ::cs][:256, :256]


def _np_rank(m):
    v = _np_view(m)
    return np.linalg.matrix_rank(v) / min(v.shape)


def _np_corr(m):
    v = _np_view(m)
    if v.shape[0] < 2:
        return math.nan
    c = np.corrcoef(v)
    n = c.shape[0]
    return sum(abs(c[i, j]) for i in range(n) for j in range(n) if i != j) / (n * n - n)


def _np_slogdet(m):
    v = _np_view(m)
    g = v @ v.T / v.shape[1]
    return np.linalg.slogdet(g + 1e-6 * np.eye(g.shape[0]))[1] / g.shape[0]


MATRIX_FORMULAS = {"layer_rank": _np_rank, "layer_corr": _np_corr, "layer_slogdet": _np_slogdet}


def _matrices():
    rng = np.random.default_rng(0)
    low_rank = rng.normal(size=(6, 2)) @ rng.normal(size=(2, 9))  # rank 2 of 6
    return {"random": rng.normal(size=(5, 7)), "low_rank": low_rank, "wide": rng.normal(size=(3, 11)) ** 2,
            "large": rng.normal(size=(600, 300))}  # a strided view: every 2nd row, 256 x 256


@pytest.mark.parametrize("name", sorted(ops.MATRIX_REDUCTIONS))
@pytest.mark.parametrize("which", sorted(_matrices()))
def test_matrix_reduction_equals_its_formula(name, which):
    assert name in MATRIX_FORMULAS, f"matrix reduction {name!r} has no formula in this test"
    m = _matrices()[which]
    close(ops.MATRIX_REDUCTIONS[name](torch.from_numpy(m)), MATRIX_FORMULAS[name](m), rel=1e-8, abs_=1e-10)


def test_matrix_reductions_known_values_and_the_average_over_layers():
    m = _matrices()["low_rank"]
    close(ops.MATRIX_REDUCTIONS["layer_rank"](torch.from_numpy(m)), 2 / 6)
    close(ops.MATRIX_REDUCTIONS["layer_corr"](t([[1.0, 2.0, 3.0]])), math.nan)  # one row: no pair
    a, b = _matrices()["random"], _matrices()["wide"]
    flat = torch.cat([torch.from_numpy(a).reshape(-1), torch.from_numpy(b).reshape(-1)])
    for name, formula in MATRIX_FORMULAS.items():
        value, scale = ops.reduce(name, flat, [a.shape, b.shape])
        close(value, (formula(a) + formula(b)) / 2, rel=1e-8)
        close(scale, abs(value))
    with pytest.raises(ValueError, match="reduction='bogus'"):
        ops.reduce("bogus", flat, [a.shape, b.shape])


# --------------------------------------------------------------------------- post ops

POST_FORMULAS = {
    "no_op": lambda v: v,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "exp": math.exp,
    "log": math.log,
    "abs": abs,
    "sigmoid": lambda v: 1 / (1 + math.exp(-v)),
    "tanh": math.tanh,
    "softplus": lambda v: math.log1p(math.exp(v)),
    "sqrt": math.sqrt,
}
UNIT = [-0.9, -0.2, 0.0, 0.3, 0.95]  # the domain of asin / acos
POSITIVE = [0.05, 1.0, 7.5, 123.0]  # the domain of log / sqrt
ANY = [-3.0, -0.3, 0.0, 0.7, 3.0, 12.0]
POST_INPUTS = {"asin": UNIT, "acos": UNIT, "log": POSITIVE, "sqrt": POSITIVE}


@pytest.mark.parametrize("name", sorted(ops.POST))
def test_post_op_equals_its_formula(name):
    assert name in POST_FORMULAS, f"post op {name!r} has no formula in this test"
    values = POST_INPUTS.get(name, ANY)
    close(ops.POST[name](t(values)), [POST_FORMULAS[name](v) for v in values])


def test_post_ops_outside_their_domain_are_not_finite():
    for name, value in (("asin", 1.5), ("acos", -1.5), ("log", -1.0), ("sqrt", -4.0)):
        assert math.isnan(float(ops.POST[name](t([value]))[0])), name
    assert float(ops.POST["log"](t([0.0]))[0]) == -math.inf


# --------------------------------------------------------------------------- functions on hand-made blocks

def f32(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_pre_ops_see_the_blocks_concatenated_vector():
    # matrices of very different scales in one block: z-scores / min-max over the concatenated vector
    # differ from z-scores / min-max per matrix
    blocks = [[f32([[1.0, 2.0], [3.0, 4.0]]), f32([[100.0, 130.0], [170.0, 400.0]])],
              [f32([[1.0, 5.0, 2.0], [7.0, 3.0, 4.0]]), f32([[1000.0, 2000.0, 1500.0]])]]
    vectors = [[v for m in block for v in m.double().reshape(-1).tolist()] for block in blocks]

    # Σ z² of a z-scored vector of n entries is n − 1: 7 and 8 for the whole blocks of 8 and 9 entries,
    # (4 − 1) + (4 − 1) = 6 and (6 − 1) + (3 − 1) = 7 if each matrix were z-scored on its own
    gram = AllocationFunction(("normalize",), "gram").block_values(blocks)
    close(gram, [7.0, 8.0])

    # mean of the min-max'd block vector against the mean of per-matrix min-max
    concatenated = [statistics.mean(PRE_FORMULAS["minmax"](v)) for v in vectors]
    per_matrix = [statistics.mean([y for m in block for y in PRE_FORMULAS["minmax"](m.double().reshape(-1).tolist())])
                  for block in blocks]
    got = AllocationFunction(("minmax",), "mean").block_values(blocks)
    close(got, concatenated)
    assert all(abs(g - p) > 0.1 for g, p in zip(got, per_matrix, strict=True)), (got, per_matrix)

    # mean |z| of the first matrix's entries inside the block is far from its own per-matrix value
    z = PRE_FORMULAS["normalize"](vectors[0])
    assert abs(statistics.mean(z[:4])) > 0.5  # the small matrix sits well below the block's mean
    close(AllocationFunction(("normalize",), "l1").block_values(blocks),
          [statistics.mean(abs(v) for v in PRE_FORMULAS["normalize"](vec)) for vec in vectors])

    # matrix reductions get the block's pre-processed vector cut back into the layers' shapes
    fn = AllocationFunction(("normalize",), "layer_slogdet")
    expected = []
    for block, vec in zip(blocks, vectors, strict=True):
        z = np.array(PRE_FORMULAS["normalize"](vec))
        parts, start = [], 0
        for m in block:
            parts.append(_np_slogdet(z[start:start + m.numel()].reshape(tuple(m.shape))))
            start += m.numel()
        expected.append(sum(parts) / len(parts))
    close(fn.block_values(blocks), expected, rel=1e-8)


NP_PRE = {"abs": np.abs, "pow": np.square, "exp": np.exp, "tanh": np.tanh, "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
          "abslog": lambda x: np.log(np.abs(np.where(x == 0, 1.0, x))),
          "minmax": lambda x: (x - x.min()) / (x.max() - x.min() + 1e-9),
          "normalize": lambda x: (x - x.mean()) / x.std(ddof=1)}


def _whole_vector_oracle(fn, blocks):
    """Reduced block values the slow way: every pre op (numpy) on the whole block vector,
    the vector cut back into the layers' matrices, then the matrix formula on each and the mean."""
    values = []
    for block in blocks:
        z = np.concatenate([m.double().numpy().reshape(-1) for m in block])
        for op in fn.pre:
            z = NP_PRE[op](z)
        parts, start = [], 0
        for m in block:
            parts.append(MATRIX_FORMULAS[fn.reduction](z[start:start + m.numel()].reshape(tuple(m.shape))))
            start += m.numel()
        values.append(sum(parts) / len(parts))
    return values


@pytest.mark.parametrize("pre", [("abs",), ("tanh", "pow"), ("sigmoid",), ("abslog", "exp"), ("minmax",),
                                 ("tanh", "normalize")])
@pytest.mark.parametrize("reduction", sorted(ops.MATRIX_REDUCTIONS))
def test_matrix_reductions_read_strided_views_of_the_pre_processed_block(pre, reduction):
    # layers larger than the 256 x 256 view: element-wise chains run on the views only, chains with
    # block statistics (minmax, normalize) on the whole vector; both equal the whole-vector oracle
    blocks = _random_blocks([[(300, 40), (20, 520)], [(520, 30), (40, 20)]], seed=3)
    blocks[1][0] = blocks[1][0][torch.arange(520) % 10]  # 10 distinct rows: rank 10 of 30 after any pre op
    before = [[m.clone() for m in b] for b in blocks]
    fn = AllocationFunction(pre, reduction)
    close(fn.reduced_values(blocks)[0], _whole_vector_oracle(fn, blocks), rel=1e-8, abs_=1e-10)
    assert all(torch.equal(m, o) for b, ob in zip(blocks, before, strict=True) for m, o in zip(b, ob, strict=True))


def _random_blocks(shapes_per_block, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.rand(shape, generator=gen, dtype=torch.float32) * (b + 1) for shape in shapes]
            for b, shapes in enumerate(shapes_per_block)]


def test_normalize_var_is_constant_up_to_rounding():
    blocks = _random_blocks([[(8, 16), (16, 8)], [(8, 16), (4, 8)], [(12, 5)]])
    with pytest.raises(InvalidFunction, match="constant up to rounding"):
        AllocationFunction(("normalize",), "var").block_values(blocks)
    # std of z-scores as well; a var that is a property of the scores is fine
    with pytest.raises(InvalidFunction, match="constant up to rounding"):
        AllocationFunction(("normalize",), "std", ("abs",)).block_values(blocks)
    assert len(set(AllocationFunction(("no_op",), "var").block_values(blocks))) == 3


def test_the_poster_functions_torch_reading_is_refused_by_name():
    with pytest.raises(InvalidFunction, match="poster_torch.*degenerate.*Use 'poster'"):
        load_function("poster_torch")


# --------------------------------------------------------------------------- the public space, NO_OP, poster

def test_public_space_names_only_ops_of_the_public_code():
    """lliai/DSA lib/autolayer.py: _STICK_OPS (NO_OP ... MMS), the _DEFORM_OPS that run on the block vector,
    _POST_OPS (no SQRT). The project's readings (gram of a vector, layer_* on matrices, sqrt) are not in it."""
    assert ops.PUBLIC_PRE == ("no_op", "abs", "log", "abslog", "pow", "exp", "normalize", "normalize_np",
                              "sigmoid", "tanh", "minmax")
    assert ops.PUBLIC_REDUCTIONS == ("no_op", "mean", "var", "std", "fro", "l1", "entropy", "geomean")
    assert ops.PUBLIC_POST == ("no_op", "sin", "cos", "tan", "asin", "acos", "atan", "exp", "log", "abs",
                               "sigmoid", "tanh", "softplus")
    for names, stage in ((ops.PUBLIC_PRE, ops.PRE), (ops.PUBLIC_REDUCTIONS, ops.REDUCTIONS),
                         (ops.PUBLIC_POST, ops.POST)):
        assert isinstance(names, tuple) and len(set(names)) == len(names) and set(names) <= set(stage)
    assert not {"gram", *ops.MATRIX_REDUCTIONS} & set(ops.PUBLIC_REDUCTIONS) and "sqrt" not in ops.PUBLIC_POST
    # every public-space function is a valid function of the project
    AllocationFunction(ops.PUBLIC_PRE[-2:], ops.PUBLIC_REDUCTIONS[0], ops.PUBLIC_POST[-2:], 0.08, 1)


def test_op_notes_do_not_call_gram_or_corref_public_on_a_vector():
    import inspect

    source = inspect.getsource(ops)
    assert "public GRAM on a vector: x @ x.T is" not in source and "constant 1 (corrcoef)" not in source
    assert "GRAM asserts a 2-D input" in source and "Project reading, not the public op" in source


def test_no_op_reduction_averages_the_post_ops_applied_to_every_element():
    """Public NO_OP: the vector stays, the post ops act element-wise, compute_importance takes the mean."""
    blocks = _random_blocks([[(4, 6), (6, 4)], [(4, 6), (3, 5)], [(5, 5)]], seed=3)
    vectors = [[abs(v) for m in block for v in m.double().reshape(-1).tolist()] for block in blocks]
    got = AllocationFunction(("abs",), "no_op", ("sin", "exp")).block_values(blocks)
    close(got, [statistics.fmean(math.exp(math.sin(v)) for v in vec) for vec in vectors], rel=1e-12)
    scalar = AllocationFunction(("abs",), "mean", ("sin", "exp")).block_values(blocks)  # post on the mean
    close(scalar, [math.exp(math.sin(statistics.fmean(vec))) for vec in vectors], rel=1e-12)
    assert all(abs(a - b) > 1e-3 for a, b in zip(got, scalar, strict=True))
    # without post ops NO_OP is the mean; the post ops are part of what is cached before the mapping
    close(AllocationFunction(("abs",), "no_op").block_values(blocks), [statistics.fmean(v) for v in vectors])
    assert AllocationFunction(reduction="no_op", post=("sin",)).reduced_key() != \
        AllocationFunction(reduction="no_op", post=("cos",)).reduced_key()
    assert AllocationFunction(reduction="mean", post=("sin",)).reduced_key() == \
        AllocationFunction(reduction="mean", post=("cos",)).reduced_key()
    # an element outside asin's domain: invalid under the project's rule, the public mean-of-NaN -> 0 otherwise
    big, small = [[m * 10 + 2 for m in block] for block in blocks], [[m / 4 for m in block] for block in blocks]
    with pytest.raises(InvalidFunction, match="post op 'asin'"):
        AllocationFunction(("abs",), "no_op", ("asin",)).block_values(big + small)
    ref = AllocationFunction(("abs",), "no_op", ("asin",), nonfinite="reference").block_values(big + small)
    assert ref[:3] == [0.0] * 3 and all(v > 0 for v in ref[3:])


def test_normalize_np_is_the_public_numpy_branch():
    """np.std (population, ddof 0) + 1e-6; NaN -> 0; a constant vector gives zeros (0 / 1e-6)."""
    x = np.array(X)
    close(ops.PRE["normalize_np"](t(X)), ((x - x.mean()) / (x.std() + 1e-6)).tolist())
    close(ops.PRE["normalize_np"](t([4.0] * 5)), [0.0] * 5)
    close(ops.PRE["normalize_np"](t([7.0])), [0.0])  # one element: std 0, not NaN as the unbiased one
    close(ops.PRE["normalize_np"](t([1.0, math.nan, 3.0])), [0.0] * 3)
    assert "normalize_np" not in ops.ELEMENTWISE


def _spread_blocks(sigmas, n=4000, seed=0):
    """Blocks of positive, skewed scores (|normal| · lognormal, like Wanda's) with score spreads ``sigmas``."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for sigma in sigmas:
        raw = torch.randn(n, generator=g).abs() * torch.exp(0.5 * torch.randn(n, generator=g))
        raw = raw / raw.std(correction=0) * sigma
        blocks.append([raw[: n // 2].reshape(40, -1).float(), raw[n // 2:].reshape(50, -1).float()])
    return blocks


def test_poster_numpy_reading_is_a_function_of_each_blocks_score_spread():
    sigmas = [0.21, 0.3, 0.45, 0.62, 1.0, 3.2, 9.9]  # the range of SmolLM2's block score spreads
    blocks = _spread_blocks(sigmas)
    poster = load_function("poster")
    assert poster == PRESETS["poster"]
    assert (poster.pre, poster.reduction, poster.post, poster.lam, poster.direction) == \
        (("normalize_np",), "var", ("abs", "no_op"), 0.08, 1)
    values = poster.block_values(blocks)
    expected = []
    for block in blocks:
        x = np.concatenate([m.double().numpy().reshape(-1) for m in block])
        sd = x.std()
        expected.append(len(x) / (len(x) - 1) * sd ** 2 / (sd + 1e-6) ** 2)
    close(values, expected, rel=1e-12)
    assert max(values) - min(values) > 1e3 * 1e-9 * max(values)  # far above the rounding bound
    ratios = poster.sparsities(blocks, 0.7, weights=[4000] * len(blocks))
    assert ratios == sorted(ratios)  # larger spread -> more pruning, strictly
    assert len(set(ratios)) == len(ratios) and max(ratios) - min(ratios) == pytest.approx(0.16)
    # the torch normalize (unbiased std, no guard) makes the same function degenerate on the same scores
    with pytest.raises(InvalidFunction, match="constant up to rounding"):
        AllocationFunction(("normalize",), "var", ("abs", "no_op")).block_values(blocks)


def test_readme_maps_nan_block_values_to_zero_under_the_reference_rule():
    # abslog -> var -> atan -> asin: asin(atan(v)) is NaN where v > tan(1) = 1.557
    blocks = [[f32([[1e-3, 1.0], [1e3, 1e-2]]), f32([[5.0, 0.0, 50.0]])],  # log|x| varies a lot
              [f32([[1.0, 1.1], [0.9, 1.2]]), f32([[1.05, 0.0, 0.95]])],  # close to 1 (0 -> log 1 = 0)
              [f32([[2.0, 3.0], [1.0, 2.5]]), f32([[1.5, 2.2, 1.2]])]]
    variances = []
    for block in blocks:
        vec = [v for m in block for v in m.double().reshape(-1).tolist()]
        variances.append(statistics.variance(PRE_FORMULAS["abslog"](vec)))
    assert variances[0] > math.tan(1) > max(variances[1:])
    fn = PRESETS["readme"]
    assert (fn.pre, fn.reduction, fn.post, fn.lam, fn.nonfinite) == (("abslog",), "var", ("atan", "asin"), 0.08,
                                                                      "reference")
    expected = [0.0] + [math.asin(math.atan(v)) for v in variances[1:]]
    close(fn.block_values(blocks), expected)
    ratios = fn.sparsities(blocks, 0.5, weights=[7, 7, 7])
    assert ratios[0] == pytest.approx(min(ratios))  # the NaN block got the lowest value: least pruned
    strict = dataclasses.replace(fn, nonfinite="invalid")
    with pytest.raises(InvalidFunction, match="post op 'asin' gave non-finite values"):
        strict.block_values(blocks)


@pytest.mark.parametrize("make,match", [
    (lambda: AllocationFunction.from_json("not json"), "function: .*not valid JSON"),
    (lambda: AllocationFunction(pre=("bogus",)), "pre op 'bogus' is not allowed"),
    (lambda: AllocationFunction(post=("abs", "bogus")), "post op 'bogus' is not allowed"),
    (lambda: AllocationFunction(reduction="bogus"), "reduction='bogus' is not allowed"),
    (lambda: AllocationFunction(lam=0.7), "lam=0.7 must be"),
    (lambda: AllocationFunction(lam=-0.1), "lam=-0.1 must be"),
    (lambda: AllocationFunction(direction=0), "direction=0 must be 1 or -1"),
    (lambda: AllocationFunction(pre="abs"), "pre='abs' must be a list"),
    (lambda: AllocationFunction.from_json('{"pre": "abs"}'), "pre='abs' must be a list"),
    (lambda: AllocationFunction.from_json('{"lam": "big"}'), "lam='big' must be a number"),
    (lambda: AllocationFunction.from_json('{"lambda": 0.1}'), "unknown fields.*lambda"),
    (lambda: load_function("no-such-preset"), "function='no-such-preset'"),
])
def test_bad_functions_name_the_parameter(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_shipped_functions_load_by_preset_name_file_name_and_old_path(tmp_path, monkeypatch):
    import json

    from workbench.allocation.dsa.function import FUNCTIONS, PRESETS, AllocationFunction, load_function

    shipped = FUNCTIONS / "dsa-evolved.json"
    expected = AllocationFunction.from_dict(json.loads(shipped.read_text()))
    assert PRESETS["searched"] == expected
    seed0 = AllocationFunction.from_dict(json.loads((FUNCTIONS / "dsa-study-evo-seed0.json").read_text()))
    assert seed0 != expected
    monkeypatch.chdir(tmp_path)  # no such files here: the shipped ones (package data) are found
    assert load_function("dsa-evolved.json") == expected
    assert load_function("dsa-study-evo-seed0.json") == seed0
    assert load_function("data/functions/dsa-evolved.json") == expected  # the location before package data
    with pytest.raises(ValueError, match="neither a preset"):
        load_function("data/functions/no-such.json")
    with pytest.raises(ValueError, match="neither a preset"):
        load_function("elsewhere/dsa-evolved.json")  # only a bare name or the old folder names a shipped one


# --------------------------------------------------------------------------- non-finite and degenerate stages
# (mutation testing: the stage named in each refusal, and which rule applies, were unasserted)

def _blocks(*values):
    """One 2 x 2 score matrix per block, every entry ``value``: blocks whose reductions are known by hand."""
    return [[torch.full((2, 2), float(v))] for v in values]


def test_invalid_rule_refuses_non_finite_pre_ops_and_reductions_by_stage():
    blocks = _blocks(1000.0, 1.0, 2.0)  # exp(1000) = inf in the first block
    with pytest.raises(InvalidFunction, match=r"pre ops 'exp' gave non-finite values \(\[inf"):
        AllocationFunction(pre=("exp",), reduction="mean", nonfinite="invalid").reduced_values(blocks)
    # the reference rule lets the pre ops through; the mean of the inf block is inf, mapped later
    values, _ = AllocationFunction(pre=("exp",), reduction="mean", nonfinite="reference").reduced_values(blocks)
    assert values[0] == math.inf and values[1:] == pytest.approx([math.e, math.e ** 2])
    # finite pre ops, non-finite reduction: the Frobenius norm of 1e308s overflows -> refused at "reduction"
    huge = [[torch.tensor([[v, v]], dtype=torch.float64)] for v in (1e308, 1.0, 3.0)]  # sums overflow, not values
    with pytest.raises(InvalidFunction, match=r"reduction 'fro' gave non-finite values"):
        AllocationFunction(reduction="fro", nonfinite="invalid").reduced_values(huge)


def test_equal_block_values_are_refused_naming_reduction_and_pre_ops():
    with pytest.raises(InvalidFunction, match=r"reduction 'mean' after pre ops \['abs'\]"):
        AllocationFunction(pre=("abs",), reduction="mean").reduced_values(_blocks(2.0, -2.0, 2.0))


def test_from_dict_keeps_the_name_and_defaults_to_a_no_op_pre_chain():
    fn = AllocationFunction.from_dict({"reduction": "var", "post": ["abs"], "name": "mine"})
    assert fn.name == "mine" and fn.pre == ("no_op",) and fn.nonfinite == "invalid"
    assert AllocationFunction.from_dict({}).name == ""


# --------------------------------------------------------------------------- second mutation round: the edges
# of the rounding check, the reference rule's values, load_function's resolution order, weights and direction

def test_the_rounding_check_refuses_two_equal_values_and_a_spread_at_the_threshold():
    from workbench.allocation.dsa.function import NOISE_RTOL, _check_spread

    _check_spread(torch.tensor([5.0]), 5.0, "one value")  # nothing to compare yet
    with pytest.raises(InvalidFunction, match="^two: block values are constant"):
        _check_spread(torch.tensor([3.0, 3.0], dtype=torch.float64), 3.0, "two")
    with pytest.raises(InvalidFunction, match="^edge: "):
        _check_spread(torch.tensor([0.0, NOISE_RTOL], dtype=torch.float64), 1.0, "edge")  # spread == rtol·scale
    _check_spread(torch.tensor([0.0, 2 * NOISE_RTOL], dtype=torch.float64), 1.0, "above")


def test_post_ops_scale_the_rounding_check_by_the_largest_finite_value():
    # 1e-13 apart at 1.0 is rounding (1e-13 <= 1e-9 x 1): refused, naming the post op
    with pytest.raises(InvalidFunction, match=r"^post op 'no_op': block values are constant"):
        AllocationFunction(post=("no_op",)).post_values([1.0, 1.0 + 1e-13])
    # no finite value at all after a post op under the reference rule: nothing to check, then NaN -> 0, inf -> -1
    assert AllocationFunction(post=("no_op",), nonfinite="reference").post_values([math.inf, math.nan]) == [-1.0, 0.0]


def test_the_reference_rule_maps_nan_to_zero_and_both_infinities_to_minus_one():
    fn = AllocationFunction(post=("no_op",), nonfinite="reference")
    assert fn.post_values([1.0, math.inf, math.nan, 2.0, -math.inf]) == [1.0, -1.0, 0.0, 2.0, -1.0]
    with pytest.raises(InvalidFunction, match=r"^the public NaN -> 0, inf -> -1 rule: block values are constant"):
        fn.post_values([math.nan, 0.0, math.nan])


def test_load_function_prefers_a_file_in_the_working_directory_and_reads_padded_json(tmp_path, monkeypatch):
    import json

    local = tmp_path / "data" / "functions"
    local.mkdir(parents=True)
    mine = AllocationFunction(("abs",), "l1", ("sin",), 0.1, -1, "mine")
    (local / "dsa-evolved.json").write_text(mine.to_json(), encoding="utf-8")
    (tmp_path / "dsa-evolved.json").write_text(mine.to_json(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # a shipped function has the same name: the local file wins
    assert load_function("data/functions/dsa-evolved.json") == mine
    assert load_function("dsa-evolved.json") == mine
    assert load_function('  \n' + json.dumps({"reduction": "var"})) == AllocationFunction(reduction="var")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match=r"^function='bad.json': cannot read the file"):
        load_function("bad.json")
    with pytest.raises(ValueError, match=r"^function=3 must be a preset name, a JSON file, JSON text or a mapping$"):
        load_function(3)


def test_sparsities_weight_the_mean_and_follow_the_direction():
    blocks = _random_blocks([[(8, 16)], [(8, 16), (4, 8)], [(12, 5)]], seed=1)
    weights = [128.0, 160.0, 60.0]
    up = AllocationFunction(("no_op",), "var", ("no_op",), 0.05, 1)
    down = dataclasses.replace(up, direction=-1)
    s_up, s_down = up.sparsities(blocks, 0.5, weights=weights), down.sparsities(blocks, 0.5, weights=weights)
    for s in (s_up, s_down):
        assert sum(w * x for w, x in zip(weights, s, strict=True)) / sum(weights) == pytest.approx(0.5, abs=1e-12)
    assert s_up != pytest.approx(s_down)
    assert [a - 0.5 for a in s_up] == pytest.approx([0.5 - b for b in s_down], abs=1e-12)  # mirrored about 0.5
    values = up.block_values(blocks)
    assert s_up[values.index(max(values))] == max(s_up)  # direction 1: the largest value is pruned most
    with pytest.raises(InvalidFunction, match=r'^\{"direction": 1, .*sparsity=1.5 must lie in'):
        up.sparsities(blocks, 1.5, weights=weights)


def test_layer_corr_of_two_rows_is_their_absolute_correlation_and_one_row_is_undefined():
    rows = torch.tensor([[1.0, 2.0, 3.0, 5.0], [2.0, 1.0, 4.0, 3.0]], dtype=torch.float64)
    expected = abs(np.corrcoef(rows.numpy())[0, 1])
    assert float(ops.MATRIX_REDUCTIONS["layer_corr"](rows)) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(float(ops.MATRIX_REDUCTIONS["layer_corr"](rows[:1])))


@pytest.mark.parametrize("reduction", ["mean", "var", "l1"])
def test_tensor_reductions_read_every_entry_of_a_large_block(reduction):
    # only matrix reductions may read the strided views: a vector reduction sees all entries of 300 x 520 layers
    blocks = _random_blocks([[(300, 40), (20, 520)], [(520, 30), (40, 20)]], seed=5)
    formulas = {"mean": np.mean, "var": lambda z: np.var(z, ddof=1), "l1": lambda z: np.abs(z).mean()}
    expected = [formulas[reduction](np.abs(np.concatenate([m.double().numpy().reshape(-1) for m in b])))
                for b in blocks]
    close(AllocationFunction(("abs",), reduction).reduced_values(blocks)[0], expected, rel=1e-10)


def test_block_values_keep_float64_precision_in_the_rounding_check():
    # 1 and 1 + 2e-8 differ by 2e-8 > 1e-9 (NOISE_RTOL) relative: two distinct values in float64, one in float32
    blocks = [[torch.full((2, 2), v, dtype=torch.float64)] for v in (1.0, 1.0 + 2e-8)]
    values, _ = AllocationFunction(("no_op",), "mean").reduced_values(blocks)
    assert values[1] - values[0] == pytest.approx(2e-8, rel=1e-6)


def test_kept_unit_vectors_give_the_same_values_bit_for_bit_and_are_never_written():
    # a search keeps each unit's float64 vector and runs every chain on it: chains that start with an op that
    # returns its input (no_op) and then run in place must not write the kept vector; scores of both signs,
    # layers larger than the matrix view, many distinct values
    gen = torch.Generator().manual_seed(11)
    blocks = [[torch.randn(shape, generator=gen) * scale for shape in shapes]
              for scale, shapes in ((0.7, [(300, 40), (20, 520)]), (2.5, [(64, 48)]), (0.05, [(520, 30), (9, 7)]))]
    kept = UnitVectors(blocks)
    originals = {views: [v.clone() for v, _ in kept.get(views)] for views in (False, True)}
    chains = [("no_op", "pow"), ("no_op", "abs", "exp"), ("pow",), ("abs", "log"), ("tanh", "sigmoid"),
              ("no_op", "no_op", "tanh"), ("abslog", "pow"), ("normalize", "abs"), ("minmax", "exp")]
    for pre in chains:
        for reduction in ("var", "mean", "l1", "entropy", "layer_rank", "layer_slogdet", "no_op"):
            fn = AllocationFunction(pre, reduction, nonfinite="reference")
            try:
                fresh = fn.reduced_values(blocks)[0]
            except InvalidFunction:
                with pytest.raises(InvalidFunction):
                    fn.reduced_values(kept)
                continue
            got = fn.reduced_values(kept)[0]
            assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(got, fresh, strict=True)), (
                pre, reduction, got, fresh)
    for views in (False, True):
        assert all(torch.equal(v, o) for (v, _), o in zip(kept.get(views), originals[views], strict=True)), views
