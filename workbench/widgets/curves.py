"""SparsityCurves: uniform / OWL / DSA (and any other registered allocator) layer-wise sparsity along the
blocks, one point per allocation unit (``plots.sparsity_curves``, the dashboard's builder), redrawn in place."""

from __future__ import annotations

import json

import ipywidgets as w
import plotly.graph_objects as go

from .. import plots
from ..allocation import curve_allocators, declared_defaults, granularities_of
from ..allocation.dsa.function import PRESETS, load_function
from ..errors import WorkbenchError
from ..inputs import parse_number
from ..profile import SparsityProfile
from ..session import CURVE_ALLOCATORS, Session
from ..units import GRANULARITIES

TARGET_RANGE = (0.05, 0.95)


class SparsityCurves:
    """Sliders for target, λ, M and a DSA function; the figure re-allocates from cached statistics.

    The target can also be typed (``target_text``); a custom DSA function is JSON or a file path. Input
    that is not allowed shows a message and changes nothing: the figure, and what a run uses
    (:meth:`params`), stay those of the last valid input."""

    def __init__(self, session: Session, sparsity: float = 0.7, lam: float = 0.08, M: float = 5.0,
                 function: str = "readme"):
        self.session = session
        style = {"description_width": "110px"}
        low, high = TARGET_RANGE
        self.sparsity = w.FloatSlider(value=sparsity, min=low, max=high, step=0.01, description="target sparsity",
                                      continuous_update=False, readout=False, style=style)
        self.target_text = w.Text(value=f"{sparsity:g}", continuous_update=False, layout={"width": "70px"})
        self.lam = w.FloatSlider(value=lam, min=0.0, max=0.3, step=0.005, description="λ (OWL, DSA)",
                                 readout_format=".3f", continuous_update=False, style=style)
        self.M = w.FloatSlider(value=M, min=0.5, max=20.0, step=0.5, description="M (OWL)",
                               continuous_update=False, style=style)
        self.function = w.Dropdown(options=list(PRESETS), value=function, description="DSA function", style=style)
        self.granularity = w.Dropdown(options=list(GRANULARITIES), value="block", description="granularity",
                                      style=style)  # the allocation unit of every curve; one that has none: a note
        self.custom = w.Text(value="", placeholder='optional: JSON, e.g. {"pre":["abslog"],"reduction":"var",'
                             '"post":["abs"]}, or a function file', description="custom DSA", continuous_update=False,
                             style=style, layout={"width": "640px"})
        others = [name for name in curve_allocators() if name not in CURVE_ALLOCATORS]
        self.others = w.SelectMultiple(options=others, value=(), rows=min(len(others), 4), description="also plot",
                                       style=style)  # at their declared defaults (see ``params``)
        self.message = w.HTML()
        self.error = w.HTML()  # the last refused input, in the page
        self.extra: dict[str, SparsityProfile] = {}
        self.profiles: dict[str, SparsityProfile] = {}
        self._custom_function: dict | None = None  # the last valid custom function, as typed
        self.figure = go.FigureWidget()
        for control in (self.lam, self.M, self.function, self.others, self.granularity):
            control.observe(lambda _change: self.refresh(), names="value")
        self.sparsity.observe(self._slider_moved, names="value")
        self.target_text.observe(self._target_typed, names="value")
        self.custom.observe(self._custom_typed, names="value")
        self.widget = w.VBox([w.HBox([self.sparsity, self.target_text, self.lam, self.M]),
                              w.HBox([self.function, self.custom]), w.HBox([self.others, self.granularity]),
                              self.error, self.figure,
                              self.message])
        self.refresh()

    # ------------------------------------------------------------------ input
    def _refuse(self, text: str) -> None:
        self.error.value = f'<span class="wb-error" style="color:#b00020">⚠ {text}; nothing changed</span>'

    def _slider_moved(self, change) -> None:
        self.target_text.value = f"{change['new']:g}"
        self.refresh()

    def _target_typed(self, change) -> None:
        if change["new"] == f"{self.sparsity.value:g}":
            return
        try:
            value = parse_number(change["new"], "target sparsity", *TARGET_RANGE, high_open=False)
        except WorkbenchError as err:
            self._refuse(str(err))
            self.target_text.value = f"{self.sparsity.value:g}"  # back to what is plotted
            return
        self.sparsity.value = value  # redraws through the slider

    def _custom_typed(self, change) -> None:
        text = change["new"].strip()
        try:
            if not text:
                function = None
            elif text.startswith("{"):
                spec = json.loads(text)
                if not isinstance(spec, dict):
                    raise WorkbenchError("custom DSA function must be a JSON object")
                self._load_custom(spec)  # validated here; drawn by function_spec
                function = spec
            else:
                function = load_function(text).to_dict()  # a file (or a preset name): its own λ
        except json.JSONDecodeError as err:
            self._refuse(f"custom DSA function is not valid JSON: {err.msg}")
            return
        except WorkbenchError as err:
            self._refuse(f"custom DSA function: {err}")
            return
        self._custom_function = function
        self.refresh()

    # ------------------------------------------------------------------ state
    def _load_custom(self, spec: dict) -> dict:
        """A custom function as data; λ follows the slider unless the function gives its own."""
        return load_function({"lam": self.lam.value, **spec}).to_dict()

    def function_spec(self) -> dict:
        """The DSA function the curve shows: the custom one, else the preset at the λ slider."""
        if self._custom_function is not None:
            return self._load_custom(self._custom_function)
        return {**PRESETS[self.function.value].to_dict(), "lam": self.lam.value}

    def params(self, allocation: str) -> dict:
        """The allocator parameters the plotted curve of ``allocation`` was drawn with (what a run must use)."""
        unit = {"granularity": self.granularity.value} if self.granularity.value in granularities_of(allocation) else {}
        if allocation == "owl":
            return {"lam": self.lam.value, "M": self.M.value, **unit}
        if allocation == "dsa":
            return {"function": self.function_spec(), **unit}
        return {**declared_defaults(allocation), **unit} if allocation in curve_allocators() else {}  # as shown

    def refresh(self) -> None:
        """Re-allocate at the controls' values and redraw the figure in place."""
        self.error.value = ""
        shown = (*CURVE_ALLOCATORS, *self.others.value)
        profiles, errors = self.session.curves(self.sparsity.value, allocators=shown,
                                               params={name: self.params(name) for name in shown})
        profiles.update(self.extra)
        self.profiles = profiles
        notes = [f"{name}: {msg}" for name, msg in errors.items()]
        notes += [f"{name}: drawn per {profiles[name].granularity}; it has no {self.granularity.value} unit"
                  for name in shown if name in profiles and self.granularity.value not in granularities_of(name)]
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
