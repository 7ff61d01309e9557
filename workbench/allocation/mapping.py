"""From one score per block (or layer) to sparsities: the min-max mapping shared by OWL and DSA.

n = minmax(v) in [0, 1];  s_l = S + direction · 2λ · (n_l − n̄)
(OWL: direction −1, more outliers -> less pruning; DSA: direction +1, higher value -> more pruning).
The spread is exactly 2λ. ``clamp="reference"`` reproduces the public OWL code: n̄ is the plain mean
over entries and only s <= 0 is clamped (to 0.01); an entry >= 1 is an error. ``clamp="safe"`` (the
default) uses the parameter-weighted mean n̄, then keeps every ratio in [0, max_sparsity] and moves
the unclamped entries by one shared offset until the parameter-weighted mean is S again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import WorkbenchError

CLAMPS = ("safe", "reference")


def minmax(values: Sequence[float]) -> list[float]:
    """Min-max normalisation to [0, 1]; a constant or non-finite vector cannot be mapped."""
    if any(not math.isfinite(v) for v in values):
        raise WorkbenchError("values contain NaN or inf")
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        raise WorkbenchError("values are constant: min-max normalisation is undefined")
    return [(v - lo) / (hi - lo) for v in values]


LAMBDA_MAX = 0.5  # the spread of the sparsities is 2λ: beyond 0.5 it exceeds the whole [0, 1] range


def check_lambda(lam: float) -> float:
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) \
            or not 0 <= lam <= LAMBDA_MAX:
        raise WorkbenchError(f"lam={lam!r} must be a number in [0, {LAMBDA_MAX}] (the sparsities spread over 2·lam)")
    return float(lam)


def map_to_sparsity(values: Sequence[float], sparsity: float, lam: float, direction: int = 1,
                    weights: Sequence[float] | None = None, clamp: str = "safe",
                    max_sparsity: float = 0.99) -> list[float]:
    """Sparsity of each entry from its value (see the module docstring)."""
    check_lambda(lam)
    if clamp not in CLAMPS:
        raise WorkbenchError(f"clamp={clamp!r} is not allowed; allowed: {list(CLAMPS)}")
    if direction not in (1, -1):
        raise WorkbenchError(f"direction={direction!r} must be 1 or -1")
    weights = [1.0] * len(values) if weights is None else [float(w) for w in weights]
    n = minmax(values)
    if clamp == "reference":
        mean = sum(n) / len(n)
        out = [sparsity + direction * 2 * lam * (x - mean) for x in n]
        out = [0.01 if s <= 0 else s for s in out]
        bad = [s for s in out if s >= 1.0]
        if bad:
            raise WorkbenchError(f"lam={lam}: sparsity {max(bad):.3f} >= 1 for some entries; no valid allocation "
                                  "(lower lam or the target)")
        return out
    total = sum(weights)
    mean = sum(w * x for w, x in zip(weights, n, strict=True)) / total
    raw = [sparsity + direction * 2 * lam * (x - mean) for x in n]
    return renormalise(raw, weights, sparsity, max_sparsity)


def renormalise(raw: list[float], weights: list[float], target: float, max_sparsity: float) -> list[float]:
    """Clip to [0, max_sparsity] and shift by one offset so that the weighted mean is ``target``
    (bisection on the offset: the clipped weighted mean is monotone in it)."""
    if not 0.0 <= target <= max_sparsity:
        raise WorkbenchError(f"sparsity={target} must lie in [0, {max_sparsity}]")
    total = sum(weights)

    def mean_at(offset: float) -> float:
        return sum(w * min(max(r + offset, 0.0), max_sparsity) for w, r in zip(weights, raw, strict=True)) / total

    lo, hi = -2.0, 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if mean_at(mid) < target:
            lo = mid
        else:
            hi = mid
    offset = (lo + hi) / 2
    return [min(max(r + offset, 0.0), max_sparsity) for r in raw]
