"""Erdős–Rényi (ER) and ER-plus allocation (Mocanu et al. 2018; Liu et al. 2022, "random pruning").

ER: density_l = ε · (n_in + n_out) / (n_in · n_out), with ε chosen so that Σ density_l · N_l =
(1 − S) · Σ N_l. A layer whose density would exceed 1 is made dense and ε is recomputed over the rest.
Larger layers are therefore pruned more.

ER-plus: as ER, with the *final layer* kept dense and its budget redistributed. No reference defines
the final layer of an LLM (lm_head is never pruned); the workbench's choice: the last prunable linear
of the last decoder block (the MLP output projection, e.g. ``down_proj`` of LLaMA), i.e. the layer that
writes into the final hidden state read by lm_head.
"""

from __future__ import annotations

from ..errors import WorkbenchError
from .base import AllocationInput, granularity_param, register_allocator

PARAMS = (granularity_param(("projection",), default="projection",
                            why="ER's density is a function of one linear's shape"),)


def er_densities(shapes: dict[str, tuple[int, int]], sparsity: float,
                 dense: set[str] = frozenset()) -> dict[str, float]:
    """ER densities for layers of (out, in) shapes; ``dense`` layers are fixed at density 1."""
    numel = {n: o * i for n, (o, i) in shapes.items()}
    raw = {n: (o + i) / (o * i) for n, (o, i) in shapes.items()}
    fixed = set(dense)
    total_budget = (1.0 - sparsity) * sum(numel.values())
    while True:
        free = [n for n in shapes if n not in fixed]
        budget = total_budget - sum(numel[n] for n in fixed)
        if not free or budget <= 0:
            raise WorkbenchError(f"sparsity={sparsity}: the target cannot be reached with {sorted(dense)} dense")
        eps = budget / sum(raw[n] * numel[n] for n in free)
        over = {n for n in free if eps * raw[n] > 1.0}
        if not over:
            break
        fixed |= over
    return {n: 1.0 if n in fixed else eps * raw[n] for n in shapes}


def _profile(inputs: AllocationInput, sparsity: float, name: str, dense: set[str]):  # one ratio per linear
    shapes = {n: (i.out_features, i.in_features) for n, i in inputs.layers.items()}
    dens = er_densities(shapes, sparsity, dense)
    layers = {n: max(0.0, 1.0 - d) for n, d in dens.items()}
    return inputs.profile(layers, sparsity, name, "projection", {"dense_layers": sorted(dense)})


@register_allocator("er", params=PARAMS)
def er(inputs: AllocationInput, sparsity: float, granularity: str = "projection"):
    """Erdős–Rényi: density ∝ (n_in + n_out)/(n_in · n_out), larger layers pruned more."""
    return _profile(inputs, sparsity, "er", set())


@register_allocator("er_plus", params=PARAMS)
def er_plus(inputs: AllocationInput, sparsity: float, granularity: str = "projection"):
    """ER with the last linear of the last block kept dense."""
    final = list(inputs.layers)[-1]
    return _profile(inputs, sparsity, "er_plus", {final})
