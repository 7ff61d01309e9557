"""Numbers typed by a person (dashboard fields, notebook text boxes): parsed or refused with the allowed range."""

from __future__ import annotations

import math

from .errors import WorkbenchError


def parse_number(text: str, name: str, low: float, high: float, high_open: bool = True) -> float:
    """A number typed in a field, or a ValueError that names the field and the allowed range."""
    allowed = f"[{low:g}, {high:g}{')' if high_open else ']'}"
    try:
        value = float(str(text).strip())
    except ValueError:
        raise WorkbenchError(f"{name}: {text!r} is not a number; allowed: {allowed}") from None
    if not math.isfinite(value) or value < low or value > high or (high_open and value == high):
        raise WorkbenchError(f"{name}: {value:g} is out of range; allowed: {allowed}")
    return value
