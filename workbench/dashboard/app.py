"""The dashboard page: controls, layer-wise sparsity curves, queued prune-and-evaluate runs, records, tables.

Each browser session gets its own :class:`Dashboard` (a Panel ``Viewer`` whose state is ``param`` parameters:
its controls, its run table, its messages). What the pages of one server share lives in one
:class:`DashboardServices` that :func:`serve` creates and hands to every page: one
:class:`~workbench.session.Session` per model (dense statistics computed once), one job queue (two runs started
at once execute one after the other), the curve workers and the dense perplexities.
Menus come from the registries and each allocator's controls from its declared parameters
(:class:`workbench.allocation.Param`); a run is one :class:`~workbench.spec.RunSpec`.
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
from typing import Any

import pandas as pd
import panel as pn
import param
import plotly.graph_objects as go

from workbench import plots
from workbench.allocation import allocation_names, learns_while_pruning
from workbench.dashboard.controls import AllocatorControls, controls_class
from workbench.dashboard.jobs import Job, JobQueue
from workbench.errors import WorkbenchError
from workbench.inputs import parse_number
from workbench.models import MODELS
from workbench.profile import SparsityProfile
from workbench.pruners import METRICS
from workbench.quantize import QUANT_METHODS
from workbench.results import compact_params, write_json_atomic
from workbench.session import CURVE_ALLOCATORS, Session
from workbench.spec import DENSE, MethodSpec, RunSpec, field_help

_METHOD = MethodSpec()  # a run's defaults (metric, pattern, allocation): the page starts from them
COLUMNS = ("run", "model", "allocation", "params", "metric", "target", "pattern", "wbits", "actual", "bits",
           "perplexity", "seconds", "status")
GROUPS = ("channel", 32, 64, 128)  # quantization groups offered: one scale per output channel, or per N columns


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


class DashboardServices:
    """What every page of one server shares: a Session per model, the run queue, the curve workers and the
    dense perplexities (created once by :func:`serve`, handed to each page)."""

    def __init__(self, config: DashboardConfig | None = None, curve_workers: int = 2):
        self.config = config or DashboardConfig()
        self.jobs = JobQueue()  # runs, one after another, on one worker thread
        # Curves are computed here, never on the server thread (dense statistics of a new model, `global`'s
        # sort over every weight): a page polls the future and shows a busy line with the elapsed time.
        self.curve_pool = ThreadPoolExecutor(max_workers=curve_workers, thread_name_prefix="workbench-curves")
        self._sessions: dict[str, Session] = {}
        self._dense_ppl: dict[tuple, float] = {}  # dense perplexity per (model, eval dataset, eval seqlen)
        self._lock = threading.Lock()

    def session(self, model: str) -> Session:
        """The one Session of ``model`` (its dense statistics are read-only for curves; runs take its lock)."""
        with self._lock:
            if model not in self._sessions:
                self._sessions[model] = Session(model, nsamples=self.config.nsamples, seqlen=self.config.seqlen)
            return self._sessions[model]

    def dense_perplexity(self, spec: RunSpec, stage=None) -> float | None:
        """The dense model's perplexity on ``spec``'s evaluation settings (computed once; on the job worker)."""
        ev = spec.evaluation
        key = (spec.model.name, ev.dataset, ev.seqlen)
        with self._lock:
            known = self._dense_ppl.get(key)
        if known is None:
            if stage is not None:
                stage("dense baseline")
            dense = RunSpec.from_flat({"model": spec.model.name, "allocation": DENSE, "evals": ["ppl"],
                                       "eval_dataset": ev.dataset, "eval_seqlen": ev.seqlen})
            known = self.session(spec.model.name).run(dense)["metrics"]["perplexity"]
            with self._lock:
                self._dense_ppl[key] = known
        return known

    def close(self) -> None:
        """Stop the curve workers and the job worker (queued jobs finish first)."""
        self.curve_pool.shutdown(wait=True, cancel_futures=True)  # a running curve may be importing: let it end
        self.jobs.close()


# --------------------------------------------------------------------------- the page


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


class Dashboard(pn.viewable.Viewer):
    """One browser session's page; ``services`` are the server's shared parts."""

    # ---- what the person chooses (menus from the registries)
    model = param.Selector(objects=MODELS.names(), default=MODELS.names()[0], label="model", doc=field_help("model"))
    metric = param.Selector(objects=METRICS.names(), default=_METHOD.metric, label="metric", doc=field_help("metric"))
    allocation = param.Selector(objects=allocation_names(), default=_METHOD.allocation.name, label="allocator",
                                doc=field_help("allocation") or "the layer-wise allocation")
    sparsity = param.String("0.7", label="target sparsity", doc=field_help("sparsity"))  # as typed; parsed on use
    pattern = param.String(_METHOD.pattern, label="pattern", doc=field_help("pattern"))
    wbits = param.Selector(objects=[16, 8, 4, 3, 2], default=16, label="weight bits", doc=field_help("wbits"))
    group_size = param.Selector(objects=list(GROUPS), default="channel", label="quantization group",
                                doc=field_help("group_size"))
    quant_method = param.Selector(objects=list(QUANT_METHODS), default="rtn", label="quantizer",
                                  doc=field_help("quant_method"))
    run = param.Event(label="Prune & evaluate")
    record = param.Selector(objects=[], allow_None=True, label="result record")
    refresh_tables = param.Event(label="Refresh tables")

    # ---- what the page shows (set by the page, drawn by panes bound to them)
    message = param.String("", doc="the last refusal or failure, in one line")
    status = param.String("No run yet.")
    busy = param.String("")
    running = param.Boolean(False)
    curve_text = param.String("computing dense statistics…")
    curve_figure = param.ClassSelector(class_=go.Figure)
    runs = param.DataFrame(doc="this page's runs, one row each")
    dense_ppl = param.Number(None, allow_None=True, doc="the dense model's perplexity (the chart's dashed line)")

    def __init__(self, services: DashboardServices, **params: Any):
        self.services = services
        self.jobs: list[Job] = []
        self.learned: dict[tuple[str, str], SparsityProfile] = {}  # BESA profiles of this page's runs
        self._controls: dict[str, AllocatorControls] = {}
        self._shown: set[int] = set()
        self._specs: dict[int, RunSpec] = {}  # job id -> the run it was asked for
        self._pending: tuple[tuple, Future, float] | None = None  # (request, future, started)
        self._shown_model: str | None = None  # the model whose curves the plot shows
        self._poller = None
        self._ready = False
        config = services.config
        super().__init__(curve_figure=plots.sparsity_curves({}), runs=pd.DataFrame(columns=COLUMNS), **params)
        self.param.model.objects = list(dict.fromkeys([*config.models, *MODELS.names()]))
        self.model = config.default_model
        self.download_json = pn.widgets.FileDownload(callback=self._record_json, filename="record.json",
                                                     label="Download JSON")
        self.download_csv = pn.widgets.FileDownload(callback=self._record_csv, filename="record.csv",
                                                    label="Download CSV")
        self.download_recipe = pn.widgets.FileDownload(callback=self._record_recipe, filename="record.recipe.yaml",
                                                       label="Download llm-compressor recipe")
        self.refresh_records()
        self._name_downloads()
        self._ready = True
        self.update_curves()

    # ------------------------------------------------------------------ allocator controls
    def controls(self, allocation: str | None = None) -> AllocatorControls:
        """This page's controls of ``allocation`` (the chosen one by default), made on first use."""
        name = allocation or self.allocation
        if name not in self._controls:
            controls = controls_class(name)()
            controls.follow_metric(self.metric)
            controls.param.watch(lambda _event: self.update_curves(), controls.controls())
            self._controls[name] = controls
        return self._controls[name]

    @param.depends("metric", watch=True)
    def _follow_metric(self) -> None:
        for controls in self._controls.values():
            controls.follow_metric(self.metric)

    @param.depends("allocation")
    def allocator_controls(self) -> pn.viewable.Viewable:
        """The chosen allocator's parameter controls, generated from its declarations."""
        controls = self.controls()
        if not controls.controls():
            return pn.pane.Markdown(f"*{self.allocation} has no parameters.*", css_classes=["wb-params"])
        return pn.Param(controls, parameters=controls.controls(), widgets=controls.widget_options(),
                        show_name=False, css_classes=["wb-params"], sizing_mode="stretch_width")

    # ------------------------------------------------------------------ curves
    def session(self) -> Session:
        return self.services.session(self.model)

    def target(self) -> float:
        """The typed target sparsity (a WorkbenchError names the field and the allowed range)."""
        return parse_number(self.sparsity, "target sparsity", 0.0, 1.0)

    def _fail(self, text: str) -> None:
        self.message = text

    @param.depends("model", "allocation", "sparsity", watch=True)
    def _inputs_changed(self) -> None:
        self.update_curves()

    def update_curves(self) -> None:
        """Ask for the curves of the current controls (computed off the server thread; :meth:`poll` draws
        them). Bad input shows a message and changes nothing."""
        if not self._ready:
            return
        try:
            sparsity = self.target()
        except WorkbenchError as err:
            self._pending, self.busy = None, ""
            self._fail(str(err))
            return
        chosen, model = self.allocation, self.model
        if learns_while_pruning(chosen) and (model, f"{sparsity:g}") not in self.learned:
            self._pending, self.busy = None, ""  # an older request's curves must not clear this message when done
            self._fail(f"{chosen} learns its allocation while pruning: press Prune & evaluate to see its curve "
                       f"at {sparsity:g}")
            return
        if model != self._shown_model:  # another model: never show the old one's curves
            self.curve_figure = plots.sparsity_curves({}, title=f"{model}: computing dense statistics…")
            self.curve_text = f"{model}: computing dense statistics…"
        names = [*CURVE_ALLOCATORS, *([] if chosen in CURVE_ALLOCATORS or learns_while_pruning(chosen) else [chosen])]
        params = {name: self.controls(name).values() for name in names}
        request = (model, chosen, sparsity, json.dumps(params, sort_keys=True, default=str))
        future = self.services.curve_pool.submit(_compute_curves, self.session(), tuple(names), sparsity, params)
        self._pending = (request, future, time.monotonic())
        self._show_busy()

    def _show_busy(self) -> None:
        if self._pending is None or self._pending[1].done():
            self.busy = ""
            return
        (model, chosen, *_rest), _future, started = self._pending
        what = "dense statistics and curves" if self.services.session(model)._cache is None else "curves"
        self.busy = f"⏳ computing {what} for {model} ({chosen})… {time.monotonic() - started:.1f} s"

    def _draw_pending(self) -> None:
        """Draw the latest requested curves once computed (older requests are superseded)."""
        if self._pending is None or not self._pending[1].done():
            return
        (model, chosen, sparsity, _params), future, _started = self._pending
        self._pending = None
        self.busy = ""
        try:
            profiles, errors = future.result()
        except Exception as err:  # noqa: BLE001 - shown on the page
            self._fail(f"{chosen}: {type(err).__name__}: {err}")
            return
        if learns_while_pruning(chosen):
            profiles[chosen] = self.learned[(model, f"{sparsity:g}")]
        if chosen in errors:
            self._fail(f"{chosen}: {errors[chosen]}")
            return
        self.message = ""
        fig = plots.sparsity_curves(profiles, title=f"{model}: layer-wise sparsity, target {sparsity:.2f}")
        for trace in fig.data:
            trace.line.width = 5 if trace.name.startswith(f"{chosen} ") else 1.5
        self.curve_figure = fig
        self._shown_model = model
        shown = profiles[chosen]  # one value per allocation unit, as the chart draws it
        unit = {"row": "projection"}.get(shown.granularity, shown.granularity)  # BESA's rows: a point per linear
        per = "" if unit in ("block", "uniform") else f", per {unit}"
        self.curve_text = (f"{chosen} @ {sparsity:g}{per}: " + " ".join(f"{v:.4f}" for v in plots.unit_curve(shown)[1])
                           + f"  (mean {shown.mean():.4f})")

    # ------------------------------------------------------------------ runs
    def spec(self) -> RunSpec:
        """The run the controls describe, as one RunSpec (a WorkbenchError says what is refused)."""
        config = self.services.config
        return RunSpec.from_flat({"model": self.model, "metric": self.metric, "allocation": self.allocation,
                                  "alloc_params": self.controls().values(), "sparsity": self.target(),
                                  "pattern": self.pattern, "evals": ["ppl"], "nsamples": config.nsamples,
                                  "seqlen": config.seqlen, "eval_seqlen": config.eval_seqlen, "wbits": self.wbits,
                                  "group_size": None if self.group_size == "channel" else self.group_size,
                                  "quant_method": self.quant_method})

    @param.depends("run", watch=True)
    def _run_pressed(self) -> None:
        self.start_run()

    def start_run(self) -> Job | None:
        """Queue a prune-and-evaluate run of the current controls; a refused spec queues nothing."""
        try:
            spec = self.spec()
        except WorkbenchError as err:
            self._fail(str(err))
            return None
        self.message = ""
        services, session, out_dir = self.services, self.session(), self.services.config.results_dir

        def work(stage) -> dict:
            record = session.run(spec, on_stage=stage)
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            m = spec.method
            path = out_dir / f"{stamp}-{spec.model.name}-{m.allocation.name}-{m.sparsity:g}.json"
            write_json_atomic(path, record)
            return {"record": record, "path": str(path), "dense_perplexity": services.dense_perplexity(spec, stage)}

        m = spec.method
        job = services.jobs.submit(f"{m.allocation.name} {m.metric} {m.sparsity:g}", work)
        self._specs[job.id] = spec
        self.jobs.append(job)
        self.poll()
        return job

    def poll(self) -> None:
        """Periodic callback on the server thread: draw pending curves, show job progress and finished rows."""
        self._draw_pending()
        self._show_busy()
        active = [j for j in self.jobs if j.status in ("queued", "running")]
        self.running = bool(active)
        if active:
            j = active[0]
            ahead = self.services.jobs.pending()
            since = f", {time.time() - j.started:.0f} s" if j.started else ""
            self.status = (f"run {j.id} ({j.label}): {j.status}{since}"
                           + (f", stage {j.stage}" if j.stage else "") + (f"; {ahead} queued" if ahead else ""))
        for job in self.jobs:
            if job.status in ("done", "error") and job.id not in self._shown:
                self._shown.add(job.id)
                self._finished(job)

    def _finished(self, job: Job) -> None:
        """A finished job: its row, the chart's dense line, a learned curve, the status line and the records."""
        self._add_row(job)
        result = job.result or {}
        if result.get("dense_perplexity") is not None:
            self.dense_ppl = result["dense_perplexity"]
        record = result.get("record") or {}
        method = record.get("method", {})
        if method and learns_while_pruning(method.get("allocation", "uniform")):
            key = (record["model"]["id"], f"{method['sparsity']:g}")
            self.learned[key] = SparsityProfile.from_dict(record["profile"])
            self.update_curves()
        self.status = f"run {job.id} ({job.label}): {job.status}" + (f" — {job.error}" if job.error else "")
        self.refresh_records()

    def _add_row(self, job: Job) -> None:
        """A row for a finished job: the run it was asked for (also when it failed), numbers rounded."""
        flat, metrics = self._specs[job.id].flat(), ((job.result or {}).get("record") or {}).get("metrics", {})
        row = {"run": job.id, "model": flat["model"], "allocation": flat["allocation"],
               "params": compact_params(flat["alloc_params"]), "metric": flat["metric"],
               "target": round(flat["sparsity"], 4), "pattern": flat["pattern"],
               "wbits": flat["wbits"] if flat["wbits"] == 16 else
               f"{flat['wbits']} ({flat['group_size'] or 'channel'}, {flat['quant_method']})",
               "actual": _round(metrics.get("actual_sparsity"), 4), "bits": _round(metrics.get("bits_per_weight"), 3),
               "perplexity": _round(metrics.get("perplexity"), 2),
               "seconds": round((job.finished or 0) - (job.started or 0), 1), "status": job.error or job.status}
        self.runs = pd.concat([self.runs, pd.DataFrame([row], columns=COLUMNS)], ignore_index=True)

    @param.depends("runs", "dense_ppl")
    def ppl_figure(self) -> go.Figure:
        """Perplexity against actual sparsity of this page's runs, with the dense line."""
        return plots.perplexity_vs_sparsity(self.runs.to_dict("records"), self.dense_ppl)

    @param.depends("runs", "dense_ppl")
    def bits_figure(self) -> go.Figure:
        """Perplexity against bits per weight of this page's runs (quantized or not), with the dense line."""
        return plots.perplexity_vs_bits(self.runs.to_dict("records"), self.dense_ppl)

    # ------------------------------------------------------------------ records and tables
    def refresh_records(self) -> None:
        files = [str(p) for p in sorted(self.services.config.results_dir.glob("*.json"), reverse=True)]
        self.param.record.objects = files
        if files and self.record is None:
            self.record = files[0]

    def _record(self) -> dict:
        return json.loads(Path(self.record).read_text(encoding="utf-8")) if self.record else {}

    @param.depends("record")
    def record_view(self) -> pn.viewable.Viewable:
        return pn.pane.JSON(self._record(), depth=2, sizing_mode="stretch_width")

    @param.depends("record", watch=True)
    def _name_downloads(self) -> None:
        stem = Path(self.record).stem if self.record else "record"
        self.download_json.filename, self.download_csv.filename = f"{stem}.json", f"{stem}.csv"
        self.download_recipe.filename = f"{stem}.recipe.yaml"

    def _record_json(self) -> io.BytesIO:
        return io.BytesIO(json.dumps(self._record(), indent=2).encode())

    def _record_csv(self) -> io.BytesIO:
        return io.BytesIO(record_csv(self._record()).encode())

    def _record_recipe(self) -> io.BytesIO:
        """The selected record's profile as an llm-compressor recipe (the same code as ``export-recipe``);
        a record that cannot be exported shows why and downloads only that reason."""
        from workbench.profile import read_profile_source
        from workbench.recipe import recipe_text, run_settings

        path = self.record or "record"
        try:
            profile, known = read_profile_source(self._record(), path)
            return io.BytesIO(recipe_text(profile, *run_settings(known, path),
                                          quantization=known.get("quantization")).encode())
        except WorkbenchError as err:
            self._fail(f"recipe: {err}")
            return io.BytesIO(f"# no recipe: {err}\n".encode())

    @param.depends("refresh_tables")
    def tables(self) -> pn.Column:
        """The reproduction tables found under the configured folder (read again on *Refresh tables*)."""
        folder = self.services.config.reproduce_dir
        panes = [pn.pane.Markdown(f"### {path.parent.parent.name}: {path.stem}\n\n" + path.read_text())
                 for path in sorted(folder.glob("*/tables/*.md"))]
        return pn.Column(*(panes or [pn.pane.Markdown(
            f"No tables yet under `{folder}`: run `python -m workbench reproduce --grid ...`.")]))

    # ------------------------------------------------------------------ layout
    def __panel__(self) -> pn.viewable.Viewable:
        def select(name: str, css: str) -> pn.widgets.Select:
            return pn.widgets.Select.from_param(self.param[name], css_classes=[css],
                                                description=self.param[name].doc)

        controls = pn.Column(
            select("model", "wb-model"), select("metric", "wb-metric"), select("allocation", "wb-allocator"),
            pn.widgets.TextInput.from_param(self.param.sparsity, css_classes=["wb-target"],
                                            description=self.param.sparsity.doc),
            pn.widgets.TextInput.from_param(self.param.pattern, css_classes=["wb-pattern"],
                                            description=self.param.pattern.doc),
            select("wbits", "wb-wbits"), select("group_size", "wb-group"), select("quant_method", "wb-quantizer"),
            self.allocator_controls,
            pn.widgets.Button.from_param(self.param.run, color="primary", css_classes=["wb-run"]),
            pn.indicators.Progress(active=self.param.running, visible=self.param.running, value=-1, width=240),
            width=300)
        runs = pn.Column(pn.pane.Markdown(self.param.status, css_classes=["wb-status"]),
                         pn.widgets.Tabulator(self.param.runs, disabled=True, show_index=False,
                                              sizing_mode="stretch_width", css_classes=["wb-results"]),
                         pn.pane.Plotly(self.ppl_figure, height=360, sizing_mode="stretch_width"),
                         pn.pane.Plotly(self.bits_figure, height=360, sizing_mode="stretch_width"))
        records = pn.Column(pn.widgets.Select.from_param(self.param.record),
                            pn.Row(self.download_json, self.download_csv, self.download_recipe), self.record_view)
        tables = pn.Column(pn.widgets.Button.from_param(self.param.refresh_tables), self.tables)
        curves = pn.Column(pn.pane.Markdown(self.param.busy, css_classes=["wb-busy"]),
                           pn.pane.Plotly(self.param.curve_figure, height=440, sizing_mode="stretch_width"),
                           pn.pane.Str(self.param.curve_text, css_classes=["wb-curve"], sizing_mode="stretch_width",
                                       styles={"white-space": "pre-wrap", "word-break": "break-word"}),
                           sizing_mode="stretch_width")
        message = pn.pane.Alert(self.param.message, alert_type="danger", visible=self.param.message.rx.bool(),
                                css_classes=["wb-message"])
        if self._poller is None:
            self._poller = pn.state.add_periodic_callback(self.poll, period=self.services.config.poll_ms)
        return pn.Column(pn.pane.Markdown("## Sparsity Allocation Workbench"), message, pn.Row(controls, curves),
                         pn.Tabs(("Runs", runs), ("Records", records), ("Tables", tables)),
                         sizing_mode="stretch_width")


def _compute_curves(session: Session, names: tuple[str, ...], sparsity: float,
                    params: dict[str, dict]) -> tuple[dict, dict]:
    """The profiles of ``names`` at ``sparsity`` with the page's parameters (on a curve worker; the dense
    statistics first); an allocator that cannot allocate gives its message instead."""
    return session.curves(sparsity, allocators=names, params=params)


def _round(value, digits: int):
    return None if value is None else round(float(value), digits)


def create_app(config: DashboardConfig | None = None, services: DashboardServices | None = None) -> Dashboard:
    """A fresh page (one per browser session) on ``services`` (the server's shared parts; new ones if not given)."""
    return Dashboard(services or DashboardServices(config))


def serve(config: DashboardConfig | None = None, port: int = 5006, address: str = "127.0.0.1",
          threaded: bool = False, show: bool = False, services: DashboardServices | None = None):
    """Serve the dashboard on ``address:port`` (127.0.0.1 unless asked); every page shares one
    DashboardServices (``services``, or new ones of ``config``); threaded=True returns a stoppable thread."""
    services = services or DashboardServices(config)
    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]
    return pn.serve({"/": lambda: create_app(services=services)}, port=port, address=address,
                    websocket_origin=origins, show=show, threaded=threaded, title="Sparsity Allocation Workbench",
                    verbose=False)


if __name__.startswith("bokeh"):  # `panel serve workbench/dashboard/app.py` runs this module once per page: the
    # shared parts live in Panel's server-wide cache
    create_app(services=pn.state.as_cached("workbench-dashboard-services", DashboardServices)).servable(
        title="Sparsity Allocation Workbench")
