"""OWL (Yin et al. 2024): outlier-weighted layer-wise sparsity.

On the *dense* model, for each block l the Wanda scores A of all its linears are taken together and
LOD_l = 100 · #{A > M · mean(A)} / numel(A) (the layer-wise outlier distribution). Blocks with more
outliers are pruned less: s_l = S − 2λ(m_l − m̄), m = minmax(LOD) (see ``mapping.py``), one ratio per
block shared by its linears. Defaults follow the README for LLaMA at 70%: λ = 0.08, M = 5 (the code's
defaults are M = 3). Below the block (not in the paper): ``granularity="sublayer"`` computes one LOD per
block child (the attention's linears together, the MLP's together), ``"projection"`` one per linear; the
ratios are mapped the same way over those units, weighted by their parameters.
"""

from __future__ import annotations

from ..backend import kernels
from .base import AllocationInput, Param, granularity_param, groups, register_allocator, spread_over, unit_weights
from .mapping import CLAMPS, LAMBDA_MAX, map_to_sparsity


def outlier_ratio(inputs: AllocationInput, names: list[str], m: float) -> float:
    """LOD of a group of layers: 100 · #{A > M · mean(A)} / numel(A) over their scores together."""
    scores = [inputs.scores(n) for n in names]
    sums = [kernels.score_sum_and_count(s)[0] for s in scores]
    numel = sum(s.numel() for s in scores)
    threshold = m * sum(sums) / numel
    count = sum(kernels.score_sum_and_count(s, threshold)[1] for s in scores)
    return 100.0 * count / numel


PARAMS = (
    Param("lam", 0.08, "spread of the sparsities (they span 2·lam around the target), or 'auto' (tuned on "
          "validation)", low=0.0, high=LAMBDA_MAX, special=("auto",)),
    Param("M", 5.0, "outlier threshold: a score counts as an outlier above M x the group's mean, or 'auto' "
          "(tuned on validation)", low=0.0, open=True, special=("auto",)),
    Param("clamp", "safe", "safe: keep ratios in [0, 0.99] at the target; reference: the public code's clamp",
          kind="choice", choices=CLAMPS),
    granularity_param(),
)


@register_allocator("owl", needs_scores=True, params=PARAMS)
def owl(inputs: AllocationInput, sparsity: float, lam: float = 0.08, M: float = 5.0, clamp: str = "safe",
        granularity: str = "block"):
    """Per-block (or per-sublayer, per-linear) sparsities from the layer-wise outlier distribution."""
    grouped = groups(inputs, granularity)
    lod = list(inputs.memoised(("owl_lod", granularity, float(M)),
                               lambda: [outlier_ratio(inputs, names, M) for names in grouped.values()]))
    ratios = map_to_sparsity(lod, sparsity, lam, direction=-1, weights=unit_weights(inputs, grouped), clamp=clamp)
    layers = spread_over(grouped, ratios)
    return inputs.profile(layers, sparsity, "owl", granularity,
                          {"lam": lam, "M": M, "clamp": clamp, "lod": lod})
