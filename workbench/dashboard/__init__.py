"""Panel dashboard: the sparsity curves, prune-and-evaluate runs and reproduction tables in a browser.

A page is a :class:`Dashboard` (a Panel ``Viewer`` with ``param`` state); what pages share is one
:class:`DashboardServices`. It reuses :mod:`workbench.plots` and :class:`workbench.session.Session` (the same
engine calls as the widgets) and never ipywidgets. ``python -m workbench dashboard`` serves it on 127.0.0.1.
"""

from .app import Dashboard, DashboardConfig, DashboardServices, create_app, serve

__all__ = ["Dashboard", "DashboardConfig", "DashboardServices", "create_app", "serve"]
