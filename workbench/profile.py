"""SparsityProfile: how sparse each prunable linear is (always sparsity = fraction of zeros, never density).

A profile maps every prunable linear (full dotted name) to a sparsity in [0, 1). Allocators that work
per row (BESA row-wise) add a per-row list for a layer. The profile records its granularity (the allocation
unit: block, sublayer or projection; ``units`` names each linear's unit), the allocator and its parameters,
the target and the parameter-weighted mean it reaches, and round-trips through JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import WorkbenchError
from .units import GRANULARITIES as UNIT_GRANULARITIES
from .units import LEGACY_GRANULARITIES, unit_of

# what a profile may record: uniform, an allocation unit (block / sublayer / projection), or BESA's rows
GRANULARITIES = ("uniform", *UNIT_GRANULARITIES, "row")


@dataclass
class SparsityProfile:
    """Per-layer sparsity of every prunable linear, with provenance."""

    layers: dict[str, float]
    numels: dict[str, int]
    target: float
    allocator: str
    granularity: str = "layer"
    params: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, list[float]] = field(default_factory=dict)
    blocks: dict[str, int] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)  # linear -> its allocation unit (``block 3 mlp``, ...)

    def __post_init__(self) -> None:
        self.granularity = LEGACY_GRANULARITIES.get(self.granularity, self.granularity)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Every ratio in [0, 1), target in [0, 1), a known granularity, rows consistent with layers."""
        check_sparsity(self.target, "target")
        if self.granularity not in GRANULARITIES:
            raise WorkbenchError(f"granularity={self.granularity!r} is not allowed; allowed: {list(GRANULARITIES)}")
        if set(self.layers) != set(self.numels):
            raise WorkbenchError("profile layers and numels name different layers")
        for name, value in self.layers.items():
            check_sparsity(value, f"sparsity of {name}")
        if self.units and set(self.units) != set(self.layers):
            raise WorkbenchError("profile units and layers name different layers")
        for name, values in self.rows.items():
            if name not in self.layers:
                raise WorkbenchError(f"row sparsities given for unknown layer {name!r}")
            for value in values:
                check_sparsity(value, f"row sparsity of {name}")

    def check_matches(self, names: list[str] | dict) -> None:
        """Raise unless the profile names exactly the given prunable linears."""
        names = set(names)
        missing, extra = sorted(names - set(self.layers)), sorted(set(self.layers) - names)
        if missing or extra:
            raise WorkbenchError(f"profile does not match the model's prunable linears: missing {missing[:3]} "
                                  f"({len(missing)} in all), unknown {extra[:3]} ({len(extra)} in all)")

    # ------------------------------------------------------------------ summaries
    def mean(self) -> float:
        """Parameter-weighted mean sparsity over all layers."""
        total = sum(self.numels.values())
        return sum(self.layers[n] * self.numels[n] for n in self.layers) / total if total else 0.0

    def block_means(self) -> dict[int, float]:
        """Parameter-weighted mean sparsity of each block (needs ``blocks``)."""
        sums: dict[int, list[float]] = {}
        for name, block in self.blocks.items():
            acc = sums.setdefault(block, [0.0, 0.0])
            acc[0] += self.layers[name] * self.numels[name]
            acc[1] += self.numels[name]
        return {b: s / n for b, (s, n) in sorted(sums.items())}

    def unit_names(self) -> dict[str, str]:
        """Each linear's allocation unit (recorded, else derived from the granularity and blocks)."""
        if self.units:
            return dict(self.units)
        unit = {"uniform": "block", "row": "projection"}.get(self.granularity, self.granularity)
        if not self.blocks:  # without the block structure only the linears themselves are known
            unit = "projection"
        return {n: unit_of(n, self.blocks.get(n, 0), unit) for n in self.layers}

    def unit_means(self) -> dict[str, float]:
        """Parameter-weighted mean sparsity of each allocation unit, in model order: one point per unit."""
        sums: dict[str, list[float]] = {}
        for name, unit in self.unit_names().items():
            acc = sums.setdefault(unit, [0.0, 0.0])
            acc[0] += self.layers[name] * self.numels[name]
            acc[1] += self.numels[name]
        return {u: s / n if n else 0.0 for u, (s, n) in sums.items()}

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "mean": self.mean(), "allocator": self.allocator,
                "granularity": self.granularity, "params": self.params, "layers": self.layers,
                "numels": self.numels, "blocks": self.blocks, "units": self.units, "rows": self.rows}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparsityProfile:
        return cls(layers={k: float(v) for k, v in data["layers"].items()},
                   numels={k: int(v) for k, v in data["numels"].items()}, target=float(data["target"]),
                   allocator=data["allocator"], granularity=data.get("granularity", "layer"),
                   params=data.get("params", {}), rows=data.get("rows", {}), blocks=data.get("blocks", {}),
                   units=data.get("units", {}))

    def save(self, path: str | Path) -> Path:
        from .results import write_json_atomic

        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SparsityProfile:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def check_sparsity(value: float, name: str = "sparsity") -> float:
    """Return ``value`` if it is a finite number in [0, 1), else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0.0 <= value < 1.0:
        raise WorkbenchError(f"{name}={value!r} must be a number in [0, 1)")
    return float(value)


def load_profile_source(path: str | Path) -> tuple[SparsityProfile, dict[str, Any]]:
    """:func:`read_profile_source` of a JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise WorkbenchError(f"profile={str(path)!r} could not be read as JSON ({err})") from err
    return read_profile_source(data, str(path))


def read_profile_source(data: Any, where: str = "record") -> tuple[SparsityProfile, dict[str, Any]]:
    """A profile and what is known of its run (model, metric, pattern), from a result record or a bare
    ``sparsity_profile.json``."""
    if isinstance(data, dict) and isinstance(data.get("profile"), dict):  # a result record
        method = data.get("method", {})
        known = {"metric": method.get("metric"), "pattern": method.get("pattern"),
                 "model": data.get("model", {}).get("id"), "quantization": method.get("quantization")}
        return SparsityProfile.from_dict(data["profile"]), known
    if isinstance(data, dict) and "layers" in data:
        return SparsityProfile.from_dict(data), {}
    raise WorkbenchError(f"profile={where!r} is neither a result record with a profile nor a sparsity profile "
                          "(with 'layers')")
