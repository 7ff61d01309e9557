"""DLP (Chen et al., ICML 2025, "Dynamic Layerwise Pruning"): sparsity from each block's typical Wanda score.

On the *dense* model, block l's score v_l is the median (the paper; ``strategy="median"``) or the mean (what
the public code's unstructured path computes, ``strategy="mean"``) of the Wanda scores |W|·‖X‖ of all its
linears taken together. The public code maps importance I_l = 1 − v_l / Σ v to densities
D_l = minmax(I)_l · 2α − mean(minmax(I) · 2α) + (1 − S). Since minmax(1 − v/Σv) = 1 − minmax(v), this is
s_l = S + 2α(n_l − n̄) with n = minmax(v): a block with larger scores is pruned *more*, the mapping OWL and
DSA share (``mapping.py``, direction +1). Default α = 0.15 (the public scripts at 70%). The public code
clamps s ≤ 0 to 0.01 (``clamp="reference"``); the default ``clamp="safe"`` keeps every ratio in [0, 0.99]
at the target. Below the block (not in the paper): ``granularity="sublayer"`` takes the median over each
block child's linears (attention, MLP), ``"projection"`` over each linear's own scores.
"""

from __future__ import annotations

import torch

from .base import AllocationInput, Param, granularity_param, groups, register_allocator, spread_over, unit_weights
from .global_ import kth_smallest
from .mapping import CLAMPS, LAMBDA_MAX, map_to_sparsity

STRATEGIES = ("median", "mean")


def block_score(scores: list[torch.Tensor], strategy: str) -> float:
    """Median (lower median, as ``torch.median``) or mean of a block's scores taken together."""
    flat = torch.cat([s.reshape(-1).float().cpu() for s in scores])
    if strategy == "mean":
        return float(flat.double().mean())
    return float(kth_smallest(flat, (flat.numel() + 1) // 2))


PARAMS = (
    Param("alpha", 0.15, "spread of the sparsities (they span 2·alpha around the target), or 'auto' (tuned on "
          "validation)", low=0.0, high=LAMBDA_MAX, special=("auto",)),
    Param("strategy", "median", "block score: median (paper) or mean (public code) of its Wanda scores",
          kind="choice", choices=STRATEGIES),
    Param("clamp", "safe", "safe: keep ratios in [0, 0.99] at the target; reference: the public code's clamp",
          kind="choice", choices=CLAMPS),
    granularity_param(),
)


@register_allocator("dlp", needs_scores=True, params=PARAMS)
def dlp(inputs: AllocationInput, sparsity: float, alpha: float = 0.15, strategy: str = "median",
        clamp: str = "safe", granularity: str = "block"):
    """Median Wanda score of each block (or sublayer, linear): units with larger scores are pruned more (DLP)."""
    grouped = groups(inputs, granularity)
    values = inputs.memoised(("dlp", strategy, granularity), lambda: [
        block_score([inputs.scores(n) for n in names], strategy) for names in grouped.values()])
    ratios = map_to_sparsity(values, sparsity, alpha, direction=1, weights=unit_weights(inputs, grouped),
                             clamp=clamp)
    layers = spread_over(grouped, ratios)
    return inputs.profile(layers, sparsity, "dlp", granularity,
                          {"alpha": alpha, "strategy": strategy, "clamp": clamp, "scores": list(values)})
