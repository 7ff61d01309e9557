"""Allocators: pure functions (layer statistics, target sparsity, parameters) -> SparsityProfile.

Each allocator lives in its own file and registers itself with ``@register_allocator(name, params=...)``,
declaring its parameters (:class:`Param`: type, range, default, one-line meaning). Parameters are checked
against these declarations by :func:`check_params` (an unknown key names the allocator, the key, the
allowed keys and the closest match); front ends render their controls and help from them.
``allocate(name, layers, sparsity, **params)`` is the one entry point that front ends call.
"""

from __future__ import annotations

from .base import (
    ALLOCATORS,
    GRANULARITIES,
    LEARNERS,
    AllocationInput,
    Allocator,
    Learner,
    Param,
    allocate,
    allocation_entries,
    allocation_names,
    check_allocator,
    check_params,
    curve_allocators,
    declared_defaults,
    describe_allocators,
    granularities_of,
    groups,
    learns_while_pruning,
    register_allocator,
    register_learner,
)

__all__ = ["ALLOCATORS", "AllocationInput", "Allocator", "GRANULARITIES", "LEARNERS", "Learner", "Param",
           "allocate", "allocation_entries", "allocation_names", "check_allocator", "check_params",
           "curve_allocators", "declared_defaults", "describe_allocators", "granularities_of", "groups",
           "learns_while_pruning", "register_allocator", "register_learner"]

# Register the built-in allocators (each file adds itself to ALLOCATORS, in this order in every menu).
from . import uniform  # noqa: E402,F401,I001
from . import owl  # noqa: E402,F401
from .dsa import function as _dsa_function  # noqa: E402,F401
from . import besa, er, global_, alphapruning, dlp, atp, lsa, saved  # noqa: E402,F401
