"""Which allocator parameters a run may give as ``"auto"`` and the range each is tuned over (the tuning itself,
which runs the model, is :mod:`workbench.tuning`). Pure data and checks: the run specification reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import WorkbenchError
from .atp import beta_limit

OWL_M = (3.0, 5.0, 7.0)  # the M values of OWL's ablation around its defaults (λ coarse: 3 values then)


@dataclass(frozen=True)
class Axis:
    """The continuous strength parameter of an allocator and the range its tuning covers."""

    name: str
    low: float
    high: float | None


# The continuous strength of each tunable allocator and its range (OWL λ and DLP α: a spread of up to 0.25
# each side of the target; ε up to 0.9, lowered to its legal end; ATP: every legal β >= 0, high None).
AXES = {"owl": Axis("lam", 0.0, 0.25), "dlp": Axis("alpha", 0.0, 0.25),
        "alphapruning": Axis("epsilon", 0.02, 0.9), "atp": Axis("beta", 0.0, None)}
TUNABLE = {name: (axis.name, "M") if name == "owl" else (axis.name,) for name, axis in AXES.items()}


def strength_axis(allocation: str, sparsity: float, blocks: int) -> Axis:
    """The range ``allocation``'s strength is tuned over at ``sparsity`` with ``blocks`` blocks."""
    if allocation not in AXES:
        raise WorkbenchError(f"allocation={allocation!r} has no tunable strength; allowed: {sorted(AXES)}")
    axis = AXES[allocation]
    return axis if axis.high is not None else Axis(axis.name, axis.low, beta_limit(sparsity, blocks))


def check_auto(allocation: str, params: dict[str, Any]) -> list[str]:
    """The keys of ``params`` given as ``"auto"``, checked to be tunable (before any work is done)."""
    auto = sorted(k for k, v in params.items() if isinstance(v, str) and v == "auto")
    allowed = TUNABLE.get(allocation, ())
    bad = [k for k in auto if k not in allowed]
    if bad:
        raise WorkbenchError(f"allocation={allocation!r}: {bad[0]}='auto' cannot be tuned; tunable: {list(allowed)}")
    if "M" in auto and "lam" not in auto:
        raise WorkbenchError("allocation='owl': M='auto' is tuned together with lam='auto'; give both as 'auto'")
    return auto
