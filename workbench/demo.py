"""`make demo`: what allocation does to SmolLM2-135M, in minutes on two CPU cores.

One process, one model load, one calibration: every allocator but BESA prunes from the same dense
Wanda statistics (dense mode, no forward pass per run); BESA learns in its own sequential pass on
fewer calibration windows. Each run is evaluated on the default dataset's test split (perplexity) and the
zero-shot tasks built from it; the tables say this protocol in their captions, since the papers prune
sequentially (`make reproduce` runs the full grid that way). Finished runs are kept and skipped.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .allocation import learns_while_pruning
from .data import DEFAULT_DATASET
from .errors import WorkbenchError
from .reproduce import Run, build_tables, finish_record
from .results import read_record
from .spec import RunSpec

# label, allocation, allocator parameters (the DSA function is the study's searched one, shipped as data)
METHODS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("uniform", "uniform", {}),
    ("OWL", "owl", {"lam": 0.08, "M": 5}),
    ("DSA (searched)", "dsa", {"function": "searched"}),
    ("BESA (row)", "besa", {"granularity": "row", "sigmoid": False}),
)


@dataclass
class DemoConfig:
    """What the demo runs; the defaults are the ones its README timing is for."""

    model: str = "smollm2-135m"
    metric: str = "wanda"
    sparsities: tuple[float, ...] = (0.7,)
    nsamples: int = 32
    seqlen: int = 512
    besa_nsamples: int = 8
    eval_seqlen: int = 512
    dataset: str = DEFAULT_DATASET  # calibration and test text
    tasks: str = DEFAULT_DATASET  # the zero-shot tasks built from that text's test split
    limit: int | None = 100  # of 200 items per embedded task: zero-shot is half the demo's time otherwise
    methods: tuple[tuple[str, str, dict[str, Any]], ...] = field(default=METHODS)

    def runs(self) -> list[tuple[Run, RunSpec]]:
        """Dense first, then every method at every sparsity."""
        shared = {"model": self.model, "metric": self.metric, "seqlen": self.seqlen, "eval_seqlen": self.eval_seqlen,
                  "evals": ("ppl", "zero-shot"), "tasks": self.tasks, "limit": self.limit,
                  "calib_dataset": self.dataset, "eval_dataset": self.dataset}
        out = [(Run("demo", "dense", None), RunSpec.from_flat(shared, allocation="dense", nsamples=self.nsamples))]
        for sparsity in self.sparsities:
            for label, allocation, params in self.methods:
                sequential = learns_while_pruning(allocation)  # BESA learns on the pruned blocks' inputs
                config = RunSpec.from_flat(shared, allocation=allocation, sparsity=sparsity, alloc_params=dict(params),
                                           mode="sequential" if sequential else "dense",
                                           nsamples=self.besa_nsamples if sequential else self.nsamples)
                out.append((Run("demo", label, sparsity), config))
        return out

    def protocol(self) -> str:
        """The captions' protocol line: how these numbers were made (not the papers' protocol)."""
        limit = "all items" if self.limit is None else f"first {self.limit} items per task"
        return (f"{self.model}, {self.metric} scores, unstructured; uniform/OWL/DSA pruned in dense mode from one "
                f"calibration ({self.nsamples} x {self.seqlen} {self.dataset} windows, seed 0); BESA learned "
                f"sequentially on {self.besa_nsamples} x {self.seqlen}; perplexity on the {self.dataset} test split, "
                f"seqlen {self.eval_seqlen}; zero-shot: {self.tasks} tasks, {limit}. The papers prune sequentially on "
                f"128 x 2048: `make reproduce` runs that grid")


def run_demo(config: DemoConfig | None = None, out: str | Path = "runs/demo", progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the demo; write records, tables (md/csv/html) and the sparsity curves (html/png)."""
    from tqdm.auto import tqdm

    from .session import Session

    config = config or DemoConfig()
    root = Path(out)
    start = time.perf_counter()
    session = Session(config.model, nsamples=config.nsamples, seqlen=config.seqlen, progress=False,
                      dataset=config.dataset)
    records = []
    for run, experiment in tqdm(config.runs(), desc="demo", disable=not progress):
        path = root / run.id / "result.json"
        record = read_record(path) if path.exists() else None
        if record is None or record.get("status") != "ok":
            record = _execute(session, run, experiment, path)
        records.append(record)
    tables = build_tables(_as_tables(records), root / "tables", protocol=config.protocol())
    return {"root": root, "tables": tables, "records": records, "seconds": time.perf_counter() - start,
            "failed": [r for r in records if r.get("status") != "ok"]}


def _execute(session, run: Run, experiment: RunSpec, path: Path) -> dict[str, Any]:
    """One run on the session's model, its record written to ``path``; a failure is recorded (the demo goes on)."""
    t0 = time.perf_counter()
    try:
        record = session.run(experiment)
    except WorkbenchError as err:
        record = {"status": "error", "error": f"{type(err).__name__}: {err}"}
    except Exception as err:  # noqa: BLE001 - a bug: recorded with its traceback, the demo goes on
        record = {"status": "error", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    return finish_record(record, run, experiment.flat(), time.perf_counter() - t0, path)


def _as_tables(records: list[dict]) -> list[dict]:
    """Each demo record feeds both tables (one run evaluates perplexity and zero-shot)."""
    return [{**r, "run": {**r["run"], "table": table}} for r in records for table in ("perplexity", "zeroshot")]
