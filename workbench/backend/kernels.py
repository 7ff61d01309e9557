"""The scores-and-masks backend: CUDA kernels (resources/kernels/*.cu through CuPy) for CUDA tensors, the torch
reference (``backend/reference.py``) for CPU tensors. The pruning engine calls only these functions.

The ``.cu`` files are package data (``workbench/resources/kernels/``, in the wheel too); they are compiled
lazily with ``cupy.RawModule`` on first use, once per file, and run on torch's current CUDA stream.
Tensors cross between torch and CuPy through DLPack, without copies.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import torch

from ..errors import WorkbenchError
from . import reference as ref

# package data: a folder on disk for every install pip makes (editable or from a wheel, which pip unpacks)
KERNEL_DIR: Path = resources.files("workbench") / "resources" / "kernels"
THREADS = 256
MAX_GRID = 65535
NM_MAX_M = 32  # resources/kernels/nm_mask.cu keeps one group in registers
BESA_MAX_K = 256  # resources/kernels/besa_prob.cu scans the candidates with one thread each

# kernel name -> (file, argument C types, in order); shared by CuPy launches and the CPU emulation tests.
KERNELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "accumulate_sq_norm": ("sq_norm.cu", ("const float*", "float*", "long long", "int", "int")),
    "wanda_scores": ("wanda_scores.cu", ("const float*", "const float*", "float*", "long long", "int")),
    "row_select": ("row_select.cu", ("const float*", "const int*", "unsigned char*", "int")),
    "nm_mask": ("nm_mask.cu", ("const float*", "unsigned char*", "long long", "int", "int")),
    "block_reduce": ("outlier_count.cu", ("const float*", "long long", "int", "float", "double*")),
    "final_reduce": ("outlier_count.cu", ("const double*", "int", "double*")),
    "besa_keep_prob": ("besa_prob.cu", ("const int*", "const float*", "long long", "const float*", "int",
                                        "float*", "int")),
    "apply_mask_32": ("apply_mask.cu", ("unsigned int*", "const unsigned char*", "long long")),
    "apply_mask_16": ("apply_mask.cu", ("unsigned short*", "const unsigned char*", "long long")),
}


def kernel_files() -> list[Path]:
    """Every CUDA source of the project."""
    return sorted(KERNEL_DIR.glob("*.cu"))


def kernel_source(filename: str) -> str:
    path = KERNEL_DIR / filename
    if not path.is_file():
        raise FileNotFoundError(f"CUDA source {path} is missing (package data: workbench/resources/kernels/)")
    return path.read_text()


# --------------------------------------------------------------------------- CuPy plumbing

@functools.cache
def _module(filename: str):
    import cupy

    return cupy.RawModule(code=kernel_source(filename), options=("--std=c++17",))


def _function(name: str):
    return _module(KERNELS[name][0]).get_function(name)


def _cp(t: torch.Tensor):
    import cupy

    return cupy.from_dlpack(t.detach())  # parameters require grad; DLPack refuses those, detach shares memory


def _stream():
    """torch's current CUDA stream as a CuPy stream, so kernels are ordered with torch's work."""
    import cupy

    current = torch.cuda.current_stream()
    try:
        return cupy.cuda.Stream.from_external(current)
    except (AttributeError, TypeError, ValueError):
        return cupy.cuda.ExternalStream(current.cuda_stream)


_SCALARS = {"int": "int32", "long long": "int64", "float": "float32", "double": "float64"}


def _on_device(t: torch.Tensor) -> bool:
    """Whether ``t`` takes the kernel path (the emulator tests route CPU tensors through it)."""
    return t.is_cuda


def _launch(name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
    """Launch a kernel on torch's current stream; scalars get the exact C type of the signature."""
    import numpy

    types = KERNELS[name][1]
    converted = tuple(_cp(a) if isinstance(a, torch.Tensor) else getattr(numpy, _SCALARS[t])(a)
                      for a, t in zip(args, types, strict=True))
    with _stream():
        _function(name)(grid, block, converted)


def _grid(n: int) -> int:
    return max(1, min((n + THREADS - 1) // THREADS, MAX_GRID))


# --------------------------------------------------------------------------- checks

def _float_matrix(name: str, t: torch.Tensor) -> torch.Tensor:
    if t.dim() != 2:
        raise WorkbenchError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise WorkbenchError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return t.float().contiguous()


def _counts(counts: torch.Tensor | int, rows: int, cols: int) -> torch.Tensor:
    counts = torch.as_tensor(counts)
    if counts.is_floating_point():
        raise WorkbenchError(f"counts must be integers, got {counts.dtype}")
    counts = counts.expand(rows) if counts.dim() == 0 else counts
    if counts.shape != (rows,):
        raise WorkbenchError(f"counts must have one entry per row ({rows}), got shape {tuple(counts.shape)}")
    if counts.numel() and (int(counts.min()) < 0 or int(counts.max()) > cols):
        raise WorkbenchError(f"counts must lie in [0, {cols}] (the row length), got [{int(counts.min())}, "
                              f"{int(counts.max())}]")
    return counts


# --------------------------------------------------------------------------- public operations

def accumulate_sq_norm(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out += Σ over rows of x² (x: (tokens, features)); Wanda's statistics."""
    x = x.reshape(-1, x.shape[-1])
    if out.shape != (x.shape[1],) or out.dtype != torch.float32:
        raise WorkbenchError(f"out must be float32 of shape ({x.shape[1]},), got {out.dtype} {tuple(out.shape)}")
    if not _on_device(x):
        xf = x.float()
        return out.add_((xf * xf).sum(dim=0))
    x = x.float().contiguous()
    tokens, features = x.shape
    rows_per_chunk = 256
    chunks = max(1, (tokens + rows_per_chunk - 1) // rows_per_chunk)
    _launch("accumulate_sq_norm", ((features + THREADS - 1) // THREADS, chunks), (THREADS,),
            (x, out, tokens, features, rows_per_chunk))
    return out


def wanda_scores(weight: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """|W| · ||X_j|| in float32."""

    if act_norm.shape != (weight.shape[-1],):
        raise WorkbenchError(f"act_norm must have shape ({weight.shape[-1]},), got {tuple(act_norm.shape)}")
    if not _on_device(weight):
        return ref.wanda_scores(weight, act_norm)
    w = _float_matrix("weight", weight)
    norm = act_norm.to(w.device, torch.float32).contiguous()
    out = torch.empty_like(w)
    _launch("wanda_scores", (_grid(w.numel()),), (THREADS,), (w, norm, out, w.numel(), w.shape[1]))
    return out


def row_mask(scores: torch.Tensor, counts: torch.Tensor | int) -> torch.Tensor:
    """Prune the counts[r] lowest scores of every row r (ties by index); bool mask, True = pruned."""
    s = _float_matrix("scores", scores)
    rows, cols = s.shape
    counts = _counts(counts, rows, cols).to(s.device)
    if not _on_device(s):
        return ref.row_mask(s, counts)
    out = torch.empty(rows, cols, dtype=torch.uint8, device=s.device)
    if rows:
        _launch("row_select", (rows,), (THREADS,), (s, counts.to(torch.int32).contiguous(), out, cols))
    return out.bool()


def row_order(scores: torch.Tensor) -> torch.Tensor:
    """Per-row order of columns from lowest score (ties by index), int16 when it fits: cached by searches so
    that a new allocation needs no sort (torch on every device)."""
    s = _float_matrix("scores", scores)
    order = ref.row_order(s)
    return order.to(torch.int16) if s.shape[1] <= torch.iinfo(torch.int16).max else order.to(torch.int32)


def mask_from_order(order: torch.Tensor, counts: torch.Tensor | int) -> torch.Tensor:
    """Prune the first counts[r] columns of order[r] (the counts[r] lowest scores); bool, True = pruned."""
    if order.dim() != 2 or order.is_floating_point():
        raise WorkbenchError(f"order must be a 2-D integer tensor, got {order.dtype} {tuple(order.shape)}")
    rows, cols = order.shape
    return ref.mask_from_order(order, _counts(counts, rows, cols).to(order.device))


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune the n lowest of every m consecutive columns (ties by index); bool mask, True = pruned."""
    s = _float_matrix("scores", scores)
    ref.check_nm(n, m, s.shape[1])
    if not _on_device(s):
        return ref.nm_mask(s, n, m)
    if m > NM_MAX_M:
        raise WorkbenchError(f"pattern {n}:{m}: the CUDA kernel supports M <= {NM_MAX_M}")
    out = torch.empty(s.shape, dtype=torch.uint8, device=s.device)
    groups = s.numel() // m
    _launch("nm_mask", ((groups + THREADS - 1) // THREADS,), (THREADS,), (s, out, groups, n, m))
    return out.bool()


def matrix_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Prune the ``count`` lowest scores of the whole matrix (torch on every device: one global sort)."""
    if not 0 <= count <= scores.numel():
        raise WorkbenchError(f"count={count} must lie in [0, {scores.numel()}]")
    return ref.matrix_mask(scores.float(), count)


def score_sum_and_count(scores: torch.Tensor, threshold: float | None = None) -> tuple[float, int]:
    """(Σ scores, #{scores > threshold}) — OWL's outlier statistic; the count is 0 without a threshold."""
    s = scores.reshape(-1)
    if not s.is_floating_point():
        raise WorkbenchError(f"scores must be floating point, got {s.dtype}")
    if not _on_device(s):
        total = float(s.double().sum())
        return total, int((s > threshold).sum()) if threshold is not None else 0
    s = s.float().contiguous()
    blocks = min(_grid(s.numel()), 1024)
    partial = torch.empty(blocks, dtype=torch.float64, device=s.device)
    out = torch.empty(1, dtype=torch.float64, device=s.device)
    results = []
    for mode, thr in ((0, 0.0), (1, threshold)):
        if thr is None:
            results.append(0.0)
            continue
        _launch("block_reduce", (blocks,), (THREADS,), (s, s.numel(), mode, float(thr), partial))
        _launch("final_reduce", (1,), (THREADS,), (partial, blocks, out))
        results.append(float(out.item()))
    return results[0], int(round(results[1]))


def besa_keep_prob(ranks: torch.Tensor, probs: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """BESA keep-probabilities P[r, c] = 1 − Σ_k probs[r, k]·[ranks[r, c] < C·cands[k]].

    ``probs`` is (rows, K) for row-wise BESA or (1, K) / (K,) for layer-wise; ``cands`` (K,) descending.
    """
    if ranks.dim() != 2:
        raise WorkbenchError(f"ranks must be 2-D, got shape {tuple(ranks.shape)}")
    rows, cols = ranks.shape
    probs = probs.reshape(-1, probs.shape[-1]).float()
    if probs.shape[0] not in (1, rows) or probs.shape[1] != cands.numel():
        raise WorkbenchError(f"probs must be (1 or {rows}, {cands.numel()}), got {tuple(probs.shape)}")
    if cands.numel() > 1 and bool((cands[1:] > cands[:-1]).any()):
        raise WorkbenchError("cands must be sorted in descending order")
    if not _on_device(ranks):
        return ref.besa_keep_prob(ranks, probs, cands)
    if cands.numel() > BESA_MAX_K:
        raise WorkbenchError(f"the CUDA kernel supports at most {BESA_MAX_K} candidates, got {cands.numel()}")
    out = torch.empty(rows, cols, dtype=torch.float32, device=ranks.device)
    stride = 0 if probs.shape[0] == 1 else probs.shape[1]
    _launch("besa_keep_prob", (rows,), (THREADS,),
            (ranks.to(torch.int32).contiguous(), probs.contiguous(), stride,
             cands.to(ranks.device, torch.float32).contiguous(), cands.numel(), out, cols))
    return out


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero ``weight`` where ``mask`` is True, in place (weight must be contiguous)."""
    if mask.shape != weight.shape:
        raise WorkbenchError(f"mask shape {tuple(mask.shape)} differs from weight shape {tuple(weight.shape)}")
    if not _on_device(weight):
        ref.apply_mask(weight, mask.to(weight.device))
        return
    if not weight.is_contiguous():
        raise WorkbenchError("weight must be contiguous to be masked in place on the GPU")
    size = weight.element_size()
    if size not in (2, 4):
        raise WorkbenchError(f"weight dtype {weight.dtype} is not supported (float32, float16, bfloat16)")
    view = weight.view(torch.int32 if size == 4 else torch.int16).reshape(-1)
    m = mask.to(weight.device, torch.uint8).contiguous().reshape(-1)
    _launch(f"apply_mask_{8 * size}", (_grid(view.numel()),), (THREADS,), (view, m, view.numel()))
