"""The one exception for refusals: input the workbench will not run (a bad parameter, a missing file).

A :class:`WorkbenchError` names the parameter, the value and the allowed values; front ends print it in
one line. Anything else that escapes (a ValueError from torch, a KeyError) is a bug and keeps its traceback.
It subclasses ValueError so that callers written against ``except ValueError`` keep working.
"""

from __future__ import annotations


class WorkbenchError(ValueError):
    """A refusal of the user's input, worded for the user (parameter, value, allowed values)."""
