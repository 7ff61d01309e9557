"""BESA (Xu et al. 2024): blockwise parameter-efficient sparsity allocation, learned by reconstruction.

BESA is allocator and pruner at once: inside the sequential capture loop, every decoder block learns
how sparse each of its linears (layer-wise) or each output row of them (row-wise) should be, on that
block's calibration inputs, with the weights frozen. The math, per block:

* Ranks. Each linear's weights are ranked per output row by importance (Wanda |W|·||X||, magnitude |W|,
  or w²/U_jj², U the upper Cholesky factor of the damped H⁻¹: the public code's ``SparseGPT-Git`` metric;
  its ``SparseGPT`` metric divides by U_jj once): rank j = 0 is the least important weight of its row
  (pruned first).
* Candidates. c_k ∈ {1.00, 0.99, …, 0.00} (K = 101, descending). Learnable logits z: (rows, K) row-wise
  or (1, K) layer-wise. p = softmax(sigmoid(z)) over k (``sigmoid=False``: softmax(z)).
* Expected sparsity of a row: ŝ = Σ_k p_k c_k; of the block: ŝ_block = Σ_ℓ numel_ℓ · mean_rows(ŝ_ℓ) / Σ numel_ℓ.
* Keep-probability of the weight at rank j of a row with C columns: P_j = 1 − Σ_k p_k · [j < n_k] with
  n_k = int(C·c_k), rounded down as the public ``prob_map_matrix`` (``prob_map_matrix[k, :int(C * c_k)] = 1``)
  and as the hard mask (candidate c_k alone prunes int(C·c_k) weights): the weight is kept unless the
  sampled candidate sparsity prunes it. ``keep_prob`` computes it with the kernels' backend and has its own
  backward: ∂L/∂p_k = −Σ_{j < n_k} ∂L/∂P_j (per row; summed over rows layer-wise).
* Hard mask: the int(C·ŝ) lowest-ranked weights of each row are pruned (layer-wise: the same count in
  every row), M_hard ∈ {0, 1}. Straight-through estimator: M = M_hard − P.detach() + P, so the forward
  pass uses the hard mask and gradients flow through P. Forward with W ⊙ M, W frozen.
* Loss, for a mini-batch with reference output Y (tokens × hidden) and pruned output Ŷ:
      L = Σ ((Y − Ŷ) / ||Y||_col)² / hidden + β ((ŝ_block − S) / S)²,  β = 5,
  ||Y||_col the norm of each hidden channel over the mini-batch's tokens.
* Reference output Y: the dense block applied to the pruned model's inputs (``reference="pruned"``, the
  public code's default), or the dense model's own output of the block (``reference="dense"``, its
  ``--prune-dense``).

* Joint quantization (``quant_method='learned'``, not in the public code; the paper's joint compression): the
  masked weights W ⊙ M are fake-quantized on a grid whose range is clipped by learnable factors σ(up), σ(low)
  per row and group (OmniQuant's learnable weight clipping, ``quantize.fake_quantize``), trained with the
  logits; after learning, the kept weights are rounded on the learned grid. Other quant methods quantize each
  block after it is learned (``quantize_linear``).

Choices of this implementation (differences from the public code, see README):

* Initial logits: the public code starts from z = 0 (ŝ = 0.5 for every layer). Here z is initialised to
  an exponential tilt p_k ∝ exp(t·c_k) with ŝ = S (identical to z = 0 at S = 0.5), so a short optimisation
  starts on target and only has to redistribute sparsity.
* With the sigmoid, p_k ∝ exp(σ(z_k)) can only vary by a factor e, so ŝ is confined to about [0.376,
  0.624]: targets outside that range need ``sigmoid=False`` (checked, with a clear error).
* ``exact_target=True`` (default): after learning, one scalar tilt τ is added to every distribution's
  exponent (p ∝ exp(σ(z) + τc)), chosen so that the block's hard sparsity Σ int(C·ŝ_r) / Σ numel comes
  closest to S; it keeps the learned ordering of rows and layers and makes every block land on the
  target (the penalty alone leaves it within a few points, and int() rounds every row down).
  The learned ŝ_block before this step is logged per block.
* Optimiser: AdamW, lr 1e-2, no weight decay (default, cheap and dependable on a CPU; the public code's
  ``--normal-opt`` with its ``--normal-opt-lr`` default), or Prodigy (lr 1, the public code's default
  choice; PyPI package ``prodigyopt``). ``DEFAULT_LR`` holds both defaults.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from ..backend import kernels
from ..errors import WorkbenchError
from ..profile import SparsityProfile, check_sparsity
from ..pruners import forget_grid, keep_grid, layer_scores, quantize_linear
from ..quantize import QuantGrid, QuantSpec, clip_params, clipped_grid, fake_quantize
from ..units import LEGACY_GRANULARITIES
from .base import AllocationInput, Param, register_learner

if TYPE_CHECKING:
    from ..units import BlockData

GRANULARITIES = ("row", "projection")  # what BESA learns inside each block; "layer" (older name) = "projection"
IMPORTANCES = ("wanda", "magnitude", "sparsegpt")
OPTIMIZERS = ("adamw", "prodigy")
REFERENCES = ("pruned", "dense")
DEFAULT_LR = {"adamw": 1e-2, "prodigy": 1.0}
STATISTICS = {"wanda": ("sq_norm",), "magnitude": (), "sparsegpt": ("xtx",)}


# --------------------------------------------------------------------------- the math (pure functions)

def candidates(steps: int = 100) -> torch.Tensor:
    """Candidate sparsities c_k = 1.00, 0.99, …, 0.00 (``steps`` + 1 values, descending, float32)."""
    return torch.arange(steps, -1, -1, dtype=torch.float64).div(steps).float()


def distribution(logits: torch.Tensor, sigmoid: bool = True) -> torch.Tensor:
    """p = softmax(sigmoid(z)) over the candidates (last dimension); softmax(z) without the sigmoid."""
    return torch.softmax(torch.sigmoid(logits) if sigmoid else logits, dim=-1)


def expected_sparsity(probs: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """ŝ = Σ_k p_k c_k for every row of ``probs`` (…, K) -> (…,)."""
    return probs @ cands.to(probs.device, probs.dtype)


def ranks_from_order(order: torch.Tensor) -> torch.Tensor:
    """Rank of every weight in its row (0 = least important) from a ``kernels.row_order`` (int32)."""
    rows, cols = order.shape
    ranks = torch.empty(rows, cols, dtype=torch.int32, device=order.device)
    ranks.scatter_(1, order.long(), torch.arange(cols, dtype=torch.int32, device=order.device).expand(rows, cols))
    return ranks


def prefix_lengths(cols: int, cands: torch.Tensor) -> torch.Tensor:
    """n_k = int(C·c_k): the ranks j < n_k that candidate c_k prunes, rounded down as the public code's
    ``int(map_dim_size * c_k.item())`` (the float32 candidate times C in float64) and as the hard mask."""
    return (cols * cands.to(torch.float32).double()).floor().long().clamp(0, cols)


def keep_bounds(cols: int, cands: torch.Tensor) -> torch.Tensor:
    """What the keep-probability kernel compares ranks with (it counts the k with j < C·b_k): b_k = (n_k − ½)/C,
    so that j < C·b_k holds exactly for j < n_k (C·b_k is n_k − ½ up to float32 rounding, far from an integer).
    Descending as the candidates."""
    return ((prefix_lengths(cols, cands).double() - 0.5) / cols).float()


class KeepProb(torch.autograd.Function):
    """P[r, col] = 1 − Σ_k probs[r, k]·[ranks[r, col] < int(C·c_k)]; forward by the kernels' backend."""

    @staticmethod
    def forward(ctx, probs: torch.Tensor, ranks: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ranks, cands)
        ctx.probs_shape = probs.shape
        return kernels.besa_keep_prob(ranks, probs.detach(), keep_bounds(ranks.shape[1], cands).to(cands.device))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ranks, cands = ctx.saved_tensors
        rows, cols = ranks.shape
        by_rank = torch.zeros(rows, cols + 1, dtype=torch.float32, device=grad.device)
        by_rank[:, 1:].scatter_(1, ranks.long(), grad.float())  # gradient of the weight at rank j
        prefix = torch.cumsum(by_rank, dim=1)                    # prefix[:, n] = Σ_{j < n}
        gp = -prefix[:, prefix_lengths(cols, cands).to(grad.device)]  # (rows, K)
        if len(ctx.probs_shape) == 1 or ctx.probs_shape[0] == 1:  # layer-wise: one distribution for all rows
            gp = gp.sum(dim=0, keepdim=True)
        return gp.reshape(ctx.probs_shape).to(grad.dtype), None, None


def keep_prob(probs: torch.Tensor, ranks: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """Differentiable keep-probabilities (probs: (rows or 1, K)); see :class:`KeepProb`."""
    return KeepProb.apply(probs, ranks, cands)


def hard_counts(s_hat: torch.Tensor, cols: int) -> torch.Tensor:
    """Weights to prune per row: int(C·ŝ), capped at C − 1 (a profile's sparsity stays below 1)."""
    return (cols * s_hat.detach().double()).floor().long().clamp(0, cols - 1)


def ste_mask(order: torch.Tensor, counts: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Straight-through mask M_hard − P.detach() + P: the hard 0/1 keep-mask forward, ∂M/∂P = 1 backward."""
    hard = (~kernels.mask_from_order(order, counts)).to(keep.dtype)
    return hard - keep.detach() + keep


def reconstruction_loss(reference: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Σ ((Y − Ŷ) / ||Y||_col)² / hidden, the column norm taken over all tokens of the mini-batch."""
    ref = reference.float().reshape(-1, reference.shape[-1])
    out = output.float().reshape(-1, output.shape[-1])
    scale = torch.linalg.vector_norm(ref, dim=0).clamp_min(1e-12)
    return (((ref - out) / scale) ** 2).sum() / ref.shape[-1]


def sparsity_penalty(s_block: torch.Tensor, target: float, beta: float) -> torch.Tensor:
    """β ((ŝ_block − S) / S)²."""
    return beta * ((s_block - target) / target) ** 2


def reachable(cands: torch.Tensor, sigmoid: bool) -> tuple[float, float]:
    """The range of ŝ a distribution can reach: with the sigmoid, p_k ∝ e^{σ(z_k)} varies only by e."""
    if not sigmoid:
        return float(cands.min()), float(cands.max())
    c = cands.double().sort(descending=True).values
    best_hi, best_lo = 0.0, 1.0
    for n in range(c.numel() + 1):  # optimum is bang-bang: the n largest (or smallest) candidates get weight e
        w = torch.ones_like(c)
        w[:n] = math.e
        best_hi = max(best_hi, float((w * c).sum() / w.sum()))
        best_lo = min(best_lo, float((w.flip(0) * c).sum() / w.sum()))
    return best_lo, best_hi


def _solve_increasing(f, target: float, lo: float, hi: float, iters: int = 60) -> float:
    """Bisection for f(x) = target with f increasing on [lo, hi] (clamped to the ends)."""
    if f(lo) >= target:
        return lo
    if f(hi) <= target:
        return hi
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def initial_logits(target: float, cands: torch.Tensor, rows: int, sigmoid: bool) -> torch.Tensor:
    """Logits with p_k ∝ exp(t·c_k) and ŝ = target (t = 0 at 0.5: the public code's zeros); (rows, K).

    With the sigmoid, σ(z_k) = ½ + t(c_k − ½) needs |t| < 1, so targets beyond about [0.42, 0.58] start
    at the nearest reachable tilt."""
    c = cands.double()

    def s_of(t: float) -> float:
        return float((torch.softmax(t * c, 0) * c).sum())

    bound = 0.98 if sigmoid else 60.0
    t = _solve_increasing(s_of, target, -bound, bound)
    if sigmoid:
        z = torch.logit(0.5 + t * (c - 0.5))
    else:
        z = t * c
    return z.float().expand(rows, -1).clone()


def project_to_target(bases: list[torch.Tensor], shapes: list[tuple[int, int]], cands: torch.Tensor,
                      target: float) -> list[torch.Tensor]:
    """Per-row sparsities ŝ of p ∝ exp(a + τc) (a = σ(z) or z of each layer, (rows or 1, K)) with the one τ
    whose *hard* block sparsity Σ int(C·ŝ_r) / Σ numel comes closest to ``target``."""
    c = cands.double()
    total = float(sum(r * k for r, k in shapes))

    def s_hats(tau: float) -> list[torch.Tensor]:
        return [expected_sparsity(torch.softmax(a.double() + tau * c, -1), c) for a in bases]

    def hard(tau: float) -> float:
        return sum(float(hard_counts(s, k).expand(r).sum()) for s, (r, k) in zip(s_hats(tau), shapes,
                                                                                  strict=True)) / total

    lo, hi = -200.0, 200.0
    for _ in range(60):  # hard(τ) is a non-decreasing step function: bracket the target
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if hard(mid) < target else (lo, mid)
    tau = min((lo, hi), key=lambda t: abs(hard(t) - target))
    return [s.float() for s in s_hats(tau)]


def row_sparsity_values(counts: torch.Tensor, cols: int) -> list[float]:
    """count / C as floats that ``masks.prune_counts`` turns back into exactly ``count``."""
    out = []
    for k in counts.tolist():
        s = k / cols
        while math.floor(cols * s) < k:  # k / C may round down by an ulp
            s = math.nextafter(s, 1.0)
        out.append(s)
    return out


# --------------------------------------------------------------------------- per-block learning

@dataclass
class BlockLog:
    """What learning did in one block: expected and realised sparsities, losses, seconds."""

    block: int
    learned_sparsity: float      # ŝ_block after learning, before the exact-target step
    sparsity: float              # parameter-weighted fraction of weights pruned in the block
    first_loss: float
    last_loss: float
    steps: int
    seconds: float
    clip: float | None = None    # joint quantization: the mean learned clipping factor σ(up) of the block's groups


@dataclass
class BesaLearner:
    """Learns each block's row- or layer-wise sparsities (``step`` per block) and prunes the block."""

    layers_info: AllocationInput
    target: float
    granularity: str = "row"
    importance: str = "wanda"
    beta: float = 5.0
    epochs: int = 1
    batch_size: int = 1
    optimizer: str = "adamw"
    lr: float | None = None
    d_coef: float = 1.0
    reference: str = "pruned"
    sigmoid: bool = True
    exact_target: bool = True
    progress: bool = True
    layers: dict[str, float] = field(default_factory=dict)
    rows: dict[str, list[float]] = field(default_factory=dict)
    log: list[BlockLog] = field(default_factory=list)
    quant: QuantSpec = field(default_factory=QuantSpec)  # the run's quantization (``quantize_with``)
    quant_method: str = "rtn"

    def __post_init__(self) -> None:
        check_sparsity(self.target, "sparsity")
        self.granularity = LEGACY_GRANULARITIES.get(self.granularity, self.granularity)
        if self.target <= 0:
            raise WorkbenchError(f"sparsity={self.target!r} must be > 0 for allocation='besa' (the penalty "
                                 f"divides by it)")
        for name, value, allowed in (("granularity", self.granularity, GRANULARITIES),
                                     ("importance", self.importance, IMPORTANCES),
                                     ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("reference", self.reference, REFERENCES)):
            if value not in allowed:
                raise WorkbenchError(f"{name}={value!r} is not allowed; allowed: {list(allowed)}")
        if isinstance(self.beta, bool) or not isinstance(self.beta, int | float) or not math.isfinite(self.beta) \
                or self.beta < 0:
            raise WorkbenchError(f"beta={self.beta!r} must be a finite number >= 0")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise WorkbenchError(f"{name}={value!r} must be an integer >= 1")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if isinstance(self.lr, bool) or not isinstance(self.lr, int | float) or not self.lr > 0:
            raise WorkbenchError(f"lr={self.lr!r} must be a number > 0")
        if not isinstance(self.sigmoid, bool) or not isinstance(self.exact_target, bool):
            raise WorkbenchError("sigmoid and exact_target must be true or false")
        lo, hi = reachable(candidates(), self.sigmoid)
        if not lo < self.target < hi:
            raise WorkbenchError(f"sparsity={self.target} is outside what softmax(sigmoid(logits)) can express "
                                  f"({lo:.3f}, {hi:.3f}); pass sigmoid=False (plain softmax) for this target")
        if self.optimizer == "prodigy":
            _prodigy()  # fail now, not after the first block

    def quantize_with(self, quant: QuantSpec, method: str) -> None:
        """Quantize each block's kept weights: ``learned`` inside the loop (fake quantization of the masked
        weights with learnable clipping, trained with the sparsity logits: BESA's joint compression), or after
        the block is pruned (``rtn``, or GPTQ: ``gptq`` / ``gptq-after``, on the block's X^T X)."""
        self.quant, self.quant_method = quant, method

    @property
    def joint(self) -> bool:
        """Quantization inside the learning loop."""
        return self.quant.enabled and self.quant_method == "learned"

    @property
    def statistics(self) -> tuple[str, ...]:
        """Calibration statistics the importance (and GPTQ after pruning) needs."""
        gptq = self.quant.enabled and self.quant_method in ("gptq", "gptq-after")
        return tuple(sorted(set(STATISTICS[self.importance]) | ({"xtx"} if gptq else set())))

    @property
    def needs_dense(self) -> bool:
        """Whether the capture loop must carry the dense model's activations."""
        return self.reference == "dense"

    def params(self) -> dict:
        """The method's parameters, for the profile and result records."""
        return {"granularity": self.granularity, "importance": self.importance, "beta": self.beta,
                "epochs": self.epochs, "batch_size": self.batch_size, "optimizer": self.optimizer, "lr": self.lr,
                "d_coef": self.d_coef, "reference": self.reference, "sigmoid": self.sigmoid,
                "exact_target": self.exact_target, "candidates": int(candidates().numel()),
                "blocks": [vars(b) for b in self.log]}

    def profile(self) -> SparsityProfile:
        """The learned allocation (per row for ``row``, per layer for ``layer``) of every linear."""
        missing = set(self.layers_info.layers) - set(self.layers)
        if missing:
            raise WorkbenchError(f"BESA has not learned {len(missing)} layers (e.g. {sorted(missing)[0]})")
        prof = self.layers_info.profile(dict(self.layers), self.target, "besa", self.granularity, self.params())
        prof.rows = dict(self.rows)
        prof.validate()
        return prof

    def step(self, data: BlockData) -> None:
        """Learn block ``data.index``'s sparsities on its calibration inputs, then prune it in place."""
        start = time.perf_counter()
        names = {id(m): n for n, m in data.block.named_modules()}
        cands = candidates().to(next(iter(data.linears.values())).weight.device)
        layers = []
        for full, lin in data.linears.items():
            scores = layer_scores(self.importance, lin.weight, data.stats.get(full))
            order = kernels.row_order(scores)
            rows = lin.out_features if self.granularity == "row" else 1
            logits = nn.Parameter(initial_logits(self.target, cands, rows, self.sigmoid).to(cands.device))
            clip = clip_params(lin.out_features, lin.in_features, self.quant, cands.device) if self.joint else None
            layers.append(_Layer(full, names[id(lin)] + ".weight", lin, order, ranks_from_order(order), logits,
                                 clip))
        reference = data.dense_outputs if self.reference == "dense" else data.outputs
        first, last, steps, learned = self._learn(data, layers, reference, cands)
        with torch.no_grad():
            if self.exact_target:
                bases = [(torch.sigmoid(ly.logits) if self.sigmoid else ly.logits).detach() for ly in layers]
                shapes = [(ly.linear.out_features, ly.linear.in_features) for ly in layers]
                final = project_to_target(bases, shapes, cands, self.target)
            else:
                final = [expected_sparsity(distribution(ly.logits, self.sigmoid), cands) for ly in layers]
            pruned = 0
            for ly, s_hat in zip(layers, final, strict=True):
                cols = ly.linear.in_features
                counts = hard_counts(s_hat, cols).expand(ly.linear.out_features)
                mask = kernels.mask_from_order(ly.order, counts)
                forget_grid(ly.linear)
                kernels.apply_mask(ly.linear.weight, mask)
                self._quantize(ly, mask, data.stats.get(ly.name))
                pruned += int(counts.sum())
                self.layers[ly.name] = float(counts.sum()) / ly.numel
                if self.granularity == "row":
                    self.rows[ly.name] = row_sparsity_values(counts, cols)
                else:
                    self.layers[ly.name] = row_sparsity_values(counts[:1], cols)[0]
        clip = float(torch.cat([torch.sigmoid(ly.clip[0].detach()).flatten() for ly in layers]).mean()) \
            if self.joint else None
        self.log.append(BlockLog(data.index, learned, pruned / sum(ly.numel for ly in layers), first, last, steps,
                                 time.perf_counter() - start, clip))

    def _quantize(self, ly: _Layer, pruned: torch.Tensor, stats) -> None:
        """The quantization of a pruned linear: on its learned clipped grid (joint), or the run's stage after."""
        if not self.quant.enabled:
            return
        if not self.joint:
            quantize_linear(ly.linear, self.quant, "rtn" if self.quant_method == "rtn" else "gptq", stats)
            return
        weight = ly.linear.weight
        scale, zero = clipped_grid(weight, self.quant, *ly.clip)
        grid = QuantGrid(self.quant, scale.detach(), zero.detach())
        weight.copy_(grid.values(grid.codes(weight), weight.dtype))
        keep_grid(ly.linear, grid, pruned)

    def _learn(self, data: BlockData, layers: list[_Layer], reference: list[torch.Tensor],
               cands: torch.Tensor) -> tuple[float, float, int, float]:
        """The optimisation loop; returns (first loss, last loss, steps, learned ŝ_block)."""
        frozen = [p for p in data.block.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        opt = self._optimizer([ly.logits for ly in layers] + [p for ly in layers for p in ly.clip or ()])
        total = float(sum(ly.numel for ly in layers))
        n = len(data.inputs)
        first = last = float("nan")
        steps = 0
        bar = tqdm(total=self.epochs * math.ceil(n / self.batch_size), desc=f"besa block {data.index}",
                   disable=not self.progress, leave=False)
        try:
            with torch.enable_grad():
                for _ in range(self.epochs):
                    for lo in range(0, n, self.batch_size):
                        batch = range(lo, min(lo + self.batch_size, n))
                        weights, s_block = self._masked_weights(layers, cands, total)
                        outs = [_block_output(data.block, weights, data.inputs[i], data.kwargs) for i in batch]
                        recon = reconstruction_loss(torch.cat([reference[i] for i in batch], 1), torch.cat(outs, 1))
                        loss = recon + sparsity_penalty(s_block, self.target, self.beta)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        last, steps = float(loss.detach()), steps + 1
                        first = last if steps == 1 else first
                        bar.update(1)
                        bar.set_postfix(loss=f"{last:.4f}", sparsity=f"{float(s_block.detach()):.4f}")
        finally:
            bar.close()
            for p in frozen:
                p.requires_grad_(True)
        with torch.no_grad():
            learned = sum(float(expected_sparsity(distribution(ly.logits, self.sigmoid), cands).mean()) * ly.numel
                          for ly in layers) / total
        return first, last, steps, learned

    def _masked_weights(self, layers: list[_Layer], cands: torch.Tensor,
                        total: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """W ⊙ (M_hard − P.detach() + P) for every linear, and the block's expected sparsity ŝ_block."""
        weights, s_block = {}, 0.0
        for ly in layers:
            probs = distribution(ly.logits, self.sigmoid)             # (rows or 1, K)
            s_hat = expected_sparsity(probs, cands)                   # (rows or 1,)
            keep = keep_prob(probs, ly.ranks, cands)                  # (out, in)
            counts = hard_counts(s_hat, ly.linear.in_features).expand(ly.linear.out_features)
            mask = ste_mask(ly.order, counts, keep)
            masked = ly.linear.weight.detach() * mask.to(ly.linear.weight.dtype)
            weights[ly.param] = fake_quantize(masked, self.quant, *ly.clip) if self.joint else masked
            s_block = s_block + s_hat.mean() * (ly.numel / total)
        return weights, s_block

    def _optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        if self.optimizer == "prodigy":
            return _prodigy()(params, lr=self.lr, weight_decay=0.0, d_coef=self.d_coef)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)


@dataclass
class _Layer:
    name: str              # full name in the model
    param: str             # weight's name inside the block (for functional_call)
    linear: nn.Linear
    order: torch.Tensor    # (out, in) columns from least to most important
    ranks: torch.Tensor    # (out, in) rank of every weight in its row
    logits: nn.Parameter   # (out or 1, K)
    clip: tuple[torch.Tensor, torch.Tensor] | None = None  # learnable clipping logits (joint quantization)

    @property
    def numel(self) -> int:
        return self.linear.weight.numel()


def _block_output(block: nn.Module, weights: dict[str, torch.Tensor], hidden: torch.Tensor,
                  kwargs: dict) -> torch.Tensor:
    out = torch.func.functional_call(block, weights, (hidden,), kwargs, strict=False)
    return out[0] if isinstance(out, tuple) else out


def _prodigy():
    try:
        from prodigyopt import Prodigy
    except ImportError as err:
        raise WorkbenchError("optimizer='prodigy' needs the PyPI package prodigyopt (pip install prodigyopt==1.1.2)") \
            from err
    return Prodigy


PARAMS = (
    Param("granularity", "row", "learn one sparsity per row (the paper) or per linear (projection)",
          kind="choice", choices=GRANULARITIES, aliases=tuple(LEGACY_GRANULARITIES.items()),
          why="BESA learns inside each block under the block's target, per row or per linear; a learned "
              "sparsity per block or per sublayer is not built"),
    Param("importance", "wanda", "score that ranks the weights (default: the pruning metric; sparsegpt is "
          "w²/U_jj², the public code's SparseGPT-Git)", kind="choice",
          choices=IMPORTANCES, by_metric=(("magnitude", "magnitude"), ("sparsegpt", "sparsegpt"))),
    Param("beta", 5.0, "weight of the sparsity penalty β((ŝ − S)/S)²", low=0.0),
    Param("epochs", 1, "passes over the calibration windows per block", kind="int", low=1),
    Param("batch_size", 1, "calibration windows per optimiser step", kind="int", low=1),
    Param("optimizer", "adamw", "adamw, or prodigy (the paper's; needs prodigyopt)", kind="choice",
          choices=OPTIMIZERS),
    Param("lr", None, f"learning rate (default: {DEFAULT_LR['adamw']:g} for adamw, {DEFAULT_LR['prodigy']:g} for "
          "prodigy)", low=0.0, open=True, optional=True),
    Param("d_coef", 1.0, "Prodigy's d_coef", low=0.0, open=True),
    Param("reference", "pruned", "block outputs to match: on the pruned model's inputs (paper) or the dense model's",
          kind="choice", choices=REFERENCES),
    Param("sigmoid", True, "p = softmax(sigmoid(logits)) as the paper (false: softmax(logits))", kind="bool"),
    Param("exact_target", True, "shift the learned ratios so each block meets the target exactly", kind="bool"),
    Param("progress", True, "progress bars", kind="bool", internal=True),
)


@register_learner("besa", params=PARAMS)
def besa(inputs: AllocationInput, sparsity: float, granularity: str = "row", importance: str = "wanda",
         beta: float = 5.0, epochs: int = 1, batch_size: int = 1, optimizer: str = "adamw", lr: float | None = None,
         d_coef: float = 1.0, reference: str = "pruned", sigmoid: bool = True, exact_target: bool = True,
         progress: bool = True) -> BesaLearner:
    """Blockwise learned sparsities (BESA); a learner for ``prune``'s sequential loop."""
    return BesaLearner(inputs, sparsity, granularity, importance, beta, epochs, batch_size, optimizer, lr, d_coef,
                       reference, sigmoid, exact_target, progress)
