"""Allocator parameters chosen on the *validation* split: ``beta="auto"`` for ATP.

The paper's protocol searches ATP's β (its public script tries 0.002, 0.004, … until β is illegal and keeps
the best perplexity). Here the candidates are scored with the DSA search's candidate evaluation
(:class:`workbench.search.SearchContext`: Wanda scores of the dense model, per-row masks, validation tokens,
never test): a coarse grid of ``COARSE + 1`` values over [0, β_max], a finer grid around the best, both at
the cheap fidelity (KL to the dense model), then the ``FINALISTS`` best at full fidelity (validation
perplexity); the best of those is chosen. The model's weights are dense again afterwards.
"""

from __future__ import annotations

from typing import Any

from .allocation import allocate
from .allocation.atp import beta_limit

COARSE = 8
REFINE = 3  # values on each side of the coarse best, at a quarter of the coarse step
FINALISTS = 3


def tune_beta(model, tokenizer, cache, sparsity: float, dataset: str = "embedded") -> dict[str, Any]:
    """β for ATP at ``sparsity``; ``cache``: a DenseCache of ``model`` (Wanda statistics)."""
    from .search import SearchConfig, SearchContext

    ctx = SearchContext(model, tokenizer, cache, SearchConfig(sparsity=sparsity), dataset=dataset)
    try:
        blocks = len({info.block for info in ctx.inputs.layers.values()})
        limit = beta_limit(sparsity, blocks)
        step = limit / COARSE
        cheap: dict[float, float] = {}

        def score(values: list[float]) -> None:
            for beta in values:
                beta = round(min(max(beta, 0.0), limit), 12)
                if beta not in cheap:
                    counts = ctx.counts_of(allocate("atp", ctx.inputs, sparsity, beta=beta))
                    cheap[beta] = ctx.fitness(counts, "cheap")

        score([k * step for k in range(COARSE + 1)])
        best = min(cheap, key=cheap.get)
        score([best + sign * k * step / (REFINE + 1) for sign in (-1, 1) for k in range(1, REFINE + 1)])
        finalists = sorted(cheap, key=cheap.get)[:FINALISTS]
        full = {beta: ctx.fitness(ctx.counts_of(allocate("atp", ctx.inputs, sparsity, beta=beta)), "full")
                for beta in finalists}
        chosen = min(full, key=full.get)
    finally:
        ctx.restore()
    return {"param": "beta", "value": chosen, "beta_limit": limit, "full_fitness": full[chosen],
            "cheap_fitness": cheap[chosen], "tried": sorted([b, f] for b, f in cheap.items()),
            "finalists": sorted([b, f] for b, f in full.items()), "fitness": ctx.fitness_data}


TUNERS = {("atp", "beta"): tune_beta}  # the parameters that declare "auto" (Param.special), and their search


def resolve_auto(allocation: str, params: dict[str, Any], model, tokenizer, sparsity: float, cache=None,
                 calibration=None, progress: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``params`` with an ``"auto"`` value searched, and the search's record (None when nothing was ``"auto"``).
    ``cache``: a DenseCache of ``model``; without one it is built from ``calibration``."""
    auto = [key for key, value in params.items() if isinstance(value, str) and value == "auto"]
    if not auto:
        return dict(params), None
    key = auto[0]
    if cache is None:
        from .prune import DenseCache

        cache = DenseCache.build(model, calibration, ("sq_norm",), progress=progress)
    tuning = TUNERS[(allocation, key)](model, tokenizer, cache, sparsity)
    return {**params, key: tuning["value"]}, tuning
