"""Magnitude pruning: the score of a weight is |W_ij|; the comparison group is the whole matrix."""

import torch

DEFAULT_GROUP = "matrix"


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|W| in float32."""
    return weight.detach().abs().float()
