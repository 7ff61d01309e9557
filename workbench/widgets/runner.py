"""PruneRunner: method, metric, pattern, target -> Prune & evaluate in a background thread -> a table row."""

from __future__ import annotations

import html
import threading
import time

import ipywidgets as w

from ..allocation import allocation_names, learns_while_pruning
from ..data import DEFAULT_DATASET
from ..errors import WorkbenchError
from ..pruners import METRICS
from ..quantize import QUANT_METHODS
from ..results import compact_params
from ..session import Session
from ..spec import RunSpec

ALLOCATIONS = tuple(allocation_names())  # every registered allocator and learner, in registration order
PATTERNS = ("unstructured", "2:4", "4:8")
STAGES = {"load": 0.05, "prune": 0.1, "ppl": 0.6}
COLUMNS = ("allocation", "params", "metric", "pattern", "target", "actual", "wbits", "bits/weight", "perplexity",
           "seconds", "error")
GROUPS = ("channel", 32, 64, 128)  # quantization groups offered: one scale per output channel, or per N columns


class PruneRunner:
    """Runs never block the kernel: each executes in a thread; the table grows when one finishes."""

    def __init__(self, session: Session, eval_seqlen: int | None = None, mode: str = "sequential", curves=None,
                 eval_dataset: str = DEFAULT_DATASET):
        self.session, self.eval_seqlen, self.curves, self.eval_dataset = session, eval_seqlen, curves, eval_dataset
        self.allocation = w.Dropdown(options=ALLOCATIONS, value="uniform", description="allocation")
        self.metric = w.Dropdown(options=METRICS.names(), value="wanda", description="metric")
        self.pattern = w.Dropdown(options=PATTERNS, value="unstructured", description="pattern")
        self.sparsity = w.FloatSlider(value=0.5, min=0.05, max=0.95, step=0.01, description="target",
                                      continuous_update=False)
        self.mode = w.Dropdown(options=("sequential", "dense"), value=mode, description="mode")
        self.wbits = w.Dropdown(options=(16, 8, 4, 3, 2), value=16, description="wbits")  # 16: no quantization
        self.group_size = w.Dropdown(options=GROUPS, value="channel", description="group")
        self.quant_method = w.Dropdown(options=QUANT_METHODS, value="rtn", description="quantizer")
        self.button = w.Button(description="Prune & evaluate", button_style="primary", icon="play")
        self.progress = w.FloatProgress(value=0.0, min=0.0, max=1.0, description="idle")
        self.table = w.HTML()
        self.rows: list[dict] = []
        self.records: list[dict] = []
        self._thread: threading.Thread | None = None
        self.button.on_click(lambda _b: self.start())
        if curves is not None:  # one target on screen: the curves' slider drives the run
            w.link((curves.sparsity, "value"), (self.sparsity, "value"))
            self.sparsity.disabled = True
            self.sparsity.description = "target (curves)"
        self.widget = w.VBox([w.HBox([self.allocation, self.metric, self.pattern]),
                              w.HBox([self.wbits, self.group_size, self.quant_method]),
                              w.HBox([self.sparsity, self.mode, self.button]), self.progress, self.table])
        self._render()

    def params(self) -> dict:
        """Allocator parameters: exactly those the curves plot for this allocation (none without curves)."""
        return self.curves.params(self.allocation.value) if self.curves is not None else {}

    def config(self) -> RunSpec:
        """The run the controls describe (a WorkbenchError on an invalid combination)."""
        return RunSpec.from_flat(self.session.calibration_settings,  # the calibration the curves were computed from
                                 model=self.session.model_name, metric=self.metric.value,
                                 allocation=self.allocation.value, sparsity=round(self.sparsity.value, 4),
                                 pattern=self.pattern.value, mode=self.mode.value, eval_seqlen=self.eval_seqlen,
                                 eval_dataset=self.eval_dataset, alloc_params=self.params(),
                                 wbits=self.wbits.value, quant_method=self.quant_method.value,
                                 group_size=None if self.group_size.value == "channel" else self.group_size.value)

    def start(self) -> threading.Thread:
        """Start a run in a background thread (runs queue behind each other in the session)."""
        thread = threading.Thread(target=self._run, daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def wait(self, timeout: float | None = None) -> None:
        """Block until the last started run has finished (for scripts and tests)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _stage(self, name: str) -> None:
        self.progress.description, self.progress.value = name, STAGES.get(name, self.progress.value)

    def _run(self) -> None:
        start = time.perf_counter()
        row = {"allocation": self.allocation.value, "metric": self.metric.value, "pattern": self.pattern.value,
               "target": round(self.sparsity.value, 4), "params": compact_params(self.params()),
               "wbits": self.wbits.value if self.wbits.value == 16 else
               f"{self.wbits.value} ({self.group_size.value}, {self.quant_method.value})"}
        if self.pattern.value != "unstructured":  # N:M fixes every layer at N/M whatever the slider says
            n, m = (int(x) for x in self.pattern.value.split(":"))
            row["target"] = f"{n / m:g} ({self.pattern.value})"
        self.button.disabled = True
        try:
            record = self.session.run(self.config(), on_stage=self._stage)
            self.records.append(record)
            row.update(actual=record["metrics"].get("actual_sparsity"), perplexity=record["metrics"].get("perplexity"),
                       **{"bits/weight": record["sparsity_report"].get("bits_per_weight")})
            if self.curves is not None and learns_while_pruning(record["method"]["allocation"]):  # learned: show it
                from ..profile import SparsityProfile

                self.curves.add_profile(f"besa {row['target']:g}", SparsityProfile.from_dict(record["profile"]))
        except WorkbenchError as err:  # a refusal; a bug raises with its traceback
            row["error"] = str(err)
        finally:
            row["seconds"] = round(time.perf_counter() - start, 1)
            self.rows.append(row)
            self.progress.description, self.progress.value = "idle", 1.0
            self.button.disabled = False
            self._render()

    def _render(self) -> None:
        def cell(value):
            if isinstance(value, float):
                return f"{value:.4f}" if value < 10 else f"{value:.2f}"
            return html.escape("" if value is None else str(value))

        head = "".join(f"<th>{c}</th>" for c in COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in COLUMNS) + "</tr>" for r in self.rows)
        self.table.value = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
