"""The house's layering (no import runs back up), the model structure found once, the one atomic writer."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import models as models_mod
from workbench.checkpoint import save_pruned
from workbench.data import calibration_samples
from workbench.models import ModelStructure, load_model, prunable_linears, structure
from workbench.prune import prune
from workbench.results import atomic_directory

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"

# The layers of the package, bottom first (DESIGN's picture). A module may import from its own layer and
# below, never from above; a package's __init__ belongs to the layer of the package. The math (units,
# pruners, allocation) sits below everything that loads models, reads data or writes files.
LAYERS = [
    ("errors", "backend", "results", "inputs", "registry", "dashboard.jobs", "allocation.mapping",
     "allocation.dsa.ops"),
    ("units", "profile"),  # what the math knows of a model's prunable units; a sparsity profile
    ("pruners", "quantize", "level_space"),  # weight math: masks, the integer grid, the level grid of a search
    ("allocation",),
    ("checkpoint",),
    ("models", "offload"),
    ("data", "tasks", "recipe", "sparse_backend", "quantized_linear"),
    # "": the package root (load_model, ...)
    ("calibrate", "evaluate", "zeroshot", "prefix_cache", "multimodal", "", "plots"),
    ("spec",),  # the run specification: validates settings against the registries before any work
    ("plan",),  # plan, then execute: per unit what is pruned to what, and the one executor
    ("prune",),
    ("search", "tuning"),
    ("runner",),  # the one runner under every front end
    ("session",),
    ("widgets", "dashboard", "demo", "reproduce"),
    ("distributed",),  # runs the grid runner's entries on Ray: the CLI hands reproduce.run_grid this executor
    ("cli", "__main__"),
]
# What the math may import: no model loading, no data, no files (checked with imports inside functions).
MATH = ("units", "pruners", "allocation", "quantize")
MATH_MAY_IMPORT = ("errors", "backend", "registry", "units", "profile", "pruners", "allocation", "quantize")


def _layer(module: str) -> int:
    """Layer of a dotted module name relative to the package (longest listed prefix wins)."""
    best, depth = None, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".") or name == "") and len(name) > depth:
                best, depth = index, len(name)
    assert best is not None, f"module {module!r} is in no layer: add it to LAYERS"
    return best


def _imports(path: Path, text: str | None = None, names: bool = False) -> tuple[str, set[str]]:
    """(module, package-relative modules it imports, top-level or inside functions); ``text`` stands in
    for the file's source; ``names`` adds ``module.name`` for each ``from module import name`` (the name may
    be a submodule: ``from .dsa import function``)."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    module = ".".join(parts)
    package = parts if path.name == "__init__.py" else parts[:-1]
    out = set()
    source = path.read_text(encoding="utf-8") if text is None else text
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            target = [*base, *(node.module.split(".") if node.module else [])]
            found = [".".join([*target, a.name]) for a in node.names] if node.module is None else [".".join(target)]
            if names and node.module is not None:
                found += [".".join([*target, a.name]) for a in node.names]
            out.update(found)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workbench"):
            base = node.module.removeprefix("workbench").lstrip(".")
            out.add(base)
            if names:
                out.update(f"{base}.{a.name}".lstrip(".") for a in node.names)
        elif isinstance(node, ast.Import):
            imported = [a.name for a in node.names if a.name.startswith("workbench")]
            out.update(n.removeprefix("workbench").lstrip(".") for n in imported)
    return module, out - {module}


def _modules() -> set[str]:
    """Every module of the package, dotted and package-relative ("" is the package root)."""
    out = set()
    for path in PACKAGE.rglob("*.py"):
        parts = [p for p in path.relative_to(PACKAGE).with_suffix("").parts if p != "__init__"]
        out.add(".".join(parts))
    return out


def _resolve(target: str, modules: set[str]) -> str:
    """The module a package-relative import names: ``allocation.AllocationInput`` (a name imported from a
    package) is the package ``allocation``; the longest prefix that is a module wins."""
    parts = target.split(".") if target else []
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return ""


def _graph(texts: dict[Path, str] | None = None) -> dict[str, set[str]]:
    """module -> modules it imports (top level or inside functions); ``texts`` stands in for some files'
    sources."""
    texts = texts or {}
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module, targets = _imports(path, texts.get(path), names=True)
        graph[module] = {_resolve(t, modules) for t in targets} - {module}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: its strongly connected components of more than one module (Tarjan),
    each sorted; a module importing a module that imports it back, directly or through others, is in one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                members.append(top)
                if top == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_import_runs_back_up():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module, targets = _imports(path)
        for target in targets:
            if _layer(target) > _layer(module):
                upward.append(f"{module} (layer {_layer(module)}) -> {target} (layer {_layer(target)})")
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_the_layer_check_sees_the_old_upward_arrows():
    """The arrows the old layout had (kernels importing the pruners' masks; evaluate importing zero-shot
    is same-layer and allowed) are flagged when put back, lazily inside a function or at the top."""
    kernels = PACKAGE / "backend" / "kernels.py"
    module, targets = _imports(kernels, "def f():\n    from ..pruners import masks as ref\n")
    assert module == "backend.kernels" and targets == {"pruners"}
    assert _layer("pruners") > _layer(module)
    module, targets = _imports(PACKAGE / "units.py", "from .allocation import AllocationInput\n")
    assert targets == {"allocation"} and _layer("allocation") > _layer(module)
    module, targets = _imports(PACKAGE / "allocation" / "__init__.py", "def f():\n    from ..models import structure\n")
    assert module == "allocation" and targets == {"models"} and _layer("models") > _layer(module)
    module, targets = _imports(PACKAGE / "pruners" / "__init__.py", "from ..calibrate import LayerStats\n")
    assert targets == {"calibrate"} and _layer("calibrate") > _layer(module)


def test_the_import_graph_has_no_circles():
    """No module imports one that imports it back, directly or through others (also not within a layer or a
    package: a package's __init__ and its submodules included)."""
    circles = _circles(_graph())
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_sees_a_circle_put_back():
    """The circle the grid runner had (reproduce importing distributed, which imports reproduce) and one inside
    a package (allocation's base importing an allocator that imports base) are found, with their members."""
    assert "reproduce" in _graph()["distributed"]
    back = {PACKAGE / "reproduce.py": "def run(entries):\n    from .distributed import run_entries\n"}
    assert _circles(_graph(back)) == [["distributed", "reproduce"]]
    inner = {PACKAGE / "allocation" / "base.py": "from .owl import outlier_ratio\n"}
    assert _circles(_graph(inner)) == [["allocation.base", "allocation.owl"]]
    # a submodule named in ``from package import submodule`` is followed: the old allocation package circle
    package = {PACKAGE / "allocation" / "dsa" / "function.py": "from .. import AllocationInput\n"}
    assert _circles(_graph(package)) == [["allocation", "allocation.dsa.function"]]
    longer = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _circles(longer) == [["a", "b", "c"]]


def test_the_math_imports_no_loading_and_no_io():
    """units, pruners/ and allocation/ import only the math's own modules, errors, the backend, the registry
    and the profile: never models, data, calibrate, offload, checkpoint, evaluate or anything above."""
    outside = []
    for module, targets in _graph().items():
        if module.split(".")[0] in MATH:
            outside += [f"{module} -> {t}" for t in targets if t.split(".")[0] not in MATH_MAY_IMPORT]
    assert not outside, "the math imports loaders or I/O:\n" + "\n".join(sorted(outside))
    assert all(_layer(m) < _layer(low) for m in MATH for low in ("models", "offload", "data", "calibrate"))
    _module, targets = _imports(PACKAGE / "allocation" / "owl.py", "def f():\n    from ..models import structure\n")
    assert targets == {"models"} and "models" not in MATH_MAY_IMPORT


def test_backend_imports_nothing_else_of_the_package():
    for path in (PACKAGE / "backend").rglob("*.py"):
        _module, targets = _imports(path)
        assert all(t in ("backend", "errors") or t.startswith("backend.") for t in targets), (path, targets)


def test_perplexity_does_not_load_zero_shot():
    code = ("import sys, workbench.evaluate; "
            "print(any(m == 'lm_eval' or m.startswith('lm_eval.') or m == 'workbench.zeroshot' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_structure_found_once_per_model_and_shared(monkeypatch):
    model, tok = load_model("tiny-llama")
    calls = []
    original = ModelStructure.discover.__func__

    def counting(cls, m):
        calls.append(m)
        return original(cls, m)

    monkeypatch.setattr(models_mod.ModelStructure, "discover", classmethod(counting))
    calib = calibration_samples(tok, "embedded", 2, 32)
    prune(model, tok, metric="wanda", allocation="owl", sparsity=0.5, calibration=calib, progress=False)
    assert len(calls) == 1
    layout = structure(model)
    assert layout.prefix == "model.layers" and len(layout.blocks) == 3
    assert list(prunable_linears(model)) == [n for b in layout.block_linears for n in b]
    assert all(layout.block_of(n) == i for i, b in enumerate(layout.block_linears) for n in b)
    assert {n.rsplit(".", 1)[1] for n in layout.block_linears[0]} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_structure_follows_a_new_block_list():
    model, _ = load_model("tiny-llama")
    first = structure(model)
    model.model.layers = type(model.model.layers)(list(model.model.layers)[:2])
    second = structure(model)
    assert second is not first and len(second.block_linears) == 2


def test_atomic_directory_replaces_on_success_and_keeps_the_old_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("second, half")
        raise RuntimeError("halfway")
    assert (target / "a.txt").read_text() == "first"
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old copy left


def test_atomic_directory_without_replace_keeps_what_exists(tmp_path):
    target = tmp_path / "cache"
    with atomic_directory(target, replace=False) as tmp:
        (tmp / "x").write_text("theirs")
    with atomic_directory(target, replace=False) as tmp:
        (tmp / "x").write_text("mine")
    assert (target / "x").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_save_pruned_failing_halfway_leaves_the_previous_checkpoint(tmp_path):
    model, tok = load_model("tiny-llama")
    result = prune(model, tok, metric="magnitude", sparsity=0.5, progress=False)  # magnitude: no calibration
    out = save_pruned(model, tok, result.profile, tmp_path / "ckpt")
    before = sorted(p.name for p in out.iterdir())

    class Broken:
        def save_pretrained(self, _path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_pruned(model, Broken(), result.profile, out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
