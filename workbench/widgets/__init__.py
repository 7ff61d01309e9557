"""ipywidgets front end: sparsity curves, prune-and-evaluate runner, DSA search monitor.

The widgets hold no pruning logic: they call :class:`workbench.session.Session`, which calls the
engine, and draw with the figure builders of :mod:`workbench.plots`.
"""

from .curves import SparsityCurves
from .monitor import SearchMonitor
from .runner import PruneRunner

__all__ = ["SparsityCurves", "PruneRunner", "SearchMonitor"]
