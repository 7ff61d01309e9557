"""SparseGPT (Frantar & Alistarh 2023): prune one linear and update the remaining weights (OBS).

Goal: minimise the layer's reconstruction error ||W X − Ŵ X||² on calibration inputs X, with
H = 2/N · X Xᵀ (damped by ``percdamp`` · mean(diag H)). With U the upper Cholesky factor of H⁻¹,
columns are processed left to right in blocks of ``blocksize``:

* mask: at the start of each block, score w² / U_ii² over the block, one threshold jointly over all
  rows (so row sparsities vary); N:M chooses the N lowest scores per row in each group of M columns
  (scored on the already-updated weights; for N:M ``blocksize`` is rounded up to a multiple of M so that
  groups never straddle blocks, which changes nothing else because the lazy update is exact);
* update for column i: err = (w_i − q_i) / U_ii,  W[:, i:] −= err · U[i, i:]  (q_i = w_i with the
  pruned entries zeroed); updates inside a block are done column by column, the rest of the
  matrix is updated once per block (lazy batch update).
"""

from __future__ import annotations

import torch

from ..backend.reference import check_nm
from ..errors import WorkbenchError
from ..quantize import QuantGrid, QuantSpec, dequantize, grid


def _check(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, prune_n: int, prune_m: int,
           blocksize: int, percdamp: float) -> None:
    if weight.dim() != 2:
        raise WorkbenchError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    if not weight.is_floating_point() or not hessian.is_floating_point():
        raise WorkbenchError(f"weight and hessian must be floating point, got {weight.dtype} and {hessian.dtype}")
    cols = weight.shape[1]
    if tuple(hessian.shape) != (cols, cols):
        raise WorkbenchError(f"hessian must have shape ({cols}, {cols}) (in_features squared), got "
                             f"{tuple(hessian.shape)}")
    if not bool(torch.isfinite(hessian).all()):
        raise WorkbenchError("hessian has non-finite entries (NaN or inf)")
    if not 0.0 <= sparsity < 1.0:
        raise WorkbenchError(f"sparsity={sparsity} must be in [0, 1)")
    if prune_n or prune_m:
        check_nm(prune_n, prune_m, cols)
    if blocksize < 1:
        raise WorkbenchError(f"blocksize={blocksize} must be >= 1")
    if percdamp < 0:
        raise WorkbenchError(f"percdamp={percdamp} must be >= 0")


def _inverse_cholesky(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp · I)⁻¹."""
    h = hessian.clone()
    h.diagonal().add_(percdamp * torch.mean(torch.diag(h)))
    try:
        inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
        return torch.linalg.cholesky(inv, upper=True)
    except torch.linalg.LinAlgError as err:
        raise WorkbenchError(f"hessian + damping is not positive definite (percdamp={percdamp}); "
                              "increase percdamp or check the calibration statistics") from err


def _prepare(weight: torch.Tensor, hessian: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 copy of W (rows, cols) with dead input columns (never active, H_jj = 0) zeroed, and the upper
    Cholesky factor of the damped H⁻¹ (dead columns' diagonal set to 1 first, as the reference does)."""
    w = weight.detach().to(torch.float32).clone()
    h = hessian.detach().to(w.device, torch.float32).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    return w, _inverse_cholesky(h, percdamp)


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float = 0.0, *, prune_n: int = 0,
                    prune_m: int = 0, blocksize: int = 128, percdamp: float = 0.01, quant: QuantSpec | None = None,
                    fixed_mask: torch.Tensor | None = None, grid_out: list | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (updated weight with pruned entries exactly 0, bool mask True = pruned); inputs untouched.

    ``quant``: each column is also quantized inside the same OBS pass (the public SparseGPT's joint mode with
    GPTQ's quantizer; ``sparsity=0`` is GPTQ itself): a group's grid is found when the pass reaches its first
    column, from the weights as the pass holds them at the start of the current column block (GPTQ's reading).
    ``fixed_mask``: the entries to hold at zero instead of choosing a mask (GPTQ on an already pruned layer).
    ``grid_out``: receives the :class:`~workbench.quantize.QuantGrid` the columns were quantized on."""
    _check(weight, hessian, sparsity, prune_n, prune_m, blocksize, percdamp)
    if quant is not None:
        quant.check(weight.shape[1])
    if fixed_mask is not None and (sparsity or prune_n):
        raise WorkbenchError("fixed_mask holds a given mask: leave sparsity 0 and no N:M pattern")
    w, hinv = _prepare(weight, hessian, percdamp)
    rows, cols = w.shape
    mask = torch.zeros_like(w, dtype=torch.bool)
    if prune_n:  # groups of M columns must not straddle blocks; the result does not depend on blocksize
        blocksize = -(-blocksize // prune_m) * prune_m
    quantizing = quant is not None and quant.enabled
    width = (quant.group_size or cols) if quantizing else cols
    scale = zero = None
    scales, zeros = [], []

    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        w1 = w[:, start:end].clone()
        hinv1 = hinv[start:end, start:end]
        d = torch.diag(hinv1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if fixed_mask is not None:
            mask1 = fixed_mask[:, start:end].to(w.device, torch.bool).clone()
        elif not prune_n and sparsity > 0:
            score = w1 ** 2 / d[None, :] ** 2
            k = int(score.numel() * sparsity)
            threshold = torch.sort(score.flatten())[0][k]
            mask1 = score <= threshold
        err1 = torch.zeros_like(w1)
        for i in range(end - start):
            if prune_n and i % prune_m == 0:
                score = w1[:, i:i + prune_m] ** 2 / d[None, i:i + prune_m] ** 2
                low = torch.topk(score, prune_n, dim=1, largest=False).indices
                mask1.scatter_(1, low + i, True)
            col = w1[:, i]
            q = col.masked_fill(mask1[:, i], 0.0)
            if quantizing:  # on the integer grid a pruned (zero) entry stays exactly zero
                if (start + i) % width == 0:
                    scale, zero = grid(w[:, start + i: start + i + width], quant.wbits, quant.symmetric)
                    scales.append(scale)
                    zeros.append(zero)
                q = dequantize(q[:, None], scale, zero, quant.wbits)[:, 0]
            err = (col - q) / d[i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            w1[:, i] = q
            err1[:, i] = err
        w[:, start:end] = w1
        mask[:, start:end] = mask1
        w[:, end:] -= err1 @ hinv[start:end, end:]

    w[mask] = 0.0  # dead input columns (never active) were zeroed above and stay zero
    if quantizing and grid_out is not None:
        grid_out.append(QuantGrid(quant, torch.stack(scales, 1), torch.stack(zeros, 1)))
    return w.to(weight.dtype), mask


@torch.no_grad()
def sparsegpt_scores(weight: torch.Tensor, hessian: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """SparseGPT's importance w² / U_jj² (U: upper Cholesky factor of the damped H⁻¹), without any update;
    columns whose input is never active score 0. Float32, (out, in); BESA ranks weights by it."""
    _check(weight, hessian, 0.0, 0, 0, 1, percdamp)
    w, hinv = _prepare(weight, hessian, percdamp)
    d = torch.diag(hinv)
    return w ** 2 / d[None, :] ** 2
