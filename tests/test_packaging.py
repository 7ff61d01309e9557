"""The package carries what it reads at run time: a wheel holds every kernel, shipped DSA function, task
template and reproduce notebook, an install of it runs from its own site folder, and no module climbs out
of the package through ``__file__`` (issue 34). The full non-editable demo: scripts/check_installed_demo.sh."""

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import workbench
from workbench import reproduce, tasks
from workbench.allocation.dsa import function
from workbench.backend import kernels

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(workbench.__file__).resolve().parent
RESOURCES = PACKAGE / "resources"


def needed_resources() -> set[str]:
    """Wheel paths of every resource file the package reads, named by the code that reads it."""
    names = {f"kernels/{f}" for f, _ in kernels.KERNELS.values()}
    names |= {f"tasks/{task}.yaml" for task in tasks.EMBEDDED_TASKS}
    names |= {f"notebooks/{nb}" for nb in reproduce.TABLES.values()}
    names |= {f"functions/{p.name}" for p in function.FUNCTIONS.glob("*.json")}  # the grids name them
    names.add(f"functions/{function.SEARCHED.name}")  # the `searched` preset
    return {f"workbench/resources/{n}" for n in names}


def test_the_readers_point_into_the_package_and_find_their_files():
    for folder in (kernels.KERNEL_DIR, tasks.TEMPLATE_DIR, reproduce.NOTEBOOKS, function.FUNCTIONS):
        assert Path(folder).resolve().parent == RESOURCES
    assert "searched" in function.PRESETS  # dsa-evolved.json was found
    assert len(list(function.FUNCTIONS.glob("*.json"))) >= 5
    for name in needed_resources():
        assert (PACKAGE.parent / name).is_file(), name


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the sources: an in-tree build reuses build/lib, whose stale copies
    of the resources would hide a missing package-data entry (seen: 17 resource files in a wheel built with
    no package-data, from a tree with an old build/)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "workbench", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = (tmp / "dist").glob("sparsity_workbench-*.whl")
    return built


def test_the_wheel_holds_every_resource_the_package_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = needed_resources() - names
    assert not missing, f"the wheel lacks {sorted(missing)} (pyproject.toml [tool.setuptools.package-data])"
    shipped = {f"workbench/{p.relative_to(PACKAGE).as_posix()}" for p in RESOURCES.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert shipped - names == set()  # nothing under workbench/resources/ is left behind
    assert {n for n in names if n.endswith(".cu")} == {n for n in needed_resources() if n.endswith(".cu")}


def test_an_install_of_the_wheel_reads_its_own_resources(wheel, tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    probe = """
import json, workbench
from workbench import reproduce, tasks
from workbench.allocation.dsa import function
from workbench.backend import kernels
print(json.dumps({
    "package": workbench.__file__,
    "dirs": [str(d) for d in (kernels.KERNEL_DIR, tasks.TEMPLATE_DIR, reproduce.NOTEBOOKS, function.FUNCTIONS)],
    "kernel": kernels.kernel_source("nm_mask.cu")[:2000],
    "searched": function.PRESETS["searched"].to_dict(),
    "by_name": function.load_function("dsa-study-evo-seed0.json").to_dict(),
    "task": tasks.render_task_yaml("wb_cloze", "x.jsonl"),
    "notebooks": sorted(p.name for p in reproduce.NOTEBOOKS.iterdir()),
}))
"""
    env = {**os.environ, "PYTHONPATH": str(site)}  # before the editable checkout on sys.path
    run = tmp_path / "elsewhere"
    run.mkdir()
    proc = subprocess.run([sys.executable, "-c", probe], cwd=run, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["package"]).resolve().is_relative_to(site.resolve())
    for folder in out["dirs"]:
        assert Path(folder).resolve().is_relative_to(site.resolve() / "workbench" / "resources"), folder
    assert "__global__" in out["kernel"]
    assert out["searched"] == function.PRESETS["searched"].to_dict()
    assert out["by_name"] == function.load_function("dsa-study-evo-seed0.json").to_dict()
    assert "wb_cloze" in out["task"] and str((run / "x.jsonl").resolve()) in out["task"]
    assert out["notebooks"] == sorted(reproduce.TABLES.values())


# --------------------------------------------------------------------------- no climbing out of the package

def _dotted(node: ast.AST) -> str:
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def file_climbs(source: str) -> list[tuple[int, int]]:
    """(line, folders climbed from the module's file) for every path built from ``__file__``: ``.parent``,
    ``.parents[i]``, ``os.path.dirname(...)`` and ``/ ".."`` each climb (a module's own folder is 1)."""
    tree = ast.parse(source)
    outer_of = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Name) and node.id == "__file__"):
            continue
        up, cur = 0, node
        while isinstance(outer := outer_of.get(cur), ast.expr):
            if isinstance(outer, ast.Attribute) and outer.attr == "parent":
                up += 1
            elif isinstance(outer, ast.Subscript) and cur is outer.value and _dotted(cur) == "parents":
                index = outer.slice
                up += index.value + 1 if isinstance(index, ast.Constant) and isinstance(index.value, int) else 99
            elif isinstance(outer, ast.Call) and cur is not outer.func and _dotted(outer.func) == "dirname":
                up += 1
            elif (isinstance(outer, ast.BinOp) and cur is outer.left and isinstance(outer.right, ast.Constant)
                  and isinstance(outer.right.value, str)):
                up += outer.right.value.replace("\\", "/").split("/").count("..")
            cur = outer
        found.append((node.lineno, up))
    return found


def outside_package(path: Path, source: str) -> list[int]:
    """Lines of ``path`` (a module under workbench/) whose ``__file__`` path climbs above workbench/."""
    depth = len(path.relative_to(PACKAGE).parts)  # workbench/x.py: 1; its folder (1 climb) is workbench/
    return [line for line, up in file_climbs(source) if up > depth]


def test_no_module_reaches_outside_the_package_through_its_file():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = outside_package(path, path.read_text(encoding="utf-8"))
        offenders += [f"{path.relative_to(PACKAGE.parent)}:{line}" for line in lines]
    assert not offenders, ("paths built from __file__ that leave the package (a wheel lacks them; put the file "
                           "under workbench/resources/ and read it with importlib.resources):\n" + "\n".join(offenders))


@pytest.mark.parametrize("module, code, climbs_out", [
    ("backend/kernels.py", 'KERNEL_DIR = Path(__file__).resolve().parents[2] / "kernels"', True),
    ("reproduce.py", 'NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"', True),
    ("allocation/dsa/function.py", "REPO = Path(__file__).resolve().parents[3]", True),
    ("tasks.py", 'TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "data" / "tasks"', True),
    ("tasks.py", "ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))", True),
    ("tasks.py", 'DATA = Path(__file__).parent / ".." / "data"', True),
    ("backend/kernels.py", 'HERE = Path(__file__).resolve().parent / "x.cu"', False),
    ("allocation/dsa/function.py", "PKG = Path(__file__).resolve().parents[2]", False),  # workbench/ itself
])
def test_the_scan_catches_the_old_paths(module, code, climbs_out):
    assert bool(outside_package(PACKAGE / module, code)) == climbs_out
