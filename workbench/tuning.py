"""Allocator strength parameters chosen on the *validation* split (``"auto"``), with one equal budget.

Every hand-made allocator has a strength parameter that its paper tunes: OWL's λ (and its outlier
threshold M), DLP's α, AlphaPruning's ε, ATP's β (ATP's public script tries 0.002, 0.004, … and keeps the
best perplexity — on WikiText *test*; here never test). A parameter given as ``"auto"`` is chosen here,
for every method the same way and at the same cost, so that a tuned hand-made method can be compared with
a searched one:

* candidates are scored with the DSA search's candidate evaluation (:class:`workbench.search.SearchContext`:
  Wanda scores of the dense model, per-row masks), on the validation split of the *run's evaluation
  dataset* (refused when that dataset has no held-out validation text);
* a coarse grid of ``COARSE`` settings (a 1-D grid over the continuous parameter's range; for OWL with λ
  and M both ``"auto"``: 3 values of M x 3 of λ), then ``REFINE`` values of the continuous parameter
  around the best (at a quarter of the coarse step), all at the cheap fidelity (KL to the dense model);
* the ``FINALISTS`` best distinct allocations at full fidelity (validation perplexity); the best is chosen.

Budget: at most ``COARSE + REFINE`` = 15 cheap and ``FINALISTS`` = 3 full evaluations per tuned run (fewer
when settings give the same allocation, e.g. refinement values clipped at a range edge, or OWL at λ 0 for
every M: each allocation is scored once), recorded with the choice. The model's weights
are dense again afterwards.
"""

from __future__ import annotations

from typing import Any

from .allocation import allocate
from .allocation.tunable import AXES, OWL_M, TUNABLE, Axis, check_auto, strength_axis  # noqa: F401
from .data import DEFAULT_DATASET
from .errors import WorkbenchError

COARSE = 9
REFINE = 6  # 3 values on each side of the coarse best, at a quarter of the coarse step
FINALISTS = 3


def tune(allocation: str, params: dict[str, Any], model, tokenizer, cache, sparsity: float,
         dataset: str = DEFAULT_DATASET) -> dict[str, Any]:
    """The ``"auto"`` parameters of ``params`` chosen on ``dataset``'s validation split; ``cache``: a
    DenseCache of ``model`` (Wanda statistics). Returns the choice and the whole record of the tuning."""
    from .search import SearchConfig, SearchContext, allocation_key

    auto = check_auto(allocation, params)
    ctx = SearchContext(model, tokenizer, cache, SearchConfig(sparsity=sparsity, heldout_windows=0),
                        dataset=dataset, name="eval_dataset")
    fixed = {k: v for k, v in params.items() if k not in auto}
    blocks = len({info.block for info in ctx.inputs.layers.values()})
    axis = strength_axis(allocation, sparsity, blocks)
    discrete = {"M": OWL_M} if "M" in auto else {}
    try:
        cheap: dict[tuple, float] = {}
        allocation_of: dict[tuple, str] = {}  # setting -> its allocation (settings may give the same masks)
        paid: dict[str, float] = {}  # allocation -> cheap fitness, computed once

        def counts(setting: tuple) -> dict[str, int]:
            return ctx.counts_of(allocate(allocation, ctx.inputs, sparsity, **fixed, **dict(setting)))

        def score(settings: list[tuple]) -> None:
            for setting in settings:
                if setting not in cheap:
                    c = counts(setting)
                    key = allocation_key(c)
                    if key not in paid:
                        paid[key] = ctx.fitness(c, "cheap")
                    cheap[setting], allocation_of[setting] = paid[key], key

        axis = _legal(axis, lambda v: [counts(_setting(axis.name, v, m)) for m in discrete.get("M", (None,))])
        per_axis = COARSE // len(discrete.get("M", (None,)))
        step = (axis.high - axis.low) / (per_axis - 1)
        values = [axis.low + k * step for k in range(per_axis)]
        score([_setting(axis.name, v, m) for m in discrete.get("M", (None,)) for v in values])
        best = dict(min(cheap, key=cheap.get))
        around = [best[axis.name] + sign * k * step / 4 for sign in (-1, 1) for k in range(1, REFINE // 2 + 1)]
        score([_setting(axis.name, min(max(v, axis.low), axis.high), best.get("M")) for v in around])
        finalists, seen = [], set()  # the FINALISTS best *distinct* allocations (OWL at λ 0 is one for every M)
        for setting in sorted(cheap, key=cheap.get):
            if allocation_of[setting] not in seen and len(finalists) < FINALISTS:
                seen.add(allocation_of[setting])
                finalists.append(setting)
        full = {setting: ctx.fitness(counts(setting), "full") for setting in finalists}
        chosen = min(full, key=full.get)
    finally:
        ctx.restore()
    return {"params": dict(chosen), "axis": {"name": axis.name, "low": axis.low, "high": axis.high},
            "full_fitness": full[chosen], "cheap_fitness": cheap[chosen],
            "tried": [[dict(s), f] for s, f in cheap.items()], "finalists": [[dict(s), f] for s, f in full.items()],
            "budget": {"cheap": len(paid), "full": len(full)}, "fitness": ctx.fitness_data}


def _legal(axis: Axis, allocate_at, steps: int = 30) -> Axis:
    """``axis`` with its high end lowered to the largest value the allocator accepts (bisection; e.g.
    AlphaPruning's ε is illegal once a block's ratio reaches 1). ``allocate_at(v)`` raises when v is illegal."""
    def legal(value: float) -> bool:
        try:
            allocate_at(value)
        except ValueError:
            return False
        return True

    if legal(axis.high):
        return axis
    if not legal(axis.low):
        raise WorkbenchError(f"{axis.name}: no legal value in [{axis.low}, {axis.high}] to tune over")
    lo, hi = axis.low, axis.high
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if legal(mid) else (lo, mid)
    return Axis(axis.name, axis.low, lo)


def _setting(name: str, value: float, m: float | None) -> tuple:
    """A hashable parameter setting (value rounded so grid and refinement points coincide exactly)."""
    setting = ((name, round(value, 12)),)
    return setting + ((("M", m),) if m is not None else ())


def resolve_auto(allocation: str, params: dict[str, Any], model, tokenizer, sparsity: float, cache=None,
                 calibration=None, progress: bool = False,
                 dataset: str = DEFAULT_DATASET) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``params`` with every ``"auto"`` value tuned on ``dataset``'s validation split, and the tuning's record
    (None when nothing was ``"auto"``). ``cache``: a DenseCache of ``model``; without one it is built from
    ``calibration``."""
    if not any(isinstance(v, str) and v == "auto" for v in params.values()):
        return dict(params), None
    if cache is None:
        from .prune import DenseCache

        cache = DenseCache.build(model, calibration, ("sq_norm",), progress=progress)
    tuning = tune(allocation, params, model, tokenizer, cache, sparsity, dataset=dataset)
    return {**params, **tuning["params"]}, tuning
