"""ATP (Huang et al., ICML 2025, "Determining layer-wise sparsity ... through a theoretical perspective").

Data-free: block sparsities form an increasing arithmetic progression around the target,
s_l = S + β · (l − (L − 1)/2), l = 0 … L−1 (later blocks pruned more, so that reconstruction errors do not
compound). The public code refuses β > min(2S, 2(1 − S))/(L − 1) ("Illegal beta", some s_l would leave
[0, 1]); so does this allocator (a negative β, a decreasing progression, is allowed for study). Ratios are
clamped to [0, 0.99] and re-centred so the parameter-weighted mean is S (a no-op unless β is at its bound
or blocks differ in size).

``beta="auto"`` is the paper's protocol: β is searched (the public code tries 0.002, 0.004, … and keeps the
best perplexity). The allocator itself is pure and needs a number; ``workbench.tuning.tune_beta`` searches it
on the *validation* split with the DSA search's cheap candidate evaluation and the run records its choice.
"""

from __future__ import annotations

from ..errors import WorkbenchError
from .base import AllocationInput, Param, granularity_param, groups, register_allocator, spread_over, unit_weights
from .mapping import renormalise

MAX_SPARSITY = 0.99


def beta_limit(sparsity: float, blocks: int) -> float:
    """The largest |β| that keeps every s_l in [0, 1] (the public code's legality test)."""
    if blocks < 2:
        return 0.0
    return min(2 * sparsity, 2 * (1 - sparsity)) / (blocks - 1)


PARAMS = (
    Param("beta", 0.01, "common difference of the progression per block, or 'auto' (searched on validation)",
          special=("auto",)),
    granularity_param(("block",), why="ATP's progression runs over the depth of the blocks; the linears of "
                                      "one block share a depth, so a unit below the block has no ratio of its own"),
)


@register_allocator("atp", params=PARAMS)
def atp(inputs: AllocationInput, sparsity: float, beta: float | str = 0.01, granularity: str = "block"):
    """Sparsity rising linearly with depth: s_l = S + β(l − (L−1)/2) (ATP)."""
    if beta == "auto":
        raise WorkbenchError("allocation='atp': beta='auto' is chosen by a run (prune / the CLI / a grid), which "
                              "searches it on the validation split; here give a number")
    grouped = groups(inputs, "block")
    blocks = len(grouped)
    limit = beta_limit(sparsity, blocks)
    if abs(beta) > limit + 1e-12:
        raise WorkbenchError(f"allocation='atp': beta={beta} leaves [0, 1] for some of the {blocks} blocks at "
                              f"sparsity={sparsity}; allowed: |beta| <= {limit:.6g}")
    raw = [sparsity + beta * (i - (blocks - 1) / 2) for i in range(blocks)]
    ratios = renormalise(raw, unit_weights(inputs, grouped), sparsity, MAX_SPARSITY)
    layers = spread_over(grouped, ratios)
    return inputs.profile(layers, sparsity, "atp", "block", {"beta": beta, "beta_limit": limit})
