"""Weight-only int8 and int4 linears for CPU inference: each quantizes the (pruned) float weights it is given on
its kernel's grid, round to nearest (:mod:`workbench.quantize`: the same grid, the same integers), and packs
them for torch's CPU kernels (``aten._weight_int8pack_mm``; ``aten._weight_int4pack_mm_for_cpu``). The output
equals ``x @ quantize_rtn(W)ᵀ + b`` up to float rounding, and a pruned weight is an exact zero there too.

* int8: symmetric, one scale per output channel (the kernel has no zero point and no groups);
* int4: groups of 32, 64, 128 or 256 input columns, symmetric or asymmetric (the kernel's (q − 8) · scale + zero
  holds any integer zero point).

A linear that a run quantized carries its grid (``linear.quant_grid``, GPTQ's included): where that grid is the
kernel's (same bits, grouping and symmetry), the module takes its scales, zero points and integers as they are,
so it computes with the run's own weights; otherwise the weights are rounded on the kernel's grid of their range.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import WorkbenchError
from .quantize import QuantSpec, grid

INT4_GROUPS = (32, 64, 128, 256)


class Int8Linear(nn.Module):
    """y = x Wᵀ + b with W stored as int8 and one float scale per output channel."""

    def __init__(self, linear: nn.Linear, spec: QuantSpec):
        super().__init__()
        if spec.wbits != 8 or spec.group_size is not None or not spec.symmetric:
            raise WorkbenchError("the int8 CPU path takes wbits=8, symmetric, one scale per output channel "
                                 f"(got wbits={spec.wbits}, group_size={spec.group_size}, symmetric={spec.symmetric})")
        weight = linear.weight.detach().float()
        scale, zero, q = _grid_and_codes(linear, spec, weight)
        scale, zero, q = scale[:, 0], zero[:, 0], q.float() - 128  # the grid's integers, centred
        self.register_buffer("weight_int8", q.clamp(-128, 127).to(torch.int8))
        self.register_buffer("scales", scale.contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).float(), self.weight_int8, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


class Int4Linear(nn.Module):
    """y = x Wᵀ + b with W packed as int4 in groups of input columns, a scale and a zero per group."""

    def __init__(self, linear: nn.Linear, spec: QuantSpec):
        super().__init__()
        group = spec.group_size
        if spec.wbits != 4 or group not in INT4_GROUPS or linear.in_features % group:
            raise WorkbenchError(f"the int4 CPU path takes wbits=4 and group_size in {list(INT4_GROUPS)} dividing "
                                 f"the input width {linear.in_features} (got wbits={spec.wbits}, group_size={group})")
        weight = linear.weight.detach().float()
        rows, cols = weight.shape
        scale, zero, q = _grid_and_codes(linear, spec, weight)
        # the kernel reads w = (q − 8) · scale + zero_f; the grid's w = (q − zero) · scale: zero_f = (8 − zero) · scale
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2))
        self.register_buffer("scales_zeros", torch.stack([scale.T, ((8 - zero) * scale).T], dim=2).contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features, self.group = cols, rows, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]).float().contiguous(), self.packed,
                                                       self.group, self.scales_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


def _grid_and_codes(linear: nn.Linear, spec: QuantSpec, weight: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale, zero point, integers) of ``weight`` on ``spec``'s grid: the run's own (``linear.quant_grid``) where
    it is this grid, else round to nearest on the grid of each row's (group's) range; scale and zero (rows, groups)."""
    kept = getattr(linear, "quant_grid", None)
    if kept is not None and kept.spec == spec and kept.holds(weight):  # a stale grid is not trusted
        return kept.scale.float(), kept.zero.float(), kept.codes(weight).long()
    rows, cols = weight.shape
    width = spec.group_size or cols
    parts = weight.reshape(rows * (cols // width), width)  # each row's groups, one after another
    scale, zero = grid(parts, spec.wbits, spec.symmetric)
    q = torch.clamp(torch.round(parts / scale[:, None]) + zero[:, None], 0, 2**spec.wbits - 1).reshape(rows, cols)
    return scale.reshape(rows, -1), zero.reshape(rows, -1), q.long()


def int_linears(model: nn.Module, spec: QuantSpec) -> int:
    """Replace every prunable linear of ``model`` (already on ``spec``'s grid) by its int8 or int4 module; the
    number replaced."""
    from .models import forget_structure, prunable_linears

    kind = {8: Int8Linear, 4: Int4Linear}.get(spec.wbits)
    if kind is None:
        raise WorkbenchError(f"wbits={spec.wbits} has no CPU integer path; allowed: 8 (symmetric, per channel) or 4 "
                             f"(groups of {list(INT4_GROUPS)})")
    linears = prunable_linears(model)
    for name, linear in linears.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, kind(linear, spec))
    forget_structure(model)  # the kept structure named the float linears: let them go
    return len(linears)
