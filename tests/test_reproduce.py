"""papermill grid: one folder per run, failures recorded, finished runs skipped, tables from result files."""

import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from workbench import reproduce
from workbench.cli import main
from workbench.results import read_record

REPO = Path(__file__).resolve().parents[1]
# the tutorial notebooks (notebooks/, opened by `make lab`) and the ones `reproduce` runs (package data)
NOTEBOOKS = sorted([*(REPO / "notebooks").glob("*.ipynb"), *Path(reproduce.NOTEBOOKS).glob("*.ipynb")])


def test_every_notebook_is_committed_clean_with_a_parameters_cell():
    assert {p.name for p in NOTEBOOKS} >= {"01_sparsity_curves.ipynb", "02_dsa_search.ipynb",
                                           "reproduce_perplexity.ipynb", "reproduce_zeroshot.ipynb", "03_besa.ipynb"}
    assert {p.name for p in Path(reproduce.NOTEBOOKS).glob("*.ipynb")} == set(reproduce.TABLES.values())
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
        assert "result_path" in tagged[0].source, f"{path.name}: parameters must include result_path"
        for cell in book.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_on_its_defaults_and_writes_a_result(path, tmp_path):
    result = tmp_path / "result.json"
    pm.execute_notebook(str(path), str(tmp_path / "out.ipynb"), parameters={"result_path": str(result)},
                        kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    assert result.exists() and json.loads(result.read_text())


def _grid(tmp_path, sparsities="[0.5]"):
    """A grid whose second row is valid but fails while running (its evaluation window is longer than the text)."""
    grid = tmp_path / "g.yaml"
    grid.write_text(f"""name: g
model: tiny-llama
defaults: {{metric: wanda, nsamples: 4, seqlen: 64}}
perplexity:
  dense: false
  sparsities: {sparsities}
  methods:
    - {{label: uniform, allocation: uniform}}
    - {{label: too long, allocation: uniform, eval_seqlen: 100000000}}
""")
    return grid


def test_an_invalid_grid_is_refused_before_any_run(tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(ValueError, match=r"grid perplexity.methods\[uniform\] at sparsity 1.5: sparsity=1.5 must"):
        reproduce.run_grid(_grid(tmp_path, "[0.5, 1.5]"), out, progress=False)
    assert not out.exists()


def test_a_failing_entry_is_recorded_and_the_tables_still_build(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    result = reproduce.run_grid(_grid(tmp_path), out, progress=False)
    bad = out / "g" / "perplexity-too_long-0.5" / "result.json"
    good = out / "g" / "perplexity-uniform-0.5" / "result.json"
    assert read_record(bad)["status"] == "error" and "seqlen=100000000 is larger" in read_record(bad)["error"]
    assert (bad.parent / "executed.ipynb").exists()
    injected = [c for c in nbformat.read(good.parent / "executed.ipynb", as_version=4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    # the notebook gets the run's settings as one `settings` dict (every run setting, the grid's values over the
    # spec's defaults) and where to write the record: the parameters it declares, nothing else
    assert len(injected) == 1 and '"nsamples": 4' in injected[0].source
    declared = {line.split(" = ")[0] for line in injected[0].source.splitlines() if " = " in line}
    assert declared == {"settings", "result_path"}
    ppl = read_record(good)["metrics"]["perplexity"]
    # settings the grid leaves out take the library's defaults, never the notebook's small ones
    assert read_record(good)["config"]["eval_seqlen"] is None and read_record(good)["data"]["eval"]["seqlen"] == 512
    assert read_record(good)["data"]["calibration"]["nsamples"] == 4
    table = (out / "g" / "tables" / "perplexity.md").read_text()
    assert "| uniform | " + f"{ppl:.2f} |" in table and "too long" not in table
    assert (out / "g" / "tables" / "perplexity.csv").read_text().splitlines()[1].startswith(f"uniform,{ppl}")
    assert "seqlen=100000000" in (out / "g" / "tables" / "failed.md").read_text()
    png = (out / "g" / "tables" / "sparsity_curves_50.png").read_bytes()  # kaleido through Debian's chromium
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert not list((out / "g" / "tables").glob(".*"))  # no temporary file left behind
    assert len(result["failed"]) == 1
    # the same configuration through the CLI gives the same number
    rc = main(["prune", "--model", "tiny-llama", "--metric", "wanda", "--sparsity", "0.5", "--nsamples", "4",
               "--seqlen", "64", "--eval", "--out", str(tmp_path / "cli.json")])
    assert rc == 0 and read_record(tmp_path / "cli.json")["metrics"]["perplexity"] == ppl

    calls = []
    real = reproduce.execute
    monkeypatch.setattr(reproduce, "execute", lambda run, *a, **k: calls.append(run.id) or real(run, *a, **k))
    reproduce.run_grid(_grid(tmp_path), out, progress=False)
    assert calls == ["perplexity-too_long-0.5"]  # the finished run is skipped, the failed one retried


@pytest.mark.parametrize("text,match", [("name: x\nmodel: tiny-llama\nfoo: 1\nperplexity: {}\n", "unknown keys"),
                                        ("name: x\nmodel: tiny-llama\n", "at least one of"),
                                        ("model: t\ndefaults: {epochs: 3}\nperplexity: {methods: []}\n",
                                         "defaults.epochs")])
def test_bad_grids_are_refused(tmp_path, text, match):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        reproduce.load_grid(path)
    with pytest.raises(ValueError, match="is not a file"):
        reproduce.load_grid(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "data" / "grids").glob("*.yaml")))
def test_shipped_grids_expand(name, monkeypatch):
    from workbench.allocation.dsa.function import load_function

    grid = reproduce.load_grid(REPO / "data" / "grids" / f"{name}.yaml")
    runs = reproduce.expand(grid)
    ids = [r.id for r in runs]
    asks_dense = any(spec.get("dense", True) for spec in grid.values() if isinstance(spec, dict) and "methods" in spec)
    assert len(ids) == len(set(ids)) and any(r.label == "dense" for r in runs) == asks_dense
    assert all(r.params["allocation"] == "dense" or 0 < r.params["sparsity"] < 1 for r in runs)
    monkeypatch.chdir(REPO)  # notebooks run in the launch folder, the repository root in the README's commands
    for run in runs:
        params = run.params.get("alloc_params", {})
        if isinstance(params.get("function"), str):  # a preset name or a file: both must load
            load_function(params["function"])
        if run.params["allocation"] == "profile":
            assert Path(params["path"]).is_file(), params["path"]


def test_zeroshot_table_names_the_metric_of_each_column_and_means_them():
    def rec(label, sparsity, ending, order):
        tasks = {"wb_ending": {"acc": ending - 0.01, "acc_norm": ending},
                 "wb_word_order": {"acc": order, "acc_norm": None}}
        return {"status": "ok", "run": {"table": "zeroshot", "label": label, "sparsity": sparsity},
                "data": {"zero_shot": {"tasks": tasks, "mean_acc_norm": (ending + order) / 2}}}

    header, rows = reproduce.zeroshot_table([rec("dense", None, 0.7, 0.9), rec("OWL", 0.7, 0.4, 0.8),
                                             {"status": "error", "run": {"table": "zeroshot"}}])
    assert header == ["method", "sparsity", "wb_ending (acc_norm)", "wb_word_order (acc)", "mean"]
    assert rows == [["dense", "dense", 0.7, 0.9, pytest.approx(0.8)], ["OWL", "70%", 0.4, 0.8, pytest.approx(0.6)]]
    md = reproduce.to_markdown(header, rows)
    assert "| OWL | 70% | 0.4000 | 0.8000 | 0.6000 |" in md
    # the run's test perplexity, where recorded, is the last column (a row without one shows a dash)
    with_ppl = {**rec("DLP", 0.7, 0.5, 0.6), "metrics": {"perplexity": 123.5}}
    header, rows = reproduce.zeroshot_table([rec("OWL", 0.7, 0.4, 0.8), with_ppl])
    assert header[-2:] == ["mean", "test ppl"] and rows[0][-1] is None and rows[1][-1] == 123.5


def test_a_method_may_name_its_own_sparsities(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("model: m\nperplexity:\n  dense: false\n  sparsities: [0.5, 0.7]\n  methods:\n"
                    "    - {label: U, allocation: uniform}\n    - {label: B, allocation: besa, sparsities: [0.5]}\n")
    ids = [r.id for r in reproduce.expand(reproduce.load_grid(path))]
    assert ids == ["perplexity-u-0.5", "perplexity-u-0.7", "perplexity-b-0.5"]


def test_the_cli_hands_the_grid_runner_its_executor(tmp_path, monkeypatch):
    """``reproduce --workers N`` hands run_grid the Ray executor (workers, address); without it, none (serial).
    That reproduce.py never imports distributed.py is checked by test_architecture's circle test."""
    import functools

    from workbench import cli, distributed

    seen = []

    def fake_run_grid(grid, out, run_entries=None):
        seen.append(run_entries)
        return {"root": tmp_path, "tables": {}, "records": [], "failed": []}

    monkeypatch.setattr(reproduce, "run_grid", fake_run_grid)
    monkeypatch.setattr(cli, "_connect_workers", lambda args: None)  # no Ray started here
    grid = str(Path(__file__).resolve().parents[1] / "data" / "grids" / "ci.yaml")
    assert main(["reproduce", "--grid", grid, "--out", str(tmp_path)]) == 0
    assert main(["reproduce", "--grid", grid, "--out", str(tmp_path), "--workers", "2"]) == 0
    assert seen[0] is None
    assert isinstance(seen[1], functools.partial) and seen[1].func is distributed.run_entries
    assert seen[1].keywords == {"workers": 2, "address": None}


def test_files_named_relative_to_the_launch_folder_reach_the_notebook(tmp_path, monkeypatch):
    # a grid's relative function file is read from where `reproduce` runs, as the CLI reads it (the level transfer
    # grid's runs failed when the notebook ran inside its run folder)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    function = {"pre": ["log", "no_op"], "reduction": "gram", "post": ["no_op"], "lam": 0.172, "direction": -1}
    (tmp_path / "data" / "f.json").write_text(json.dumps(function))
    (tmp_path / "g.yaml").write_text("""name: g
model: tiny-llama
defaults: {metric: wanda, nsamples: 4, seqlen: 64}
perplexity:
  dense: false
  sparsities: [0.5]
  methods:
    - {label: file, allocation: dsa, alloc_params: {function: data/f.json}}
""")
    result = reproduce.run_grid(tmp_path / "g.yaml", "runs", progress=False)
    assert result["failed"] == []
    record = read_record(tmp_path / "runs" / "g" / "perplexity-file-0.5" / "result.json")
    assert record["status"] == "ok" and record["profile"]["target"] == pytest.approx(0.5)
