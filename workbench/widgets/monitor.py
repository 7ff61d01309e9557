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
        """Re-read the history and redraw; returns the number of candidates seen."""
        path = self.out / "history.json"
        if not path.exists():
            return 0
        history = json.loads(path.read_text(encoding="utf-8"))
        self.history = history
        plots.sync_figure(self.figure, plots.search_progress(history))
        best = {k: y[-1] for k, (_x, y) in plots.search_series(history).items()}
        self.status.value = f"{len(history)} candidates; best full-fidelity fitness: " + ", ".join(
            f"{k} {v:.3f}" for k, v in best.items())
        return len(history)

    def start(self) -> None:
        """Poll the folder every ``interval`` seconds in a background thread until :meth:`stop`."""
        self._stop.clear()

        def loop():
            while not self._stop.wait(self.interval):
                self.refresh()

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
