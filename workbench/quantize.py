"""Weight quantization on the integer grid GPTQ defines (IST-DASLab/gptq, ``quant.py``: ``find_params`` and
``quantize``), per output channel or per group of input columns, symmetric or asymmetric, round to nearest.

For each row (and each group of ``group_size`` columns of it) with b bits, maxq = 2^b - 1:

* the range always holds zero: xmin = min(min w, 0), xmax = max(max w, 0); symmetric: xmax = max(|xmin|, xmax)
  and xmin = -xmax where xmin < 0; an all-zero range becomes [-1, 1];
* scale = (xmax - xmin) / maxq; zero point = 2^(b-1) (symmetric) or round(-xmin / scale) (asymmetric);
* q = clamp(round(w / scale) + zero, 0, maxq); the dequantized weight is scale * (q - zero).

**Pruned weights stay exactly zero**, by the grid itself: the zero point is an integer, so w = 0 gives q = zero
and scale * (zero - zero) = 0 exactly (no mask needs re-applying; :func:`quantize_rtn` checks it and says so
if a grid ever broke it). GPTQ (the error-compensating order) builds on the same grid; so does the export.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import WorkbenchError

WBITS = (2, 3, 4, 8, 16)  # 16: no quantization
QUANT_METHODS = ("rtn", "gptq", "gptq-after", "learned")  # how: see MethodSpec.quant_method


@dataclass(frozen=True)
class QuantSpec:
    """How weights are quantized: bits, group size (None: one range per output channel), symmetric or not."""

    wbits: int = 16
    group_size: int | None = None
    symmetric: bool = False

    @property
    def enabled(self) -> bool:
        return self.wbits != 16

    def check(self, in_features: int | None = None) -> QuantSpec:
        """This spec, or a one-line error naming the parameter and the allowed values."""
        if isinstance(self.wbits, bool) or self.wbits not in WBITS:
            raise WorkbenchError(f"wbits={self.wbits!r} is not allowed; allowed: {list(WBITS)} (16: no quantization)")
        g = self.group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
            raise WorkbenchError(f"group_size={g!r} must be None (per output channel) or an integer >= 1")
        if g is not None and in_features is not None and in_features % g:
            divisors = [d for d in (32, 64, 128, 256) if in_features % d == 0]
            raise WorkbenchError(f"group_size={g} does not divide the input width {in_features}; allowed: a divisor "
                                 f"of {in_features} (e.g. {divisors or [in_features]}) or None (per channel)")
        if not isinstance(self.symmetric, bool):
            raise WorkbenchError(f"symmetric={self.symmetric!r} must be true or false")
        return self


def grid(w: torch.Tensor, wbits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) of each row of ``w`` (rows, columns): GPTQ's ``find_params`` on the weights."""
    maxq = 2**wbits - 1
    w = w.float()
    xmin = torch.clamp(w.min(dim=1).values, max=0.0)
    xmax = torch.clamp(w.max(dim=1).values, min=0.0)
    if symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin, xmax = torch.where(empty, -1.0, xmin), torch.where(empty, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if symmetric else torch.round(-xmin / scale)
    return scale, zero


def dequantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, wbits: int) -> torch.Tensor:
    """scale * (clamp(round(w / scale) + zero, 0, maxq) - zero), per row (scale and zero are (rows,))."""
    q = torch.clamp(torch.round(w.float() / scale[:, None]) + zero[:, None], 0, 2**wbits - 1)
    return scale[:, None] * (q - zero[:, None])


@dataclass
class QuantGrid:
    """The grid one linear was quantized on, kept beside it (``linear.quant_grid``) so that an export can store
    the integers themselves: scale and zero point (float32, (rows, groups)) and, where the layer was pruned, the
    pruning mask packed a bit per weight (kept = 1, compressed-tensors' bit order)."""

    spec: QuantSpec
    scale: torch.Tensor
    zero: torch.Tensor
    kept_bits: torch.Tensor | None = None

    def _expand(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.to(like.device).repeat_interleave(like.shape[1] // t.shape[1], dim=1)

    def holds(self, weight: torch.Tensor) -> bool:
        """Whether ``weight`` is still on this grid, with every weight the mask prunes at zero (a grid kept from an
        earlier run, or weights changed since, fail this)."""
        from compressed_tensors.utils import unpack_bitmasks

        if tuple(self.scale.shape) != (weight.shape[0], self.scale.shape[1]) or weight.shape[1] % self.scale.shape[1]:
            return False
        if not torch.equal(self.values(self.codes(weight), weight.dtype), weight):
            return False
        if self.kept_bits is None:
            return True
        kept = unpack_bitmasks(self.kept_bits, list(weight.shape)).to(weight.device)
        return not bool(weight[~kept].any())

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The integer of each weight on this grid (0 .. 2^b - 1, int16): exact for a weight on the grid."""
        q = torch.round(weight.float() / self._expand(self.scale, weight)) + self._expand(self.zero, weight)
        return torch.clamp(q, 0, 2**self.spec.wbits - 1).to(torch.int16)

    def values(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dequantized weights of ``codes``, scale * (q - zero) in float32 (as every quantizer here computes
        them), then in ``dtype``."""
        return (self._expand(self.scale, codes) * (codes.float() - self._expand(self.zero, codes))).to(dtype)


def quantize_rtn(weight: torch.Tensor, spec: QuantSpec, grid_out: list | None = None) -> torch.Tensor:
    """``weight`` (out, in) rounded to nearest on the grid of each row or group, dequantized, in its dtype
    (``grid_out``: receives the :class:`QuantGrid`)."""
    spec.check(weight.shape[1])
    if not spec.enabled:
        return weight
    width = spec.group_size or weight.shape[1]
    out = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
    scales, zeros = [], []
    for start in range(0, weight.shape[1], width):
        part = weight[:, start: start + width]
        scale, zero = grid(part, spec.wbits, spec.symmetric)
        out[:, start: start + width] = dequantize(part, scale, zero, spec.wbits)
        scales.append(scale)
        zeros.append(zero)
    pruned = weight == 0
    if bool(out[pruned].any()):  # cannot happen on this grid (integer zero points); a guard, never a fix-up
        raise RuntimeError("quantization moved a pruned weight off zero")
    if grid_out is not None:
        grid_out.append(QuantGrid(spec, torch.stack(scales, 1), torch.stack(zeros, 1)))
    return out.to(weight.dtype)


def bits_per_weight(shape: tuple[int, int], nonzeros: int, quant: QuantSpec) -> float:
    """Storage of one quantized linear per weight: the kept values at ``wbits``, a 1-bit mask where any weight is
    pruned (a bitmask layout), and a 16-bit scale and zero point per group of each row."""
    rows, cols = shape
    numel = rows * cols
    groups = rows * (cols // (quant.group_size or cols))
    mask = numel if nonzeros < numel else 0
    return (nonzeros * quant.wbits + mask + groups * 32) / numel


# --------------------------------------------------------------------------- quantization in a learning loop

CLIP_INIT = 4.0  # OmniQuant's initial clipping logit: sigmoid(4) = 0.982 of each group's range


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def clipped_grid(w: torch.Tensor, spec: QuantSpec, up: torch.Tensor, low: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) of each row and group of ``w`` (rows, cols), both (rows, groups), on GPTQ's grid of a
    *clipped* range: xmax = max(w, 0)·σ(up), xmin = min(w, 0)·σ(low) (OmniQuant's learnable weight clipping,
    Shao et al. 2024, which BESA's joint compression builds on); symmetric: xmax = max(|xmin|, xmax)·σ(up) and
    the zero point 2^(b-1). Differentiable in ``up`` and ``low`` (and ``w``); the zero point rounds straight
    through, so it stays an integer and a zero weight stays exactly zero."""
    maxq = 2**spec.wbits - 1
    rows, cols = w.shape
    g = w.float().reshape(rows, -1, spec.group_size or cols)
    xmax = torch.clamp(g.amax(dim=2), min=0.0)
    xmin = torch.clamp(g.amin(dim=2), max=0.0)
    if spec.symmetric:
        xmax = torch.maximum(xmin.abs(), xmax) * torch.sigmoid(up)
        xmin = torch.where(xmin < 0, -xmax, torch.zeros_like(xmax))
        scale = torch.clamp((xmax - xmin) / maxq, min=1e-8)
        return scale, torch.full_like(scale, (maxq + 1) / 2)
    xmax, xmin = xmax * torch.sigmoid(up), xmin * torch.sigmoid(low)
    scale = torch.clamp((xmax - xmin) / maxq, min=1e-8)
    return scale, _round_ste(-xmin / scale)


def fake_quantize(w: torch.Tensor, spec: QuantSpec, up: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """``w`` rounded on its clipped grid and dequantized, differentiably (round straight through; clamped weights
    pass no gradient to themselves, only to the clipping): scale·(clamp(round(w/scale) + z, 0, 2^b − 1) − z)."""
    rows, cols = w.shape
    scale, zero = clipped_grid(w, spec, up, low)
    width = spec.group_size or cols
    s, z = scale.repeat_interleave(width, 1), zero.repeat_interleave(width, 1)
    q = torch.clamp(_round_ste(w.float() / s) + z, 0, 2**spec.wbits - 1)
    return (s * (q - z)).to(w.dtype)


def clip_params(rows: int, cols: int, spec: QuantSpec, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable clipping logits (up, low) per row and group, at OmniQuant's initial value."""
    groups = cols // (spec.group_size or cols)
    return (torch.full((rows, groups), CLIP_INIT, device=device, requires_grad=True),
            torch.full((rows, groups), CLIP_INIT, device=device, requires_grad=True))
