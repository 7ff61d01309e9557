"""Pruning metrics (magnitude, wanda, sparsegpt) applied to one linear at a given sparsity or N:M pattern.

``prune_linear`` is the single place where a layer's scores become a mask and the mask is applied.
Comparison groups: ``row`` (each output row loses int(C_in · s) weights, Wanda's default) or ``matrix``
(the int(numel · s) lowest of the whole matrix, magnitude's default). SparseGPT chooses its own mask
per block of 128 columns jointly over rows (see ``sparsegpt.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..backend import kernels
from ..backend.reference import prune_counts
from . import magnitude, wanda

if TYPE_CHECKING:
    from ..calibrate import LayerStats

METRICS = ("magnitude", "wanda", "sparsegpt")
GROUPS = ("row", "matrix")
DEFAULT_GROUP = {"magnitude": magnitude.DEFAULT_GROUP, "wanda": wanda.DEFAULT_GROUP, "sparsegpt": "block"}
NEEDS = {"magnitude": (), "wanda": ("sq_norm",), "sparsegpt": ("xtx",)}  # calibration statistics needed


def check_metric(metric: str, group: str | None = None) -> str:
    """Validate a metric name and comparison group; return the group to use."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not allowed; allowed: {list(METRICS)}")
    if group is None:
        return DEFAULT_GROUP[metric]
    if metric == "sparsegpt":
        raise ValueError("group: sparsegpt chooses its mask per block of columns; leave group unset")
    if group not in GROUPS:
        raise ValueError(f"group={group!r} is not allowed; allowed: {list(GROUPS)}")
    return group


def layer_scores(metric: str, weight: torch.Tensor, stats: LayerStats | None) -> torch.Tensor:
    """Importance scores of a weight matrix (higher = keep): magnitude |W|, wanda |W|·||X||, or sparsegpt
    w²/U_jj² (SparseGPT's saliency without its weight update; BESA ranks by it)."""
    if metric == "magnitude":
        return magnitude.magnitude_scores(weight)
    if metric not in NEEDS:
        raise ValueError(f"metric={metric!r} has no scores; allowed: {list(NEEDS)}")
    if stats is None:
        raise ValueError(f"metric={metric!r} needs calibration statistics ({', '.join(NEEDS[metric])})")
    if metric == "wanda":
        return kernels.wanda_scores(weight, stats.act_norm())
    from .sparsegpt import sparsegpt_scores

    return sparsegpt_scores(weight, stats.hessian())


@torch.no_grad()
def prune_linear(linear: nn.Linear, metric: str, sparsity: float, stats: LayerStats | None = None,
                 pattern: tuple[int, int] = (0, 0), group: str | None = None,
                 row_sparsities: list[float] | None = None) -> torch.Tensor:
    """Prune ``linear.weight`` in place; returns the boolean mask (True = pruned)."""
    group = check_metric(metric, group)
    weight = linear.weight
    n, m = pattern
    if metric == "sparsegpt":
        from .sparsegpt import sparsegpt_prune

        if row_sparsities is not None:
            raise ValueError("metric='sparsegpt' does not take per-row sparsities")
        if stats is None:
            raise ValueError("metric='sparsegpt' needs calibration statistics (xtx)")
        new_weight, mask = sparsegpt_prune(weight, stats.hessian(), sparsity, prune_n=n, prune_m=m)
        weight.copy_(new_weight)
        return mask
    scores = layer_scores(metric, weight, stats)
    if n:
        mask = kernels.nm_mask(scores, n, m)
    elif row_sparsities is not None:
        mask = kernels.row_mask(scores, prune_counts(weight.shape[1], torch.tensor(row_sparsities)))
    elif group == "row":
        mask = kernels.row_mask(scores, prune_counts(weight.shape[1], sparsity))
    else:
        mask = kernels.matrix_mask(scores, int(weight.numel() * sparsity))
    kernels.apply_mask(weight, mask)
    return mask
