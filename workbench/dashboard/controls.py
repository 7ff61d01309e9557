"""Each allocator's controls on the dashboard, generated from its declared parameters.

:func:`controls_class` turns an allocator's :class:`~workbench.allocation.Param` declarations into a
``param.Parameterized`` class (a number with its range, a choice, a flag; a number that also accepts a word such
as ``'auto'`` gets a box for the word), so a page shows them with ``pn.Param`` and a new allocator gets its controls
by registering. DSA is the one exception: its parameter is a function, chosen from the presets with its λ.
"""

from __future__ import annotations

import math
from typing import Any

import panel as pn
import param

from workbench.allocation import Param, check_allocator
from workbench.allocation.dsa.function import PRESETS
from workbench.allocation.mapping import LAMBDA_MAX


class AllocatorControls(param.Parameterized):
    """One page's values of one allocator's declared parameters (a subclass per allocator, generated from its
    :class:`~workbench.allocation.Param` declarations by :func:`controls_class`)."""

    allocator = ""  # the allocator's name (a class attribute, not a parameter)

    def declared(self) -> tuple[Param, ...]:
        return check_allocator(self.allocator).public_params()

    def values(self) -> dict[str, Any]:
        """The parameters as a run and a curve take them: a special word ('auto') where its box is ticked; an
        unset optional one left out (the allocator's own default)."""
        out = {}
        for p in self.declared():
            value = next((word for word in p.special if getattr(self, _special_name(p, word))),
                         getattr(self, p.name))
            if value is not None and value != "":
                out[p.name] = value
        return out

    def follow_metric(self, metric: str) -> None:
        """Parameters whose default depends on the pruning metric (``Param.by_metric``) take the metric's."""
        for p in self.declared():
            if p.by_metric:
                setattr(self, p.name, p.default_for(metric))

    def controls(self) -> list[str]:
        """The parameters shown, in declaration order."""
        return [name for name in self.param if name != "name"]

    def widget_options(self) -> dict[str, dict]:
        """Per control: its widget (a number is typed, so its exact value is what runs), tooltip, css class
        (``wb-param-<name>``) and a step that fits its range or default."""
        out = {}
        for name in self.controls():
            spec = self.param[name]
            widget = _WIDGETS[type(spec)]
            options: dict[str, Any] = {"type": widget, "css_classes": [f"wb-param-{name.replace('_', '-')}"]}
            if spec.doc and "description" in widget.param:
                options["description"] = spec.doc
            if type(spec) is param.Number:
                options["step"] = _step(spec)
            out[name] = options
        return out


_WIDGETS = {param.Number: pn.widgets.FloatInput, param.Integer: pn.widgets.IntInput, param.Boolean: pn.widgets.Checkbox,
            param.Selector: pn.widgets.Select, param.String: pn.widgets.TextInput}


def _special_name(p: Param, word: str) -> str:
    return f"{p.name}_{word}"


def _step(spec: param.Number) -> float:
    """An input's step: 1% of a bounded range, else a tenth of the default's order of magnitude."""
    low, high = spec.bounds or (None, None)
    if low is not None and high is not None and high > low:
        return (high - low) / 100
    value = spec.default
    return 10.0 ** (math.floor(math.log10(abs(value))) - 1) if value else 0.01


def _parameters(p: Param) -> dict[str, param.Parameter]:
    """The param parameter(s) of one declared allocator parameter (a number with a special word such as 'auto'
    gets a box for the word beside it)."""
    doc = f"{p.help}; allowed: {p.describe()}"
    if p.kind == "bool":
        return {p.name: param.Boolean(p.default, label=p.name, doc=doc)}
    if p.kind == "choice":
        return {p.name: param.Selector(objects=list(p.choices), default=p.default, label=p.name, doc=doc)}
    if p.kind in ("float", "int"):
        default = None if isinstance(p.default, str) else p.default
        number = param.Number if p.kind == "float" else param.Integer
        out = {p.name: number(default, bounds=(p.low, p.high), allow_None=default is None or p.optional,
                              label=p.name, doc=doc)}
        for word in p.special:
            out[_special_name(p, word)] = param.Boolean(False, label=f"{p.name}: {word}",
                                                        doc=f"{p.name}={word!r} ({p.help})")
        return out
    return {p.name: param.String("" if p.default is None else str(p.default), label=p.name, doc=doc)}


class DsaControls(AllocatorControls):
    """DSA's parameter is a function: chosen from the presets, with its λ (the spread of the sparsities)."""

    allocator = "dsa"
    function = param.Selector(objects=list(PRESETS), default=check_allocator("dsa").param("function").default,
                              label="DSA function", doc="a preset allocation function (pre ops, reduction, post ops)")
    lam = param.Number(PRESETS[check_allocator("dsa").param("function").default].lam, bounds=(0.0, LAMBDA_MAX),
                       label="λ (DSA)", doc="the function's λ: the sparsities span 2·λ around the target")

    @param.depends("function", watch=True)
    def _preset_lam(self) -> None:
        self.lam = PRESETS[self.function].lam

    def values(self) -> dict[str, Any]:
        return {"function": {**PRESETS[self.function].to_dict(), "lam": self.lam}}


def controls_class(name: str) -> type[AllocatorControls]:
    """The controls of allocator ``name``: one param parameter per declared public parameter."""
    if name == DsaControls.allocator:  # its one parameter is a function, not a value: a chooser of its own
        return DsaControls
    fields: dict[str, Any] = {"allocator": name}
    for p in check_allocator(name).public_params():
        fields.update(_parameters(p))
    title = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) + "Controls"
    return type(title, (AllocatorControls,), fields)
