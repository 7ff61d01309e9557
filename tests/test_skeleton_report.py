"""scripts/skeleton_report.py on tiny synthetic packages: layers, upward arrows, circles, import shares, the places a
fact is written, and the call-path trace (returns to a higher layer, counters)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "skeleton_report.py"


@pytest.fixture(scope="module")
def sk():
    spec = importlib.util.spec_from_file_location("skeleton_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["skeleton_report"] = module  # dataclasses and friends look their module up
    spec.loader.exec_module(module)
    return module


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


LAYERS = 'LAYERS = [\n    ("low", ""),\n    ("high",),\n    ("cli",),\n]\n'


@pytest.fixture
def graph_root(tmp_path):
    """low (layer 0) imports high (layer 1) inside a function: one upward arrow, and with high's top-level import of
    low a circle that exists only through the in-function import; a <-> b import each other at the top (unlayered:
    not in LAYERS; the test's "" names the package root only)."""
    return _write(tmp_path / "g", {
        "tests/test_architecture.py": LAYERS,
        "workbench/__init__.py": "",
        "workbench/low.py": "import os\n\n\ndef f():\n    from . import high\n    return high\n",
        "workbench/high.py": "import json\nfrom . import low\nfrom .sub import leaf\n",
        "workbench/sub/__init__.py": "",
        "workbench/sub/leaf.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..high import x\n",
        "workbench/a.py": "from .b import y\nx = 1\n",
        "workbench/b.py": "from workbench.a import x\ny = 2\n",
    })


def test_layers_upward_arrows_and_circles(sk, graph_root):
    g = sk.import_graph(graph_root)
    assert g["modules"] == ["", "a", "b", "high", "low", "sub", "sub.leaf"]
    assert g["unlayered"] == ["a", "b", "sub", "sub.leaf"]  # "" stands for the root only, not a catch-all
    assert g["layer_of"]["low"] == 0 and g["layer_of"][""] == 0 and g["layer_of"]["high"] == 1
    assert [(u["from"], u["to"], u["kinds"]) for u in g["upward"]] == [("low", "high", ["function"])]
    assert g["circles"] == [["a", "b"], ["high", "low"]]
    assert g["circles_top_level"] == [["a", "b"]]  # low -> high runs only inside a function
    # `from .sub import leaf` is an arrow to the module sub.leaf; the TYPE_CHECKING import is no arrow
    assert ("high", "sub.leaf") in {(t["from"], t["to"]) for t in g["touching_unlayered"]}
    assert g["arrows_only_type_checking"] == ["sub.leaf -> high"]
    assert g["arrows"] == 5 and g["arrows_only_in_functions"] == 1
    # workbench imports: low's (in a function), high's two, leaf's (TYPE_CHECKING), a's, b's = 6, 1 inside a function
    assert g["import_statements"]["package"] == 6 and g["import_statements"]["package_in_function"] == 1
    assert g["import_statements"]["all"] == 9 and g["import_statements"]["all_in_function"] == 1


def test_no_circle_and_no_upward_arrow_when_imports_point_down(sk, tmp_path):
    root = _write(tmp_path / "d", {"tests/test_architecture.py": LAYERS, "workbench/__init__.py": "",
                                   "workbench/low.py": "X = 1\n", "workbench/high.py": "from .low import X\n"})
    g = sk.import_graph(root)
    assert g["circles"] == [] and g["upward"] == [] and g["unlayered"] == []


NOTEBOOK = {"cells": [
    {"cell_type": "code", "metadata": {"tags": ["parameters"]},
     "source": ["model: str = 'tiny'\n", "sparsity = 0.7\n", "population = 6\n"]},
    {"cell_type": "code", "metadata": {}, "source": ["metric = 'wanda'\n", "%time x = 1\n"]},
    {"cell_type": "markdown", "metadata": {}, "source": ["OWL with λ = 0.08"]},
], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture
def facts_root(tmp_path):
    return _write(tmp_path / "f", {
        "tests/test_architecture.py": LAYERS,
        "notebooks/n.ipynb": json.dumps(NOTEBOOK),
        "workbench/__init__.py": "",
        "workbench/config.py": (
            "from dataclasses import dataclass, field\n\n\n@dataclass\nclass RunConfig:\n"
            "    model: str = 'x'\n    sparsity: float = 0.5\n"
            "    alloc_params: dict = field(default_factory=dict)\n\n\n"
            "_TEXT = ('model', 'metric')\nCHOICES = ('device', 'cpu')\n\n\n"
            "def run(config, sparsity=0.5, progress=True):\n    return dict(metric='wanda')\n"),
        "workbench/cli.py": (
            "def build(p):\n    p.add_argument('--sparsity', type=float, default=0.5)\n"
            "    p.add_argument('--alloc-param', action='append')\n"
            "    p.add_argument('--population', type=int, default=32, help='candidates (default 32)')\n"),
        "workbench/search.py": "class SearchConfig:\n    population: int = 32\n    generations: int = 14\n",
        "workbench/allocation/__init__.py": "",
        "workbench/allocation/owl.py": (
            "PARAMS = (Param('lam', 0.08, 'spread'), Param('M', M_DEFAULT, 'threshold'),\n"
            "          Param('progress', True, 'bars', internal=True))\nM_DEFAULT = 5.0\n\n\n"
            "@register_allocator('owl', params=PARAMS)\ndef owl(inputs, sparsity, lam=0.08, M=5.0):\n"
            "    return None\n"),
        "workbench/dashboard.py": (
            "class App:\n    def __init__(self):\n        self.lam = Text(name='λ (OWL)', value='0.08')\n"),
        "workbench/other.py": "def smooth(x, lam=0.08):\n    return x\n",
    })


def test_run_settings_declarations(sk, facts_root):
    a = sk.setting_declarations(sk.sources(facts_root))["settings"]
    assert a["sparsity"]["where"] == {"notebooks/n.ipynb": ["notebook parameter"], "workbench/cli.py": ["argparse"],
                                      "workbench/config.py": ["class field", "signature default"]}
    assert a["sparsity"]["files"] == 3  # owl(inputs, sparsity, ...) takes it without a default: no declaration
    # a string tuple naming two settings counts; ('device', 'cpu') names one and does not; a call keyword does not
    assert a["metric"]["where"] == {"workbench/config.py": ["string table"]}
    assert a["device"]["files"] == 0
    assert a["model"]["files"] == 2  # the notebook's parameters cell and the dataclass
    assert a["alloc_params"]["where"] == {"workbench/cli.py": ["argparse"], "workbench/config.py": ["class field"]}


def test_search_and_allocator_defaults(sk, facts_root):
    srcs = sk.sources(facts_root)
    b = sk.search_defaults(facts_root, srcs)["settings"]
    pop = b["population"]
    assert pop["default"] == 32 and pop["places"] == 3  # class field, argparse default, its help text
    assert {e["kind"] for e in pop["same"]} == {"class field", "argparse", "help text"}
    assert [(e["where"], e["value"]) for e in pop["other"]] == [("notebooks/n.ipynb#cell0:3", 6)]
    assert b["generations"]["places"] == 1
    c = sk.allocator_defaults(srcs)
    assert set(c) == {"owl.lam", "owl.M"}  # the internal one is left out
    lam = {e["where"]: e["kind"] for e in c["owl.lam"]["same"]}
    # declaration, the allocator's signature, the dashboard control naming OWL, the notebook's λ text; not
    # other.py's unrelated lam=0.08 (no OWL near it)
    assert lam == {"workbench/allocation/owl.py:1": "declaration", "workbench/allocation/owl.py:7": "signature default",
                   "workbench/dashboard.py:3": "control", "notebooks/n.ipynb#cell2:1": "text"}
    assert c["owl.M"]["default"] == 5.0 and c["owl.M"]["places"] == 2  # the constant resolved, and the signature


def test_static_report_runs_from_the_command_line(facts_root):
    out = subprocess.run([sys.executable, str(SCRIPT), str(facts_root), "--static-only"], capture_output=True,
                         text=True, check=True).stdout
    assert "## 1. Import graph" in out and "| sparsity | 3 |" in out and "## 2." not in out
    data = json.loads(subprocess.run([sys.executable, str(SCRIPT), str(facts_root), "--static-only", "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    assert data["facts"]["search_defaults"]["settings"]["population"]["places"] == 3


def test_call_path_counts_returns_to_a_higher_layer(sk, tmp_path):
    """cli.main (layer 2) -> high.run (1) -> low.check_allocator (0) twice, low.helper once directly and once through a
    list comprehension (transparent: its caller is run): returns low -> high are 4 events, 2 function pairs, 1 module
    pair; high -> cli one more; prune -> cli is within one layer and no return to a higher one."""
    root = _write(tmp_path / "p", {
        "tests/test_architecture.py": 'LAYERS = [("low",), ("high",), ("cli", "prune")]\n',
        "workbench/__init__.py": "",
        "workbench/low.py": "def check_allocator(name):\n    return name\n\n\ndef helper():\n    return 1\n",
        "workbench/high.py": ("from . import low\n\n\ndef run():\n    low.check_allocator('owl')\n"
                              "    low.check_allocator('owl')\n    low.helper()\n"
                              "    return [low.helper() for _ in range(1)]\n"),
        "workbench/cli.py": ("def main(argv):\n    from . import high\n    from .prune import prune\n    high.run()\n"
                             "    prune(1)\n    return 0\n"),
        "workbench/prune.py": "def prune(model, tokenizer=None, *, sparsity=0.5):\n    return model\n",
    })
    probe = sk.run_probe(root.resolve(), sys.executable)
    c = sk.call_path(probe, sk.read_layers(root))
    assert [f["name"] for f in c["functions"]] == ["workbench.cli:main", "workbench.high:run",
                                                   "workbench.low:check_allocator", "workbench.low:helper",
                                                   "workbench.prune:prune"]
    w = c["whole"]
    assert w["modules_crossed"] == 4
    assert (w["returns_up_events"], w["returns_up_function_pairs"], w["returns_up_module_pairs"]) == (5, 3, 2)
    assert c["counters"]["allocator registry look-ups"]["total"] == 2
    assert probe["prune"]["lines"] == 2 and len(probe["prune"]["parameters"]) == 3
    assert [p["kind"] for p in probe["prune"]["parameters"]][-1] == "KEYWORD_ONLY"
