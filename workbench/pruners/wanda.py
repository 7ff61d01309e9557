"""Wanda (Sun et al. 2024): score |W_ij| · ||X_j||₂, compared within each output row, no weight update.

||X_j||₂ is the reference's ``scaler_row``: sqrt(Σ over calibration tokens of x_j² / n_windows)
(see ``LayerStats.act_norm``); the constant factor does not change a row's ranking.
"""

from ..backend.reference import wanda_scores  # noqa: F401  (the formula above, the kernels' CPU twin)

DEFAULT_GROUP = "row"
