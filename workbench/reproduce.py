"""Reproduce the papers' tables: a grid of runs, each a parameterised notebook executed by papermill.

A grid (YAML, see ``data/grids/``) names a model, shared run settings and two tables: perplexity
(method x sparsity) and zero-shot accuracy (method x task + mean). Every run gets its own folder
``<out>/<grid>/<run id>/`` with the executed notebook and ``result.json``. A failed run is recorded
(``status: error`` and the error) and the others go on; re-running skips runs that finished. The
tables (Markdown, CSV, HTML) and the layer-wise sparsity figure are built from the result files.
"""

from __future__ import annotations

import csv
import html
import io
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import WorkbenchError
from .results import read_record, write_json_atomic, write_text_atomic
from .spec import FLAT

NOTEBOOKS: Path = resources.files("workbench") / "resources" / "notebooks"  # package data: the run notebooks
TABLES = {"perplexity": "reproduce_perplexity.ipynb", "zeroshot": "reproduce_zeroshot.ipynb"}
ZEROSHOT_EVALS = ("ppl", "zero-shot")  # a zero-shot row measures its test perplexity too: one prune, both numbers
RUN_FIELDS = tuple(name for name in FLAT if name not in ("model", "evals"))  # a grid entry's settings


@dataclass
class Run:
    """One cell of a table: which table, the row label, and the notebook parameters."""

    table: str
    label: str
    sparsity: float | None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", self.label).strip("_").lower()
        return f"{self.table}-{slug}-{'dense' if self.sparsity is None else f'{self.sparsity:g}'}"


def load_grid(path: str | Path) -> dict[str, Any]:
    """Read and check a grid file (clear errors for unknown keys, wrong types and missing parts)."""
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"grid={str(path)!r} is not a file (examples: data/grids/demo.yaml, "
                             f"data/grids/paper.yaml)")
    try:
        grid = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise WorkbenchError(f"grid {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(grid, dict):
        raise WorkbenchError(f"grid {path}: must be a mapping with keys name, model, defaults, {', '.join(TABLES)}")
    unknown = set(grid) - {"name", "model", "defaults", *TABLES}
    if unknown:
        raise WorkbenchError(f"grid {path}: unknown keys {sorted(map(str, unknown))}; allowed: name, model, defaults, "
                              f"{', '.join(TABLES)}")
    if not any(grid.get(t) for t in TABLES):
        raise WorkbenchError(f"grid {path}: give at least one of {list(TABLES)}")
    grid.setdefault("name", path.stem)
    grid.setdefault("model", "smollm2-135m")
    grid["defaults"] = grid.get("defaults") or {}
    for key in ("name", "model"):
        if not isinstance(grid[key], str) or not grid[key]:
            raise WorkbenchError(f"grid {path}: {key}={grid[key]!r} must be a non-empty string")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", grid["name"]):
        raise WorkbenchError(f"grid {path}: name={grid['name']!r} names a folder: letters, digits, '_', '.', '-' only")
    if not isinstance(grid["defaults"], dict):
        raise WorkbenchError(f"grid {path}: defaults must be a mapping of run settings; allowed: {list(RUN_FIELDS)}")
    for key in grid["defaults"]:
        if key not in RUN_FIELDS:
            raise WorkbenchError(f"grid {path}: defaults.{key} is not a run setting; allowed: {list(RUN_FIELDS)}")
    for table in TABLES:
        _check_table(grid.get(table), table)
    return grid


def _check_table(spec: Any, table: str) -> None:
    """A table's part of a grid: a mapping of run settings, ``dense``, ``sparsities`` and ``methods``."""
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise WorkbenchError(f"grid {table}: must be a mapping (methods, sparsities, dense, run settings)")
    bad = set(spec) - set(RUN_FIELDS) - {"methods", "sparsities", "dense"}
    if bad:
        raise WorkbenchError(f"grid {table}: unknown keys {sorted(map(str, bad))}; allowed: methods, "
                             f"sparsities, dense, "
                              f"{', '.join(RUN_FIELDS)}")
    if not isinstance(spec.get("dense", True), bool):
        raise WorkbenchError(f"grid {table}.dense={spec['dense']!r} must be true or false")
    _check_sparsities(spec.get("sparsities", [0.5]), f"{table}.sparsities")
    methods = spec.get("methods", [])
    if not isinstance(methods, list) or not all(isinstance(m, dict) for m in methods):
        raise WorkbenchError(f"grid {table}.methods must be a list of mappings (label, allocation, ...)")
    for method in methods:
        label = method.get("label", method.get("allocation", "uniform"))
        if not isinstance(label, str) or not label.strip():
            raise WorkbenchError(f"grid {table}.methods: label={label!r} must be a non-empty string")
        if "sparsities" in method:
            _check_sparsities(method["sparsities"], f"{table}.methods[{label}].sparsities")


def _check_sparsities(value: Any, where: str) -> None:
    if not isinstance(value, list) or not value:
        raise WorkbenchError(f"grid {where}={value!r} must be a non-empty list of sparsities in [0, 1)")


def expand(grid: dict[str, Any]) -> list[Run]:
    """Every run of the grid: for each table, the dense row (if asked) and each method x sparsity. Each run
    is checked as a RunSpec here, so a bad grid is refused before any run starts."""
    runs = []
    for table in TABLES:
        spec = grid.get(table)
        if not spec:
            continue
        shared = {**grid["defaults"], **{k: v for k, v in spec.items() if k in RUN_FIELDS}}
        if spec.get("dense", True):
            runs.append(Run(table, "dense", None, {**shared, "allocation": "dense"}))
        for method in spec.get("methods", []):
            method = dict(method)
            label = method.pop("label", method.get("allocation", "uniform"))
            bad = set(method) - set(RUN_FIELDS) - {"sparsities"}
            if bad:
                raise WorkbenchError(f"grid {table}.methods[{label}]: unknown settings {sorted(map(str, bad))}; "
                                      f"allowed: {list(RUN_FIELDS)}")
            for sparsity in method.pop("sparsities", None) or spec.get("sparsities", [0.5]):
                runs.append(Run(table, label, sparsity, {**shared, **method, "sparsity": sparsity}))
    for run in runs:
        check_run(run, grid["model"])
    return runs


def check_run(run: Run, model: str) -> None:
    """Refuse a run whose settings are not a valid RunSpec, naming the table and the row."""
    from .spec import RunSpec

    evals = ZEROSHOT_EVALS if run.table == "zeroshot" else ("ppl",)
    try:
        RunSpec.from_flat(run.params, model=model, evals=evals)
    except ValueError as err:
        raise WorkbenchError(f"grid {run.table}.methods[{run.label}] at sparsity {run.sparsity}: {err}") from None


def run_defaults() -> dict[str, Any]:
    """The run specification's defaults for every run setting: a grid never inherits a notebook's small defaults."""
    from .spec import RunSpec

    defaults = RunSpec().flat()
    return {name: defaults[name] for name in RUN_FIELDS}


def execute(run: Run, model: str, folder: Path, kernel_name: str = "python3") -> dict[str, Any]:
    """Execute the run's notebook with papermill into ``folder``; return its result (or error) record."""
    import papermill as pm

    folder.mkdir(parents=True, exist_ok=True)
    result_path = folder / "result.json"
    notebook = str(NOTEBOOKS / TABLES[run.table])
    params = {"model": model, **run_defaults(), **run.params}
    start = time.perf_counter()
    try:
        pm.execute_notebook(notebook, str(folder / "executed.ipynb"),
                            parameters={"settings": params, "result_path": str(result_path.resolve())},
                            kernel_name=kernel_name, progress_bar=False)  # in the launch folder: a grid's relative
        # paths (a DSA function file, a saved profile, a text) mean what they mean to the CLI
        record = read_record(result_path)
    except Exception as err:  # noqa: BLE001 - any failure of a run is recorded, the grid goes on
        record = {"status": "error", "error": _error_text(err), "traceback": traceback.format_exc(limit=3)}
    return finish_record(record, run, params, time.perf_counter() - start, result_path)


def finish_record(record: dict, run: Run, params: dict, seconds: float, path: Path) -> dict[str, Any]:
    """Stamp a run's record (status, which run, its parameters, seconds) and write it atomically."""
    record.update(status=record.get("status", "ok"), run={"id": run.id, "table": run.table, "label": run.label,
                                                          "sparsity": run.sparsity, "params": params},
                  run_seconds=seconds)
    write_json_atomic(path, record)
    return record


def _error_text(err: Exception) -> str:
    """The useful line of an error: papermill wraps the notebook's exception as ename/evalue."""
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    return f"{ename}: {evalue}" if ename else f"{type(err).__name__}: {err}"


def run_serially(entries: list[tuple[Run, str, Path]], progress: bool = True, desc: str = "grid") -> list[dict]:
    """Execute grid ``entries`` (run, model, folder) one after the other in this process; records in order."""
    from tqdm.auto import tqdm

    return [execute(run, model, folder) for run, model, folder in tqdm(entries, desc=desc, disable=not progress)]


def run_grid(grid_path: str | Path, out: str | Path = "runs/reproduce", progress: bool = True,
             run_entries: Callable[[list[tuple[Run, str, Path]]], list[dict]] | None = None) -> dict[str, Any]:
    """Run every unfinished run of the grid, then build the tables; returns {tables, records, failed}.
    ``run_entries`` executes the unfinished entries (run, model, folder) and returns their records in order:
    the caller hands it in (e.g. :func:`workbench.distributed.grid_runner` for Ray workers); default
    :func:`run_serially`, here, one at a time."""
    grid = load_grid(grid_path)
    runs = expand(grid)
    root = Path(out) / grid["name"]
    records: list[dict | None] = []
    for run in runs:
        done = root / run.id / "result.json"
        record = read_record(done) if done.exists() else None
        records.append(record if record is not None and record.get("status") == "ok" else None)
    todo = [i for i, r in enumerate(records) if r is None]
    entries = [(runs[i], grid["model"], root / runs[i].id) for i in todo]
    if run_entries is None:
        results = run_serially(entries, progress, desc=f"grid {grid['name']}")
    else:
        results = run_entries(entries)
    for i, record in zip(todo, results, strict=True):
        records[i] = record
    tables = build_tables(records, root / "tables")
    return {"root": root, "tables": tables, "records": records,
            "failed": [r for r in records if r.get("status") != "ok"]}


# --------------------------------------------------------------------------- tables

def _label(record: dict) -> str:
    return record["run"]["label"]


def perplexity_table(records: list[dict]) -> tuple[list[str], list[list[Any]]]:
    """Rows = methods, columns = sparsities; cells = test perplexity (paper protocol)."""
    ok = [r for r in records if r.get("status") == "ok" and r["run"]["table"] == "perplexity"]
    sparsities = sorted({r["run"]["sparsity"] for r in ok if r["run"]["sparsity"] is not None})
    labels = list(dict.fromkeys(_label(r) for r in ok))
    cells = {(_label(r), r["run"]["sparsity"]): r["metrics"].get("perplexity") for r in ok}
    header = ["method"] + (["dense"] if any(s is None for _, s in cells) else []) + [f"{s:.0%}" for s in sparsities]
    rows = []
    for label in labels:
        row = [label] + ([cells.get((label, None))] if header[1:2] == ["dense"] else [])
        rows.append(row + [cells.get((label, s)) for s in sparsities])
    return header, rows


def zeroshot_table(records: list[dict]) -> tuple[list[str], list[list[Any]]]:
    """Rows = method @ sparsity, columns = tasks + mean (+ the same run's test perplexity, which every zero-shot
    run measures too: one prune gives both numbers); a cell is acc_norm where the task reports it, else acc.

    The column names say which of the two each task contributes (the papers' tables mix them).
    """
    ok = [r for r in records if r.get("status") == "ok" and r["run"]["table"] == "zeroshot"
          and "zero_shot" in r.get("data", {})]
    columns: dict[str, str] = {}
    for r in ok:
        for task, row in r["data"]["zero_shot"]["tasks"].items():
            columns.setdefault(task, "acc_norm" if row.get("acc_norm") is not None else "acc")
    with_ppl = any(r.get("metrics", {}).get("perplexity") is not None for r in ok)
    header = ["method", "sparsity"] + [f"{t} ({m})" for t, m in columns.items()] + ["mean"] + \
        (["test ppl"] if with_ppl else [])
    rows = []
    for r in ok:
        zs = r["data"]["zero_shot"]
        sparsity = r["run"]["sparsity"]
        cells = [zs["tasks"].get(t, {}).get(m) for t, m in columns.items()]
        ppl = [r.get("metrics", {}).get("perplexity")] if with_ppl else []
        rows.append([_label(r), "dense" if sparsity is None else f"{sparsity:.0%}"] + cells +
                    [zs.get("mean_acc_norm")] + ppl)
    return header, rows


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}" if value >= 1 else f"{value:.4f}"
    return str(value)


def to_markdown(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()


def to_html(header: list[str], rows: list[list[Any]], caption: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return (f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>\n")


CAPTIONS = {
    "perplexity": "Test perplexity (papers' protocol: non-overlapping windows, exp of mean window NLL); "
                  "lower is better",
    "zeroshot": "Zero-shot accuracy (lm-evaluation-harness, 0-shot; acc_norm where the task reports it, else acc, "
                "as named in each column; mean = mean of those); higher is better",
}


def build_tables(records: list[dict], folder: Path, protocol: str | None = None) -> dict[str, str]:
    """Write both tables as .md/.csv/.html and the sparsity-curve figure; return the Markdown texts
    (each opens with its caption; ``protocol`` is added to the captions when the runs differ from the papers')."""
    out = {}
    for name, builder in (("perplexity", perplexity_table), ("zeroshot", zeroshot_table)):
        header, rows = builder(records)
        if not rows:
            continue
        caption = CAPTIONS[name] + (f". Protocol: {protocol}" if protocol else "")
        md = f"{caption}\n\n{to_markdown(header, rows)}"
        write_text_atomic(folder / f"{name}.md", md)
        write_text_atomic(folder / f"{name}.csv", to_csv(header, rows))
        write_text_atomic(folder / f"{name}.html", to_html(header, rows, caption))
        out[name] = md
    failed = [r for r in records if r.get("status") != "ok"]
    if failed:
        lines = [f"- {r['run']['id']}: {r.get('error')}" for r in failed]
        write_text_atomic(folder / "failed.md", "Failed runs\n\n" + "\n".join(lines) + "\n")
    _write_figure(records, folder)
    return out


def _write_figure(records: list[dict], folder: Path) -> None:
    """Layer-wise sparsity of every method, one figure per sparsity: one HTML page, and a PNG per sparsity."""
    from .plots import sparsity_curves
    from .profile import SparsityProfile

    by_sparsity: dict[float, dict[str, SparsityProfile]] = {}
    for r in records:
        if r.get("status") == "ok" and r.get("profile") and r["run"]["table"] == "perplexity":
            by_sparsity.setdefault(r["run"]["sparsity"], {})[_label(r)] = SparsityProfile.from_dict(r["profile"])
    if not by_sparsity:
        return
    figures = {f"sparsity_curves_{round(s * 100):g}.png":
               sparsity_curves(profiles, title=f"Layer-wise sparsity at {s:.0%}")
               for s, profiles in sorted(by_sparsity.items())}
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures.values())]
    write_text_atomic(folder / "sparsity_curves.html", "<html><body>" + "\n".join(parts) + "</body></html>\n")
    _write_pngs(figures, folder)


def _write_pngs(figures: dict, folder: Path) -> None:
    """PNG copies of the figures through kaleido (it drives an installed Chrome/Chromium); skipped with a
    warning where no browser can be started, since the HTML figure already holds everything."""
    import os
    import warnings

    import plotly.io as pio

    tmp = [folder / f".{name}.tmp.png" for name in figures]
    try:
        pio.write_images(list(figures.values()), [str(t) for t in tmp])
    except Exception as err:  # noqa: BLE001 - kaleido raises several kinds when no browser is found
        for t in tmp:
            t.unlink(missing_ok=True)
        warnings.warn(f"PNG export of the sparsity curves skipped ({type(err).__name__}: {err}); "
                      "sparsity_curves.html has the figures (install chromium for PNGs)", stacklevel=2)
        return
    for t, name in zip(tmp, figures, strict=True):
        os.replace(t, folder / name)
