"""The allocators' shared vocabulary: what they are given (:class:`AllocationInput`), how they group layers
(:func:`groups`), how they declare parameters (:class:`Param`), the registry and the one entry point
:func:`allocate`. Pure: imports the profile and the plain unit data, nothing that loads or reads.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import WorkbenchError
from ..profile import SparsityProfile, check_sparsity
from ..registry import Plugin, Registry
from ..units import GRANULARITIES, LEGACY_GRANULARITIES, LayerInfo


@dataclass
class AllocationInput:
    """The layers to allocate over (in model order) and, for score-based allocators, their scores."""

    layers: dict[str, LayerInfo]
    scores: Callable[[str], torch.Tensor] | None = None  # (out, in) importance scores of a layer
    weights: Callable[[str], torch.Tensor] | None = None  # (out, in) dense weights (data-free allocators)
    hessians: Callable[[str], torch.Tensor] | None = None  # (in, in) float32 H = 2/N Σ x xᵀ of the dense inputs
    # statistics allocators derive from the scores (OWL's LOD per M, a DSA function's block values), kept so
    # that re-allocating at another target or λ costs no pass over the scores; the scores must not change
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def memoised(self, key: tuple, compute: Callable[[], object]) -> object:
        """``compute()`` once per ``key``; an exception it raises is remembered and raised again."""
        if key not in self.memo:
            try:
                self.memo[key] = (True, compute())
            except ValueError as err:
                self.memo[key] = (False, err)
        ok, value = self.memo[key]
        if not ok:
            raise value
        return value

    def numels(self) -> dict[str, int]:
        return {n: info.numel for n, info in self.layers.items()}

    def blocks(self) -> dict[str, int]:
        return {n: info.block for n, info in self.layers.items()}

    def profile(self, layers: dict[str, float], target: float, allocator: str, granularity: str,
                params: dict) -> SparsityProfile:
        units = {n: info.unit(granularity) for n, info in self.layers.items()} \
            if granularity in GRANULARITIES else {}
        return SparsityProfile(layers=layers, numels=self.numels(), target=target, allocator=allocator,
                               granularity=granularity, params=params, blocks=self.blocks(), units=units)


def groups(inputs: AllocationInput, granularity: str) -> dict[str, list[str]]:
    """Layer names by allocation unit, in model order: per block (``block``), per block child such as the
    attention and the MLP (``sublayer``), or one per linear (``projection``)."""
    if granularity not in GRANULARITIES:
        raise WorkbenchError(f"granularity={granularity!r} is not allowed; allowed: {list(GRANULARITIES)}")
    out: dict[str, list[str]] = {}
    for name, info in inputs.layers.items():
        out.setdefault(info.unit(granularity), []).append(name)
    return out


def spread_over(grouped: dict[str, list[str]], ratios: list[float]) -> dict[str, float]:
    """Each unit's ratio given to every linear of the unit."""
    return {n: r for names, r in zip(grouped.values(), ratios, strict=True) for n in names}


def unit_weights(inputs: AllocationInput, grouped: dict[str, list[str]]) -> list[int]:
    """Parameters of each unit: the weights of the parameter-weighted mean (exact target at any granularity)."""
    return [sum(inputs.layers[n].numel for n in names) for names in grouped.values()]


@dataclass(frozen=True)
class Param:
    """One declared allocator parameter. ``low``/``high`` bound numbers (``open`` excludes the bounds),
    ``special`` lists strings accepted besides numbers (``"auto"``), ``by_metric`` overrides the default
    for a pruning metric, ``internal`` ones are passed by the workbench itself and never shown."""

    name: str
    default: Any
    help: str
    kind: str = "float"
    low: float | None = None
    high: float | None = None
    open: bool = False
    choices: tuple = ()
    special: tuple[str, ...] = ()
    optional: bool = False  # None is accepted (meaning: the allocator's own default)
    by_metric: tuple[tuple[str, Any], ...] = ()
    internal: bool = False
    validate: Callable[[Any], Any] | None = None  # kind "any": raises ValueError for a value it cannot use
    why: str = ""  # kind "choice": why the values not offered have no meaning here (said when one is refused)
    aliases: tuple[tuple[str, str], ...] = ()  # older names accepted for a choice, e.g. ("layer", "projection")

    def describe(self) -> str:
        """The allowed values in words, for help texts and errors."""
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        if self.kind == "bool":
            return "true or false"
        if self.kind in ("float", "int"):
            lo, hi = ("(", ")") if self.open else ("[", "]")
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            words = f"{'an integer' if self.kind == 'int' else 'a number'} in {lo}{low}, {high}{hi}"
            return words + "".join(f" or {v!r}" for v in self.special)
        return "any value the allocator documents"

    def check(self, allocator: str, value: Any) -> Any:
        """``value`` if allowed (ints accepted for floats), else a ValueError naming allocator and key."""
        if self.kind == "any" and self.validate is not None and not (value is None and self.optional):
            try:
                self.validate(value)
            except ValueError as err:
                raise type(err)(f"allocation={allocator!r}: {err}") from None
            return value
        if value is None and self.optional or self.kind == "any" or value in self.special:
            return value
        bad = WorkbenchError(f"allocation={allocator!r}: {self.name}={value!r} is not allowed; "
                         f"allowed: {self.describe()}")
        if self.kind == "choice":
            value = dict(self.aliases).get(value, value) if isinstance(value, str) else value
            if value not in self.choices:
                if self.why:
                    raise WorkbenchError(f"{bad} ({self.why})")
                raise bad
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        number = int | float if self.kind == "float" else int
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            raise bad
        below = self.low is not None and (value <= self.low if self.open else value < self.low)
        above = self.high is not None and (value >= self.high if self.open else value > self.high)
        if below or above:
            raise bad
        return float(value) if self.kind == "float" else value

    def default_for(self, metric: str | None) -> Any:
        return dict(self.by_metric).get(metric, self.default)


def granularity_param(supported: tuple[str, ...] = GRANULARITIES, default: str = "block",
                      why: str = "") -> Param:
    """The allocation unit of an allocator: the granularities where its score has a meaning (``why`` says why
    the others have none); older settings' ``layer`` means ``projection``."""
    help_text = {"block": "one ratio per block", "sublayer": "per block child (attention, MLP)",
                 "projection": "per linear"}
    return Param("granularity", default, "allocation unit: " + "; ".join(help_text[g] for g in supported),
                 kind="choice", choices=tuple(supported), why=why, aliases=tuple(LEGACY_GRANULARITIES.items()))


@dataclass(frozen=True)
class Allocator(Plugin):
    """A pure function (layer statistics, target, parameters) -> SparsityProfile, known before any pruning."""

    fn: Callable[..., SparsityProfile] | None = None
    needs_scores: bool = False
    params: tuple[Param, ...] = ()
    needs_weights: bool = False  # reads the dense weights themselves (AlphaPruning's spectra)
    needs_hessians: bool = False  # reads each linear's dense input Hessian (LSA's reconstruction error)
    from_file: bool = False  # applies a saved allocation (no curve to draw from dense statistics)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def public_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not p.internal)


@dataclass(frozen=True)
class Learner(Allocator):
    """Learns the allocation while pruning (BESA): ``fn(inputs, target, **params)`` returns an object whose
    ``step(BlockData)`` prunes each block inside the sequential capture loop and whose ``profile()`` is the plan
    it produced; ``statistics`` and ``needs_dense`` say what the loop must carry."""


ALLOCATORS: Registry[Allocator] = Registry("allocator", "allocation")
LEARNERS: Registry[Learner] = Registry("learner", "allocation")


def _summary(fn) -> str:
    return (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""


# pragma: no mutate block -- runs at import, before mutmut can switch a mutant on (the registry tests cover it)
def register_allocator(name: str, needs_scores: bool = False, params: tuple[Param, ...] = (),
                       needs_weights: bool = False, needs_hessians: bool = False, from_file: bool = False):
    """Decorator: make ``fn(inputs, sparsity, **params) -> SparsityProfile`` available as ``name``.
    ``params`` declares every keyword ``fn`` takes; the first docstring line becomes the summary."""

    def wrap(fn):
        ALLOCATORS.add(name, Allocator(name, _summary(fn), fn, needs_scores, tuple(params), needs_weights,
                                       needs_hessians, from_file))
        return fn

    return wrap


def register_learner(name: str, params: tuple[Param, ...] = ()):
    """Decorator: make ``fn(inputs, sparsity, **params) -> learner`` available as allocation ``name``."""

    def wrap(fn):
        LEARNERS.add(name, Learner(name, _summary(fn), fn, False, tuple(params)))
        return fn

    return wrap


def allocation_names() -> list[str]:
    """Every allocation a run may name: the allocators, then the learners (the order of every menu)."""
    return ALLOCATORS.names() + LEARNERS.names()


def allocation_entries() -> dict[str, Allocator]:
    """Every allocator and learner by name, in menu order (for help texts and generated models)."""
    return {**ALLOCATORS, **LEARNERS}


def check_allocator(name: str) -> Allocator:
    """The allocator or learner ``name``, or a refusal naming the allowed ones and the closest."""
    if isinstance(name, str) and name in LEARNERS:
        return LEARNERS[name]
    if isinstance(name, str) and name in ALLOCATORS:
        return ALLOCATORS[name]
    names = allocation_names()
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise WorkbenchError(f"allocation={name!r} is not allowed; allowed: {sorted(names)}{hint}")


def granularities_of(name: str) -> tuple[str, ...]:
    """The allocation units allocator ``name`` defines (its declared ``granularity`` choices; none: ())."""
    param = check_allocator(name).param("granularity")
    return tuple(param.choices) if param is not None else ()


def learns_while_pruning(name: str) -> bool:
    """True for learners (BESA): no curve before a run, sequential only."""
    return isinstance(check_allocator(name), Learner)


def describe_allocators() -> str:
    """Every allocator with its summary and public parameters (default, allowed values, meaning), for help."""
    lines = []
    for name, allocator in allocation_entries().items():
        lines.append(f"  {name:<15} {allocator.summary}")
        for p in allocator.public_params():
            extra = "".join(f", {metric}: {value!r}" for metric, value in p.by_metric)
            lines.append(f"  {'':<17}{p.name}={p.default!r}{extra}  {p.help} ({p.describe()})")
    return "\n".join(lines)


def declared_defaults(name: str) -> dict[str, Any]:
    """The public parameters' defaults (metric-independent), as a curve drawn "at defaults" uses them: a run
    given these is the run the curve shows."""
    return {p.name: p.default for p in check_allocator(name).public_params() if p.default is not None}


def curve_allocators() -> list[str]:
    """Allocators whose curve can be drawn from dense statistics alone (not those that learn while pruning, nor
    ``profile``, which applies a saved file: a widget shows such a profile with ``add_profile``)."""
    return [name for name, allocator in ALLOCATORS.items() if not allocator.from_file]


def check_params(name: str, params: dict[str, Any], metric: str | None = None) -> dict[str, Any]:
    """``params`` checked against allocator ``name``'s declarations, with the defaults of the keys not
    given filled in (``metric`` picks metric-dependent defaults). Raises a ValueError for an unknown key
    (naming the allowed keys and the closest match) or a value out of its declared range."""
    allocator = check_allocator(name)
    if not isinstance(params, dict):
        raise WorkbenchError(f"alloc_params={params!r} must be a mapping of parameter names to values")
    known = [p.name for p in allocator.params]
    out: dict[str, Any] = {}
    for key, value in params.items():
        spec = allocator.param(key)
        if spec is None:
            public = [p.name for p in allocator.public_params()]
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise WorkbenchError(f"allocation={name!r} has no parameter {key!r}; allowed: "
                                  f"{public or 'none'}{hint}")
        out[key] = spec.check(name, value)
    for spec in allocator.params:
        if spec.name not in out:
            out[spec.name] = spec.default_for(metric)
    return out


def allocate(name: str, inputs: AllocationInput, sparsity: float, **params) -> SparsityProfile:
    """Run allocator ``name`` for target ``sparsity``; the profile's weighted mean is the target."""
    allocator = check_allocator(name)
    if isinstance(allocator, Learner):
        raise WorkbenchError(f"allocation={name!r} learns block by block on calibration data while pruning: "
                              f"use prune(model, tokenizer, allocation={name!r}, ...)")
    check_sparsity(sparsity, "sparsity")
    params = check_params(name, params)
    auto = [k for k, v in params.items() if isinstance(v, str) and v == "auto"]
    if auto:
        raise WorkbenchError(f"allocation={name!r}: {auto[0]}='auto' is chosen by a run (prune / the CLI / a grid), "
                              "which tunes it on the validation split (workbench/tuning.py); here give a number")
    if allocator.needs_scores and inputs.scores is None:
        raise WorkbenchError(f"allocation={name!r} needs layer scores (calibration statistics)")
    if allocator.needs_weights and inputs.weights is None:
        raise WorkbenchError(f"allocation={name!r} needs the layers' dense weights")
    if allocator.needs_hessians and inputs.hessians is None:
        raise WorkbenchError(f"allocation={name!r} needs each layer's input Hessian (calibration statistics with "
                             "'xtx' of the dense model)")
    return allocator.fn(inputs, sparsity, **params)
