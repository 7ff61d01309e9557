"""Allocators: pure functions (layer statistics, target sparsity, parameters) -> SparsityProfile.

Each allocator lives in its own file and registers itself with ``@register_allocator(name)``.
``allocate(name, layers, sparsity, **params)`` is the one entry point that front ends call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..profile import SparsityProfile, check_sparsity


@dataclass(frozen=True)
class LayerInfo:
    """What an allocator may know about one prunable linear without its weights."""

    name: str
    block: int
    out_features: int
    in_features: int

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features


@dataclass
class AllocationInput:
    """The layers to allocate over (in model order) and, for score-based allocators, their scores."""

    layers: dict[str, LayerInfo]
    scores: Callable[[str], torch.Tensor] | None = None  # (out, in) importance scores of a layer
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
        return SparsityProfile(layers=layers, numels=self.numels(), target=target, allocator=allocator,
                               granularity=granularity, params=params, blocks=self.blocks())


@dataclass(frozen=True)
class Allocator:
    name: str
    fn: Callable[..., SparsityProfile]
    needs_scores: bool
    in_loop: bool = False  # learns inside the sequential capture loop (BESA): fn returns a per-block learner


ALLOCATORS: dict[str, Allocator] = {}


def register_allocator(name: str, needs_scores: bool = False, in_loop: bool = False):
    """Decorator: make ``fn(inputs, sparsity, **params) -> SparsityProfile`` available as ``name``
    (``in_loop``: ``fn`` returns a learner whose ``step`` runs per block inside ``prune``'s sequential loop)."""

    def wrap(fn):
        ALLOCATORS[name] = Allocator(name, fn, needs_scores, in_loop)
        return fn

    return wrap


def check_allocator(name: str) -> Allocator:
    if name not in ALLOCATORS:
        raise ValueError(f"allocation={name!r} is not allowed; allowed: {sorted(ALLOCATORS)}")
    return ALLOCATORS[name]


def allocate(name: str, inputs: AllocationInput, sparsity: float, **params) -> SparsityProfile:
    """Run allocator ``name`` for target ``sparsity``; the profile's weighted mean is the target."""
    allocator = check_allocator(name)
    if allocator.in_loop:
        raise ValueError(f"allocation={name!r} learns block by block on calibration data while pruning: "
                         f"use prune(model, tokenizer, allocation={name!r}, ...)")
    check_sparsity(sparsity, "sparsity")
    if allocator.needs_scores and inputs.scores is None:
        raise ValueError(f"allocation={name!r} needs layer scores (calibration statistics)")
    return allocator.fn(inputs, sparsity, **params)


def layer_infos(model: nn.Module) -> dict[str, LayerInfo]:
    """LayerInfo of every prunable linear of ``model``, in model order."""
    from ..models import block_prefix, find_linears, get_blocks

    prefix = block_prefix(model)
    out = {}
    for i, block in enumerate(get_blocks(model)):
        for name, lin in find_linears(block).items():
            full = f"{prefix}.{i}.{name}"
            out[full] = LayerInfo(full, i, lin.out_features, lin.in_features)
    return out


# Register the built-in allocators (each file adds itself to ALLOCATORS).
from . import besa, er, global_, owl, uniform  # noqa: E402,F401
from .dsa import function as _dsa_function  # noqa: E402,F401
