"""The operations DSA allocation functions are made of (names are data; no eval/exec anywhere).

Stages of a function (see ``function.py``), as in the public DSA code (lliai/DSA, ``lib/autolayer.py``
``LayerEngine`` applied in ``lib/prune_all.py``):

* PRE ("stick" ops): element-wise on the block's score *vector*: the Wanda scores of all the block's
  linears, flattened and concatenated first (so ``normalize`` and ``minmax`` use the block's statistics);
* REDUCTIONS ("deform" ops): the vector to one number per block;
* POST (transform and post-process ops): on each block's number, one block at a time.

The public code passes the block vector as a torch tensor (``prune_all.py``: ``torch.cat`` of the flattened
scores, then ``compute_importance``), so its torch branches are the ops. Every public op that is defined on
a vector is here, by the same name in lower case (``MMS`` is ``minmax``, ``FROBENIUS_NORM`` ``fro``,
``L1_NORM`` ``l1``, ``GEOMETRIC_MEAN`` ``geomean``); ``PUBLIC_PRE``, ``PUBLIC_REDUCTIONS`` and ``PUBLIC_POST``
name them. The public reductions that need a matrix (``GRAM`` and ``CORREF`` assert a 2-D input, ``RANK``,
``SLOGDET``, ``DETERMINANT`` and ``DIAGONAL`` raise in torch) cannot run on the block vector there; what
this file offers in their place (``gram``, the ``layer_*`` reductions, ``normalize_np``) is marked as the
project's reading. The public ``NO_OP`` reduction leaves the vector as it is: the post ops then act on
every element and ``compute_importance`` takes the mean of the result (``no_op`` below; ``function.py``
applies the post ops before that mean).

Everything runs in float64. Where an op is defined by the public code, it is the same op, including its
handling of zeros (``log``: x <= 0 -> 1, then log(x + 1e-6); ``abslog``: x == 0 -> 1, then log|x|;
``normalize``: a constant vector gives zeros). The one deliberate difference everywhere: where the public
code turns NaN into 0 and inf into -1 (``compute_importance``), here a NaN or inf makes the function
*invalid* (the caller raises with the stage and op); asin of 1.5 or log of a negative number is not a value.
Ops that deviate further say so in their docstring.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...errors import WorkbenchError

MATRIX_SIDE = 256  # matrix reductions look at a strided <= 256 x 256 view of each layer's scores


# --------------------------------------------------------------------------- pre ops (block vector)

def _log(x: torch.Tensor) -> torch.Tensor:
    """Public ``element_wise_log_op``: entries <= 0 become 1, then log(x + 1e-6)."""
    return torch.where(x <= 0, 1.0, x).add_(1e-6).log_()  # in place on the fresh copy: one allocation


def _abslog(x: torch.Tensor) -> torch.Tensor:
    """Public ``element_wise_abslog_op``: exact zeros become 1 (log 1 = 0), then log|x|."""
    return torch.where(x == 0, 1.0, x).abs_().log_()


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Public ``normalize_op``: z-score with the unbiased std over the whole block vector; 0/0 -> 0 (a
    constant vector gives zeros). A block of one element has no std: NaN, so invalid here."""
    centred = x - x.mean()
    std = x.std()
    if bool(std == 0):
        return torch.zeros_like(x)
    return centred.div_(std)


def _normalize_np(x: torch.Tensor) -> torch.Tensor:
    """The numpy branch of the public ``normalize_op`` (``autolayer.py``: ``np.std``, i.e. the population std,
    ddof 0, and a 1e-6 guard): (x − mean) / (std + 1e-6); NaN entries become 0. A reading, not the op the
    public prune path runs: it passes torch tensors (``normalize``), and its reductions are torch functions
    (``VAR`` is ``torch.var``) that would refuse the ndarray this branch returns. Offered because the guard
    makes the DSA poster's [normalize, var, abs, no_op] a function of each block's score spread σ:
    var = n/(n−1) · σ²/(σ + 1e-6)²."""
    centred = x - x.mean()
    out = centred.div_(x.std(correction=0) + 1e-6)
    return out.masked_fill_(torch.isnan(out), 0.0)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Public ``MMS``: (x − min) / (max − min + 1e-9)."""
    lo, hi = x.min(), x.max()
    return (x - lo).div_(hi - lo + 1e-9)


PRE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "no_op": lambda x: x,
    "abs": torch.abs,
    "log": _log,
    "abslog": _abslog,
    "pow": lambda x: x * x,
    "exp": torch.exp,
    "normalize": _normalize,
    "normalize_np": _normalize_np,  # the public normalize_op's numpy branch (see its docstring)
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "minmax": _minmax,
}
# In-place forms of the element-wise ops, used by ``apply_pre`` on a vector it owns (same values, no
# new 30 MB buffer per op and block: a search computes thousands of these chains).
_PRE_INPLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs": torch.Tensor.abs_,
    "pow": lambda x: x.mul_(x),
    "exp": torch.Tensor.exp_,
    "sigmoid": torch.Tensor.sigmoid_,
    "tanh": torch.Tensor.tanh_,
}
# Ops whose output at an entry depends on that entry only (``normalize`` and ``minmax`` use the whole
# block's statistics): a chain of these commutes with taking a strided view of the vector.
ELEMENTWISE = frozenset(PRE) - {"normalize", "normalize_np", "minmax"}


def apply_pre(chain: tuple[str, ...], x: torch.Tensor, owned: bool = True) -> torch.Tensor:
    """The pre ops of ``chain`` in order on ``x``; ``owned``: the caller owns ``x`` (it may be overwritten),
    else ``x`` is left as it is (the first op that writes a new tensor is the one to run in place after)."""
    for op in chain:
        if owned and op in _PRE_INPLACE:
            x = _PRE_INPLACE[op](x)
        else:
            y = PRE[op](x)
            owned = owned or y is not x
            x = y
    return x


# --------------------------------------------------------------------------- reductions (block vector -> number)

def _entropy(x: torch.Tensor) -> torch.Tensor:
    """Public ``entropy_op`` on a vector: the entries are taken as probabilities after dropping negative
    ones and renormalising; H = −Σ p log p (0 log 0 = 0). No non-negative mass left: NaN (invalid).
    Computed as log T − Σ q log q / T over q = max(x, 0), T = Σ q (the same sum, two passes fewer)."""
    q = x.clamp(min=0)
    total = q.sum()
    if not bool(total > 0):
        return torch.tensor(float("nan"), dtype=x.dtype)
    return torch.log(total) - torch.special.xlogy(q, q).sum() / total


def _geomean(x: torch.Tensor) -> torch.Tensor:
    """(Π x)^(1/n). Deviation: computed as exp(mean log x), since the public ``torch.prod`` under- or
    overflows for any block of realistic size (the product of 10⁶ scores is 0 or inf). An exact zero gives
    0 (as the product does); a negative entry makes the value undefined (NaN: invalid)."""
    if bool((x < 0).any()):
        return torch.tensor(float("nan"), dtype=x.dtype)
    if bool((x == 0).any()):
        return torch.zeros((), dtype=x.dtype)
    return torch.exp(torch.log(x).mean())


TENSOR_REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "no_op": torch.mean,                   # public NO_OP: the vector stays; compute_importance takes its mean
    "mean": torch.mean,
    "var": torch.var,                      # unbiased, as torch.var in the public code
    "std": torch.std,                      # unbiased
    "fro": torch.linalg.vector_norm,       # public FROBENIUS_NORM of the vector: sqrt(Σ x²)
    # Project reading, not the public op: the public GRAM asserts a 2-D input and raises on the block vector;
    # here x @ x.T of a vector is read as the dot product Σ x² (the square of ``fro``)
    "gram": lambda x: torch.dot(x, x),
    "l1": lambda x: x.abs().sum() / x.numel(),  # public L1_NORM: Σ|x| / numel
    "entropy": _entropy,
    "geomean": _geomean,
}

# How large a reduction's value is before block-to-block differences matter: the spread of the block
# values is compared with it to tell a property of the scores from float64 rounding (``function.py``).
# A mean near 0 can be all rounding (the mean of z-scores is ~1e-17), so its scale is the magnitude of
# its terms; every other reduction is computed to a relative accuracy of its own value.
SCALES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": lambda x: x.abs().mean(),
    "no_op": lambda x: x.abs().mean(),
}
# Reductions after which the public code applies the post ops to every element of the vector, not to one
# number (``compute_importance`` then averages): ``function.py`` runs the post ops before these.
POST_INSIDE = frozenset({"no_op"})


def matrix_view(m: torch.Tensor) -> torch.Tensor:
    """The strided <= MATRIX_SIDE x MATRIX_SIDE view of a layer's matrix that matrix reductions read
    (idempotent: the view of a view is itself)."""
    rs = max(1, m.shape[0] // MATRIX_SIDE)
    cs = max(1, m.shape[1] // MATRIX_SIDE)
    return m[::rs, ::cs][:MATRIX_SIDE, :MATRIX_SIDE]


def _layer_rank(m: torch.Tensor) -> torch.Tensor:
    v = matrix_view(m)
    return torch.linalg.matrix_rank(v).double() / min(v.shape)


def _layer_corr(m: torch.Tensor) -> torch.Tensor:
    """Mean absolute off-diagonal correlation between rows."""
    v = matrix_view(m)
    if v.shape[0] < 2:
        return torch.tensor(float("nan"), dtype=v.dtype)  # no pair of rows: undefined
    c = torch.corrcoef(v)
    off = c - torch.diag(torch.diag(c))
    return off.abs().sum() / (c.numel() - c.shape[0])


def _layer_slogdet(m: torch.Tensor) -> torch.Tensor:
    v = matrix_view(m)
    g = v @ v.t() / v.shape[1]
    return torch.linalg.slogdet(g + 1e-6 * torch.eye(g.shape[0], dtype=g.dtype))[1] / g.shape[0]


# Project extensions, not the public code's ops: the public RANK / CORREF / SLOGDET / DETERMINANT /
# DIAGONAL receive the block's 1-D vector, where they raise (CORREF and GRAM assert a 2-D input; torch's
# matrix_rank, slogdet, det and diagonal refuse 1-D), so they can never give an allocation there. These look
# instead at each layer's matrix (the block vector after the pre ops, cut back into the layers' shapes; a
# strided <= 256 x 256 view) and average over the block's layers.
MATRIX_REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "layer_rank": _layer_rank,
    "layer_corr": _layer_corr,
    "layer_slogdet": _layer_slogdet,
}
REDUCTIONS = (*TENSOR_REDUCTIONS, *MATRIX_REDUCTIONS)


# --------------------------------------------------------------------------- post ops (one block's number)

POST: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # the public _POST_OPS, applied to each block's number (element-wise over the vector of blocks)
    "no_op": lambda v: v,
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "asin": torch.asin,
    "acos": torch.acos,
    "atan": torch.atan,
    "exp": torch.exp,
    "log": torch.log,
    "abs": torch.abs,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": torch.nn.functional.softplus,
    "sqrt": torch.sqrt,  # in the paper's operation table (not in the public _POST_OPS)
}
# The paper's table also lists softmax; on one block's number (as the public code applies post ops) it
# is the constant 1, and over the vector of blocks min-max(softmax v) = min-max(exp v): left out.


# --------------------------------------------------------------------------- the public space

# The ops of each stage that the public DSA code (lliai/DSA, lib/autolayer.py) defines with the same meaning
# on the block vector, in the order of the dicts above. Left out: ``gram`` and the ``layer_*`` reductions
# (the public GRAM / CORREF / RANK / SLOGDET raise on a vector) and ``sqrt`` (the paper's table, not the
# public _POST_OPS). ``normalize_np`` is the public normalize_op's numpy branch (in the public file; the
# public prune path runs the torch branch, ``normalize``); ``geomean`` is the public GEOMETRIC_MEAN computed
# in log space (the public product under- or overflows). A search restricted to these, with direction +1
# and λ 0.08 (the public code has no direction and fixes λ), searches the paper's own space.
PUBLIC_PRE: tuple[str, ...] = ("no_op", "abs", "log", "abslog", "pow", "exp", "normalize", "normalize_np",
                               "sigmoid", "tanh", "minmax")
PUBLIC_REDUCTIONS: tuple[str, ...] = ("no_op", "mean", "var", "std", "fro", "l1", "entropy", "geomean")
PUBLIC_POST: tuple[str, ...] = ("no_op", "sin", "cos", "tan", "asin", "acos", "atan", "exp", "log", "abs",
                                "sigmoid", "tanh", "softplus")


def reduce(name: str, flat: torch.Tensor, shapes: list[tuple[int, int]]) -> tuple[float, float]:
    """Reduction ``name`` of one block's pre-processed vector (float64) and the scale its spread is
    judged against; matrix reductions cut ``flat`` back into the layers' ``shapes`` and average."""
    if name in TENSOR_REDUCTIONS:
        value = TENSOR_REDUCTIONS[name](flat)
        scale = SCALES[name](flat) if name in SCALES else value.abs()
        return float(value), float(scale)
    if name in MATRIX_REDUCTIONS:
        mats = torch.split(flat, [r * c for r, c in shapes])
        value = torch.stack([MATRIX_REDUCTIONS[name](m.view(shape)) for m, shape in zip(mats, shapes, strict=True)])
        value = value.mean()
        return float(value), abs(float(value))
    raise WorkbenchError(f"reduction={name!r} is not allowed; allowed: {list(REDUCTIONS)}")
