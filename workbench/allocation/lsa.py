"""LSA (Yang, Deng, Chen, Zhou, Cheng, ICLR 2026, "Layer-wise Sparsity Allocation for Large Language Model Pruning
Based on Minimal Linear Reconstruction Error"): sparsity from each unit's minimal linear reconstruction error.

Read from the public code github.com/BeiYazi0/LSA (commit 1c28cae): ``layersp/blk.py`` (``BlockWanda.blk_s``: the
statistic; ``blk_score``: per transformer layer; ``blk_score_global``: per attention/MLP and per projection;
``BLK.get_layer_sp``: dispatch and the α table), ``main.py`` (defaults) and the README (commands, variant names).

**The statistic (LSE) of one linear**, from its dense weight W (out × in) and the dense model's input Hessian
H = 2/N · Σ x xᵀ (:meth:`LayerStats.hessian`, N = calibration windows, as the public code scales it): each row is
taken on its own, its columns in groups of ``B`` (``B=0``: the whole row as one group); in each group int(B·s)
weights are pruned greedily, one at a time, each time the column c of least marginal cost
w_c²·H_cc + 2·w_c·Σ_{j pruned in this row so far} w_j·H_jc (columns of earlier groups included); no weight is
updated. LSE = the sum of the chosen costs = Σ_rows eᵀHe (e: the row's pruned weights), the output error of
pruning without compensation. It is not normalised by size (the public code's normalisation is commented out).

**Block** (the paper's "layer", public ``--layer lsa``): r_l = the plain mean of the block's linears' LSEs;
s_l = S + 2α(n_l − n̄) with n = minmax(r): a block with a larger LSE is pruned more (the public code writes it as
DLP does, I = 1 − r/Σr, d = 2α·minmax(I), s = S + mean(d) − d; ``mapping.py``, direction +1). ``alpha=None``
(the default) takes the public table by target, α = (lam, .06, .02, .04, .02, .04, .10, .15, .12)[int(10·S)]:
0.15 at 70%, 0.10 at 60%, ``lam`` below 10% (the public index 0 is ``--Lamda``).

**Sublayer** (``lsab`` as intended: the attention's linears and the MLP's, as ``dlpb``/``owlb`` do) and
**projection** (``lsac``): each linear gets a value v_j (its own LSE; at ``sublayer`` the plain mean LSE of its
sublayer's linears), then over all linears d = 2Λ·minmax(1 − v/Σv) (= 2Λ(1 − minmax(v))) and
s_j = S + (mean(d) − d_j)·N̄/N_j, N_j the linear's parameters and N̄ their plain mean: every linear's pruned
*count* moves by the same (mean(d) − d_j)·N̄ from the uniform count, so Σ N_j s_j = S·ΣN exactly. Λ = ``lam``,
0.08 (``main.py``; the README uses 0.07 on Qwen). Within one sublayer the ratios differ by size (GQA's k/v).

Defaults: ``B=128`` (every README command; ``main.py``'s default is 0), ``s=0.5`` (``--resp`` and the abstract's
"50% of its least important weights").

Deviations from the public code, each deliberate:

* ``clamp="safe"`` (default): ratios clipped to [0, 0.99] and shifted by one offset so that the parameter-weighted
  mean is the target exactly (``mapping.renormalise``); at ``block`` n̄ is the parameter-weighted mean (equal to
  the public plain mean when the blocks are equal in size). The public code never clamps: ``clamp="reference"``
  keeps its formulas unclamped (plain means) and refuses an allocation with a ratio outside [0, 1), which the
  public pruner would apply anyway.
* The public ``lsab`` is ``lsac``: commit ad1a342 renamed ``blk*`` to ``lsa*`` in ``get_layer_sp``, but
  ``blk_score_global`` still tests ``args.layer == "blkb"`` before averaging per sublayer, so ``lsab`` as committed
  skips the averaging. ``granularity="sublayer"`` here is the intended variant (the averaging); ``projection`` is
  ``lsac``. The public code splits a LLaMA block by position (first 4 linears, the rest); here the model
  structure's sublayers do.
* A last column group narrower than int(B·s) (in_features mod B in (0, int(B·s)), or B > in_features) makes the
  public greedy pick already-pruned entries and return inf; here a group prunes min(int(B·s), its width)
  columns, which is the public result wherever that is finite (a narrower group that is still ≥ int(B·s) prunes
  int(B·s), as there). E.g. SmolLM2's in_features 576 = 4·128 + 64 prunes its last 64 columns whole, as the
  public code does.
* ``s`` applies at every granularity; the public per-sublayer/projection path calls ``blk_s`` with its default
  0.5 whatever ``--resp`` says (equal at the default).
* Targets ≥ 90%: the public α table ends at index 8 (an IndexError there); ``alpha=None`` takes its last entry, 0.12.
* float64 throughout (the public code: float32): the marginal costs are differences of large cross terms under
  LLM activations' outlier features, and the greedy's picks follow their order.
"""

from __future__ import annotations

import math

import torch

from ..errors import WorkbenchError
from .base import AllocationInput, Param, granularity_param, groups, register_allocator, spread_over, unit_weights
from .mapping import CLAMPS, LAMBDA_MAX, map_to_sparsity, minmax, renormalise

ALPHA_TABLE = (None, 0.06, 0.02, 0.04, 0.02, 0.04, 0.10, 0.15, 0.12)  # by int(10·S); index 0 is lam (public)
MAX_SPARSITY = 0.99  # the safe clamp's ceiling, as mapping.map_to_sparsity


@torch.no_grad()
def reconstruction_error(weight: torch.Tensor, hessian: torch.Tensor, group: int = 128,
                         fraction: float = 0.5) -> float:
    """LSE of one linear: Σ over rows of eᵀHe for the greedy per-row, per-group mask (see the module docstring);
    all rows advance together, one pick per step, in float64 on the Hessian's device."""
    h = hessian.to(torch.float64)
    w = weight.detach().to(h.device, torch.float64)
    rows, width = w.shape
    if h.shape != (width, width):
        raise WorkbenchError(f"Hessian of shape {tuple(h.shape)} does not fit a weight of shape {tuple(w.shape)}")
    size = width if group == 0 else group
    picks = int(size * fraction)
    diagonal = h.diagonal()
    cross = torch.zeros_like(w)  # 2·w_c·Σ_{j pruned in earlier groups of the row} w_j·H_jc
    total = torch.zeros((), dtype=torch.float64, device=h.device)
    for start in range(0, width, size):
        stop = min(start + size, width)
        part = w[:, start:stop]
        twice = 2 * part
        block = h[start:stop, start:stop]
        cost = part * part * diagonal[start:stop] + cross[:, start:stop]  # marginal cost of each column
        for _ in range(min(picks, stop - start)):
            least, c = cost.min(dim=1, keepdim=True)  # the first of equal costs, as torch.min
            total += least.sum()
            cost.addcmul_(twice, block[c[:, 0]].mul_(part.gather(1, c)))  # + 2·w_j·w_c·H_cj, row by row
            cost.scatter_(1, c, math.inf)  # taken (inf plus a finite update stays inf)
        if stop < width:
            pruned = torch.where(torch.isposinf(cost), part, torch.zeros_like(part))
            cross[:, stop:] += 2 * w[:, stop:] * (pruned @ h[start:stop, stop:])
    return float(total)


def default_alpha(sparsity: float, lam: float) -> float:
    """The public α by target: its table at int(10·S) (computed as it does), ``lam`` at index 0, the last entry
    beyond the table's end."""
    index = int(sparsity * 10)
    return lam if index == 0 else ALPHA_TABLE[min(index, len(ALPHA_TABLE) - 1)]


def count_mapping(values: list[float], numels: list[int], sparsity: float, lam: float, clamp: str) -> list[float]:
    """Each linear's sparsity from its value: d = 2Λ·minmax(1 − v/Σv), s_j = S + (mean(d) − d_j)·N̄/N_j (the
    pruned count of every linear moves by the same amount); ``safe`` clips and renormalises, ``reference`` not."""
    d = [2 * lam * (1 - x) for x in minmax(values)]  # minmax(1 − v/Σv) = 1 − minmax(v)
    mean_d, mean_n = sum(d) / len(d), sum(numels) / len(numels)
    raw = [sparsity + (mean_d - dj) * mean_n / n for dj, n in zip(d, numels, strict=True)]
    if clamp == "safe":
        return renormalise(raw, [float(n) for n in numels], sparsity, MAX_SPARSITY)
    return raw


def block_mapping(values: list[float], weights: list[int], sparsity: float, alpha: float, clamp: str) -> list[float]:
    """Each block's sparsity S + 2α(n − n̄), n = minmax(r): ``safe`` as ``mapping.map_to_sparsity`` (weighted n̄,
    clipped, exact mean); ``reference`` with the plain mean n̄ and no clamp."""
    if clamp == "safe":
        return map_to_sparsity(values, sparsity, alpha, direction=1, weights=weights, clamp="safe")
    n = minmax(values)
    mean = sum(n) / len(n)
    return [sparsity + 2 * alpha * (x - mean) for x in n]


def _check_reference(layers: dict[str, float], knob: str) -> None:
    """The public code's unclamped ratios, or a refusal when one cannot be applied."""
    bad = [(name, value) for name, value in layers.items() if not 0.0 <= value < 1.0]
    if bad:
        name, worst = max(bad, key=lambda item: abs(item[1] - 0.5))
        raise WorkbenchError(f"allocation='lsa': clamp='reference' (the public code, unclamped) gives {name} the "
                             f"sparsity {worst:.4f}, outside [0, 1); lower {knob} or the target, or use clamp='safe'")


PARAMS = (
    Param("B", 128, "column group width of the greedy LSE (int(B·s) pruned per group and row); 0: the whole row",
          kind="int", low=0),
    Param("s", 0.5, "fraction of each column group pruned to measure the LSE", low=0.0, high=1.0, open=True),
    Param("alpha", None, "block granularity: spread of the sparsities (2·alpha); unset: the public table by "
          "target (0.15 at 70%, 0.10 at 60%)", low=0.0, high=LAMBDA_MAX, optional=True),
    Param("lam", 0.08, "sublayer / projection granularity: each linear's pruned count moves by up to "
          "2·lam · the mean linear size", low=0.0, high=LAMBDA_MAX),
    Param("clamp", "safe", "safe: keep ratios in [0, 0.99] at the exact target; reference: the public code's "
          "unclamped ratios (refused outside [0, 1))", kind="choice", choices=CLAMPS),
    granularity_param(),
)


def linear_errors(inputs: AllocationInput, B: int, s: float) -> dict[str, float]:
    """Every linear's LSE, computed once per (B, s) for these inputs."""
    return inputs.memoised(("lsa_lse", int(B), float(s)), lambda: {
        name: reconstruction_error(inputs.weights(name), inputs.hessians(name), B, s) for name in inputs.layers})


@register_allocator("lsa", params=PARAMS, needs_weights=True, needs_hessians=True)
def lsa(inputs: AllocationInput, sparsity: float, B: int = 128, s: float = 0.5, alpha: float | None = None,
        lam: float = 0.08, clamp: str = "safe", granularity: str = "block"):
    """Minimal linear reconstruction error of each block (sublayer, linear): larger errors are pruned more (LSA)."""
    grouped = groups(inputs, granularity)
    errors = linear_errors(inputs, B, s)
    unit_values = [sum(errors[n] for n in names) / len(names) for names in grouped.values()]
    if granularity == "block":
        alpha = default_alpha(sparsity, lam) if alpha is None else alpha
        layers = spread_over(grouped, block_mapping(unit_values, unit_weights(inputs, grouped), sparsity, alpha,
                                                    clamp))
        knob = "alpha"
    else:
        per_linear = {n: v for names, v in zip(grouped.values(), unit_values, strict=True) for n in names}
        names = list(inputs.layers)
        ratios = count_mapping([per_linear[n] for n in names], [inputs.layers[n].numel for n in names], sparsity,
                               lam, clamp)
        layers = dict(zip(names, ratios, strict=True))
        knob = "lam"
    if clamp == "reference":
        _check_reference(layers, knob)
    return inputs.profile(layers, sparsity, "lsa", granularity,
                          {"B": B, "s": s, "alpha": alpha if granularity == "block" else None, "lam": lam,
                           "clamp": clamp, "lse": unit_values})
