"""Wanda (Sun et al. 2024): score |W_ij| · ||X_j||₂, compared within each output row, no weight update.

||X_j||₂ is the reference's ``scaler_row``: sqrt(Σ over calibration tokens of x_j² / n_windows)
(see ``LayerStats.act_norm``); the constant factor does not change a row's ranking.
"""

import torch

DEFAULT_GROUP = "row"


def wanda_scores(weight: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """(out, in) scores |W| · ||X_j|| in float32."""
    return weight.detach().abs().float() * act_norm.to(weight.device, torch.float32)[None, :]
