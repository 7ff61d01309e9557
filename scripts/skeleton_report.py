"""The shape of the ``workbench`` package: import graph and layers, one CLI prune's call path, where facts are
written, and ``prune()``'s signature (issue 34's before/after numbers).

    .venv/bin/python scripts/skeleton_report.py [ROOT] [--json] [--static-only] [--python PY]

ROOT is the checkout to measure (default: the one this script sits in). The static parts parse ROOT's files;
the call path and ``prune()``'s signature come from a subprocess that imports ROOT's ``workbench`` (PYTHONPATH=ROOT,
checked) and runs ``workbench.cli.main([...])`` in-process under ``sys.setprofile``, with HF_HUB_OFFLINE=1 and
the tiny model built in code (seconds, no download). Markdown on stdout; ``--json`` prints the same as JSON.

Definitions (module names are dotted and relative to ``workbench``; a package's ``__init__`` is the package)
---------------------------------------------------------------------------------------------------------
1. Import graph. A module is one ``.py`` file under ``ROOT/workbench``. An arrow A -> B exists when A has an
   import statement, at top level or inside a function (at any depth), that names B: ``from .x import y`` is
   an arrow to ``x.y`` when that is a module, else to ``x``; ``import workbench.x.y`` goes to ``x.y``. Imports
   under ``if TYPE_CHECKING:`` are listed but are not arrows (they never run). Python's implicit run of a parent
   package's ``__init__`` is not an arrow. Layers come from the ``LAYERS`` list of ROOT's
   ``tests/test_architecture.py`` (bottom first, longest listed prefix wins); the entry ``""`` stands for the
   package root module only, so a module no non-empty entry covers is reported "unlayered" (the test itself lets
   ``""`` catch every unlisted module). An arrow runs back up when B's layer is above A's. A circle is a
   strongly connected component of more than one module of the arrow graph (top-level and in-function arrows);
   circles of top-level arrows alone are reported too. "Share of imports inside functions": import statements
   that name a workbench module and sit inside a function body, over all import statements that name one (all
   import statements, stdlib and third-party included, are reported beside it).
2. Call path. Every Python frame whose code lives in ``ROOT/workbench`` is a workbench frame. A *function* is a
   workbench frame that is not module-level code (``<module>``) and not a comprehension or generator-expression
   scope (those are transparent). "Functions entered": distinct ``module:qualname`` in order of first call.
   "Modules crossed": distinct modules of those functions. A *return to a higher layer* is a ``return`` profile
   event of a function F (module m) whose nearest enclosing workbench frame G on the stack (found through
   ``f_back``, skipping frames of other packages, e.g. torch calling a hook, and comprehension scopes; module-level
   code counts as a caller) is in a module n with layer(n) > layer(m); both must be layered. Counted three ways:
   events (every return: a function called 100 times from above counts 100; a generator's yield is a return event
   too, as in Python's profiler), distinct (F, G) function pairs, and distinct (m, n) module pairs. Only calls
   made inside ``cli.main`` count: ``workbench.cli`` is imported before the profiler starts, lazy imports inside
   the run are inside it (functions first entered while a workbench module was being imported are marked).
   The *config construction* subtree: calls made while a method ``__init__``, ``__post_init__``,
   ``model_post_init``, ``check*`` or ``validate*`` of a workbench class whose name ends in ``Config`` or ``Spec``
   is on the stack (the run's validation when the config is built).
   Counters (calls of workbench functions, by the last part of the qualname): allocator registry look-ups
   ``check_allocator`` + ``*Registry.get`` / ``*Registry.__getitem__``; parameter checks ``check_params``; target
   checks ``check_sparsity``, ``check_target``; structure asks ``structure``, ``prunable_linears``. A plain
   ``ALLOCATORS[name]`` dict subscript is not a call and is not seen. Static call sites of
   ``structure()``/``prunable_linears()`` (``ast.Call`` whose function is that name or attribute) are counted too.
3. Places a fact is written (files under ``workbench/`` and ``notebooks/``; heuristics, all by ``ast``):
   (a) a run setting is *declared* in a file by: a class-body field (dataclass, pydantic, ``param``), an
   ``add_argument("--x")`` (``--alloc-param`` is alloc_params, ``--eval`` is evals; ``dest=`` wins), a tuple /
   list / set literal of strings (or of tuples led by a string) naming >= 2 run settings, a dict literal with
   constant values whose string keys name >= 2 run settings, a notebook ``parameters``-cell assignment, a
   keyword default in a function signature (any default, ``None`` included; ``fmt`` counts as format), or a
   widget/dashboard control
   (``self.x = Widget(..., value=...)``). Per setting: the number of files.
   (b), (c) where a default value is written: class field defaults, argparse ``default=``, signature defaults,
   ``Param(name, default)`` declarations, assignments (notebook parameters, module constants), call keywords,
   dict entries, controls' ``value=`` (a string that parses as the number counts), with the exact name or a
   ``<prefix>_<name>`` name (``owl_lam``, ``besa_sigmoid``) that is not itself another tracked name; and text
   (string literals such as help texts and docstrings, comments, notebook markdown) where the name (or its
   Greek letter: lam/λ, beta/β, alpha/α, epsilon/ε) stands next to the value (``lam=0.08``, ``λ = 0.08``,
   ``"M": 5``) or an argparse help says ``default <value>``. A place is (file, line, kind); places with the
   canonical value (the SearchConfig field default; the ``Param`` default) are counted, other values are listed.
   For (c) a place counts in the allocator's own file; never in another allocator's file (DLP's clamp is not
   OWL's); elsewhere a text place counts, and a code place only when the allocator's name stands within 10 lines
   (anywhere in a notebook) - this keeps evaluate's ``batch_size=1`` from being charged to BESA. OWL's ``lam`` and
   DSA's λ share the value 0.08 and the dashboard's control, so such places are charged to ``owl.lam`` (DSA's λ is
   no ``Param``). Other values of the same parameter are listed only with the allocator named within a line.
   Internal parameters are skipped; a ``None`` default (BESA's lr) is reported by its declaration only.
4. ``prune()``: ``inspect.signature(workbench.prune.prune)``, its source lines (``inspect.getsourcelines``,
   decorators and docstring included), parameters with a default and keyword-only ones.

Against issue 34's numbers (it measured 3ba09cc; the table is in benchmarks/results/skeleton_before.md): at
3ba09cc this script finds the same registry look-ups (7), parameter checks (3), target checks (4: outermost checks
of the target, i.e. check_target calls plus check_sparsity calls on the target not made by check_target), prune()
lines (78) and structure()/prunable_linears() call sites (16; 7 modules outside models, where they are defined),
and 30% of all import statements inside functions. It differs where the issue left its unit open: 18 modules on
the CLI prune path (the issue's 17 leaves out workbench.cli, it seems), 36 returns to a higher layer counted as
module pairs (66 function pairs, 536 events; the issue: 35), prune()'s 14 parameters of which 13 have a default
(the issue: 14 keyword arguments), and config construction (8 modules, 10 return events) against the issue's
"17 modules, 30 returns for run_experiment's config", whose definition is not given.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import tokenize
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

PACKAGE = "workbench"
PRUNE_ARGS = ["prune", "--model", "tiny-llama", "--metric", "wanda", "--allocation", "owl", "--sparsity", "0.5",
              "--nsamples", "4", "--seqlen", "64", "--eval", "--eval-seqlen", "64"]
RUN_SETTINGS = ("model", "metric", "allocation", "sparsity", "pattern", "alloc_params", "mode", "group",
                "calib_dataset", "nsamples", "seqlen", "seed", "evals", "eval_dataset", "eval_seqlen", "tasks", "limit",
                "zs_batch_size", "dtype", "device", "trust_remote_code", "onload", "offload_dir", "activations",
                "save", "format")
ARG_ALIASES = {"alloc_param": "alloc_params", "eval": "evals"}
SIGNATURE_ALIASES = {"fmt": "format"}  # a keyword default under another name (checkpoint's fmt="dense")
SEARCH_SETTINGS = ("population", "generations", "elite", "fitness", "fitness_windows", "fitness_seqlen", "cheap_*",
                   "promote", "heldout_windows", "function_set")
GREEK = {"lam": ("λ", "lambda"), "beta": ("β",), "alpha": ("α",), "epsilon": ("ε", "eps")}
COUNTERS = {
    "allocator registry look-ups": ("check_allocator", "Registry.get", "Registry.__getitem__"),
    "allocator parameter checks": ("check_params",),
    "target sparsity checks": ("check_sparsity", "check_target"),
    "model structure asks": ("structure", "prunable_linears"),
}


def counted(qualname: str, pattern: str) -> bool:
    """Whether a function's qualname is one a counter counts: ``pattern`` is its last part, or (with a dot) its
    tail after any class-name prefix (``Registry.get`` matches ``AllocatorRegistry.get``)."""
    if "." not in pattern:
        return qualname.rsplit(".", 1)[-1] == pattern
    return re.search(rf"(^|\.)\w*{re.escape(pattern)}$", qualname) is not None


CONFIG_MARKER = re.compile(r"^\w*(Config|Spec)\.(__init__|__post_init__|model_post_init|_?check\w*|_?validate\w*)$")
SUFFIX_KINDS = ("class field", "signature default", "notebook parameter", "control", "assignment")
NEAR = 10  # (c): the allocator's name within this many lines of a place outside its own file
COMPREHENSIONS = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>")
NOVALUE = object()


# --------------------------------------------------------------------------- files and layers

def package_modules(root: Path) -> dict[str, Path]:
    """Dotted module name (relative to the package; '' is its root) -> file, for every .py under ROOT/workbench."""
    pkg = root / PACKAGE
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = list(path.relative_to(pkg).with_suffix("").parts)
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def read_layers(root: Path) -> list[tuple[str, ...]] | None:
    """The LAYERS list of ROOT/tests/test_architecture.py (None when there is none)."""
    path = root / "tests" / "test_architecture.py"
    if not path.exists():
        return None
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        if any(isinstance(t, ast.Name) and t.id == "LAYERS" for t in targets) and node.value is not None:
            return [tuple(group) for group in ast.literal_eval(node.value)]
    return None


def layer_of(module: str, layers: list[tuple[str, ...]] | None) -> int | None:
    """Index of ``module``'s layer (longest listed prefix; '' only for the package root), None if unlayered."""
    best, depth = None, -1
    for index, names in enumerate(layers or ()):
        for name in names:
            hit = module == "" if name == "" else module == name or module.startswith(name + ".")
            if hit and len(name) > depth:
                best, depth = index, len(name)
    return best


def show(module: str) -> str:
    return f"{PACKAGE}.{module}" if module else PACKAGE


# --------------------------------------------------------------------------- 1. import graph

def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_imports(tree: ast.AST):
    """Yield (import node, inside a function, under TYPE_CHECKING)."""
    def visit(node, in_fn, typing):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, in_fn, typing
            fn = in_fn or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            tc = typing or (isinstance(child, ast.If) and _is_type_checking(child.test))
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.body:
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        yield sub, fn, True
                    yield from visit(sub, fn, True)
                for sub in child.orelse:
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        yield sub, fn, typing
                    yield from visit(sub, fn, typing)
                continue
            yield from visit(child, fn, tc)
    yield from visit(tree, False, False)


def _nearest(module: str, modules: dict[str, Path]) -> str | None:
    parts = module.split(".") if module else []
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return "" if "" in modules else None


def import_targets(module: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The package modules one import statement names (empty for stdlib / third-party imports)."""
    out: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                target = _nearest(alias.name.removeprefix(PACKAGE).lstrip("."), modules)
                if target is not None:
                    out.add(target)
        return out
    if node.level:
        package = module.split(".") if module else []
        if path.name != "__init__.py":
            package = package[:-1]
        if node.level > 1:
            package = package[:len(package) - (node.level - 1)]
        base = ".".join([*package, *(node.module.split(".") if node.module else [])])
    elif node.module and (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
        base = node.module.removeprefix(PACKAGE).lstrip(".")
    else:
        return out
    for alias in node.names:
        sub = f"{base}.{alias.name}" if base else alias.name
        target = sub if sub in modules else _nearest(base, modules)
        if target is not None:
            out.add(target)
    return out


def strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; only those of size > 1."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return sorted(out, key=lambda c: (-len(c), c))


def import_graph(root: Path) -> dict[str, Any]:
    """Modules, layers, arrows (top level / in functions / TYPE_CHECKING), upward arrows, circles, import shares."""
    modules = package_modules(root)
    layers = read_layers(root)
    arrows: dict[tuple[str, str], dict] = {}
    statements = {"package": 0, "package_in_function": 0, "all": 0, "all_in_function": 0, "type_checking": 0}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, in_fn, typing in _walk_imports(tree):
            targets = import_targets(module, path, node, modules) - {module}
            statements["all"] += 1
            statements["all_in_function"] += in_fn
            if not targets:
                continue
            statements["package"] += 1
            statements["package_in_function"] += in_fn
            statements["type_checking"] += typing
            kind = "type_checking" if typing else "function" if in_fn else "top"
            for target in targets:
                arrow = arrows.setdefault((module, target), {"kinds": set(), "lines": []})
                arrow["kinds"].add(kind)
                arrow["lines"].append(node.lineno)
    runtime = {k: v for k, v in arrows.items() if v["kinds"] - {"type_checking"}}
    top = {k: v for k, v in arrows.items() if "top" in v["kinds"]}

    def graph(edges):
        out = defaultdict(set)
        for a, b in edges:
            out[a].add(b)
        return out

    layer = {m: layer_of(m, layers) for m in modules}
    upward, touching_unlayered = [], []
    for (a, b), info in sorted(runtime.items()):
        la, lb = layer[a], layer.get(b)
        row = {"from": a, "from_layer": la, "to": b, "to_layer": lb, "kinds": sorted(info["kinds"]),
               "lines": sorted(info["lines"])}
        if la is None or lb is None:
            touching_unlayered.append(row)
        elif lb > la:
            upward.append(row)
    names = sorted(modules)
    circles = strongly_connected(names, graph(runtime))
    return {
        "modules": names,
        "layers": [list(group) for group in layers] if layers is not None else None,
        "layer_of": layer,
        "unlayered": [m for m in names if layer[m] is None],
        "arrows": len(runtime),
        "arrows_top_level": sum("top" in v["kinds"] for v in runtime.values()),
        "arrows_only_in_functions": sum(v["kinds"] - {"type_checking"} == {"function"} for v in runtime.values()),
        "arrows_only_type_checking": sorted(f"{a} -> {b}" for (a, b), v in arrows.items()
                                            if v["kinds"] == {"type_checking"}),
        "upward": upward,
        "touching_unlayered": touching_unlayered,
        "circles": circles,
        "circles_top_level": strongly_connected(names, graph(top)),
        "import_statements": statements,
        "share_in_functions": statements["package_in_function"] / statements["package"] if statements["package"]
        else 0.0,
        "share_all_in_functions": statements["all_in_function"] / statements["all"] if statements["all"] else 0.0,
    }


def structure_call_sites(root: Path, names: tuple[str, ...] = ("structure", "prunable_linears")) -> dict[str, Any]:
    """Static call sites of the model-structure functions (``f(...)`` or ``x.f(...)``), by module."""
    sites = []
    for module, path in package_modules(root).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) \
                    else None
                if name in names:
                    sites.append({"module": module, "line": node.lineno, "name": name})
    defining = sorted({m for m, path in package_modules(root).items()
                       for node in ast.parse(path.read_text(encoding="utf-8")).body
                       if isinstance(node, ast.FunctionDef) and node.name in names})
    outside = [s for s in sites if s["module"] not in defining]
    return {"sites": sites, "count": len(sites), "modules": sorted({s["module"] for s in sites}),
            "defined_in": defining, "count_outside": len(outside),
            "modules_outside": sorted({s["module"] for s in outside})}


# --------------------------------------------------------------------------- 3. places a fact is written

class Source:
    """One scanned unit: a .py file, or a notebook cell (``cell`` set), with its tree and its text pieces."""

    def __init__(self, label: str, file: str, text: str, cell: int | None = None, markdown: bool = False,
                 parameters: bool = False):
        self.label, self.file, self.text, self.cell, self.parameters = label, file, text, cell, parameters
        self.tree = None
        if not markdown:
            code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in text.splitlines())
            try:
                self.tree = ast.parse(code)
            except SyntaxError:
                self.tree = None
        self.pieces = self._pieces(markdown)  # (line, text) of string literals, comments, markdown lines

    def _pieces(self, markdown: bool) -> list[tuple[int, str]]:
        if markdown or self.tree is None:
            return list(enumerate(self.text.splitlines(), 1))
        out = []
        try:
            for tok in tokenize.generate_tokens(io.StringIO(self.text).readline):
                if tok.type in (tokenize.STRING, tokenize.COMMENT):
                    for offset, line in enumerate(tok.string.splitlines()):
                        out.append((tok.start[0] + offset, line))
                elif tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
                    out.append((tok.start[0], tok.string))
        except (tokenize.TokenError, SyntaxError):
            return list(enumerate(self.text.splitlines(), 1))
        return out

    def where(self, line: int) -> str:
        return f"{self.file}#cell{self.cell}:{line}" if self.cell is not None else f"{self.file}:{line}"


def sources(root: Path) -> list[Source]:
    """Every .py under workbench/ and notebooks/, and every notebook cell (the parameters cell tagged)."""
    out = []
    for folder in (PACKAGE, "notebooks"):
        base = root / folder
        if not base.exists():
            continue
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" not in path.parts:
                rel = path.relative_to(root).as_posix()
                out.append(Source(rel, rel, path.read_text(encoding="utf-8")))
        for path in sorted(base.rglob("*.ipynb")):
            if ".ipynb_checkpoints" in path.parts:
                continue
            rel = path.relative_to(root).as_posix()
            cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
            for i, cell in enumerate(cells):
                text = "".join(cell.get("source", []))
                tags = cell.get("metadata", {}).get("tags", [])
                out.append(Source(rel, rel, text, cell=i, markdown=cell.get("cell_type") != "code",
                                  parameters="parameters" in tags))
    return out


def _module_constants(tree: ast.AST | None) -> dict[str, Any]:
    out = {}
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                pass
    return out


def _value(node: ast.AST | None, consts: dict[str, Any]) -> Any:
    """The constant a default expression stands for, or NOVALUE (literals, module constants, field(default=),
    a widget's value=, a param.X(default) call)."""
    if node is None:
        return NOVALUE
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.Name) and node.id in consts:
        return consts[node.id]
    if isinstance(node, ast.Call):
        for kw in node.keywords:
            if kw.arg in ("default", "value"):
                return _value(kw.value, consts)
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if node.args and name not in ("field", "Path", "tuple", "list", "dict"):
            return _value(node.args[0], consts)
    return NOVALUE


def _arg_name(call: ast.Call) -> str | None:
    """The dest of an ``add_argument("--x-y", ...)`` call."""
    for kw in call.keywords:
        if kw.arg == "dest" and isinstance(kw.value, ast.Constant):
            return kw.value.value
    for arg in call.args:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--"):
            name = arg.value[2:].replace("-", "_")
            return ARG_ALIASES.get(name, name)
    return None


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def declarations(src: Source) -> list[dict]:
    """Every named declaration in one source: class fields, argparse options, signature defaults, notebook
    parameters, assignments, controls, call keywords, dict entries and string tables (names only)."""
    if src.tree is None:
        return []
    consts = _module_constants(src.tree)
    out = []

    def add(name, kind, line, value=NOVALUE, **extra):
        out.append({"name": name, "kind": kind, "line": line, "value": value, **extra})

    in_class = {id(stmt) for node in ast.walk(src.tree) if isinstance(node, ast.ClassDef) for stmt in node.body}

    for node in ast.walk(src.tree):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    add(stmt.target.id, "class field", stmt.lineno, _value(stmt.value, consts), cls=node.name)
                elif isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call):
                    for t in stmt.targets:
                        if isinstance(t, ast.Name):
                            add(t.id, "class field", stmt.lineno, _value(stmt.value, consts), cls=node.name)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            for arg, default in zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True):
                add(SIGNATURE_ALIASES.get(arg.arg, arg.arg), "signature default", default.lineno,
                    _value(default, consts))
            for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
                if default is not None:
                    add(SIGNATURE_ALIASES.get(arg.arg, arg.arg), "signature default", default.lineno,
                        _value(default, consts))
        elif isinstance(node, ast.Call):
            fname = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if fname == "add_argument":
                name = _arg_name(node)
                if name:
                    help_node = _kw(node, "help")
                    add(name, "argparse", node.lineno, _value(_kw(node, "default"), consts),
                        help=help_node.value if isinstance(help_node, ast.Constant) else "")
            for kw in node.keywords:
                if kw.arg and fname != "add_argument":
                    add(kw.arg, "call keyword", kw.value.lineno, _value(kw.value, consts))
        elif isinstance(node, ast.Assign | ast.AnnAssign) and id(node) not in in_class:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                name = t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else None
                if name is None:
                    continue
                is_control = isinstance(node.value, ast.Call) and any(kw.arg == "value" for kw in node.value.keywords)
                if is_control:
                    add(name, "control", node.lineno, _value(node.value, consts))
                elif src.parameters and isinstance(t, ast.Name) and node in src.tree.body:
                    add(name, "notebook parameter", node.lineno, _value(node.value, consts))
                elif isinstance(t, ast.Name) and not isinstance(node.value, ast.Call):
                    add(name, "assignment", node.lineno, _value(node.value, consts))
        elif isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            values = [_value(v, consts) for v in node.values]
            constant = all(v is not NOVALUE for v in values)
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and isinstance(k.value, str):
                    add(k.value, "dict entry", k.lineno, _value(v, consts), table=keys if constant else None)
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            names = []
            for elt in node.elts:
                if isinstance(elt, ast.Tuple) and elt.elts:
                    elt = elt.elts[0]
                if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                    names.append(elt.value)
            for name in names:
                add(name, "string table", node.lineno, table=names)
    return out


def setting_declarations(srcs: list[Source], settings: tuple[str, ...] = RUN_SETTINGS) -> dict[str, Any]:
    """(a): per run setting, the files that declare it and how."""
    wanted = set(settings)
    per: dict[str, dict[str, set[str]]] = {s: defaultdict(set) for s in settings}
    for src in srcs:
        for d in declarations(src):
            name, kind = d["name"], d["kind"]
            if name not in wanted:
                continue
            if kind == "string table" and len(wanted & set(d["table"])) < 2:
                continue
            if kind == "dict entry":
                if d["table"] is None or len(wanted & set(d["table"])) < 2:
                    continue
                kind = "constant dict"
            if kind in ("call keyword", "assignment"):
                continue
            per[name][src.file].add(kind)
    rows = {s: {"files": len(per[s]), "where": {f: sorted(k) for f, k in sorted(per[s].items())}} for s in settings}
    counts = [r["files"] for r in rows.values()]
    return {"settings": rows, "max": max(counts, default=0), "mean": sum(counts) / len(counts) if counts else 0.0}


def _same(a: Any, b: Any) -> bool:
    def number(x):
        if isinstance(x, bool):
            return None
        if isinstance(x, int | float):
            return float(x)
        if isinstance(x, str):
            try:
                return float(x)
            except ValueError:
                return None
        return None
    na, nb = number(a), number(b)
    if na is not None and nb is not None:
        return math.isclose(na, nb, rel_tol=1e-12, abs_tol=0.0)
    return type(a) is type(b) and a == b


def _value_forms(value: Any) -> list[str]:
    if isinstance(value, bool):
        return [str(value), str(value).lower()]
    if isinstance(value, int | float):
        forms = {repr(value), f"{value:g}"}
        if float(value).is_integer():
            forms |= {str(int(value)), f"{float(value)}"}
        return sorted(forms, key=len, reverse=True)
    if isinstance(value, str) and value:
        return [value]
    return []


def _text_pattern(names: list[str], value: Any) -> re.Pattern | None:
    forms = _value_forms(value)
    if not forms:
        return None
    name = "|".join(re.escape(n) for n in names)
    val = "|".join(re.escape(f) for f in forms)
    return re.compile(rf"(?<![\w.])(?:{name})['\"]?\s*(?:=|:|\bis\b|\bof\b)?\s*['\"]?(?:{val})(?![\w.]|\.\d)")


def default_places(srcs: list[Source], name: str, value: Any, others: set[str], aliases: tuple[str, ...] = (),
                   context: str | None = None, home: set[str] | None = None,
                   foreign: set[str] | None = None) -> dict[str, Any]:
    """Where a default of setting ``name`` is written: code places (exact or ``<prefix>_<name>``; ``others`` are
    tracked names a suffix must not be) and text places (name or alias next to ``value``). With ``context`` (a
    word), a place counts in the ``home`` files, never in ``foreign`` ones; elsewhere a text place counts, a code
    place only with the word within NEAR lines (anywhere in a notebook or its name)."""
    def matches(candidate: str, kind: str) -> bool:
        return candidate == name or (kind in SUFFIX_KINDS and candidate.endswith("_" + name)
                                     and candidate not in others)

    pattern = _text_pattern([name, *aliases], value)
    context_re = re.compile(rf"(?<![A-Za-z0-9]){re.escape(context)}(?![A-Za-z0-9])", re.IGNORECASE) if context \
        else None

    notebook_text: dict[str, str] = defaultdict(str)
    for src in srcs:
        if src.cell is not None:
            notebook_text[src.file] += src.text + "\n"

    def allowed(src: Source, line: int, text: bool = False, near: int = NEAR) -> bool:
        if context_re is None or src.file in (home or ()):
            return True
        if src.file in (foreign or ()):
            return False
        if text:
            return True
        if src.cell is not None:
            return bool(context_re.search(src.file if near < NEAR else notebook_text[src.file] + src.file))
        return bool(context_re.search("\n".join(src.text.splitlines()[max(line - 1 - near, 0):line + near])))

    same, other = {}, {}
    for src in srcs:
        code_lines = set()
        for d in declarations(src):
            if not matches(d["name"], d["kind"]) or d["value"] in (NOVALUE, None) or d["kind"] == "string table":
                continue
            equal = _same(d["value"], value)
            if not equal and (isinstance(d["value"], tuple | list | dict | set) or not allowed(src, d["line"], near=1)):
                continue  # another value: only a scalar, and (with a context) the allocator named beside it
            if not allowed(src, d["line"]):
                continue
            where = src.where(d["line"])
            entry = {"where": where, "kind": d["kind"], "value": d["value"], "name": d["name"]}
            (same if equal else other).setdefault((where, d["kind"]), entry)
            code_lines.add(d["line"])
            if d["kind"] == "argparse" and pattern is not None and d.get("help") and \
                    re.search(rf"default\W*(?:{'|'.join(map(re.escape, _value_forms(value)))})(?![\w.])", d["help"]):
                same.setdefault((where, "help text"), {"where": where, "kind": "help text", "value": value,
                                                       "name": d["name"]})
        if pattern is None:
            continue
        for line, text in src.pieces:
            if pattern.search(text) and allowed(src, line, text=True):
                where = src.where(line)
                if not any(k[0] == where for k in same):
                    same.setdefault((where, "text"), {"where": where, "kind": "text", "value": value, "name": name})
    listed = sorted(same.values(), key=lambda e: e["where"])
    return {"default": value, "places": len(listed), "files": len({e["where"].split(":")[0].split("#")[0]
                                                                   for e in listed}),
            "same": listed, "other": sorted(other.values(), key=lambda e: e["where"])}


def search_defaults(root: Path, srcs: list[Source]) -> dict[str, Any]:
    """(b): the SearchConfig field defaults and every place a default of those settings is written."""
    fields: dict[str, Any] = {}
    where = None
    for src in srcs:
        for d in declarations(src):
            if d["kind"] == "class field" and d.get("cls") == "SearchConfig":
                fields[d["name"]] = d["value"]
                where = src.file
    names: list[str] = []
    for name in SEARCH_SETTINGS:
        if name.endswith("*"):
            names += [f for f in fields if f.startswith(name[:-1])] or ["cheap_fitness", "cheap_windows",
                                                                        "cheap_seqlen"]
        else:
            names.append(name)
    tracked = set(names) | set(RUN_SETTINGS)
    out = {}
    for name in names:
        value = fields.get(name, NOVALUE)
        out[name] = default_places(srcs, name, None if value is NOVALUE else value, tracked - {name})
        out[name]["declared"] = value is not NOVALUE
    return {"declared_in": where, "settings": out}


def allocator_params(srcs: list[Source]) -> list[dict]:
    """Every public ``Param(name, default, ...)`` declared under workbench/allocation, with its allocator's name."""
    out = []
    for src in srcs:
        if not src.file.startswith(f"{PACKAGE}/allocation/") or src.tree is None:
            continue
        consts = _module_constants(src.tree)
        registered = [_value(n.args[0], consts) for n in ast.walk(src.tree) if isinstance(n, ast.Call)
                      and getattr(n.func, "id", getattr(n.func, "attr", "")) == "register_allocator" and n.args]
        allocator = registered[0] if registered and isinstance(registered[0], str) else \
            Path(src.file).stem.rstrip("_")
        for node in ast.walk(src.tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Param"
                    and node.args):
                continue
            name = _value(node.args[0], consts)
            default = _value(node.args[1], consts) if len(node.args) > 1 else _value(_kw(node, "default"), consts)
            internal = _kw(node, "internal")
            if not isinstance(name, str) or (internal is not None and _value(internal, consts) is True):
                continue
            out.append({"allocator": allocator, "name": name, "default": default,
                        "declared": f"{src.file}:{node.lineno}"})
    return out


def allocator_defaults(srcs: list[Source]) -> dict[str, Any]:
    """(c): per public allocator parameter, where its default value is written (files naming the allocator)."""
    params = allocator_params(srcs)
    names = {p["name"] for p in params}
    declaring: dict[str, set[str]] = defaultdict(set)  # file -> allocators it declares parameters of
    for p in params:
        declaring[p["declared"].split(":")[0]].add(p["allocator"])
    out = {}
    for p in params:
        key = f"{p['allocator']}.{p['name']}"
        if p["default"] is NOVALUE or p["default"] is None:
            out[key] = {"default": None, "places": 1, "files": 1, "same": [{"where": p["declared"],
                                                                           "kind": "declaration"}], "other": [],
                        "note": "no constant default (None: chosen at run time)"}
            continue
        found = default_places(srcs, p["name"], p["default"], names - {p["name"]}, GREEK.get(p["name"], ()),
                               context=p["allocator"],
                               home={f for f, a in declaring.items() if p["allocator"] in a},
                               foreign={f for f, a in declaring.items() if p["allocator"] not in a})
        for entry in found["same"]:
            if entry["where"] == p["declared"] or (entry["kind"] == "call keyword" and entry["name"] == "default"):
                entry["kind"] = "declaration"
        if not any(e["where"] == p["declared"] for e in found["same"]):
            found["same"].insert(0, {"where": p["declared"], "kind": "declaration", "value": p["default"]})
            found["places"] += 1
        out[key] = found
    return out


# --------------------------------------------------------------------------- 2 + 4. the run (in a subprocess)

def _probe(root: Path, workdir: Path) -> dict[str, Any]:
    """Runs inside the subprocess (PYTHONPATH=ROOT): one CLI prune under sys.setprofile, and prune()'s signature."""
    import importlib
    import inspect
    import time

    pkg_dir = os.path.realpath(root / PACKAGE) + os.sep
    import workbench  # noqa: F401  (imported from ROOT, checked below)

    if not os.path.realpath(sys.modules[PACKAGE].__file__).startswith(pkg_dir):
        raise RuntimeError(f"imported {sys.modules[PACKAGE].__file__}, not the package under {root}")
    cli = importlib.import_module(f"{PACKAGE}.cli")

    info_of: dict[Any, tuple | None] = {}

    def info(code):
        try:
            return info_of[code]
        except KeyError:
            pass
        path = os.path.realpath(code.co_filename) if not code.co_filename.startswith("<") else ""
        value = None
        if path.startswith(pkg_dir):
            parts = path[len(pkg_dir):-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            # module-level code and class bodies (no CO_OPTIMIZED flag) run at import: not functions
            kind = "comp" if code.co_name in COMPREHENSIONS else "fn" if code.co_flags & inspect.CO_OPTIMIZED \
                else "module"
            qual = getattr(code, "co_qualname", code.co_name)
            value = (".".join(parts), qual, kind, bool(CONFIG_MARKER.match(qual)) and kind == "fn")
        info_of[code] = value
        return value

    first: dict[tuple, dict] = {}
    calls: Counter = Counter()
    returns: Counter = Counter()
    watch: Counter = Counter()  # (function, caller, its string arguments) of the counted functions
    patterns = [p for group in COUNTERS.values() for p in group]

    def watched(qual: str) -> bool:
        return any(counted(qual, p) for p in patterns)

    def context(frame):
        """(nearest enclosing workbench caller, importing?, inside config construction?) above ``frame``."""
        caller, importing, config = None, False, False
        f = frame.f_back
        while f is not None:
            i = info(f.f_code)
            if i is not None:
                if caller is None and i[2] != "comp":
                    caller = (i[0], i[1] if i[2] == "fn" else f"<module>{'' if i[1] == '<module>' else ' ' + i[1]}")
                importing = importing or i[2] == "module"
                config = config or i[3]
            f = f.f_back
        return caller, importing, config

    def profiler(frame, event, _arg):
        if event[1] == "_":  # c_call, c_return, c_exception
            return
        i = info(frame.f_code)
        if i is None or i[2] != "fn":
            return
        key = (i[0], i[1])
        caller, importing, config = context(frame)
        config = config or i[3]
        if event == "call":
            calls[key] += 1
            if key not in first:
                first[key] = {"order": len(first), "at_import": importing, "config": config}
            if watched(i[1]):
                code = frame.f_code
                names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
                text = tuple(f"{n}={frame.f_locals[n]!r}"[:60] for n in names
                             if isinstance(frame.f_locals.get(n), str))
                watch[(key, caller or ("<outside>", "<outside>"), text)] += 1
        elif event == "return":
            returns[(key, caller or ("<outside>", "<outside>"), config)] += 1

    argv = [*PRUNE_ARGS, "--out", str(workdir / "r.json")]
    start = time.perf_counter()
    sys.setprofile(profiler)
    try:
        rc = cli.main(argv)
    finally:
        sys.setprofile(None)
    wall = time.perf_counter() - start
    prune_mod = importlib.import_module(f"{PACKAGE}.prune")
    fn = prune_mod.prune
    sig = inspect.signature(fn)
    lines, start_line = inspect.getsourcelines(fn)
    params = [{"name": p.name, "kind": p.kind.name, "default": None if p.default is p.empty else repr(p.default),
               "has_default": p.default is not p.empty} for p in sig.parameters.values()]
    return {
        "argv": argv, "rc": rc, "wall_s": wall,
        "functions": [{"module": k[0], "qualname": k[1], "calls": calls[k], **v}
                      for k, v in sorted(first.items(), key=lambda kv: kv[1]["order"])],
        "returns": [{"callee": list(c), "caller": list(g), "config": cfg, "count": n}
                    for (c, g, cfg), n in returns.items()],
        "watched": [{"callee": list(c), "caller": list(g), "args": list(a), "count": n}
                    for (c, g, a), n in watch.items()],
        "prune": {"signature": f"prune{sig}", "lines": len(lines), "first_line": start_line,
                  "file": os.path.relpath(inspect.getsourcefile(fn), root), "parameters": params},
    }


def run_probe(root: Path, python: str) -> dict[str, Any]:
    """One CLI prune of ROOT's workbench in a subprocess (its own PYTHONPATH), returned as the probe's JSON."""
    with tempfile.TemporaryDirectory(prefix="skeleton-") as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COVERAGE_PROCESS_START")}
        env.update(PYTHONPATH=str(root), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1",
                   TOKENIZERS_PARALLELISM="false")
        out = Path(tmp) / "probe.json"
        proc = subprocess.run([python, str(Path(__file__).resolve()), "--_probe", str(root), tmp], cwd=tmp, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"probe failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def call_path(probe: dict[str, Any], layers: list[tuple[str, ...]] | None) -> dict[str, Any]:
    """Functions, modules, returns to a higher layer and the counters, from the probe's trace."""
    def summary(functions: list[dict], returns: list[dict]) -> dict[str, Any]:
        up = [r for r in returns if r["caller"][0] != "<outside>"
              and layer_of(r["callee"][0], layers) is not None and layer_of(r["caller"][0], layers) is not None
              and layer_of(r["caller"][0], layers) > layer_of(r["callee"][0], layers)]
        pairs = Counter()
        for r in up:
            pairs[(r["callee"][0], r["caller"][0])] += r["count"]
        modules = list(dict.fromkeys(f["module"] for f in functions))
        return {
            "functions": len(functions),
            "modules": modules,
            "modules_crossed": len(modules),
            "returns_up_events": sum(r["count"] for r in up),
            "returns_up_function_pairs": len({(tuple(r["callee"]), tuple(r["caller"])) for r in up}),
            "returns_up_module_pairs": len(pairs),
            "returns_up_by_module_pair": [{"from": a, "from_layer": layer_of(a, layers), "to": b,
                                           "to_layer": layer_of(b, layers), "events": n}
                                          for (a, b), n in sorted(pairs.items())],
        }

    functions = probe["functions"]
    whole = summary(functions, probe["returns"])
    config = summary([f for f in functions if f["config"]], [r for r in probe["returns"] if r["config"]])
    counters = {}
    for label, patterns in COUNTERS.items():
        rows = [w for w in probe["watched"] if any(counted(w["callee"][1], p) for p in patterns)]
        if label == "target sparsity checks":  # a layer's or a row's sparsity is no check of the target
            rows = [w for w in rows if not any(" of " in a for a in w["args"])]
        mine = {tuple(w["callee"]) for w in rows}
        outer = [w for w in rows if tuple(w["caller"]) not in mine]  # not made by another counted call
        counters[label] = {
            "total": sum(w["count"] for w in outer),
            "all_calls": sum(w["count"] for w in rows),
            "by_call": [{"function": f"{show(w['callee'][0])}:{w['callee'][1]}",
                         "caller": f"{show(w['caller'][0])}:{w['caller'][1]}", "args": w["args"],
                         "count": w["count"], "outermost": w in outer} for w in rows]}
    return {"argv": probe["argv"], "rc": probe["rc"], "wall_s": probe["wall_s"], "whole": whole,
            "config_construction": config, "counters": counters,
            "functions": [{"name": f"{show(f['module'])}:{f['qualname']}", "layer": layer_of(f["module"], layers),
                           "calls": f["calls"], "at_import": f["at_import"], "config": f["config"]}
                          for f in functions]}


# --------------------------------------------------------------------------- report

def git_describe(root: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", PACKAGE, "notebooks", "tests"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"


def measure(root: Path, static_only: bool = False, python: str = sys.executable) -> dict[str, Any]:
    """Every part of the report as one dict."""
    root = root.resolve()
    srcs = sources(root)
    graph = import_graph(root)
    layers = read_layers(root)
    out: dict[str, Any] = {"root": str(root), "commit": git_describe(root), "import_graph": graph,
                           "structure_call_sites": structure_call_sites(root),
                           "facts": {"run_settings": setting_declarations(srcs),
                                     "search_defaults": search_defaults(root, srcs),
                                     "allocator_defaults": allocator_defaults(srcs)}}
    if not static_only:
        probe = run_probe(root, python)
        out["call_path"] = call_path(probe, layers)
        out["prune"] = probe["prune"]
    return out


def _fmt(value: Any) -> str:
    return "?" if value is NOVALUE else repr(value)


def markdown(r: dict[str, Any]) -> str:
    g = r["import_graph"]
    lines = [f"# Skeleton report: `{r['root']}` at {r['commit']}", ""]
    lines += ["## 1. Import graph", ""]
    unlayered = f": {', '.join(map(show, g['unlayered']))}" if g["unlayered"] else ""
    lines += [f"- modules: **{len(g['modules'])}** ({len(g['modules']) - len(g['unlayered'])} layered, "
              f"{len(g['unlayered'])} unlayered{unlayered})",
              f"- arrows (distinct module pairs, runtime imports): **{g['arrows']}** ({g['arrows_top_level']} with a "
              f"top-level import, {g['arrows_only_in_functions']} only through imports inside functions); "
              f"TYPE_CHECKING-only: {len(g['arrows_only_type_checking'])}",
              f"- import statements naming a workbench module: {g['import_statements']['package']}, of which inside "
              f"functions {g['import_statements']['package_in_function']}: **{g['share_in_functions']:.0%}** "
              f"(all import statements, stdlib and third-party too: {g['import_statements']['all_in_function']} of "
              f"{g['import_statements']['all']} = {g['share_all_in_functions']:.0%})",
              f"- arrows that run back up: **{len(g['upward'])}**",
              f"- circles (strongly connected, size > 1, in-function imports included): **{len(g['circles'])}** "
              f"(top-level imports only: {len(g['circles_top_level'])})", ""]
    if g["layers"] is not None:
        lines += ["| layer | listed | modules |", "|---|---|---|"]
        for i, names in enumerate(g["layers"]):
            mods = [show(m) for m in g["modules"] if g["layer_of"][m] == i]
            lines.append(f"| {i} | {', '.join(repr(n) for n in names)} | {len(mods)}: {', '.join(mods)} |")
        lines.append(f"| unlayered | | {len(g['unlayered'])}: {', '.join(map(show, g['unlayered']))} |")
        lines.append("")
    else:
        lines += ["(no LAYERS list in tests/test_architecture.py: every module is unlayered)", ""]
    if g["upward"]:
        lines += ["Arrows that run back up:", "", "| from (layer) | to (layer) | import | lines |", "|---|---|---|---|"]
        for a in g["upward"]:
            lines.append(f"| {show(a['from'])} ({a['from_layer']}) | {show(a['to'])} ({a['to_layer']}) | "
                         f"{', '.join(a['kinds'])} | {', '.join(map(str, a['lines']))} |")
        lines.append("")
    if g["touching_unlayered"]:
        lines += [f"Arrows touching an unlayered module ({len(g['touching_unlayered'])}, not judged): "
                  + ", ".join(f"{show(a['from'])} -> {show(a['to'])}" for a in g["touching_unlayered"]), ""]
    if g["circles"]:
        lines += ["Circles (members):", ""]
        for c in g["circles"]:
            top = " (also with top-level imports alone)" if c in g["circles_top_level"] else ""
            lines.append(f"- {len(c)} modules{top}: {', '.join(map(show, c))}")
        lines.append("")
    for c in g["circles_top_level"]:
        if c not in g["circles"]:
            lines.append(f"- top-level-only circle: {', '.join(map(show, c))}")
    if g["arrows_only_type_checking"]:
        lines += ["TYPE_CHECKING-only imports (not arrows): " + ", ".join(g["arrows_only_type_checking"]), ""]

    if "call_path" in r:
        c = r["call_path"]
        w = c["whole"]
        lines += ["## 2. Call path of one CLI prune", "",
                  f"`workbench.cli.main({c['argv'][:-2]} + ['--out', <tmp>/r.json])` in-process under "
                  f"sys.setprofile: rc {c['rc']}, {c['wall_s']:.1f} s profiled.", "",
                  f"- distinct workbench functions entered: **{w['functions']}**",
                  f"- modules crossed: **{w['modules_crossed']}** ({', '.join(map(show, w['modules']))}); "
                  f"{len([m for m in w['modules'] if m != 'cli'])} without workbench.cli, where the run enters",
                  f"- returns to a higher layer: **{w['returns_up_events']}** events, "
                  f"**{w['returns_up_function_pairs']}** distinct function pairs, "
                  f"**{w['returns_up_module_pairs']}** distinct module pairs"]
        k = c["config_construction"]
        lines += [f"- config construction (see docstring): {k['functions']} functions in {k['modules_crossed']} "
                  f"modules ({', '.join(map(show, k['modules']))}); returns to a higher layer: "
                  f"{k['returns_up_events']} events, {k['returns_up_function_pairs']} function pairs, "
                  f"{k['returns_up_module_pairs']} module pairs", ""]
        lines += ["| counter | calls (outermost) | all calls | function <- caller (string arguments) x calls |",
                  "|---|---|---|---|"]
        for label, v in c["counters"].items():
            calls = "; ".join(f"{'' if b['outermost'] else '('}{b['function']} <- {b['caller']}"
                              f"{' (' + ', '.join(b['args']) + ')' if b['args'] else ''} x{b['count']}"
                              f"{'' if b['outermost'] else ')'}" for b in v["by_call"])
            lines.append(f"| {label} | **{v['total']}** | {v['all_calls']} | {calls} |")
        lines += ["", "Outermost: calls not made by another function of the same counter (check_target's own "
                      "check_sparsity, prunable_linears' own structure() are in parentheses); a layer's or a row's "
                      "sparsity check (argument '... of <layer>') is not a target check."]
        s = r["structure_call_sites"]
        lines += ["", f"Static call sites of structure()/prunable_linears(): **{s['count']}** in "
                      f"**{len(s['modules'])}** modules ({', '.join(map(show, s['modules']))}); outside "
                      f"{', '.join(map(show, s['defined_in']))}, where they are defined: {s['count_outside']} in "
                      f"{len(s['modules_outside'])} modules.", ""]
        lines += ["Returns to a higher layer by module pair (events):", "",
                  "| callee module (layer) | caller module (layer) | events |", "|---|---|---|"]
        for p in w["returns_up_by_module_pair"]:
            lines.append(f"| {show(p['from'])} ({p['from_layer']}) | {show(p['to'])} ({p['to_layer']}) | "
                         f"{p['events']} |")
        lines += ["", "Functions entered, in order of first entry (layer; calls; [import]: first entered while a "
                      "workbench module was being imported; [config]: inside config construction):", ""]
        for i, f in enumerate(c["functions"], 1):
            tags = "".join([" [import]" if f["at_import"] else "", " [config]" if f["config"] else ""])
            lines.append(f"{i}. `{f['name']}` ({'unlayered' if f['layer'] is None else f['layer']}; "
                         f"x{f['calls']}){tags}")
        lines.append("")

    facts = r["facts"]
    a = facts["run_settings"]
    lines += ["## 3. Places each fact is written", "",
              f"### (a) run settings: files that declare each (max **{a['max']}**, mean **{a['mean']:.1f}**)", "",
              "| setting | files | where (kinds) |", "|---|---|---|"]
    for name, row in a["settings"].items():
        where = "; ".join(f"{f} ({', '.join(k)})" for f, k in row["where"].items())
        lines.append(f"| {name} | {row['files']} | {where} |")
    b = facts["search_defaults"]
    lines += ["", f"### (b) search defaults (canonical: the SearchConfig field defaults in {b['declared_in']})", "",
              "| setting | default | places with it | files | other values written |", "|---|---|---|---|---|"]
    for name, row in b["settings"].items():
        other = "; ".join(f"{e['where']} {e['kind']} {e['name']}={_fmt(e['value'])}" for e in row["other"])
        default = repr(row["default"]) if row.get("declared", True) else "(no such SearchConfig field)"
        lines.append(f"| {name} | {default} | {row['places']} | {row['files']} | {other} |")
    lines += ["", "Places (value equal to the default):", ""]
    for name, row in b["settings"].items():
        lines.append(f"- {name}: " + "; ".join(f"{e['where']} ({e['kind']})" for e in row["same"]))
    c3 = facts["allocator_defaults"]
    lines += ["", "### (c) allocator parameter defaults", "",
              "| parameter | default | places with it | files | where | other values written |",
              "|---|---|---|---|---|---|"]
    for key, row in c3.items():
        where = "; ".join(f"{e['where']} ({e['kind']})" for e in row["same"])
        other = "; ".join(f"{e['where']} {e['kind']} {e['name']}={_fmt(e['value'])}" for e in row["other"])
        lines.append(f"| {key} | {row['default']!r} | {row['places']} | {row['files']} | {where} | {other} |")
    counts = [row["places"] for row in c3.values() if row["default"] is not None]
    if counts:
        lines += ["", f"Allocator defaults: max {max(counts)} places, mean {sum(counts) / len(counts):.1f} "
                      f"(over {len(counts)} parameters with a constant default)."]
    if "prune" in r:
        p = r["prune"]
        with_default = sum(q["has_default"] for q in p["parameters"])
        kwonly = sum(q["kind"] == "KEYWORD_ONLY" for q in p["parameters"])
        var_kw = [q["name"] for q in p["parameters"] if q["kind"] == "VAR_KEYWORD"]
        lines += ["", "## 4. prune()", "", f"`{p['signature']}`", "",
                  f"- {p['file']}:{p['first_line']}, **{p['lines']}** lines (decorators and docstring included)",
                  f"- parameters: **{len(p['parameters'])}**, with a default (keyword parameters): "
                  f"**{with_default}**, keyword-only: {kwonly}"
                  + (f", and **{var_kw[0]} (any further keywords)" if var_kw else "")]
    return "\n".join(lines) + "\n"


def _jsonable(obj: Any) -> Any:
    if obj is NOVALUE:
        return "<not a constant>"
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return repr(obj)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]),
                    help="checkout to measure (default: the one holding this script)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    ap.add_argument("--static-only", action="store_true", help="skip the CLI prune run and prune()'s signature")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the run (default: this one)")
    ap.add_argument("--_probe", nargs=2, metavar=("ROOT", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._probe:
        root, workdir = Path(args._probe[0]), Path(args._probe[1])
        (workdir / "probe.json").write_text(json.dumps(_probe(root, workdir)))
        return 0
    report = measure(Path(args.root), static_only=args.static_only, python=args.python)
    print(json.dumps(_jsonable(report), indent=1) if args.json else markdown(report), end="" if not args.json else "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
