"""A saved profile applied as recorded: the level-space search's result (levels are data, not a rule that could
be recomputed from scores), a search's best function as it allocated, or any profile a run saved.

It applies only where it was made: the same prunable linears, the same numbers of weights, the same target. A
profile does not transfer to another sparsity (a level profile needs a new search there; a DSA function
transfers: ``allocation='dsa'`` with ``function=...``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import WorkbenchError
from ..profile import SparsityProfile, load_profile_source
from .base import AllocationInput, Param, register_allocator

TOLERANCE = 1e-9


def read_saved(path) -> SparsityProfile:
    """The profile in ``path``: a search's best_profile.json, a ``--save`` sparsity_profile.json or a run record."""
    if not isinstance(path, str | Path) or not str(path):
        raise WorkbenchError(f"path={path!r} must name a saved profile (a search's best_profile.json, a "
                             "sparsity_profile.json written by --save, or a run record)")
    if not Path(path).is_file():
        raise WorkbenchError(f"path={str(path)!r} is not a file; allowed: a search's best_profile.json, a "
                             "sparsity_profile.json written by --save, or a run record")
    profile, _known = load_profile_source(path)
    if profile.rows:
        raise WorkbenchError(f"path={str(path)!r} holds per-row sparsities (BESA); a saved profile is applied per "
                             "linear only")
    return profile


@register_allocator("profile", from_file=True, params=(
    Param("path", None, "a saved profile: a search's best_profile.json, a sparsity_profile.json written by --save, "
          "or a run record", kind="any", optional=True, validate=read_saved),))
def saved(inputs: AllocationInput, sparsity: float, path: str | None = None):
    """A saved profile, every linear at its recorded sparsity (for the target it was made for)."""
    if path is None:
        raise WorkbenchError("allocation='profile' needs path=... (a search's best_profile.json, a "
                             "sparsity_profile.json written by --save, or a run record)")
    recorded = read_saved(path)
    if abs(recorded.target - sparsity) > TOLERANCE:
        raise WorkbenchError(f"path={str(path)!r} was made for sparsity {recorded.target:g}; it does not transfer "
                             f"to sparsity={sparsity:g} (allowed: sparsity={recorded.target:g}; a level profile "
                             "needs a new search at that target, a DSA function transfers with allocation='dsa')")
    recorded.check_matches(inputs.layers)
    numels = inputs.numels()
    wrong = [n for n in numels if recorded.numels[n] != numels[n]]
    if wrong:
        raise WorkbenchError(f"path={str(path)!r} was made for another model: {wrong[0]} has "
                             f"{recorded.numels[wrong[0]]} weights there, {numels[wrong[0]]} here")
    params = {"path": str(path), "source": recorded.allocator, "source_params": recorded.params}
    return inputs.profile(dict(recorded.layers), sparsity, "profile", recorded.granularity, params)
