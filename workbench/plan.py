"""Plan, then execute: what every prunable unit is pruned to and how, then one executor that does it.

A :class:`Plan` is built from a method specification and the model's structure (discovered once, passed in):
per unit (a prunable linear) its target sparsity and, where the allocation sets them, per-row sparsities; for the
whole run the metric, the N:M pattern, the comparison group, the capture mode and the calibration statistics the
loop must gather. An allocator's plan is known before pruning starts; a learner (BESA) produces its plan inside
the loop, block by block, and the plan is read back from it at the end.

:func:`execute` is the one executor: in sequential mode it prunes each block inside the capture loop
(:func:`workbench.calibrate.calibrate`) once the block's statistics are complete, so later blocks see the pruned
model; otherwise it prunes block by block from dense statistics. Any residency (in memory, onloaded, streamed)
works the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from .calibrate import calibrate
from .data import Calibration
from .models import ModelStructure
from .offload import Residency
from .profile import SparsityProfile
from .pruners import layer_scores, prune_linear, quantize_linear
from .quantize import QuantSpec
from .units import LayerStats


@dataclass(frozen=True)
class UnitPlan:
    """What happens to one prunable linear: its target sparsity, and per-row sparsities where the plan sets them."""

    name: str
    block: int
    sparsity: float
    rows: tuple[float, ...] | None = None


@dataclass
class Plan:
    """Per unit what is pruned to what, and how (metric, pattern, group, mode, statistics the loop gathers)."""

    metric: str
    pattern: tuple[int, int]
    group: str | None
    mode: str
    statistics: tuple[str, ...]
    profile: SparsityProfile | None = None  # None until a learner has produced it
    learner: Any = None  # a learner's object (``step(BlockData)``, ``profile()``), or None
    timings: dict[str, float] = field(default_factory=lambda: {"forward_s": 0.0, "prune_s": 0.0})
    quant: QuantSpec = field(default_factory=QuantSpec)  # the quantization after (or, joint, inside) pruning
    quant_method: str = "rtn"

    @property
    def joint(self) -> bool:
        """SparseGPT with GPTQ: each column quantized inside the same OBS pass."""
        return self.quant.enabled and self.quant_method == "gptq" and self.metric == "sparsegpt"

    @classmethod
    def from_profile(cls, profile: SparsityProfile, metric: str, pattern: tuple[int, int], group: str | None,
                     mode: str, statistics: tuple[str, ...]) -> Plan:
        """The plan of an allocation known before pruning (an allocator's profile, or one given)."""
        if group is None and metric != "sparsegpt":  # an allocator may fix the comparison group (the papers' Global)
            group = profile.params.get("mask_group")
        return cls(metric, pattern, group, mode, statistics, profile)

    def unit(self, name: str, block: int) -> UnitPlan:
        rows = self.profile.rows.get(name)
        return UnitPlan(name, block, self.profile.layers[name], tuple(rows) if rows is not None else None)

    def units(self, layout: ModelStructure) -> list[UnitPlan]:
        """Every unit's plan, in model order (an allocator's plan; a learner's once it has run)."""
        return [self.unit(name, index) for index, block in enumerate(layout.block_linears) for name in block]


def score_fn(layout: ModelStructure, stats: dict[str, LayerStats] | None, score: str, residency: Residency):
    """Scores of a unit by name (the dense weights as the residency reads them, and the dense statistics)."""
    linears = layout.linears
    return lambda name: layer_scores(score, residency.weight(name, linears[name]), stats[name] if stats else None)


def execute(plan: Plan, layout: ModelStructure, model: nn.Module, calibration: Calibration | None,
            dense_stats: dict[str, LayerStats] | None, residency: Residency, progress: bool = True) -> Plan:
    """Prune ``model`` in place as ``plan`` says; returns the plan (a learner's profile filled in, timings added)."""
    if plan.learner is not None:
        return _execute_learner(plan, model, calibration, residency, progress)
    linears = layout.linears

    def prune_units(names, stats):
        t0 = time.perf_counter()
        for name in names:
            unit = plan.unit(name, layout.block_of(name))
            unit_stats = stats.get(name) if stats else None
            prune_linear(linears[name], plan.metric, unit.sparsity, unit_stats, pattern=plan.pattern,
                         group=plan.group, row_sparsities=list(unit.rows) if unit.rows is not None else None,
                         quant=plan.quant if plan.joint else None)
            if not plan.joint:  # the quantization stage: after pruning, on the layer's own statistics
                quantize_linear(linears[name], plan.quant, "rtn" if plan.quant_method == "rtn" else "gptq",
                                unit_stats)
        plan.timings["prune_s"] += time.perf_counter() - t0

    if plan.mode == "sequential" and plan.statistics:
        start, prune_before = time.perf_counter(), plan.timings["prune_s"]
        calibrate(model, calibration.input_ids, "sequential", plan.statistics, window_kwargs=calibration.window_kwargs,
                  on_block=lambda _i, block_linears, stats: prune_units(block_linears, stats), progress=progress,
                  residency=residency, layout=layout)
        plan.timings["forward_s"] += time.perf_counter() - start - (plan.timings["prune_s"] - prune_before)
    else:
        for index in tqdm(range(len(layout.blocks)), desc=f"prune ({plan.metric})", disable=not progress,
                          leave=False):
            residency.enter(index, layout.blocks[index])
            prune_units(list(layout.block_linears[index]), dense_stats)
            residency.exit(index, layout.blocks[index])
    return plan


def _execute_learner(plan: Plan, model: nn.Module, calibration: Calibration, residency: Residency,
                     progress: bool) -> Plan:
    """One sequential pass; the learner prunes each block and so produces the plan, read back at the end."""
    learner = plan.learner
    start = time.perf_counter()
    calibrate(model, calibration.input_ids, "sequential", plan.statistics, block_step=learner.step,
              window_kwargs=calibration.window_kwargs,
              dense_reference=learner.needs_dense, progress=progress, residency=residency)
    total = time.perf_counter() - start
    learn = sum(b.seconds for b in learner.log)
    plan.profile = learner.profile()
    plan.timings = {"forward_s": total - learn, "prune_s": learn,
                    "learn_s_per_block": learn / max(len(learner.log), 1)}
    return plan
