"""Pruning metrics (magnitude, wanda, sparsegpt) applied to one linear at a given sparsity or N:M pattern.

``prune_linear`` is the single place where a layer's scores become a mask and the mask is applied.
Comparison groups: ``row`` (each output row loses int(C_in · s) weights, Wanda's default) or ``matrix``
(the int(numel · s) lowest of the whole matrix, magnitude's default). SparseGPT chooses its own mask
per block of 128 columns jointly over rows (see ``sparsegpt.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..backend import kernels
from ..backend.reference import prune_counts
from ..errors import WorkbenchError
from ..quantize import QuantGrid, QuantSpec, quantize_rtn
from ..registry import Plugin, Registry
from . import magnitude, wanda

if TYPE_CHECKING:
    from ..units import LayerStats

GROUPS = ("row", "matrix")


@dataclass(frozen=True)
class Metric(Plugin):
    """A pruning metric: the calibration statistics it needs and its default comparison group."""

    needs: tuple[str, ...] = ()
    default_group: str = "row"


METRICS: Registry[Metric] = Registry("metric")
METRICS.add("magnitude", Metric("magnitude", "|W|, no calibration (the whole matrix compared)", (),
                                magnitude.DEFAULT_GROUP))
METRICS.add("wanda", Metric("wanda", "|W|·||X|| per output row (Sun et al. 2024)", ("sq_norm",), wanda.DEFAULT_GROUP))
METRICS.add("sparsegpt", Metric("sparsegpt", "OBS mask and weight update per block of 128 columns (Frantar & "
                                "Alistarh 2023)", ("xtx",), "block"))
DEFAULT_GROUP = {name: m.default_group for name, m in METRICS.items()}
NEEDS = {name: m.needs for name, m in METRICS.items()}  # calibration statistics needed


def check_metric(metric: str, group: str | None = None) -> str:
    """Validate a metric name and comparison group; return the group to use."""
    METRICS.check(metric)
    if group is None:
        return DEFAULT_GROUP[metric]
    if metric == "sparsegpt":
        raise WorkbenchError("group: sparsegpt chooses its mask per block of columns; leave group unset")
    if group not in GROUPS:
        raise WorkbenchError(f"group={group!r} is not allowed; allowed: {list(GROUPS)}")
    return group


def layer_scores(metric: str, weight: torch.Tensor, stats: LayerStats | None) -> torch.Tensor:
    """Importance scores of a weight matrix (higher = keep): magnitude |W|, wanda |W|·||X||, or sparsegpt
    w²/U_jj² (SparseGPT's saliency without its weight update; BESA ranks by it)."""
    if metric == "magnitude":
        return magnitude.magnitude_scores(weight)
    if metric not in NEEDS:
        raise WorkbenchError(f"metric={metric!r} has no scores; allowed: {list(NEEDS)}")
    if stats is None:
        raise WorkbenchError(f"metric={metric!r} needs calibration statistics ({', '.join(NEEDS[metric])})")
    if metric == "wanda":
        return kernels.wanda_scores(weight, stats.act_norm())
    from .sparsegpt import sparsegpt_scores

    return sparsegpt_scores(weight, stats.hessian())


@torch.no_grad()
def prune_linear(linear: nn.Linear, metric: str, sparsity: float, stats: LayerStats | None = None,
                 pattern: tuple[int, int] = (0, 0), group: str | None = None,
                 row_sparsities: list[float] | None = None, quant: QuantSpec | None = None) -> torch.Tensor:
    """Prune ``linear.weight`` in place; returns the boolean mask (True = pruned). ``quant`` (SparseGPT only):
    quantize each column inside the same OBS pass (the joint mode)."""
    group = check_metric(metric, group)
    forget_grid(linear)  # new masks: any grid kept from an earlier quantization no longer describes the weights
    weight = linear.weight
    n, m = pattern
    if metric == "sparsegpt":
        from .sparsegpt import sparsegpt_prune

        if row_sparsities is not None:
            raise WorkbenchError("metric='sparsegpt' does not take per-row sparsities")
        if stats is None:
            raise WorkbenchError("metric='sparsegpt' needs calibration statistics (xtx)")
        grids: list = []
        new_weight, mask = sparsegpt_prune(weight, stats.hessian(), sparsity, prune_n=n, prune_m=m, quant=quant,
                                           grid_out=grids)
        weight.copy_(new_weight)
        if grids:
            keep_grid(linear, grids[0], mask)
        return mask
    scores = layer_scores(metric, weight, stats)
    if n:
        mask = kernels.nm_mask(scores, n, m)
    elif row_sparsities is not None:
        mask = kernels.row_mask(scores, prune_counts(weight.shape[1], torch.tensor(row_sparsities)))
    elif group == "row":
        mask = kernels.row_mask(scores, prune_counts(weight.shape[1], sparsity))
    else:
        mask = kernels.matrix_mask(scores, int(weight.numel() * sparsity))
    kernels.apply_mask(weight, mask)
    return mask


@torch.no_grad()
def quantize_linear(linear: nn.Linear, quant: QuantSpec, method: str, stats: LayerStats | None = None) -> None:
    """The quantization stage of a pruned linear, in place: round to nearest on its grid (``rtn``), or GPTQ
    (``gptq``) holding its pruned entries at zero (needs the Hessian of its inputs, ``xtx``)."""
    if not quant.enabled:
        return
    weight, grids = linear.weight, []
    pruned = weight == 0
    if method == "rtn":
        weight.copy_(quantize_rtn(weight, quant, grid_out=grids))
        keep_grid(linear, grids[0], pruned)
        return
    if stats is None or stats.xtx is None:
        raise WorkbenchError(f"quant_method={method!r} needs calibration statistics (xtx); allowed without them: "
                             "'rtn'")
    from .sparsegpt import sparsegpt_prune

    new_weight, _mask = sparsegpt_prune(weight, stats.hessian(), 0.0, quant=quant, fixed_mask=pruned, grid_out=grids)
    weight.copy_(new_weight)
    keep_grid(linear, grids[0], pruned)


def keep_grid(linear: nn.Linear, grid: QuantGrid, pruned: torch.Tensor) -> None:
    """Keep the grid a linear was quantized on (``linear.quant_grid``: an export stores its integers) and, where
    the layer is pruned, its pruning mask a bit per weight (kept = 1; zeros that quantization made stay apart)."""
    from compressed_tensors.utils import pack_bitmasks

    grid.scale, grid.zero = grid.scale.cpu(), grid.zero.cpu()  # small; the model may move, the grid stays put
    grid.kept_bits = pack_bitmasks(~pruned.cpu()) if bool(pruned.any()) else None
    linear.quant_grid = grid


def forget_grid(linear: nn.Linear) -> None:
    """Drop a kept quantization grid: the weights are about to change (pruned again, restored)."""
    linear.__dict__.pop("quant_grid", None)
