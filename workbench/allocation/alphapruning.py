"""AlphaPruning (Lu et al., NeurIPS 2024): sparsity from the heavy tail of each weight's spectrum.

Data-free. For each prunable matrix W, the eigenvalues λ of WᵀW (squared singular values, float32 as
the public code) are fitted with a power law p(λ) ∝ λ^−α above xmin (Hill's estimator,
α = 1 + n / Σ_{λ ≥ xmin} log(λ / xmin)). xmin is chosen as the public code's ``xmin_peak``: the left edge
of the fullest of 100 log10-spaced histogram bins ("the peak") bounds a window of candidates, and the
candidate whose fit has the smallest Kolmogorov–Smirnov distance D wins. The public code's lower bound of
that window is log10(0.95 · peak), a logarithm compared with an eigenvalue; it is kept, so the window in
practice runs from the smallest eigenvalue up to 1.5 · peak, and α matches the public code's.

A more heavy-tailed spectrum (smaller α) means a better-trained layer, which is pruned less. By block (the
public default, ``granularity="block"``) the block's α is the mean over its linears. Mapping:
r_l = (α_l − α_min)/(α_max − α_min) · 2ε + (1 − ε), then s_l = r_l · S · Σ N / Σ N_l r_l (parameter-weighted
mean S; larger α -> more pruning). ε defaults to 0.3 for every metric: the public ``main.py`` default
(``--epsilon``, default 0.3) and its README's example (Llama-2-7B, Wanda, 70%). The seven public scripts
(``scripts/llama*_*.sh``, all at 70%) set ε per model and metric: Wanda 0.3 in six (0.2 for LLaMA-7B),
SparseGPT 0.3 in five (0.2 for LLaMA-7B and Llama-2-7B), magnitude 0.3 to 0.5 (0.4 in four);
``--alloc-param epsilon=...`` sets another value.
α depends only on the weights: it is cached per matrix content.
"""

from __future__ import annotations

import hashlib

import torch

from ..errors import WorkbenchError
from .base import AllocationInput, Param, granularity_param, groups, register_allocator, spread_over, unit_weights
from .mapping import minmax

BINS = 100
EPSILON = 0.3  # the public main.py's --epsilon default (see the module docstring for its scripts' values)
_ALPHAS: dict[str, float] = {}  # weight content digest -> α (the spectrum depends on nothing else)


def hill_alpha(eigs: torch.Tensor, bins: int = BINS) -> float:
    """α of a power-law fit to positive eigenvalues (any order), xmin chosen as the public ``xmin_peak``."""
    eigs = torch.sort(eigs.detach().double().flatten()).values
    if eigs.numel() < 2 or not bool(torch.all(eigs > 0)):
        raise WorkbenchError("hill_alpha needs at least two positive eigenvalues")
    n_all = eigs.numel()
    logs = torch.log(eigs)
    log10 = torch.log10(eigs)
    counts = torch.histc(log10, bins, min=float(log10.min()), max=float(log10.max()))
    edges = torch.linspace(float(log10.min()), float(log10.max()), bins + 1, dtype=torch.float64)
    peak = 10 ** edges[int(torch.argmax(counts))]
    low, high = torch.log10(0.95 * peak), 1.5 * peak  # the public code's window (see the module docstring)
    idx = torch.arange(n_all - 1)
    candidates = idx[(eigs[:-1] >= low) & (eigs[:-1] <= high)]
    if candidates.numel() == 0:
        return 0.0  # the public code's value when no candidate is tried (alphas start at 0)
    n = (n_all - candidates).double()
    tail = torch.flip(torch.cumsum(torch.flip(logs, [0]), 0), [0])  # Σ_{j >= i} log λ_j
    alphas = 1 + n / (tail[candidates] - n * logs[candidates])
    dist = torch.ones(n_all - 1, dtype=torch.float64)
    alpha_all = torch.zeros(n_all - 1, dtype=torch.float64)
    alpha_all[candidates] = alphas
    for chunk in torch.split(candidates, 256):  # D_i = max_j |1 − (λ_j/λ_i)^(1−α_i) − (j−i)/n_i|, j >= i
        a = alpha_all[chunk][:, None]
        rel = torch.arange(n_all)[None, :] - chunk[:, None]
        ratio = eigs[None, :] / eigs[chunk][:, None]
        d = torch.abs(1 - ratio ** (1 - a) - rel / (n_all - chunk)[:, None].double())
        d = torch.where(rel >= 0, d, torch.zeros_like(d)).amax(dim=1)
        dist[chunk] = torch.where(alpha_all[chunk] > 1, d, torch.ones_like(d))
    return float(alpha_all[int(torch.argmin(dist))])


def matrix_alpha(weight: torch.Tensor) -> float:
    """α of one weight matrix's WᵀW spectrum, cached by content."""
    w = weight.detach()
    digest = hashlib.blake2b(w.float().cpu().contiguous().numpy().tobytes(), digest_size=16)
    digest.update(str(tuple(w.shape)).encode())
    key = digest.hexdigest()
    if key not in _ALPHAS:
        eigs = torch.linalg.svdvals(w.float()) ** 2
        _ALPHAS[key] = hill_alpha(eigs.cpu())
    return _ALPHAS[key]


PARAMS = (
    Param("epsilon", EPSILON, "ratios span S·[1−ε, 1+ε] before rescaling (public main.py default; its scripts "
          "tune it per model: 0.2–0.5), or 'auto' (tuned on validation)", low=0.0, high=1.0, open=True,
          special=("auto",)),
    granularity_param(),
)


@register_allocator("alphapruning", needs_weights=True, params=PARAMS)
def alphapruning(inputs: AllocationInput, sparsity: float, epsilon: float = EPSILON, granularity: str = "block"):
    """Heavy-tail exponent α of each weight spectrum: larger α (lighter tail) -> more pruning (data-free)."""
    grouped = groups(inputs, granularity)
    alphas = inputs.memoised(("alphapruning", granularity), lambda: [
        sum(matrix_alpha(inputs.weights(n)) for n in names) / len(names) for names in grouped.values()])
    weights = unit_weights(inputs, grouped)
    raw = [n * 2 * epsilon + (1 - epsilon) for n in minmax(alphas)]
    scale = sparsity * sum(weights) / sum(w * r for w, r in zip(weights, raw, strict=True))
    ratios = [r * scale for r in raw]
    if max(ratios) >= 1.0:
        raise WorkbenchError(f"allocation='alphapruning': epsilon={epsilon} gives a sparsity of {max(ratios):.3f} >= 1 "
                              f"at sparsity={sparsity}; allowed: a smaller epsilon")
    layers = spread_over(grouped, ratios)
    return inputs.profile(layers, sparsity, "alphapruning", granularity,
                          {"epsilon": epsilon, "alpha": [round(a, 6) for a in alphas]})
