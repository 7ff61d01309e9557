"""SparsityCurves: uniform / OWL / DSA layer-wise sparsity over block index, redrawn in place."""

from __future__ import annotations

import json

import ipywidgets as w
import plotly.graph_objects as go

from .. import plots
from ..allocation.dsa.function import PRESETS
from ..profile import SparsityProfile
from ..session import Session


class SparsityCurves:
    """Sliders for target, λ, M and a DSA function; the figure re-allocates from cached statistics."""

    def __init__(self, session: Session, sparsity: float = 0.7, lam: float = 0.08, M: float = 5.0,
                 function: str = "readme"):
        self.session = session
        style = {"description_width": "110px"}
        self.sparsity = w.FloatSlider(value=sparsity, min=0.05, max=0.95, step=0.01, description="target sparsity",
                                      continuous_update=False, style=style)
        self.lam = w.FloatSlider(value=lam, min=0.0, max=0.3, step=0.005, description="λ (OWL, DSA)",
                                 readout_format=".3f", continuous_update=False, style=style)
        self.M = w.FloatSlider(value=M, min=0.5, max=20.0, step=0.5, description="M (OWL)",
                               continuous_update=False, style=style)
        self.function = w.Dropdown(options=list(PRESETS), value=function, description="DSA function", style=style)
        self.custom = w.Text(value="", placeholder='optional JSON, e.g. {"pre":["normalize"],"reduction":"var",'
                             '"post":["abs"]}', description="custom DSA", continuous_update=False, style=style,
                             layout={"width": "640px"})
        self.message = w.HTML()
        self.extra: dict[str, SparsityProfile] = {}
        self.profiles: dict[str, SparsityProfile] = {}
        self.figure = go.FigureWidget()
        for control in (self.sparsity, self.lam, self.M, self.function, self.custom):
            control.observe(lambda _change: self.refresh(), names="value")
        self.widget = w.VBox([w.HBox([self.sparsity, self.lam, self.M]), w.HBox([self.function, self.custom]),
                              self.figure, self.message])
        self.refresh()

    def _dsa_function(self):
        text = self.custom.value.strip()
        if not text:
            return self.function.value
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"custom DSA function is not valid JSON: {err.msg}") from None
        spec.setdefault("lam", self.lam.value)
        return spec

    def _function_spec(self) -> tuple[dict, list[str]]:
        """The DSA function the curve shows (a preset follows the λ slider), and any note on the custom text."""
        try:
            function = self._dsa_function()
        except ValueError as err:
            function, notes = self.function.value, [str(err)]
        else:
            notes = []
        if isinstance(function, str):  # presets carry their own λ; follow the slider
            function = {**PRESETS[function].to_dict(), "lam": self.lam.value}
        return function, notes

    def params(self, allocation: str) -> dict:
        """The allocator parameters the plotted curve of ``allocation`` was drawn with (what a run must use)."""
        if allocation == "owl":
            return {"lam": self.lam.value, "M": self.M.value}
        if allocation == "dsa":
            return {"function": self._function_spec()[0]}
        return {}

    def refresh(self) -> None:
        """Re-allocate at the controls' values and redraw the figure in place."""
        function, notes = self._function_spec()
        profiles, errors = self.session.curves(self.sparsity.value, lam=self.lam.value, M=self.M.value,
                                               function=function)
        profiles.update(self.extra)
        self.profiles = profiles
        notes += [f"{name}: {msg}" for name, msg in errors.items()]
        if profiles:
            plots.sync_figure(self.figure, plots.sparsity_curves(profiles))
        means = ", ".join(f"{k} {p.mean():.4f}" for k, p in profiles.items())
        self.message.value = f"<b>weighted mean</b>: {means}" + "".join(f"<br>⚠ {n}" for n in notes)

    def add_profile(self, label: str, profile: SparsityProfile) -> None:
        """Show another profile (e.g. BESA's learned allocation) beside the computed curves."""
        self.extra[label] = profile
        self.refresh()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
