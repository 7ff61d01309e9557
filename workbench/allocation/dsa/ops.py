"""The operations DSA allocation functions are made of (names are data; no eval/exec anywhere).

Stages of a function (see ``function.py``):
* PRE: element-wise on a block's score tensor (all its linears' Wanda scores, flattened together);
* REDUCTIONS: the tensor (and the layers' score matrices, for the matrix ones) to one number;
* POST: on the vector of per-block numbers (element-wise, except softmax over blocks).
Every op may produce NaN/inf or fail on its domain (log of 0, asin of 1.5); the caller checks and
reports the function invalid, never silently turning bad values into zeros.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EPS = 1e-12
MATRIX_SIDE = 256  # matrix reductions look at a strided <= 256 x 256 view of each layer's scores


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / (x.std() + EPS)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min() + EPS)


PRE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "no_op": lambda x: x,
    "abs": torch.abs,
    "log": torch.log,
    "abslog": lambda x: torch.log(torch.abs(x)),
    "pow": lambda x: x * x,
    "exp": torch.exp,
    "normalize": _normalize,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "minmax": _minmax,
}


def _entropy(x: torch.Tensor) -> torch.Tensor:
    p = x.abs() / (x.abs().sum() + EPS)
    return -(p * torch.log(p + EPS)).sum()


def _geomean(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.log(x.abs() + EPS).mean())


TENSOR_REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": torch.mean,
    "var": torch.var,
    "std": torch.std,
    "fro": torch.linalg.vector_norm,
    "l1": lambda x: x.abs().mean(),
    "entropy": _entropy,
    "geomean": _geomean,
}


def _view(m: torch.Tensor) -> torch.Tensor:
    rs = max(1, m.shape[0] // MATRIX_SIDE)
    cs = max(1, m.shape[1] // MATRIX_SIDE)
    return m[::rs, ::cs][:MATRIX_SIDE, :MATRIX_SIDE].double()


def _rank(m: torch.Tensor) -> torch.Tensor:
    v = _view(m)
    return torch.linalg.matrix_rank(v).double() / min(v.shape)


def _gram(m: torch.Tensor) -> torch.Tensor:
    """Mean absolute off-diagonal correlation between rows."""
    v = _view(m)
    if v.shape[0] < 2:
        return torch.tensor(float("nan"), dtype=v.dtype)  # no pair of rows: undefined
    c = torch.corrcoef(v)
    off = c - torch.diag(torch.diag(c))
    return off.abs().sum() / (c.numel() - c.shape[0])


def _slogdet(m: torch.Tensor) -> torch.Tensor:
    v = _view(m)
    g = v @ v.t() / v.shape[1]
    return torch.linalg.slogdet(g + 1e-6 * torch.eye(g.shape[0], dtype=g.dtype))[1] / g.shape[0]


MATRIX_REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "rank": _rank,
    "gram": _gram,
    "slogdet": _slogdet,
}
REDUCTIONS = (*TENSOR_REDUCTIONS, *MATRIX_REDUCTIONS)


def _softmax(v: torch.Tensor) -> torch.Tensor:
    return torch.softmax(v, dim=0)


POST: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
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
    "softmax": _softmax,
    "sqrt": torch.sqrt,
}


def reduce(name: str, flat: torch.Tensor, matrices: list[torch.Tensor]) -> torch.Tensor:
    """Apply reduction ``name``: tensor reductions to the pre-processed flat scores, matrix reductions to
    each pre-processed layer matrix, averaged over the block's layers."""
    if name in TENSOR_REDUCTIONS:
        return TENSOR_REDUCTIONS[name](flat.double())
    if name in MATRIX_REDUCTIONS:
        return torch.stack([MATRIX_REDUCTIONS[name](m) for m in matrices]).mean()
    raise ValueError(f"reduction={name!r} is not allowed; allowed: {list(REDUCTIONS)}")
