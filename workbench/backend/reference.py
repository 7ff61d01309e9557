"""Torch reference of every kernel (the CPU path, and the oracle for the CUDA kernels in ``kernels.py``).

Masks are boolean with True = *pruned* (the weight becomes zero). Ties are broken by index (a stable
sort), so the same scores always give the same mask.
"""

from __future__ import annotations

import torch

from ..errors import WorkbenchError


def parse_pattern(pattern: str) -> tuple[int, int]:
    """'unstructured' -> (0, 0); 'N:M' -> (N, M) with 0 < N < M."""
    if pattern == "unstructured":
        return 0, 0
    try:
        n, m = (int(p) for p in pattern.split(":"))
    except ValueError:
        raise WorkbenchError(f"pattern={pattern!r} is not allowed; allowed: 'unstructured' or 'N:M' "
                              "such as '2:4', '4:8'") from None
    _check_pair(n, m, f"pattern={pattern!r}")
    return n, m


def _check_pair(n: int, m: int, what: str) -> None:
    if not 0 < n < m:
        raise WorkbenchError(f"{what}: N:M needs 0 < N < M")


def wanda_scores(weight: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """Wanda's (out, in) scores |W| · ||X_j|| in float32 (the math is explained in ``pruners/wanda.py``)."""
    return weight.detach().abs().float() * act_norm.to(weight.device, torch.float32)[None, :]


def prune_counts(in_features: int, sparsity: float | torch.Tensor) -> torch.Tensor:
    """Weights to prune in a row of ``in_features`` at ``sparsity``: int(C · s), as the references."""
    s = torch.as_tensor(sparsity, dtype=torch.float64)
    return (in_features * s).floor().to(torch.long)


def row_order(scores: torch.Tensor) -> torch.Tensor:
    """Column indices of every row from lowest to highest score (stable: ties by index)."""
    return torch.sort(scores, dim=1, stable=True).indices


def mask_from_order(order: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Prune the first ``counts[r]`` columns of ``order[r]`` (a row_order, any integer dtype)."""
    rows, cols = order.shape
    counts = torch.as_tensor(counts, device=order.device).expand(rows).clamp(0, cols)
    rank_pruned = torch.arange(cols, device=order.device)[None, :] < counts[:, None]
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=order.device)
    mask.scatter_(1, order.long(), rank_pruned)
    return mask


def row_mask(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Prune the ``counts[r]`` lowest scores of every row r (counts: (rows,) long, or a scalar)."""
    return mask_from_order(row_order(scores), counts)


def matrix_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Prune the ``count`` lowest scores of the whole matrix (magnitude pruning's comparison group)."""
    flat = scores.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[: int(count)]] = True
    return mask.view_as(scores)


def check_nm(n: int, m: int, cols: int, layer: str = "") -> None:
    """The one N:M check: raise unless ``n:m`` is a valid pattern for a matrix with ``cols`` input columns."""
    _check_pair(n, m, f"pattern {n}:{m}")
    if cols % m:
        where = f" of {layer}" if layer else ""
        raise WorkbenchError(f"pattern {n}:{m}: in_features{where} ({cols}) is not divisible by M={m}")


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune the ``n`` lowest scores in every group of ``m`` consecutive input columns."""
    rows, cols = scores.shape
    check_nm(n, m, cols)
    groups = scores.reshape(rows, cols // m, m)
    order = torch.sort(groups, dim=2, stable=True).indices
    pruned = (torch.arange(m, device=scores.device) < n).expand_as(groups)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, order, pruned)
    return mask.view(rows, cols)


def besa_keep_prob(ranks: torch.Tensor, probs: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """BESA: P[r, c] = 1 − Σ_k probs[r, k] · [ranks[r, c] < C · cands[k]] (probs (rows or 1, K), float32)."""
    rows, cols = ranks.shape
    bounds = cols * cands.to(ranks.device, torch.float32)  # (K,), descending
    # candidates with j < C·c_k form a prefix (c descending); its length depends only on the integer rank j,
    # so it is tabulated once for j = -1 … C (ranks outside clamp to the ends, where the count is K or 0)
    values = torch.arange(-1, cols + 1, device=ranks.device, dtype=torch.float32)
    table = (values[:, None] < bounds[None, :]).sum(dim=1)  # (C + 2,)
    count = table[ranks.long().clamp(-1, cols) + 1]  # (rows, cols)
    cum = torch.cumsum(probs.float(), dim=-1).expand(rows, -1)  # (rows, K)
    taken = torch.gather(cum, 1, (count - 1).clamp(min=0))
    return 1.0 - torch.where(count > 0, taken, torch.zeros_like(taken))


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the pruned weights in place."""
    weight.masked_fill_(mask, 0)
