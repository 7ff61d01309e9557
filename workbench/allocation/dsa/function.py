"""A DSA allocation function as data: pre-process ops, one reduction, post-process ops, λ, direction.

    {"pre": ["abslog"], "reduction": "var", "post": ["atan", "asin"], "lam": 0.08, "direction": 1}

For each block l the Wanda scores of its linears (on the dense model) go through ``pre`` element-wise,
then ``reduction`` gives one number v_l; the vector v goes through ``post``; then, as in the public DSA
code, n = minmax(v) and s_l = S + direction · 2λ(n_l − n̄) (direction +1: higher value -> more pruning),
with the safe clamp of ``mapping.py``. A function whose values are NaN/inf (asin of 1.5, log of 0) or
constant over blocks cannot give an allocation: it raises InvalidFunction, never maps to zeros.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import AllocationInput, register_allocator
from ..mapping import check_lambda, map_to_sparsity
from ..owl import groups
from . import ops


class InvalidFunction(ValueError):
    """The function cannot give a valid allocation on these scores (the reason says why)."""


@dataclass(frozen=True)
class AllocationFunction:
    pre: tuple[str, ...] = ("no_op",)
    reduction: str = "mean"
    post: tuple[str, ...] = ("no_op",)
    lam: float = 0.08
    direction: int = 1
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pre", tuple(self.pre))
        object.__setattr__(self, "post", tuple(self.post))
        for op in self.pre:
            if op not in ops.PRE:
                raise ValueError(f"pre op {op!r} is not allowed; allowed: {list(ops.PRE)}")
        if self.reduction not in ops.REDUCTIONS:
            raise ValueError(f"reduction={self.reduction!r} is not allowed; allowed: {list(ops.REDUCTIONS)}")
        for op in self.post:
            if op not in ops.POST:
                raise ValueError(f"post op {op!r} is not allowed; allowed: {list(ops.POST)}")
        check_lambda(self.lam)
        if self.direction not in (1, -1):
            raise ValueError(f"direction={self.direction!r} must be 1 or -1")

    # ------------------------------------------------------------------ data
    def to_dict(self) -> dict:
        d = asdict(self)
        d["pre"], d["post"] = list(self.pre), list(self.post)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> AllocationFunction:
        unknown = set(data) - {"pre", "reduction", "post", "lam", "direction", "name"}
        if unknown:
            raise ValueError(f"unknown fields in allocation function: {sorted(unknown)}")
        return cls(pre=tuple(data.get("pre", ("no_op",))), reduction=data.get("reduction", "mean"),
                   post=tuple(data.get("post", ("no_op",))), lam=float(data.get("lam", 0.08)),
                   direction=int(data.get("direction", 1)), name=data.get("name", ""))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AllocationFunction:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise ValueError(f"allocation function is not valid JSON: {err}") from None

    def key(self) -> str:
        """Identity of the function's behaviour (the name does not count)."""
        d = self.to_dict()
        d.pop("name")
        return json.dumps(d, sort_keys=True)

    # ------------------------------------------------------------------ evaluation
    def block_values(self, block_scores: list[list[torch.Tensor]]) -> list[float]:
        """v_l for each block, from the score matrices of its linears, after the post ops."""
        try:
            with warnings.catch_warnings():  # degenerate inputs warn (var of one value); the guard decides
                warnings.simplefilter("ignore")
                return self._block_values(block_scores)
        except RuntimeError as err:  # an op that cannot run on these shapes (torch raises RuntimeError)
            raise InvalidFunction(f"{self.key()}: {str(err).splitlines()[0]}") from None

    def _block_values(self, block_scores: list[list[torch.Tensor]]) -> list[float]:
        values = []
        with torch.no_grad():
            for mats in block_scores:
                mats = [m.float() for m in mats]
                for op in self.pre:
                    mats = [ops.PRE[op](m) for m in mats]
                flat = torch.cat([m.reshape(-1) for m in mats])
                _check_finite(flat, "pre ops", ",".join(self.pre))  # matrix reductions (SVD) need finite input
                values.append(ops.reduce(self.reduction, flat, mats))
            v = torch.stack(values).double()
            _check_finite(v, "reduction", self.reduction)
            for op in self.post:
                v = ops.POST[op](v)
                _check_finite(v, "post op", op)
        return v.tolist()

    def stages_key(self) -> str:
        """Identity of the block values (pre ops, reduction, post ops; λ and direction only map them)."""
        return json.dumps({"pre": list(self.pre), "reduction": self.reduction, "post": list(self.post)})

    def sparsities(self, block_scores: list[list[torch.Tensor]], sparsity: float,
                   weights: list[float] | None = None, values: list[float] | None = None) -> list[float]:
        """Per-block sparsities (guarded: invalid values raise InvalidFunction); ``values``: known block values."""
        values = self.block_values(block_scores) if values is None else values
        try:
            return map_to_sparsity(values, sparsity, self.lam, self.direction, weights=weights)
        except ValueError as err:
            raise InvalidFunction(f"{self.key()}: {err}") from None


def _check_finite(v: torch.Tensor, stage: str, op: str) -> None:
    if not bool(torch.isfinite(v).all()):
        bad = v[~torch.isfinite(v)][:3].tolist()
        raise InvalidFunction(f"{stage} {op!r} gave non-finite values ({bad[:3]}...)")


PRESETS = {
    # DSA poster, final discovered function
    "poster": AllocationFunction(("normalize",), "var", ("abs", "no_op"), 0.08, 1, "poster"),
    # DSA README example; asin of a value > 1 is NaN, which the guard reports
    "readme": AllocationFunction(("abslog",), "var", ("atan", "asin"), 0.08, 1, "readme"),
}


def load_function(spec: str | dict | AllocationFunction) -> AllocationFunction:
    """A preset name, a JSON file path, a JSON string, a dict, or a function."""
    if isinstance(spec, AllocationFunction):
        return spec
    if isinstance(spec, dict):
        return AllocationFunction.from_dict(spec)
    if spec in PRESETS:
        return PRESETS[spec]
    if Path(spec).is_file():
        return AllocationFunction.from_json(Path(spec).read_text())
    if spec.lstrip().startswith("{"):
        return AllocationFunction.from_json(spec)
    raise ValueError(f"function={spec!r} is neither a preset {list(PRESETS)}, a JSON file nor JSON")


def block_scores(inputs: AllocationInput) -> list[list[torch.Tensor]]:
    """Score matrices of every block's linears, in block order."""
    return [[inputs.scores(n) for n in names] for names in groups(inputs, "block").values()]


@register_allocator("dsa", needs_scores=True)
def dsa(inputs: AllocationInput, sparsity: float, function: str | dict | AllocationFunction = "poster",
        cached_block_scores: list[list[torch.Tensor]] | None = None):
    """Per-block sparsities from a DSA allocation function (``cached_block_scores`` skips recomputing)."""
    fn = load_function(function)
    grouped = groups(inputs, "block")
    weights = [sum(inputs.layers[n].numel for n in names) for names in grouped.values()]

    def values() -> list[float]:
        return fn.block_values(cached_block_scores if cached_block_scores is not None else block_scores(inputs))

    known = list(inputs.memoised(("dsa_block_values", fn.stages_key()), values))
    ratios = fn.sparsities([], sparsity, weights, values=known)
    layers = {n: r for names, r in zip(grouped.values(), ratios, strict=True) for n in names}
    return inputs.profile(layers, sparsity, "dsa", "block", {"function": fn.to_dict()})
