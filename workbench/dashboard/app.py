"""The dashboard page: controls, layer-wise sparsity curves, queued prune-and-evaluate runs, records, tables.

Each browser session gets its own :class:`DashboardApp` (its controls and its run table are its
own); the expensive parts are shared: one :class:`~workbench.session.Session` per model (dense
statistics computed once) and one job queue, so two runs started at once execute one after the other.
Run ``python -m workbench dashboard`` or ``panel serve workbench/dashboard/app.py``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import panel as pn

from workbench import plots
from workbench.allocation.dsa.function import PRESETS
from workbench.dashboard.jobs import Job, JobQueue
from workbench.experiment import ExperimentConfig
from workbench.inputs import parse_number
from workbench.pruners import METRICS
from workbench.results import write_json_atomic
from workbench.session import Session

ALLOCATORS = ("uniform", "owl", "dsa", "besa", "er", "er_plus", "global")
COLUMNS = ["run", "model", "allocation", "metric", "target", "actual", "perplexity", "seconds", "status"]


@dataclass
class DashboardConfig:
    """What the server offers: models to choose from, calibration size, and where records live."""

    models: tuple[str, ...] = ("smollm2-135m", "tiny-llama")
    default_model: str = "smollm2-135m"
    nsamples: int | None = None
    seqlen: int | None = None
    eval_seqlen: int | None = None
    results_dir: Path = field(default_factory=lambda: Path("runs/dashboard"))
    reproduce_dir: Path = field(default_factory=lambda: Path("runs/reproduce"))
    poll_ms: int = 400


_SESSIONS: dict[str, Session] = {}
_SESSIONS_LOCK = threading.Lock()
_QUEUE: JobQueue | None = None


def shared_session(model: str, config: DashboardConfig) -> Session:
    """One Session per model for the whole server (its dense statistics are read-only for curves)."""
    with _SESSIONS_LOCK:
        if model not in _SESSIONS:
            _SESSIONS[model] = Session(model, nsamples=config.nsamples, seqlen=config.seqlen)
        return _SESSIONS[model]


def job_queue() -> JobQueue:
    global _QUEUE
    with _SESSIONS_LOCK:
        if _QUEUE is None:
            _QUEUE = JobQueue()
        return _QUEUE


def record_csv(record: dict) -> str:
    """A result record flattened to key,value rows (nested keys joined with dots)."""
    rows: list[tuple[str, object]] = []

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif not isinstance(value, list):
            rows.append((prefix, value))

    walk("", {k: record.get(k) for k in ("model", "method", "metrics", "data", "wall_time_s", "created")})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["key", "value"])
    writer.writerows(rows)
    return buf.getvalue()


class DashboardApp:
    """One browser session's page."""

    def __init__(self, config: DashboardConfig):
        self.config = config
        self.model = pn.widgets.Select(name="model", options=list(config.models), value=config.default_model,
                                      css_classes=["wb-model"])
        self.metric = pn.widgets.Select(name="metric", options=list(METRICS), value="wanda", css_classes=["wb-metric"])
        self.allocation = pn.widgets.Select(name="allocator", options=list(ALLOCATORS), value="uniform",
                                           css_classes=["wb-allocator"])
        self.target = pn.widgets.TextInput(name="target sparsity", value="0.7", css_classes=["wb-target"])
        self.lam = pn.widgets.TextInput(name="λ (OWL, DSA)", value="0.08", css_classes=["wb-lam"])
        self.M = pn.widgets.TextInput(name="M (OWL)", value="5", css_classes=["wb-M"])
        self.function = pn.widgets.Select(name="DSA function", options=list(PRESETS), value="readme")
        self.run_button = pn.widgets.Button(name="Prune & evaluate", button_type="primary", css_classes=["wb-run"])
        self.progress = pn.indicators.Progress(name="run", active=False, value=0, max=100, width=240)
        self.status = pn.pane.Markdown("No run yet.", css_classes=["wb-status"])
        self.message = pn.pane.Alert("", alert_type="danger", visible=False, css_classes=["wb-message"])
        self.plot = pn.pane.Plotly(plots.sparsity_curves({}), height=440, sizing_mode="stretch_width")
        self.curve_text = pn.pane.Str("computing dense statistics…", css_classes=["wb-curve"])
        self.results = pn.widgets.Tabulator(pd.DataFrame(columns=COLUMNS), disabled=True, show_index=False,
                                            sizing_mode="stretch_width", css_classes=["wb-results"])
        self.record_select = pn.widgets.Select(name="result record", options=[])
        self.record_view = pn.pane.JSON({}, depth=2, sizing_mode="stretch_width")
        self.download_json = pn.widgets.FileDownload(callback=self._record_json, filename="record.json",
                                                     label="Download JSON", button_type="default")
        self.download_csv = pn.widgets.FileDownload(callback=self._record_csv, filename="record.csv",
                                                    label="Download CSV", button_type="default")
        self.tables = pn.Column()
        self.jobs: list[Job] = []
        self.learned: dict[str, object] = {}  # BESA profiles learned by this page's runs, by target
        self._shown: set[int] = set()
        self._drawn_for: tuple | None = None

        for widget in (self.model, self.allocation, self.target, self.lam, self.M, self.function):
            widget.param.watch(lambda _event: self.update_curves(), "value")
        self.record_select.param.watch(lambda _event: self._show_record(), "value")
        self.run_button.on_click(lambda _event: self.start_run())
        self.refresh_records()
        self.refresh_tables()
        self._warm(self.model.value)

    # ------------------------------------------------------------------ curves
    def session(self) -> Session:
        return shared_session(self.model.value, self.config)

    def _warm(self, model: str) -> None:
        """Compute the model's dense statistics off the server thread; the poll draws when they are ready."""
        threading.Thread(target=lambda: shared_session(model, self.config).cache, daemon=True).start()

    def _ready(self) -> bool:
        return self.session()._cache is not None

    def inputs(self) -> dict:
        """The typed fields, validated (ValueError names the field and the allowed range)."""
        return {"sparsity": parse_number(self.target.value, "target sparsity", 0.0, 1.0),
                "lam": parse_number(self.lam.value, "λ", 0.0, 1.0, high_open=False),
                "M": parse_number(self.M.value, "M", 1e-9, 1e6, high_open=False)}

    def _fail(self, text: str) -> None:
        self.message.object, self.message.visible = text, True

    def update_curves(self) -> None:
        """Redraw the curves for the current fields; bad input shows a message and changes nothing."""
        try:
            values = self.inputs()
        except ValueError as err:
            self._fail(str(err))
            return
        if not self._ready():
            self._warm(self.model.value)
            self.curve_text.object = "computing dense statistics…"
            return
        session, chosen = self.session(), self.allocation.value
        profiles, errors = session.curves(values["sparsity"], lam=values["lam"], M=values["M"],
                                          function={**PRESETS[self.function.value].to_dict(), "lam": values["lam"]})
        if chosen == "besa":  # learned while pruning: available after a run of this page
            key = f"{values['sparsity']:g}"
            if key not in self.learned:
                self._fail("BESA learns its allocation while pruning: press Prune & evaluate to see its curve "
                           f"at {values['sparsity']:g}")
                return
            profiles["besa"] = self.learned[key]
        elif chosen not in profiles and chosen not in errors:
            try:
                profiles[chosen] = session.profile(chosen, values["sparsity"])
            except ValueError as err:
                errors[chosen] = str(err)
        if chosen in errors:
            self._fail(f"{chosen}: {errors[chosen]}")
            return
        self.message.visible = False
        fig = plots.sparsity_curves(profiles)
        for trace in fig.data:
            trace.line.width = 5 if trace.name.startswith(f"{chosen} ") else 1.5
        self.plot.object = fig
        curve = profiles[chosen].block_means()
        self.curve_text.object = (f"{chosen} @ {values['sparsity']:g}: "
                                  + " ".join(f"{v:.4f}" for v in curve.values())
                                  + f"  (mean {profiles[chosen].mean():.4f})")
        self._drawn_for = (self.model.value, chosen)

    # ------------------------------------------------------------------ runs
    def start_run(self) -> Job | None:
        """Queue a prune-and-evaluate run of the current fields; bad input queues nothing."""
        try:
            values = self.inputs()
            params = {"owl": {"lam": values["lam"], "M": values["M"]},
                      "dsa": {"function": {**PRESETS[self.function.value].to_dict(), "lam": values["lam"]}}}
            config = ExperimentConfig(model=self.model.value, metric=self.metric.value,
                                      allocation=self.allocation.value, sparsity=values["sparsity"],
                                      alloc_params=params.get(self.allocation.value, {}), nsamples=self.config.nsamples,
                                      seqlen=self.config.seqlen, eval_seqlen=self.config.eval_seqlen)
        except ValueError as err:
            self._fail(str(err))
            return None
        self.message.visible = False
        session, out_dir = self.session(), self.config.results_dir

        def work(stage) -> dict:
            record = session.run(config, on_stage=stage)
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            path = out_dir / f"{stamp}-{config.model}-{config.allocation}-{config.sparsity:g}.json"
            write_json_atomic(path, record)
            return {"record": record, "path": str(path)}

        job = job_queue().submit(f"{config.allocation} {config.metric} {config.sparsity:g}", work)
        self.jobs.append(job)
        self.poll()
        return job

    def poll(self) -> None:
        """Periodic callback on the server thread: draw pending curves, show job progress and finished rows."""
        if self._drawn_for is None and self._ready():
            self.update_curves()
        active = [j for j in self.jobs if j.status in ("queued", "running")]
        self.progress.active = bool(active)
        if active:
            j = active[0]
            ahead = job_queue().pending()
            self.status.object = (f"run {j.id} ({j.label}): {j.status}"
                                  + (f", stage {j.stage}" if j.stage else "") + (f"; {ahead} queued" if ahead else ""))
        for job in self.jobs:
            if job.status in ("done", "error") and job.id not in self._shown:
                self._shown.add(job.id)
                self._add_row(job)
                record = (job.result or {}).get("record", {})
                if record.get("method", {}).get("allocation") == "besa":
                    from workbench.profile import SparsityProfile

                    self.learned[f"{record['method']['sparsity']:g}"] = SparsityProfile.from_dict(record["profile"])
                    self.update_curves()
                self.status.object = f"run {job.id} ({job.label}): {job.status}" + (
                    f" — {job.error}" if job.error else "")
                self.refresh_records()

    def _add_row(self, job: Job) -> None:
        record = (job.result or {}).get("record", {})
        metrics, method = record.get("metrics", {}), record.get("method", {})
        row = {"run": job.id, "model": record.get("model", {}).get("id", self.model.value),
               "allocation": method.get("allocation"), "metric": method.get("metric"),
               "target": method.get("sparsity"), "actual": metrics.get("actual_sparsity"),
               "perplexity": metrics.get("perplexity"),
               "seconds": round((job.finished or 0) - (job.started or 0), 1), "status": job.error or job.status}
        self.results.value = pd.concat([self.results.value, pd.DataFrame([row], columns=COLUMNS)], ignore_index=True)

    # ------------------------------------------------------------------ records and tables
    def refresh_records(self) -> None:
        files = sorted(self.config.results_dir.glob("*.json"), reverse=True)
        self.record_select.options = [str(p) for p in files]
        if files and self.record_select.value is None:
            self.record_select.value = str(files[0])

    def _record(self) -> dict:
        path = self.record_select.value
        return json.loads(Path(path).read_text(encoding="utf-8")) if path else {}

    def _show_record(self) -> None:
        self.record_view.object = self._record()
        stem = Path(self.record_select.value).stem if self.record_select.value else "record"
        self.download_json.filename, self.download_csv.filename = f"{stem}.json", f"{stem}.csv"

    def _record_json(self) -> io.BytesIO:
        return io.BytesIO(json.dumps(self._record(), indent=2).encode())

    def _record_csv(self) -> io.BytesIO:
        return io.BytesIO(record_csv(self._record()).encode())

    def refresh_tables(self) -> None:
        panes = []
        for path in sorted(self.config.reproduce_dir.glob("*/tables/*.md")):
            panes.append(pn.pane.Markdown(f"### {path.parent.parent.name}: {path.stem}\n\n" + path.read_text()))
        self.tables.objects = panes or [pn.pane.Markdown(
            f"No tables yet under `{self.config.reproduce_dir}`: run `python -m workbench reproduce --grid ...`.")]

    # ------------------------------------------------------------------ layout
    def view(self) -> pn.viewable.Viewable:
        controls = pn.Column(self.model, self.metric, self.allocation, self.target, self.lam, self.M, self.function,
                             self.run_button, self.progress, width=300)
        refresh = pn.widgets.Button(name="Refresh tables")
        refresh.on_click(lambda _e: self.refresh_tables())
        tabs = pn.Tabs(("Runs", pn.Column(self.status, self.results)),
                       ("Records", pn.Column(self.record_select, pn.Row(self.download_json, self.download_csv),
                                             self.record_view)),
                       ("Tables", pn.Column(refresh, self.tables)))
        page = pn.Column(pn.pane.Markdown("## Sparsity Allocation Workbench"), self.message,
                         pn.Row(controls, pn.Column(self.plot, self.curve_text, sizing_mode="stretch_width")),
                         tabs, sizing_mode="stretch_width")
        pn.state.add_periodic_callback(self.poll, period=self.config.poll_ms)
        return page


def create_app(config: DashboardConfig | None = None) -> pn.viewable.Viewable:
    """A fresh page (one per browser session)."""
    return DashboardApp(config or DashboardConfig()).view()


def serve(config: DashboardConfig | None = None, port: int = 5006, address: str = "127.0.0.1",
          threaded: bool = False, show: bool = False):
    """Serve the dashboard on ``address:port`` (127.0.0.1 unless asked); threaded=True returns a stoppable thread."""
    config = config or DashboardConfig()
    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]
    return pn.serve({"/": lambda: create_app(config)}, port=port, address=address, websocket_origin=origins,
                    show=show, threaded=threaded, title="Sparsity Allocation Workbench", verbose=False)


if __name__.startswith("bokeh"):  # `panel serve workbench/dashboard/app.py`
    create_app().servable()
