"""Global allocation: one threshold over the scores of all prunable layers together.

No reference exists for LLMs. The workbench's choice: the score is the pruning metric's (Wanda
|W|·||X|| for Wanda and SparseGPT, |W| for magnitude; ``score=`` overrides it), computed on the dense
model. The threshold removes the int(S · Σ N_l) lowest scores of the model; a layer's sparsity is the
fraction of its scores below the threshold. Scores are not comparable across layers (activation scales
differ), which is why Global collapses at high sparsity in the papers (5147 ppl at 70% on LLaMA-7B).
A layer that would be pruned entirely is capped at ``max_layer_sparsity`` and the remaining budget is
taken from the other layers, so every ratio stays below 1.

Two allocators share these ratios:

* ``global`` (the papers' baseline): the threshold *is* the mask. Each layer prunes its lowest-scoring
  weights over the whole matrix (comparison group ``matrix``, no per-row re-selection), which on the
  dense scores is exactly {score < threshold}. In sequential mode a layer's count comes from the dense
  threshold and its current scores pick the weights. SparseGPT chooses its own mask per column block.
* ``global_per_row``: the same per-layer ratios, each applied with the metric's own comparison group
  (per row for Wanda): a layer-wise allocation derived from a global threshold.
"""

from __future__ import annotations

import torch

from ..errors import WorkbenchError
from .base import AllocationInput, Param, granularity_param, register_allocator

PARAMS = (
    Param("score", "wanda", "score the threshold is taken over (default: the pruning metric's)", kind="choice",
          choices=("wanda", "magnitude"), by_metric=(("magnitude", "magnitude"),)),
    Param("max_layer_sparsity", 0.99, "cap on one layer's sparsity (its excess budget goes to the others)",
          low=0.0, high=1.0, open=True),
    granularity_param(("projection",), default="projection",
                      why="one model-wide threshold gives each linear the share of its scores below it"),
)


def kth_smallest(values: torch.Tensor, k: int, sample: int = 1 << 20, margin: float = 0.002) -> torch.Tensor:
    """The k-th smallest (1-based) of a large 1-D tensor, exactly: a seeded sample brackets it, one pass
    counts what lies below the bracket, and only the values inside the bracket are searched.
    Falls back to a full ``kthvalue`` when the bracket misses (never silently approximate)."""
    n = values.numel()
    if n <= 4 * sample:
        return torch.kthvalue(values, k).values
    gen = torch.Generator().manual_seed(0)
    probe = values[torch.randint(0, n, (sample,), generator=gen)]
    q = k / n
    lo = torch.quantile(probe, max(q - margin, 0.0))
    hi = torch.quantile(probe, min(q + margin, 1.0))
    below = int(torch.count_nonzero(values < lo))
    inside = values[(values >= lo) & (values <= hi)]
    if below < k <= below + inside.numel():
        return torch.kthvalue(inside, k - below).values
    return torch.kthvalue(values, k).values


@register_allocator("global", needs_scores=True, params=PARAMS)
def global_threshold(inputs: AllocationInput, sparsity: float, score: str = "wanda",
                     max_layer_sparsity: float = 0.99, granularity: str = "projection"):
    """One model-wide score threshold that is the mask (the papers' Global)."""
    profile = global_ratios(inputs, sparsity, score, max_layer_sparsity, "global")
    profile.params["mask_group"] = "matrix"
    return profile


@register_allocator("global_per_row", needs_scores=True, params=PARAMS)
def global_per_row(inputs: AllocationInput, sparsity: float, score: str = "wanda",
                   max_layer_sparsity: float = 0.99, granularity: str = "projection"):
    """Per-layer ratios from one model-wide threshold, applied per row (Wanda's group)."""
    return global_ratios(inputs, sparsity, score, max_layer_sparsity, "global_per_row")


def global_ratios(inputs: AllocationInput, sparsity: float, score: str, max_layer_sparsity: float,
                  name: str):
    """Per-layer sparsities from one model-wide score threshold (see module docstring; the parameters are
    checked against ``PARAMS`` by ``allocate``)."""
    names = list(inputs.layers)
    flat = {n: inputs.scores(n).reshape(-1).float().cpu() for n in names}
    numel = {n: flat[n].numel() for n in names}
    total = sum(numel.values())
    budget = int(sparsity * total)
    reachable = sum(int(max_layer_sparsity * numel[n]) for n in names)  # every layer at its cap
    if budget > reachable:
        raise WorkbenchError(f"sparsity={sparsity} cannot be reached with max_layer_sparsity={max_layer_sparsity} "
                              f"(at most {reachable / total:.4f} with every layer capped); allowed: a larger "
                              "max_layer_sparsity or a smaller sparsity")
    capped: dict[str, float] = {}
    while True:  # with budget <= reachable, a capping round always leaves free layers and budget for them
        free = [n for n in names if n not in capped]
        remaining = budget - sum(round(capped[n] * numel[n]) for n in capped)
        layers = dict(capped)
        if remaining <= 0:
            layers.update(dict.fromkeys(free, 0.0))
            break
        pool = torch.cat([flat[n] for n in free])
        threshold = kth_smallest(pool, remaining)
        below = {n: int(torch.count_nonzero(flat[n] < threshold)) for n in free}
        ties = {n: int(torch.count_nonzero(flat[n] == threshold)) for n in free}
        need = remaining - sum(below.values())  # ties at the threshold are shared out in layer order
        for n in free:
            take = min(ties[n], need)
            below[n] += take
            need -= take
        new_caps = {n for n in free if below[n] / numel[n] > max_layer_sparsity}
        if not new_caps:
            layers.update({n: below[n] / numel[n] for n in free})
            break
        capped.update({n: int(max_layer_sparsity * numel[n]) / numel[n] for n in new_caps})
    return inputs.profile({n: layers[n] for n in names}, sparsity, name, "projection",
                          {"score": score, "max_layer_sparsity": max_layer_sparsity})
