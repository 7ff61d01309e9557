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
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import panel as pn

from workbench import plots
from workbench.allocation import ALLOCATORS as REGISTRY
from workbench.allocation import declared_defaults, learns_while_pruning
from workbench.allocation.dsa.function import PRESETS
from workbench.dashboard.jobs import Job, JobQueue
from workbench.errors import WorkbenchError
from workbench.experiment import ExperimentConfig
from workbench.inputs import parse_number
from workbench.pruners import METRICS
from workbench.results import compact_params, write_json_atomic
from workbench.session import Session

ALLOCATORS = tuple(REGISTRY)  # every registered allocator, in registration order
COLUMNS = ["run", "model", "allocation", "params", "metric", "target", "actual", "perplexity", "seconds", "status"]
# Curves are computed here, never on the server thread (dense statistics of a new model, `global`'s
# sort over every weight): the page polls the future and shows a busy line with the elapsed time.
_CURVES = ThreadPoolExecutor(max_workers=2, thread_name_prefix="workbench-curves")
_DENSE_PPL: dict[tuple, float] = {}  # dense perplexity per (model, eval settings), for the chart


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
        # BESA's own option: with the sigmoid only targets near 0.5 are reachable (its error says so)
        self.besa_sigmoid = pn.widgets.Checkbox(name="BESA: sigmoid on the logits (targets ~0.38-0.62)", value=False,
                                                css_classes=["wb-besa-sigmoid"])
        self.run_button = pn.widgets.Button(name="Prune & evaluate", button_type="primary", css_classes=["wb-run"])
        self.progress = pn.indicators.Progress(name="run", active=False, value=0, max=100, width=240)
        self.status = pn.pane.Markdown("No run yet.", css_classes=["wb-status"])
        self.message = pn.pane.Alert("", alert_type="danger", visible=False, css_classes=["wb-message"])
        self.plot = pn.pane.Plotly(plots.sparsity_curves({}), height=440, sizing_mode="stretch_width")
        self.curve_text = pn.pane.Str("computing dense statistics…", css_classes=["wb-curve"],
                                      styles={"white-space": "pre-wrap", "word-break": "break-word"},
                                      sizing_mode="stretch_width")
        self.busy = pn.pane.Markdown("", css_classes=["wb-busy"])
        self.ppl_plot = pn.pane.Plotly(plots.perplexity_vs_sparsity([]), height=360, sizing_mode="stretch_width")
        self.results = pn.widgets.Tabulator(pd.DataFrame(columns=COLUMNS), disabled=True, show_index=False,
                                            sizing_mode="stretch_width", css_classes=["wb-results"])
        self.record_select = pn.widgets.Select(name="result record", options=[])
        self.record_view = pn.pane.JSON({}, depth=2, sizing_mode="stretch_width")
        self.download_json = pn.widgets.FileDownload(callback=self._record_json, filename="record.json",
                                                     label="Download JSON", button_type="default")
        self.download_csv = pn.widgets.FileDownload(callback=self._record_csv, filename="record.csv",
                                                    label="Download CSV", button_type="default")
        self.download_recipe = pn.widgets.FileDownload(callback=self._record_recipe, filename="record.recipe.yaml",
                                                       label="Download llm-compressor recipe")
        self.tables = pn.Column()
        self.jobs: list[Job] = []
        self.learned: dict[str, object] = {}  # BESA profiles learned by this page's runs, by target
        self._shown: set[int] = set()
        self._configs: dict[int, ExperimentConfig] = {}  # job id -> the run it was asked for
        self._pending: tuple[tuple, Future, float] | None = None  # (request, future, started)
        self._dense: float | None = None
        self._shown_model: str | None = None  # the model whose curves the plot shows

        for widget in (self.model, self.allocation, self.target, self.lam, self.M, self.function):
            widget.param.watch(lambda _event: self.update_curves(), "value")
        self.record_select.param.watch(lambda _event: self._show_record(), "value")
        self.run_button.on_click(lambda _event: self.start_run())
        self.refresh_records()
        self.refresh_tables()
        self.update_curves()

    # ------------------------------------------------------------------ curves
    def session(self) -> Session:
        return shared_session(self.model.value, self.config)

    def inputs(self) -> dict:
        """The typed fields, validated (ValueError names the field and the allowed range)."""
        return {"sparsity": parse_number(self.target.value, "target sparsity", 0.0, 1.0),
                "lam": parse_number(self.lam.value, "λ", 0.0, 1.0, high_open=False),
                "M": parse_number(self.M.value, "M", 1e-9, 1e6, high_open=False)}

    def _fail(self, text: str) -> None:
        self.message.object, self.message.visible = text, True

    def update_curves(self) -> None:
        """Ask for the curves of the current fields (computed off the server thread; :meth:`poll` draws
        them). Bad input shows a message and changes nothing."""
        try:
            values = self.inputs()
        except WorkbenchError as err:
            self._fail(str(err))
            return
        chosen, model = self.allocation.value, self.model.value
        function = {**PRESETS[self.function.value].to_dict(), "lam": values["lam"]}
        if learns_while_pruning(chosen):  # learned while pruning: available after a run of this page
            key = f"{values['sparsity']:g}"
            if key not in self.learned:
                self._fail("BESA learns its allocation while pruning: press Prune & evaluate to see its curve "
                           f"at {values['sparsity']:g}")
                return
        if model != self._shown_model:  # another model: never show the old one's curves
            self.plot.object = plots.sparsity_curves({}, title=f"{model}: computing dense statistics…")
            self.curve_text.object = f"{model}: computing dense statistics…"
        request = (model, chosen, values["sparsity"], values["lam"], values["M"], json.dumps(function, sort_keys=True))
        session = shared_session(model, self.config)
        future = _CURVES.submit(_compute_curves, session, chosen, values, function)
        self._pending = (request, future, time.monotonic())
        self._show_busy()

    def _show_busy(self) -> None:
        if self._pending is None or self._pending[1].done():
            self.busy.object = ""
            return
        (model, chosen, *_rest), _future, started = self._pending
        what = "dense statistics and curves" if shared_session(model, self.config)._cache is None else "curves"
        self.busy.object = f"⏳ computing {what} for {model} ({chosen})… {time.monotonic() - started:.1f} s"

    def _draw_pending(self) -> None:
        """Draw the latest requested curves once computed (older requests are superseded)."""
        if self._pending is None or not self._pending[1].done():
            return
        (model, chosen, sparsity, *_rest), future, _started = self._pending
        self._pending = None
        self.busy.object = ""
        try:
            profiles, errors = future.result()
        except Exception as err:  # noqa: BLE001 - shown on the page
            self._fail(f"{chosen}: {type(err).__name__}: {err}")
            return
        if learns_while_pruning(chosen):
            profiles[chosen] = self.learned[f"{sparsity:g}"]
        if chosen in errors:
            self._fail(f"{chosen}: {errors[chosen]}")
            return
        self.message.visible = False
        fig = plots.sparsity_curves(profiles, title=f"{model}: layer-wise sparsity, target {sparsity:.2f}")
        for trace in fig.data:
            trace.line.width = 5 if trace.name.startswith(f"{chosen} ") else 1.5
        self.plot.object = fig
        self._shown_model = model
        curve = profiles[chosen].block_means()
        self.curve_text.object = (f"{chosen} @ {sparsity:g}: " + " ".join(f"{v:.4f}" for v in curve.values())
                                  + f"  (mean {profiles[chosen].mean():.4f})")

    # ------------------------------------------------------------------ runs
    def start_run(self) -> Job | None:
        """Queue a prune-and-evaluate run of the current fields; bad input queues nothing."""
        try:
            values = self.inputs()
            params = {"owl": {"lam": values["lam"], "M": values["M"]},
                      "dsa": {"function": {**PRESETS[self.function.value].to_dict(), "lam": values["lam"]}},
                      "besa": {"sigmoid": self.besa_sigmoid.value}}
            config = ExperimentConfig(model=self.model.value, metric=self.metric.value,
                                      allocation=self.allocation.value, sparsity=values["sparsity"],
                                      alloc_params=params.get(self.allocation.value, _defaults(self.allocation.value)),
                                      nsamples=self.config.nsamples,
                                      seqlen=self.config.seqlen, eval_seqlen=self.config.eval_seqlen)
        except WorkbenchError as err:
            self._fail(str(err))
            return None
        self.message.visible = False
        session, out_dir = self.session(), self.config.results_dir

        def work(stage) -> dict:
            record = session.run(config, on_stage=stage)
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            path = out_dir / f"{stamp}-{config.model}-{config.allocation}-{config.sparsity:g}.json"
            write_json_atomic(path, record)
            return {"record": record, "path": str(path), "dense_perplexity": _dense_perplexity(session, config, stage)}

        job = job_queue().submit(f"{config.allocation} {config.metric} {config.sparsity:g}", work)
        self._configs[job.id] = config
        self.jobs.append(job)
        self.poll()
        return job

    def poll(self) -> None:
        """Periodic callback on the server thread: draw pending curves, show job progress and finished rows."""
        self._draw_pending()
        self._show_busy()
        active = [j for j in self.jobs if j.status in ("queued", "running")]
        self.progress.active = bool(active)
        if active:
            j = active[0]
            ahead = job_queue().pending()
            since = f", {time.time() - j.started:.0f} s" if j.started else ""
            self.status.object = (f"run {j.id} ({j.label}): {j.status}{since}"
                                  + (f", stage {j.stage}" if j.stage else "") + (f"; {ahead} queued" if ahead else ""))
        for job in self.jobs:
            if job.status in ("done", "error") and job.id not in self._shown:
                self._shown.add(job.id)
                self._add_row(job)
                if (job.result or {}).get("dense_perplexity") is not None:
                    self._dense = job.result["dense_perplexity"]
                self.ppl_plot.object = plots.perplexity_vs_sparsity(self.results.value.to_dict("records"), self._dense)
                record = (job.result or {}).get("record", {})
                if learns_while_pruning(record.get("method", {}).get("allocation", "uniform")):
                    from workbench.profile import SparsityProfile

                    self.learned[f"{record['method']['sparsity']:g}"] = SparsityProfile.from_dict(record["profile"])
                    self.update_curves()
                self.status.object = f"run {job.id} ({job.label}): {job.status}" + (
                    f" — {job.error}" if job.error else "")
                self.refresh_records()

    def _add_row(self, job: Job) -> None:
        """A row for a finished job: the configuration it was asked for (also when it failed), numbers rounded."""
        config, metrics = self._configs[job.id], ((job.result or {}).get("record") or {}).get("metrics", {})
        row = {"run": job.id, "model": config.model, "allocation": config.allocation,
               "params": compact_params(config.alloc_params), "metric": config.metric,
               "target": round(config.sparsity, 4),
               "actual": _round(metrics.get("actual_sparsity"), 4), "perplexity": _round(metrics.get("perplexity"), 2),
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
        self.download_recipe.filename = f"{stem}.recipe.yaml"

    def _record_json(self) -> io.BytesIO:
        return io.BytesIO(json.dumps(self._record(), indent=2).encode())

    def _record_csv(self) -> io.BytesIO:
        return io.BytesIO(record_csv(self._record()).encode())

    def _record_recipe(self) -> io.BytesIO:
        """The selected record's profile as an llm-compressor recipe (the same code as ``export-recipe``);
        a record that cannot be exported shows why and downloads only that reason."""
        from workbench.recipe import read_profile_source, recipe_text, run_settings

        path = self.record_select.value or "record"
        try:
            profile, known = read_profile_source(self._record(), path)
            return io.BytesIO(recipe_text(profile, *run_settings(known, path)).encode())
        except WorkbenchError as err:
            self._fail(f"recipe: {err}")
            return io.BytesIO(f"# no recipe: {err}\n".encode())

    def refresh_tables(self) -> None:
        panes = []
        for path in sorted(self.config.reproduce_dir.glob("*/tables/*.md")):
            panes.append(pn.pane.Markdown(f"### {path.parent.parent.name}: {path.stem}\n\n" + path.read_text()))
        self.tables.objects = panes or [pn.pane.Markdown(
            f"No tables yet under `{self.config.reproduce_dir}`: run `python -m workbench reproduce --grid ...`.")]

    # ------------------------------------------------------------------ layout
    def view(self) -> pn.viewable.Viewable:
        controls = pn.Column(self.model, self.metric, self.allocation, self.target, self.lam, self.M, self.function,
                             self.besa_sigmoid, self.run_button, self.progress, width=300)
        refresh = pn.widgets.Button(name="Refresh tables")
        refresh.on_click(lambda _e: self.refresh_tables())
        tabs = pn.Tabs(("Runs", pn.Column(self.status, self.results, self.ppl_plot)),
                       ("Records", pn.Column(self.record_select, pn.Row(self.download_json, self.download_csv,
                                                                                self.download_recipe),
                                             self.record_view)),
                       ("Tables", pn.Column(refresh, self.tables)))
        page = pn.Column(pn.pane.Markdown("## Sparsity Allocation Workbench"), self.message,
                         pn.Row(controls, pn.Column(self.busy, self.plot, self.curve_text,
                                                    sizing_mode="stretch_width")),
                         tabs, sizing_mode="stretch_width")
        pn.state.add_periodic_callback(self.poll, period=self.config.poll_ms)
        return page


def _defaults(allocation: str) -> dict:
    """The parameters the chosen allocator's curve is drawn with and its run uses (besa: its own, learned)."""
    return {} if REGISTRY[allocation].in_loop else declared_defaults(allocation)


def _compute_curves(session: Session, chosen: str, values: dict, function: dict) -> tuple[dict, dict]:
    """uniform / OWL / DSA curves and the chosen allocator's (on a curve worker; dense statistics first)."""
    profiles, errors = session.curves(values["sparsity"], lam=values["lam"], M=values["M"], function=function)
    if chosen not in profiles and chosen not in errors and not REGISTRY[chosen].in_loop:
        try:
            profiles[chosen] = session.profile(chosen, values["sparsity"], **_defaults(chosen))
        except WorkbenchError as err:
            errors[chosen] = str(err)
    return profiles, errors


def _dense_perplexity(session: Session, config: ExperimentConfig, stage) -> float | None:
    """The dense model's perplexity on the run's evaluation settings (once per server; on the job worker)."""
    key = (config.model, config.eval_dataset, config.eval_seqlen)
    if key not in _DENSE_PPL:
        stage("dense baseline")
        dense = ExperimentConfig(model=config.model, allocation="dense", eval_dataset=config.eval_dataset,
                                 eval_seqlen=config.eval_seqlen)
        _DENSE_PPL[key] = session.run(dense)["metrics"]["perplexity"]
    return _DENSE_PPL[key]


def _round(value, digits: int):
    return None if value is None else round(float(value), digits)


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
