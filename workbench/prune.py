"""prune(): calibration -> allocation -> masks, in place, with a sparsity report (``checkpoint.save_pruned`` writes it).

Everything that prunes (CLI, widgets, notebooks, dashboard, searches) goes through :func:`prune`.
Two ways to run it:

* ``mode="sequential"`` (the papers' protocol): block l is pruned before block l+1's statistics are
  gathered, so later blocks see the pruned model's activations;
* ``mode="dense"``: statistics of the dense model, gathered once into a :class:`DenseCache`
  (with a copy of the dense weights); re-pruning at another allocation restores the dense weights
  and costs no forward pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .allocation import AllocationInput, Learner, allocate, check_allocator
from .backend.reference import check_nm
from .calibrate import calibrate
from .data import DEFAULT_DATASET, Calibration, calibration_samples
from .errors import WorkbenchError
from .models import ModelStructure, prunable_linears, structure
from .offload import Residency
from .plan import Plan, execute, score_fn
from .profile import SparsityProfile
from .pruners import NEEDS, forget_grid
from .quantize import QuantSpec, bits_per_weight
from .spec import MethodSpec, check_target
from .units import LayerStats


@dataclass
class PruneResult:
    """The profile that was applied, the sparsity reached, and where the time went."""

    profile: SparsityProfile
    report: dict
    provenance: dict = field(default_factory=dict)  # of the calibration windows (Calibration.provenance)
    timings: dict = field(default_factory=dict)


@dataclass
class DenseCache:
    """Dense-model statistics plus a CPU copy of the dense prunable weights (re-prune without a forward)."""

    stats: dict[str, LayerStats]
    weights: dict[str, torch.Tensor]
    provenance: dict  # of the calibration windows the statistics come from
    forward_s: float

    @classmethod
    def build(cls, model: nn.Module, calibration: Calibration, statistics: tuple[str, ...] = ("sq_norm",),
              progress: bool = True) -> DenseCache:
        weights = {n: lin.weight.detach().to("cpu", copy=True) for n, lin in prunable_linears(model).items()}
        start = time.perf_counter()
        stats = calibrate(model, calibration.input_ids, mode="dense", statistics=statistics, progress=progress,
                          window_kwargs=calibration.window_kwargs)
        return cls(stats, weights, calibration.provenance(), time.perf_counter() - start)

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Put the dense weights back into ``model``."""
        for name, lin in prunable_linears(model).items():
            lin.weight.copy_(self.weights[name].to(lin.weight.device, lin.weight.dtype))
            forget_grid(lin)

    def has(self, statistics: tuple[str, ...]) -> bool:
        first = next(iter(self.stats.values()))
        return all(getattr(first, s) is not None for s in statistics)


def sparsity_report(model: nn.Module, profile: SparsityProfile, residency: Residency | None = None,
                    layout: ModelStructure | None = None, quant: QuantSpec | None = None) -> dict:
    """Target vs actual sparsity (fraction of exact zeros) per layer and parameter-weighted overall
    (``residency`` reads weights that are not in memory, e.g. a streamed run's output); with quantization, the
    effective bits per weight (:func:`workbench.quantize.bits_per_weight`: values, mask, scales and zero points)."""
    residency = residency or Residency()
    layers, zeros, total, bits = {}, 0, 0, 0.0
    for name, lin in (layout or structure(model)).linears.items():
        weight = residency.weight(name, lin)
        z = int((weight == 0).sum())
        n = weight.numel()
        layers[name] = {"target": profile.layers[name], "actual": z / n, "numel": n}
        zeros, total = zeros + z, total + n
        if quant is not None and quant.enabled:
            bits += bits_per_weight(weight.shape, n - z, quant) * n
    report = {"target": profile.target, "allocated_mean": profile.mean(), "actual": zeros / total, "layers": layers}
    if quant is not None and quant.enabled:
        report.update(wbits=quant.wbits, group_size=quant.group_size, symmetric=quant.symmetric,
                      bits_per_weight=bits / total)
    return report


def _method(method: MethodSpec | None, settings: dict[str, Any]) -> tuple[MethodSpec, dict[str, Any]]:
    """The method from a spec or from keyword settings (``metric=``, ``allocation=``, ``allocation_params=``...),
    and the allocator's internal parameters (passed by the workbench itself, never part of a spec)."""
    if method is not None:
        if settings:
            raise WorkbenchError(f"prune: give a MethodSpec or keyword settings, not both (got {sorted(settings)})")
        return method, {}
    params = settings.pop("allocation_params", None) or {}
    if not isinstance(params, dict):
        raise WorkbenchError(f"alloc_params={params!r} must be a mapping of parameter names to values")
    params = dict(params)
    allocation = settings.pop("allocation", "uniform")
    internal: dict[str, Any] = {}
    if isinstance(allocation, str) and allocation != "dense":
        entry = check_allocator(allocation)
        internal = {k: params.pop(k) for k in list(params) if (p := entry.param(k)) is not None and p.internal}
    return MethodSpec.model_validate({**settings, "allocation": {"name": allocation, **params}}), internal


def _validate(layout: ModelStructure, method: MethodSpec, learner: bool, profile: SparsityProfile | None, cache,
              residency: Residency) -> tuple[int, int]:
    """The checks that need the model (N:M fits every linear, a given profile names its linears) or the call
    (cache, residency), done before the model is touched; returns N, M. The method was checked when built."""
    n, m = check_target(method.pattern, method.allocation.name, method.sparsity, with_profile=profile is not None)
    for name, lin in layout.linears.items() if n else ():
        check_nm(n, m, lin.in_features, layer=name)
    if profile is not None:
        profile.validate()
        profile.check_matches(layout.linears)
    if cache is not None and method.mode != "dense":
        raise WorkbenchError("cache= holds dense statistics: use mode='dense' with it")
    if type(residency) is not Residency and (method.mode != "sequential" or cache is not None):
        raise WorkbenchError(f"an onloaded or streamed model prunes block by block: use mode='sequential' without a "
                             f"cache (got mode={method.mode!r})")
    if learner and (method.mode != "sequential" or cache is not None):
        raise WorkbenchError(f"allocation={method.allocation.name!r} learns on the pruned model's block inputs: use "
                             f"mode='sequential' without a cache (got mode={method.mode!r})")
    if learner and (n or method.group is not None):
        raise WorkbenchError(f"allocation={method.allocation.name!r} chooses its own unstructured masks: leave "
                             f"pattern 'unstructured' and group unset")
    quant = method.quant()
    if quant.enabled and method.quant_method == "learned" and not learner:
        raise WorkbenchError(f"quant_method='learned' learns the quantization inside BESA's loop; "
                             f"allocation={method.allocation.name!r} does not learn: allowed for it: "
                             "['rtn', 'gptq', 'gptq-after']")
    for linear in layout.linears.values() if quant.enabled else ():
        quant.check(linear.in_features)  # group_size divides every linear's input width
    return n, m


def prune(model: nn.Module, tokenizer=None, method: MethodSpec | None = None, *,
          calibration: Calibration | None = None, profile: SparsityProfile | None = None,
          cache: DenseCache | None = None, residency: Residency | None = None, progress: bool = True,
          **settings: Any) -> PruneResult:
    """Prune ``model`` in place as ``method`` says (or keyword settings: ``metric``, ``allocation``, ``sparsity``,
    ``pattern``, ``mode``, ``group``, ``allocation_params``); returns the applied profile and a sparsity report.

    Plan, then execute (:mod:`workbench.plan`): the model's structure is discovered once; an allocator's plan is
    made from dense statistics (``cache``, or a dense pass over ``calibration``) before anything is pruned, a
    learner's inside the loop. ``calibration`` defaults to the embedded corpus' defaults (needs ``tokenizer``);
    ``profile`` overrides the allocation; ``residency`` onloads or streams the blocks one at a time.
    """
    method, internal = _method(method, settings)
    entry = check_allocator(method.allocation.name)  # the one look-up of the allocator (or learner)
    params = method.params()  # with the declared defaults for this metric
    learner = profile is None and isinstance(entry, Learner)
    residency = residency or Residency()
    layout = structure(model)
    pattern = _validate(layout, method, learner, profile, cache, residency)
    quant, gptq = method.quant(), method.quant().enabled and method.quant_method != "rtn"
    if gptq and calibration is None and cache is None and tokenizer is None:
        raise WorkbenchError(f"quant_method={method.quant_method!r} needs calibration data (the Hessian of each "
                             "layer's inputs): give calibration samples or a tokenizer; allowed without them: "
                             "quant_method='rtn'")
    if learner:
        plan = _learner_plan(method, entry, {**params, **internal}, layout, pattern, progress)
        calibration = calibration or _default_calibration(tokenizer)
        execute(plan, layout, model, calibration, None, residency, progress)
        report = sparsity_report(model, plan.profile, residency, layout, quant)
        return PruneResult(plan.profile, report, calibration.provenance(), plan.timings)
    needs_scores = profile is None and entry.needs_scores
    needs_hessians = profile is None and entry.needs_hessians
    if needs_hessians and type(residency) is not Residency:
        raise WorkbenchError(f"allocation={method.allocation.name!r} reads every linear's dense input Hessian "
                             "(in x in), all held at once: an onloaded or streamed model keeps one block resident; "
                             "prune it in memory (no onload / offload directory) or give a profile")
    score = params.get("score", "wanda")
    statistics = tuple(sorted(set(NEEDS[method.metric]) | ({"sq_norm"} if needs_scores and score == "wanda"
                                                          else set()) | ({"xtx"} if gptq else set())))
    # what the allocation reads of the dense model: Wanda's norms (scores), X^T X (Hessians)
    allocation_stats = tuple(stat for stat, needed in (("sq_norm", needs_scores and score == "wanda"),
                                                       ("xtx", needs_hessians)) if needed)
    dense_statistics = tuple(sorted(set(statistics) | set(allocation_stats)))  # what a dense cache must hold
    if cache is not None and not cache.has(dense_statistics):
        raise WorkbenchError(f"cache lacks statistics {list(dense_statistics)}; build it with them")
    if dense_statistics and calibration is None and cache is None:
        calibration = _default_calibration(tokenizer)
    timings = {"forward_s": 0.0, "prune_s": 0.0}
    if cache is not None:
        cache.restore(model)
    elif method.mode == "dense" and dense_statistics:
        cache = DenseCache.build(model, calibration, dense_statistics, progress=progress)
        timings["forward_s"] += cache.forward_s
    dense_stats = cache.stats if cache is not None else None
    if allocation_stats and dense_stats is None:  # the allocation reads the dense model's statistics
        start = time.perf_counter()
        dense_stats = calibrate(model, calibration.input_ids, "dense", allocation_stats, progress=progress,
                                window_kwargs=calibration.window_kwargs,
                                residency=residency.reader(), layout=layout)
        timings["forward_s"] += time.perf_counter() - start
    start = time.perf_counter()
    if profile is None:
        profile = _allocate(method, {**params, **internal}, layout, pattern, needs_scores, dense_stats, score,
                            residency, needs_hessians)
    plan = Plan.from_profile(profile, method.metric, pattern, method.group, method.mode, statistics)
    plan.quant, plan.quant_method = quant, method.quant_method
    timings["prune_s"] += time.perf_counter() - start
    plan.timings = timings
    execute(plan, layout, model, calibration, cache.stats if cache is not None else None, residency, progress)
    report = sparsity_report(model, plan.profile, residency, layout, quant)
    calib = cache.provenance if cache is not None else (calibration.provenance() if calibration else {})
    return PruneResult(plan.profile, report, calib, plan.timings)


def _default_calibration(tokenizer) -> Calibration:
    if tokenizer is None:
        raise WorkbenchError("calibration: give calibration samples or a tokenizer to draw embedded ones")
    return calibration_samples(tokenizer, DEFAULT_DATASET)


def _learner_plan(method: MethodSpec, entry: Learner, params: dict, layout: ModelStructure,
                  pattern: tuple[int, int], progress: bool) -> Plan:
    """A learner's plan: empty until the learner has pruned every block inside the sequential loop."""
    params = {**params, "progress": params.get("progress", progress)}
    learner = entry.fn(AllocationInput(layout.layer_infos()), method.sparsity, **params)
    learner.quantize_with(method.quant(), method.quant_method)
    return Plan(method.metric, pattern, None, "sequential", tuple(sorted(learner.statistics)), learner=learner)


def _allocate(method: MethodSpec, params: dict, layout: ModelStructure, pattern: tuple[int, int],
              needs_scores: bool, dense_stats, score: str, residency: Residency,
              needs_hessians: bool = False) -> SparsityProfile:
    """The allocator's profile (an N:M pattern fixes every unit at N/M: uniform)."""
    linears = layout.linears
    inputs = AllocationInput(layout.layer_infos(),
                             score_fn(layout, dense_stats, score, residency) if needs_scores else None,
                             weights=lambda unit: residency.weight(unit, linears[unit]),
                             hessians=(lambda unit: dense_stats[unit].hessian()) if needs_hessians else None)
    n, m = pattern
    if n:
        profile = allocate("uniform", inputs, n / m)
        profile.params["pattern"] = method.pattern
        return profile
    return allocate(method.allocation.name, inputs, method.sparsity, **params)
