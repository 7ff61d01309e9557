"""SearchMonitor: live best fitness versus candidates evaluated, a DSA search beside its random baseline."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import ipywidgets as w
import plotly.graph_objects as go

from .. import plots


class SearchMonitor:
    """Watches a search folder (``history.json``, written atomically by the search) and redraws."""

    def __init__(self, out: str | Path, interval: float = 2.0):
        self.out, self.interval = Path(out), interval
        self.figure = go.FigureWidget(plots.search_progress([]))
        self.status = w.HTML("waiting for the first generation")
        self.widget = w.VBox([self.figure, self.status])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.history: list[dict] = []

    def refresh(self) -> int:
        """Re-read the history and progress and redraw; returns the number of candidates seen."""
        progress = _read(self.out / "progress.json") or {}
        history = _read(self.out / "history.json") or []
        self.history = history
        if history or progress.get("baselines"):
            plots.sync_figure(self.figure, plots.search_progress(history, progress.get("baselines")))
        self.status.value = status_line(history, progress)
        return len(history)

    def start(self) -> None:
        """Poll the folder every ``interval`` seconds in a background thread until :meth:`stop`."""
        self._stop.clear()

        def loop():  # at once, then every interval: the page shows the search's state from the start
            while True:
                self.refresh()
                if self._stop.wait(self.interval):
                    break

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.refresh()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def _read(path: Path):
    """A JSON file the search writes atomically (absent before its first write)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def status_line(history: list[dict], progress: dict) -> str:
    """Where the search is: phase, steps, candidates per kind (the x-axis), best, baselines, elapsed and ETA."""
    if not progress and not history:
        return "waiting for the search to start"
    parts = []
    phase, done, steps = progress.get("phase", "evolution"), progress.get("steps_done", 0), progress.get("steps")
    if phase == "baselines":
        parts.append("scoring the uniform and OWL baselines")
    elif steps:
        parts.append(f"{phase}: step {done}/{steps} (generation {progress.get('generation', 0)}/"
                     f"{progress.get('generations')}, random {progress.get('random_chunks', 0)})")
    counts = {}
    for rec in history:
        counts[rec.get("kind", "evolution")] = counts.get(rec.get("kind", "evolution"), 0) + 1
    if counts:
        parts.append("candidates scored: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    best = {k: y[-1] for k, (_x, y) in plots.search_series(history).items()}
    if best:
        parts.append("best: " + ", ".join(f"{k} {v:.3f}" for k, v in best.items()))
    if progress.get("baselines"):
        parts.append("baselines: " + ", ".join(f"{k} {v:.3f}" for k, v in progress["baselines"].items()))
    if progress.get("heldout"):  # the final choices re-scored on validation windows the search never used
        fresh = progress["heldout"].items()
        parts.append("held-out: " + ", ".join(f"{k} {v['heldout_fitness']:.3f}" for k, v in fresh))
    seconds = progress.get("seconds")
    if seconds is not None:
        eta = f"; ETA {_clock(seconds / done * (steps - done))}" if done and steps and done < steps else ""
        parts.append(f"elapsed {_clock(seconds)}{eta}")
    return "; ".join(parts)
