"""The level space of a sparsity search, as EvoPress (Sieberling et al., ICML 2025; IST-DASLab/EvoPress) searches
unstructured sparsity: a candidate gives every allocation unit (block, sublayer or linear) a sparsity *level*
on a fixed grid, ``sparsity = level * step``; an offspring moves sparsity between units of equal size by level
switches (one unit one level down, another one level up), so the parameter-weighted mean stays exactly the target.

What follows EvoPress (its paper and the public ``evo_*_search.py``):

* units are grouped by size (its ``group_rule="size"``) and a switch happens only within a group, chosen with
  probability proportional to its number of units;
* an offspring makes ``min(randint(1, 3), randint(1, 3))`` switches (biased towards one) and differs from its
  parent; the search starts from the uniform profile; one parent, kept while no offspring beats it (elitist);
* multi-stage selection: every offspring scored on few tokens, the best few on more, the parent competing at
  the last stage.

Where it deviates, and why:

* levels are absolute multiples of ``step`` in [0, 1) (the target must be one), not ±``num_levels`` database
  entries around the target: the workbench masks on the fly from one sort order per row, so no database on disk
  bounds the range;
* selection uses the search's two fidelities (cheap KL on ``cheap_windows`` for every offspring, the full fitness
  for the ``promote`` best) on *fixed* validation windows, not three stages on freshly sampled calibration
  minibatches: fixed windows make fitness deterministic, so resume and the Ray pool replay the serial history
  and a known parent's fitness is not paid twice;
* an offspring must differ from every candidate evaluated before (not only from its siblings and parent), so
  that the budget counts distinct candidates as the function space does;
* random search (EvoPress's paper compares against it but the public code has none): each unit's level drawn
  uniformly from the grid, then random single-level moves within its group until the group's sum is exact.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass

from .errors import WorkbenchError

SWITCHES = (1, 3)  # an offspring makes min(randint(1, 3), randint(1, 3)) level switches, as EvoPress


@dataclass(frozen=True)
class LevelVector:
    """One candidate of the level space: each unit's level (sparsity = level x step), in model order."""

    levels: tuple[int, ...]

    def key(self) -> str:
        return "L" + hashlib.sha256(json.dumps(list(self.levels)).encode()).hexdigest()[:15]

    def to_list(self) -> list[int]:
        return list(self.levels)

    @classmethod
    def from_list(cls, data) -> LevelVector:
        if not isinstance(data, list | tuple) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                         for v in data):
            raise ValueError(f"levels={data!r} must be a list of non-negative integers")
        return cls(tuple(data))


def check_step(step: float, target: float) -> int:
    """The target's level at ``step`` (``target / step``, an integer), else a clear error naming level_step."""
    if isinstance(step, bool) or not isinstance(step, int | float) or not math.isfinite(step) or not 0 < step <= 0.5:
        raise WorkbenchError(f"level_step={step!r} must be a number in (0, 0.5]")
    level = round(target / step)
    if abs(level * step - target) > 1e-9:
        raise WorkbenchError(f"level_step={step!r} cannot reach sparsity={target!r} ({target} / {step} = "
                             f"{target / step:.4g} levels, not an integer); allowed: a step that divides the "
                             f"target, e.g. {_divisors(target)}")
    return level


def _divisors(target: float) -> list[float]:
    return [s for s in (0.01, 0.02, 0.025, 0.05, 0.1) if abs(round(target / s) * s - target) <= 1e-9][:3]


class LevelSpace:
    """The level grid over a model's units: sizes, groups of equal size, and the operators of the search."""

    def __init__(self, units: list[str], sizes: list[int], target: float, step: float, granularity: str = "block"):
        self.units, self.sizes, self.target, self.step = list(units), list(sizes), float(target), float(step)
        self.base = check_step(step, target)
        self.top = math.ceil(round(1.0 / step, 9)) - 1  # the highest level below sparsity 1
        by_size: dict[int, list[int]] = {}
        for index, size in enumerate(self.sizes):
            by_size.setdefault(size, []).append(index)
        self.groups = [g for g in by_size.values() if len(g) > 1]  # units a switch may move sparsity between
        if not self.groups:
            raise WorkbenchError(f"granularity={granularity!r} gives no two units of equal size "
                                 f"({len(self.units)} unit(s)): the level space cannot move sparsity between them; "
                                 "allowed: a granularity with at least two units of one size (block, sublayer or "
                                 "projection on a model with two or more blocks)")
        self._weights = [len(g) for g in self.groups]

    # -- what a candidate means
    def uniform(self) -> LevelVector:
        return LevelVector((self.base,) * len(self.units))

    def ratios(self, candidate: LevelVector) -> list[float]:
        """Each unit's sparsity, in model order."""
        self.check(candidate)
        return [round(level * self.step, 12) for level in candidate.levels]

    def weighted_levels(self, candidate: LevelVector) -> int:
        """Σ size x level, an integer: equal to ``base x Σ size`` exactly when the mean is the target."""
        return sum(s * v for s, v in zip(self.sizes, candidate.levels, strict=True))

    def check(self, candidate: LevelVector) -> None:
        """A candidate has one level per unit, each on the grid, and reaches the target exactly."""
        if len(candidate.levels) != len(self.units):
            raise WorkbenchError(f"levels name {len(candidate.levels)} units; the model has {len(self.units)}")
        if any(v > self.top for v in candidate.levels):
            raise WorkbenchError(f"levels={list(candidate.levels)} go above {self.top} (sparsity < 1)")
        if self.weighted_levels(candidate) != self.base * sum(self.sizes):
            raise WorkbenchError("levels do not reach the target exactly (parameter-weighted mean)")

    # -- operators
    def switch(self, candidate: LevelVector, rng: random.Random) -> LevelVector:
        """An offspring: ``min(randint(1, 3), randint(1, 3))`` level switches, each within one group of
        equal-size units (one unit a level down, one a level up; the weighted mean is unchanged)."""
        levels = list(candidate.levels)
        for _ in range(min(rng.randint(*SWITCHES), rng.randint(*SWITCHES))):
            group = rng.choices(self.groups, weights=self._weights)[0]
            down = [i for i in group if levels[i] > 0]
            up = [i for i in group if levels[i] < self.top]
            if down and up:
                levels[rng.choice(down)] -= 1
                levels[rng.choice(up)] += 1
        return LevelVector(tuple(levels))

    def random(self, rng: random.Random) -> LevelVector:
        """A random candidate: each unit's level uniform on the grid, then random single-level moves within each
        group until its sum is the target's (every group, hence the whole model, exactly at the target)."""
        levels = [rng.randint(0, self.top) for _ in self.units]
        movable = {i for g in self.groups for i in g}
        levels = [v if i in movable else self.base for i, v in enumerate(levels)]  # a unit of unique size: target
        for group in self.groups:
            excess = sum(levels[i] for i in group) - self.base * len(group)
            while excess:
                step = -1 if excess > 0 else 1
                movable = [i for i in group if 0 <= levels[i] + step <= self.top]
                levels[rng.choice(movable)] += step
                excess += step
        return LevelVector(tuple(levels))
