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

import torch
from torch import nn
from tqdm.auto import tqdm

from .allocation import AllocationInput, allocate, check_allocator, check_params
from .backend.reference import check_nm, parse_pattern
from .calibrate import MODES, calibrate
from .data import Calibration, calibration_samples
from .errors import WorkbenchError
from .models import layer_infos, prunable_linears, structure
from .offload import Residency
from .profile import SparsityProfile, check_sparsity
from .pruners import NEEDS, check_metric, layer_scores, prune_linear
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
        stats = calibrate(model, calibration.input_ids, mode="dense", statistics=statistics, progress=progress)
        return cls(stats, weights, calibration.provenance(), time.perf_counter() - start)

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Put the dense weights back into ``model``."""
        for name, lin in prunable_linears(model).items():
            lin.weight.copy_(self.weights[name].to(lin.weight.device, lin.weight.dtype))

    def has(self, statistics: tuple[str, ...]) -> bool:
        first = next(iter(self.stats.values()))
        return all(getattr(first, s) is not None for s in statistics)


def sparsity_report(model: nn.Module, profile: SparsityProfile, residency: Residency | None = None) -> dict:
    """Target vs actual sparsity (fraction of exact zeros) per layer and parameter-weighted overall
    (``residency`` reads weights that are not in memory, e.g. a streamed run's output)."""
    residency = residency or Residency()
    layers, zeros, total = {}, 0, 0
    for name, lin in prunable_linears(model).items():
        weight = residency.weight(name, lin)
        z = int((weight == 0).sum())
        n = weight.numel()
        layers[name] = {"target": profile.layers[name], "actual": z / n, "numel": n}
        zeros, total = zeros + z, total + n
    return {"target": profile.target, "allocated_mean": profile.mean(), "actual": zeros / total, "layers": layers}


def _scores_fn(model: nn.Module, stats: dict[str, LayerStats] | None, score: str, residency: Residency):
    linears = prunable_linears(model)
    return lambda name: layer_scores(score, residency.weight(name, linears[name]), stats[name] if stats else None)


def check_target(pattern: str, allocation: str, sparsity: float, with_profile: bool = False) -> tuple[int, int]:
    """The one check of a run's target: an N:M ``pattern`` (returned as (N, M), (0, 0) if unstructured)
    fixes every layer, so it goes with ``allocation='uniform'`` only; otherwise ``sparsity`` is the target."""
    n, m = parse_pattern(pattern)
    if n:
        if allocation not in ("uniform", "dense") or with_profile:
            raise WorkbenchError(f"pattern={pattern!r} fixes every layer at {n}/{m}: use allocation='uniform' "
                                  f"(got allocation={allocation!r}{' and a profile' if with_profile else ''})")
    elif allocation != "dense":
        check_sparsity(sparsity, "sparsity")
    return n, m


def _validate(model, metric, allocation, sparsity, pattern, mode, group, profile, cache,
              allocation_params, residency) -> tuple[int, int, dict]:
    """Every check that can fail, done before the model is touched; returns N, M and the allocator's
    parameters with the defaults filled in (as given when a profile is passed)."""
    check_metric(metric, group)
    n, m = check_target(pattern, allocation, sparsity, with_profile=profile is not None)
    if mode not in MODES:
        raise WorkbenchError(f"mode={mode!r} is not allowed; allowed: {list(MODES)}")
    linears = prunable_linears(model)
    for name, lin in linears.items() if n else ():
        check_nm(n, m, lin.in_features, layer=name)
    if profile is not None:
        profile.validate()
        profile.check_matches(linears)
        params = dict(allocation_params or {})
    else:
        params = check_params(allocation, allocation_params or {}, metric)
    if cache is not None and mode != "dense":
        raise WorkbenchError("cache= holds dense statistics: use mode='dense' with it")
    if type(residency) is not Residency and (mode != "sequential" or cache is not None):
        raise WorkbenchError(f"an onloaded or streamed model prunes block by block: use mode='sequential' without a "
                              f"cache (got mode={mode!r})")
    return n, m, params


def prune(model: nn.Module, tokenizer=None, metric: str = "wanda", allocation: str = "uniform",
          sparsity: float = 0.5, pattern: str = "unstructured", calibration: Calibration | None = None,
          mode: str = "sequential", group: str | None = None, allocation_params: dict | None = None,
          profile: SparsityProfile | None = None, cache: DenseCache | None = None,
          progress: bool = True, residency: Residency | None = None) -> PruneResult:
    """Prune ``model`` in place and return the applied profile and a sparsity report.

    ``calibration`` defaults to the embedded corpus' defaults (needs ``tokenizer``); ``profile``
    overrides ``allocation``; ``cache`` (dense mode) re-prunes from stored dense statistics;
    ``residency`` onloads or streams the blocks one at a time (:mod:`workbench.offload`, sequential mode).
    """
    residency = residency or Residency()
    n, m, params = _validate(model, metric, allocation, sparsity, pattern, mode, group, profile, cache,
                             allocation_params, residency)
    if profile is None and check_allocator(allocation).in_loop:
        params["progress"] = (allocation_params or {}).get("progress", progress)
        return _prune_in_loop(model, tokenizer, metric, allocation, sparsity, (n, m), calibration, mode, group,
                              params, cache, progress, residency)
    needs_scores = profile is None and check_allocator(allocation).needs_scores
    score = params.get("score", "wanda")
    statistics = set(NEEDS[metric]) | ({"sq_norm"} if needs_scores and score == "wanda" else set())
    if cache is not None and not cache.has(tuple(statistics)):
        raise WorkbenchError(f"cache lacks statistics {sorted(statistics)}; build it with them")
    if statistics and calibration is None and cache is None:
        if tokenizer is None:
            raise WorkbenchError("calibration: give calibration samples or a tokenizer to draw embedded ones")
        calibration = calibration_samples(tokenizer, "embedded")

    timings = {"forward_s": 0.0, "prune_s": 0.0}
    if cache is not None:
        cache.restore(model)
    elif mode == "dense" and statistics:
        cache = DenseCache.build(model, calibration, tuple(sorted(statistics)), progress=progress)
        timings["forward_s"] += cache.forward_s
    dense_stats = cache.stats if cache is not None else None
    if needs_scores and dense_stats is None and score == "wanda":  # allocation needs the dense model's scores
        start = time.perf_counter()
        dense_stats = calibrate(model, calibration.input_ids, "dense", ("sq_norm",), progress=progress,
                                residency=residency.reader())
        timings["forward_s"] += time.perf_counter() - start

    start = time.perf_counter()
    linears = prunable_linears(model)
    inputs = AllocationInput(layer_infos(model),
                             _scores_fn(model, dense_stats, score, residency) if needs_scores else None,
                             weights=lambda name: residency.weight(name, linears[name]))
    if profile is None:
        target = n / m if n else sparsity
        profile = allocate("uniform" if n else allocation, inputs, target, **params)
        if n:
            profile.params["pattern"] = pattern
    timings["prune_s"] += time.perf_counter() - start

    if group is None and metric != "sparsegpt":  # an allocator may fix the comparison group (the papers' Global)
        group = profile.params.get("mask_group")

    def prune_layers(names, stats):
        t0 = time.perf_counter()
        for name in names:
            prune_linear(linears[name], metric, profile.layers[name], stats.get(name) if stats else None,
                         pattern=(n, m), group=group, row_sparsities=profile.rows.get(name))
        timings["prune_s"] += time.perf_counter() - t0

    if mode == "sequential" and statistics:
        start, prune_before = time.perf_counter(), timings["prune_s"]
        calibrate(model, calibration.input_ids, "sequential", tuple(sorted(statistics)),
                  on_block=lambda _i, block_linears, stats: prune_layers(block_linears, stats), progress=progress,
                  residency=residency)
        timings["forward_s"] += time.perf_counter() - start - (timings["prune_s"] - prune_before)
    else:
        layout = structure(model)
        for index in tqdm(range(len(layout.blocks)), desc=f"prune ({metric})", disable=not progress, leave=False):
            residency.enter(index, layout.blocks[index])
            prune_layers(list(layout.block_linears[index]), dense_stats)
            residency.exit(index, layout.blocks[index])
    report = sparsity_report(model, profile, residency)
    calib = cache.provenance if cache is not None else (calibration.provenance() if calibration else {})
    return PruneResult(profile, report, calib, timings)


def _prune_in_loop(model: nn.Module, tokenizer, metric: str, allocation: str, sparsity: float,
                   pattern: tuple[int, int], calibration: Calibration | None, mode: str, group: str | None,
                   params: dict, cache: DenseCache | None, progress: bool, residency: Residency) -> PruneResult:
    """Allocators that learn while pruning (BESA): one sequential pass, the learner prunes each block."""
    if mode != "sequential" or cache is not None:
        raise WorkbenchError(f"allocation={allocation!r} learns on the pruned model's block inputs: use "
                              f"mode='sequential' without a cache (got mode={mode!r})")
    if pattern[0] or group is not None:
        raise WorkbenchError(f"allocation={allocation!r} chooses its own unstructured masks: leave pattern "
                              f"'unstructured' and group unset")
    learner = check_allocator(allocation).fn(AllocationInput(layer_infos(model)), sparsity, **params)
    if calibration is None:
        if tokenizer is None:
            raise WorkbenchError("calibration: give calibration samples or a tokenizer to draw embedded ones")
        calibration = calibration_samples(tokenizer, "embedded")
    start = time.perf_counter()
    calibrate(model, calibration.input_ids, "sequential", tuple(sorted(learner.statistics)),
              block_step=learner.step, dense_reference=learner.needs_dense, progress=progress, residency=residency)
    total = time.perf_counter() - start
    learn = sum(b.seconds for b in learner.log)
    profile = learner.profile()
    timings = {"forward_s": total - learn, "prune_s": learn, "learn_s_per_block": learn / max(len(learner.log), 1)}
    return PruneResult(profile, sparsity_report(model, profile, residency), calibration.provenance(), timings)
