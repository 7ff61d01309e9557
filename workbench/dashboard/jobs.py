"""A single worker thread that runs prune-and-evaluate jobs one after another (a queue, never two at once)."""

from __future__ import annotations

import itertools
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Job:
    """One queued run: its state is read by the page's periodic callback (no cross-thread UI updates)."""

    id: int
    label: str
    fn: Callable[[Callable[[str], None]], dict]
    status: str = "queued"  # queued | running | done | error
    stage: str = ""
    result: dict | None = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    events: list[str] = field(default_factory=list)


class JobQueue:
    """FIFO of jobs executed by one daemon thread; results are written by the job itself (atomically)."""

    def __init__(self):
        self._queue: queue.Queue[Job | None] = queue.Queue()  # None: stop the worker
        self._ids = itertools.count(1)
        self.history: list[Job] = []  # every job submitted, in order
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="workbench-jobs", daemon=True)
        self._thread.start()

    def submit(self, label: str, fn: Callable[[Callable[[str], None]], dict]) -> Job:
        """Queue ``fn(stage)`` under ``label``; it runs after every job submitted before it."""
        if self.closed:
            raise RuntimeError("the job queue is closed")
        job = Job(next(self._ids), label, fn)
        self.history.append(job)
        self._queue.put(job)
        return job

    def pending(self) -> int:
        """Jobs waiting (not counting the one running)."""
        return sum(1 for job in list(self.history) if job.status == "queued")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the worker once the jobs queued before are done (a later submit is refused)."""
        self._closed = True
        self._queue.put(None)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job.status, job.started = "running", time.time()

            def stage(name: str, job: Job = job) -> None:
                job.stage = name
                job.events.append(name)

            try:
                job.result = job.fn(stage)
                job.status = "done"
            except Exception as err:  # noqa: BLE001 - a failed run is shown on the page, the queue goes on
                job.error = f"{type(err).__name__}: {err}"
                job.events.append(traceback.format_exc(limit=2))
                job.status = "error"
            finally:
                job.finished = time.time()
