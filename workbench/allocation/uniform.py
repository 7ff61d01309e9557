"""Uniform allocation: every prunable linear at the target sparsity S."""

from .base import AllocationInput, granularity_param, register_allocator


@register_allocator("uniform", params=(granularity_param(),))
def uniform(inputs: AllocationInput, sparsity: float, granularity: str = "block"):
    """Every layer at the target: s_l = S (the same at every granularity, which the profile records)."""
    return inputs.profile(dict.fromkeys(inputs.layers, float(sparsity)), sparsity, "uniform", granularity, {})
