"""What the math knows about a model's prunable units: plain data, no I/O, no model loading.

:class:`LayerInfo` is what an allocator may know of one prunable linear without its weights;
:class:`LayerStats` holds the calibration statistics of one linear's inputs (Wanda's norms, SparseGPT's
Hessian); :class:`BlockData` is what a per-block learner (BESA) sees of one block in the capture loop.
The capture loop (:mod:`workbench.calibrate`) and the model structure (:mod:`workbench.models`) fill them;
the pruners and allocators read them, so those import only this module and never the loaders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import WorkbenchError

GRANULARITIES = ("block", "sublayer", "projection")  # the allocation unit: a block, a block's child, a linear
LEGACY_GRANULARITIES = {"layer": "projection"}  # older profiles and settings said "layer" for one linear


def sublayer_of(name: str, block: int) -> str:
    """The block's direct child that holds linear ``name`` (``self_attn``, ``mlp``, ...): the segment after the
    first ``.<block>.`` of the name; a linear directly under its block is its own sublayer."""
    parts = name.split(".")
    rest = parts[parts.index(str(block)) + 1:] if str(block) in parts else []
    return rest[0] if rest else name


def unit_of(name: str, block: int, granularity: str, sublayer: str | None = None) -> str:
    """The allocation unit of linear ``name`` at ``granularity``: ``block 3``, ``block 3 mlp`` or the name."""
    if granularity == "block":
        return f"block {block}"
    if granularity == "sublayer":
        return f"block {block} {sublayer or sublayer_of(name, block)}"
    if granularity == "projection":
        return name
    raise WorkbenchError(f"granularity={granularity!r} is not allowed; allowed: {list(GRANULARITIES)}")


@dataclass(frozen=True)
class LayerInfo:
    """What an allocator may know about one prunable linear without its weights."""

    name: str
    block: int
    out_features: int
    in_features: int
    sublayer: str | None = None  # the block's child that holds it (attention, MLP); derived from the name if None

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features

    def unit(self, granularity: str) -> str:
        """This linear's allocation unit at ``granularity`` (see :func:`unit_of`)."""
        return unit_of(self.name, self.block, granularity, self.sublayer)


@dataclass
class LayerStats:
    """Input statistics of one linear over the calibration tokens (float32, on the model's device)."""

    n_windows: int = 0
    sq_norm: torch.Tensor | None = None  # (in,)
    xtx: torch.Tensor | None = None      # (in, in)

    def act_norm(self) -> torch.Tensor:
        """Wanda's ||X_j||: sqrt(Σ_tokens x_j² / n_windows), the reference's scaler_row."""
        if self.sq_norm is None:
            raise WorkbenchError("these statistics have no sq_norm (calibrate with statistics including 'sq_norm')")
        return torch.sqrt(self.sq_norm / max(self.n_windows, 1))

    def hessian(self) -> torch.Tensor:
        """SparseGPT's H = 2/N · Σ x xᵀ with N the number of windows, as the reference scales it."""
        if self.xtx is None:
            raise WorkbenchError("these statistics have no xtx (calibrate with statistics including 'xtx')")
        return self.xtx * (2.0 / max(self.n_windows, 1))


@dataclass
class BlockData:
    """What a per-block step (sequential mode) sees of block ``index``; it may change the block's weights."""

    index: int
    block: nn.Module
    linears: dict[str, nn.Linear]          # full name -> linear of this block
    stats: dict[str, LayerStats]
    inputs: Sequence[torch.Tensor]         # the block's inputs in this run (pruned model's), each (1, seqlen, hidden)
    outputs: Sequence[torch.Tensor]        # the block's outputs on ``inputs`` before the step (dense weights)
    kwargs: dict                           # keyword arguments of the block call (position embeddings, masks)
    dense_inputs: Sequence[torch.Tensor] | None = None   # the dense model's inputs of this block (dense_reference)
    dense_outputs: Sequence[torch.Tensor] | None = None  # the dense block on ``dense_inputs``
