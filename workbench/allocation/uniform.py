"""Uniform allocation: every prunable linear at the target sparsity S."""

from .base import AllocationInput, register_allocator


@register_allocator("uniform")
def uniform(inputs: AllocationInput, sparsity: float):
    """Every layer at the target: s_l = S."""
    return inputs.profile(dict.fromkeys(inputs.layers, float(sparsity)), sparsity, "uniform", "uniform", {})
