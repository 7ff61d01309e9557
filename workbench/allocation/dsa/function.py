"""A DSA allocation function as data: pre-process ops, one reduction, post ops, λ, direction.

    {"pre": ["abslog"], "reduction": "var", "post": ["atan", "asin"], "lam": 0.08, "direction": 1}

As in the public DSA code: for each block l the Wanda scores of its linears (on the dense model) are
flattened and concatenated into one vector, which goes through ``pre`` element-wise; ``reduction`` gives
one number, ``post`` transforms it (after the public ``NO_OP`` reduction the post ops act on every element
and the block's number is their mean, as the public ``compute_importance`` takes the mean of a vector);
then n = minmax(v) and s_l = S + direction · 2λ(n_l − n̄)
(direction +1: higher value -> more pruning), with the safe clamp of ``mapping.py``. All in float64.

A function cannot give an allocation (``InvalidFunction``, with the stage and the reason) when a stage
yields NaN/inf (asin of 1.5, log of a negative number) or when its block values are equal up to rounding:
their spread is at most ``NOISE_RTOL`` of their scale (``ops.SCALES``). float64 rounding over the ~10⁷
terms of a block stays below ~1e-12 relative, so 1e-9 keeps a margin of 1000 while any larger spread is
a property of the scores; min-max would otherwise stretch rounding noise to the full ±λ (the poster's
[normalize, var] with the torch ``normalize``: the variance of z-scores is 1 for every block).

Below the block (not in the paper): ``granularity="sublayer"`` gives the function each block child's vector
(the attention's linears together, the MLP's together), ``"projection"`` each linear's own; the mapping is
the same, weighted by the units' parameters so the mean is exact.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ...errors import WorkbenchError
from ..base import AllocationInput, Param, granularity_param, groups, register_allocator, spread_over, unit_weights
from ..mapping import check_lambda, map_to_sparsity
from . import ops

NOISE_RTOL = 1e-9
MAX_CHAIN = 4  # ops in a pre or post chain
# What a NaN/inf block value means: "invalid" (the project's rule: the function gives no allocation) or
# "reference" (the public code's compute_importance: a block whose value is NaN gets 0, ±inf gets -1)
NONFINITE = ("invalid", "reference")


class InvalidFunction(WorkbenchError):
    """The function cannot give a valid allocation on these scores (the reason says why)."""


@dataclass(frozen=True)
class AllocationFunction:
    pre: tuple[str, ...] = ("no_op",)
    reduction: str = "mean"
    post: tuple[str, ...] = ("no_op",)
    lam: float = 0.08
    direction: int = 1
    name: str = field(default="", compare=False)
    nonfinite: str = "invalid"  # "reference": the public code's rule, NaN -> 0 and ±inf -> -1 per block value

    def __post_init__(self) -> None:
        for stage, chain, allowed in (("pre", self.pre, ops.PRE), ("post", self.post, ops.POST)):
            if isinstance(chain, str) or not isinstance(chain, list | tuple):
                raise WorkbenchError(f"{stage}={chain!r} must be a list of op names; allowed: {list(allowed)}")
            if not 1 <= len(chain) <= MAX_CHAIN:
                raise WorkbenchError(f"{stage}={list(chain)!r} must hold 1 to {MAX_CHAIN} ops (use 'no_op' for none)")
            for op in chain:
                if not isinstance(op, str) or op not in allowed:
                    raise WorkbenchError(f"{stage} op {op!r} is not allowed; allowed: {list(allowed)}")
        object.__setattr__(self, "pre", tuple(self.pre))
        object.__setattr__(self, "post", tuple(self.post))
        if not isinstance(self.reduction, str) or self.reduction not in ops.REDUCTIONS:
            raise WorkbenchError(f"reduction={self.reduction!r} is not allowed; allowed: {list(ops.REDUCTIONS)}")
        check_lambda(self.lam)
        if isinstance(self.direction, bool) or self.direction not in (1, -1):
            raise WorkbenchError(f"direction={self.direction!r} must be 1 or -1")
        if self.nonfinite not in NONFINITE:
            raise WorkbenchError(f"nonfinite={self.nonfinite!r} is not allowed; allowed: {list(NONFINITE)}")

    # ------------------------------------------------------------------ data
    def to_dict(self) -> dict:
        d = asdict(self)
        d["pre"], d["post"] = list(self.pre), list(self.post)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> AllocationFunction:
        if not isinstance(data, dict):
            raise WorkbenchError(f"allocation function must be a JSON object, got {type(data).__name__}")
        allowed = {"pre", "reduction", "post", "lam", "direction", "name", "nonfinite"}
        unknown = set(data) - allowed
        if unknown:
            raise WorkbenchError(f"unknown fields in allocation function: {sorted(unknown)}; allowed: "
                                 f"{sorted(allowed)}")
        lam = data.get("lam", 0.08)
        if isinstance(lam, bool) or not isinstance(lam, int | float):
            raise WorkbenchError(f"lam={lam!r} must be a number")
        return cls(pre=data.get("pre", ("no_op",)), reduction=data.get("reduction", "mean"),
                   post=data.get("post", ("no_op",)), lam=float(lam),
                   direction=data.get("direction", 1), name=str(data.get("name", "")),
                   nonfinite=data.get("nonfinite", "invalid"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AllocationFunction:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise WorkbenchError(f"function: allocation function is not valid JSON ({err})") from None
        return cls.from_dict(data)

    def key(self) -> str:
        """Identity of the function's behaviour (the name does not count)."""
        d = self.to_dict()
        d.pop("name")
        return json.dumps(d, sort_keys=True)

    def reduced_key(self) -> str:
        """Identity of the values before the post ops (pre ops and reduction; and the post ops where they act
        on the elements, before the reduction's mean: ``ops.POST_INSIDE``)."""
        d = {"pre": list(self.pre), "reduction": self.reduction, "nonfinite": self.nonfinite}
        if self.reduction in ops.POST_INSIDE:
            d["post"] = list(self.post)
        return json.dumps(d)

    def stages_key(self) -> str:
        """Identity of the block values (pre ops, reduction, post ops; λ and direction only map them)."""
        return json.dumps({"pre": list(self.pre), "reduction": self.reduction, "post": list(self.post),
                           "nonfinite": self.nonfinite})

    # ------------------------------------------------------------------ evaluation
    def reduced_values(self, block_scores: list[list[torch.Tensor]] | UnitVectors
                       ) -> tuple[list[float], list[float]]:
        """Per block: the reduction of the pre-processed concatenated score vector, and its scale.

        A matrix reduction after element-wise pre ops only reads each layer's strided view, so the ops
        (and the finiteness check) run on the views: the same values, 1/8 of the work on SmolLM2.
        ``block_scores`` may be a kept ``UnitVectors`` (a search: the vectors are built once)."""
        vectors = block_scores if isinstance(block_scores, UnitVectors) else UnitVectors(block_scores)
        values, scales = [], []
        strict = self.nonfinite == "invalid"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate inputs warn (var of one value); the checks decide
            on_views = self.reduction in ops.MATRIX_REDUCTIONS and set(self.pre) <= ops.ELEMENTWISE
            for vector, shapes in vectors.get(on_views):
                flat = ops.apply_pre(self.pre, vector, owned=False)  # the kept vector is never written
                if strict:
                    _check_finite(flat, "pre ops", ",".join(self.pre))
                if self.reduction in ops.POST_INSIDE:  # public NO_OP: the post ops act on every element
                    for op in self.post:
                        flat = ops.POST[op](flat)
                        if strict:
                            _check_finite(flat, "post op", op)
                try:
                    value, scale = ops.reduce(self.reduction, flat, shapes)
                except RuntimeError as err:  # an op that cannot run on these values (torch raises RuntimeError)
                    raise InvalidFunction(f"reduction {self.reduction!r}: {str(err).splitlines()[0]}") from None
                values.append(value)
                scales.append(scale)
        v = torch.tensor(values, dtype=torch.float64)
        if strict:
            _check_finite(v, "reduction", self.reduction)
        finite = torch.isfinite(v)
        _check_spread(v[finite], max((s for s, f in zip(scales, finite.tolist(), strict=True) if f), default=0.0),
                      f"reduction {self.reduction!r} after pre ops {list(self.pre)}")
        return values, scales

    def post_values(self, reduced: list[float]) -> list[float]:
        """The post ops on the reduced block values, each checked for NaN/inf and collapse to rounding (none
        after a reduction that ran them on the elements: ``ops.POST_INSIDE``)."""
        v = torch.tensor(reduced, dtype=torch.float64)
        for op in () if self.reduction in ops.POST_INSIDE else self.post:
            v = ops.POST[op](v)
            if self.nonfinite == "invalid":
                _check_finite(v, "post op", op)
            finite = v[torch.isfinite(v)]
            _check_spread(finite, float(finite.abs().max()) if finite.numel() else 0.0, f"post op {op!r}")
        if self.nonfinite == "reference":  # the public compute_importance: NaN -> 0, ±inf -> -1
            v = torch.where(torch.isnan(v), torch.zeros_like(v), torch.where(torch.isinf(v), -torch.ones_like(v), v))
            _check_spread(v, float(v.abs().max()), "the public NaN -> 0, inf -> -1 rule")
        return v.tolist()

    def block_values(self, block_scores: list[list[torch.Tensor]]) -> list[float]:
        """v_l for each block, from the score matrices of its linears, after the post ops."""
        return self.post_values(self.reduced_values(block_scores)[0])

    def sparsities(self, block_scores: list[list[torch.Tensor]], sparsity: float,
                   weights: list[float] | None = None, values: list[float] | None = None) -> list[float]:
        """Per-block sparsities (guarded: invalid values raise InvalidFunction); ``values``: known block values."""
        values = self.block_values(block_scores) if values is None else values
        try:
            return map_to_sparsity(values, sparsity, self.lam, self.direction, weights=weights)
        except ValueError as err:
            raise InvalidFunction(f"{self.key()}: {err}") from None


class UnitVectors:
    """Each unit's concatenated score vector in float64 (as the public code builds a block's), on the whole
    layers or on their strided matrix views, built on first use and kept: a search evaluates thousands of
    pre-op chains on the same scores, and the concatenation and cast cost more than most ops."""

    def __init__(self, block_scores: list[list[torch.Tensor]]):
        self.block_scores = block_scores
        self._kept: dict[bool, list[tuple[torch.Tensor, list[tuple[int, ...]]]]] = {}

    def get(self, on_views: bool) -> list[tuple[torch.Tensor, list[tuple[int, ...]]]]:
        """(vector, layer shapes) per unit; ``on_views``: of each layer's strided <= 256 x 256 view."""
        if on_views not in self._kept:
            kept = []
            for mats in self.block_scores:
                if on_views:
                    mats = [ops.matrix_view(m) for m in mats]
                kept.append((torch.cat([m.reshape(-1) for m in mats]).double(), [tuple(m.shape) for m in mats]))
            self._kept[on_views] = kept
        return self._kept[on_views]


def _check_finite(v: torch.Tensor, stage: str, op: str) -> None:
    if bool(torch.isfinite(v.sum())):  # a finite sum has no NaN or inf among its terms (one pass, no mask)
        return
    if not bool(torch.isfinite(v).all()):
        bad = v[~torch.isfinite(v)][:3].tolist()
        raise InvalidFunction(f"{stage} {op!r} gave non-finite values ({bad[:3]}...)")


def _check_spread(v: torch.Tensor, scale: float, where: str) -> None:
    """Refuse block values whose spread is rounding noise: max − min <= NOISE_RTOL · scale (fewer than two
    finite values under the reference rule: nothing to compare yet)."""
    if v.numel() < 2:
        return
    spread = float(v.max() - v.min())
    if spread <= NOISE_RTOL * scale:
        raise InvalidFunction(f"{where}: block values are constant up to rounding (spread {spread:.3g} <= "
                              f"{NOISE_RTOL:g} x scale {scale:.3g}); min-max would stretch noise into sparsities")


# package data, read only: the searched functions the project ships (the DSA study's; a search writes its own
# functions to its --out folder, never here)
FUNCTIONS: Path = resources.files("workbench") / "resources" / "functions"
LEGACY_FUNCTIONS = Path("data") / "functions"  # where they were before they became package data

PRESETS = {
    # DSA README example (lliai/DSA: W:(ABSLOG)-(VAR)-(ATAN,ASIN), λ = --Lamda 0.08), with the public code's
    # NaN -> 0 rule: asin(atan(v)) is NaN where v > tan(1) = 1.557, and such blocks get the value 0
    # (on SmolLM2 11 of 30 blocks; under the project's rule the function would be invalid there)
    "readme": AllocationFunction(("abslog",), "var", ("atan", "asin"), 0.08, 1, "readme", "reference"),
}

# The DSA poster's final function [normalize, var, abs, no_op] in the reading of the public normalize_op's
# numpy branch (z-score over std + 1e-6, population std): each block's value is n/(n−1)·σ²/(σ + 1e-6)², a
# function of the block's score spread σ (larger σ -> more pruning). On SmolLM2's Wanda scores the 30 block
# values spread over ~1e-5 (σ 0.2 to 10), 10⁴ times the rounding bound, computed in float64 as every op here.
PRESETS["poster"] = AllocationFunction(("normalize_np",), "var", ("abs", "no_op"), 0.08, 1, "poster")

SEARCHED = FUNCTIONS / "dsa-evolved.json"  # the DSA study's best evolved function
if SEARCHED.is_file():  # SmolLM2-135M, 70%, Wanda scores; chosen on validation perplexity (README: the study)
    PRESETS["searched"] = AllocationFunction.from_json(SEARCHED.read_text(encoding="utf-8"))

# Named readings that give no allocation: refused with the reason.
DEGENERATE = {
    "poster_torch": "function='poster_torch' (the DSA poster's [normalize, var, abs, no_op] with the torch "
                    "normalize_op that the public prune path runs) is degenerate: it divides by the unbiased std "
                    "with no guard, so the z-scores' variance is 1 for every block and the block values differ "
                    "only by rounding. Use 'poster' (the public numpy branch: std + 1e-6, a function of each "
                    "block's score spread), 'readme', a searched function, or a JSON function.",
}


def load_function(spec: str | dict | AllocationFunction) -> AllocationFunction:
    """A preset name, a JSON file path, a JSON string, a dict, or a function.

    A relative path that is no file here, given as a bare file name or as ``data/functions/<name>`` (the
    old location), names a shipped function (``FUNCTIONS``): ``dsa-evolved.json`` loads from any folder.
    """
    if isinstance(spec, AllocationFunction):
        return spec
    if isinstance(spec, dict):
        return AllocationFunction.from_dict(spec)
    if not isinstance(spec, str):
        raise WorkbenchError(f"function={spec!r} must be a preset name, a JSON file, JSON text or a mapping")
    if spec in DEGENERATE:
        raise InvalidFunction(DEGENERATE[spec])
    if spec in PRESETS:
        return PRESETS[spec]
    if spec.lstrip().startswith("{"):
        return AllocationFunction.from_json(spec)
    path = Path(spec)
    if (not path.is_file() and not path.is_absolute() and path.parent in (Path("."), LEGACY_FUNCTIONS)
            and (FUNCTIONS / path.name).is_file()):
        path = FUNCTIONS / path.name  # a shipped function, from any working directory
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise WorkbenchError(f"function={spec!r}: cannot read the file ({err})") from None
        try:
            return AllocationFunction.from_json(text)
        except ValueError as err:
            raise WorkbenchError(f"function={spec!r}: {err}") from None
    raise WorkbenchError(f"function={spec!r} is neither a preset {list(PRESETS)}, a JSON file nor JSON")


def unit_scores(inputs: AllocationInput, granularity: str = "block") -> list[list[torch.Tensor]]:
    """Score matrices of every unit's linears (a block's, a sublayer's, or one linear's), in model order."""
    return [[inputs.scores(n) for n in names] for names in groups(inputs, granularity).values()]


PARAMS = (
    Param("function", "readme", "a preset name, a JSON file, or a function dict (pre, reduction, post, lam)",
          kind="any", validate=lambda spec: load_function(spec)),
    granularity_param(),
)


@register_allocator("dsa", needs_scores=True, params=PARAMS)
def dsa(inputs: AllocationInput, sparsity: float, function: str | dict | AllocationFunction = "readme",
        granularity: str = "block"):
    """Per-block (or per-sublayer, per-linear) sparsities from a DSA allocation function of the unit's Wanda
    scores: the function reads the concatenated score vector of each unit, as the public code a block's."""
    fn = load_function(function)
    grouped = groups(inputs, granularity)
    weights = unit_weights(inputs, grouped)

    def reduced() -> list[float]:  # shared by every function with these pre ops and reduction
        vectors = inputs.memoised(("dsa_vectors", granularity), lambda: UnitVectors(unit_scores(inputs, granularity)))
        return fn.reduced_values(vectors)[0]

    def values() -> list[float]:
        return fn.post_values(inputs.memoised(("dsa_reduced", fn.reduced_key(), granularity), reduced))

    try:
        known = list(inputs.memoised(("dsa_block_values", fn.stages_key(), granularity), values))
        ratios = fn.sparsities([], sparsity, weights, values=known)
    except InvalidFunction as err:  # say which allocator and function a front end's error line is about
        raise InvalidFunction(f"allocation='dsa': function {fn.key()} is not valid on these scores: {err}") from None
    return inputs.profile(spread_over(grouped, ratios), sparsity, "dsa", granularity, {"function": fn.to_dict()})
