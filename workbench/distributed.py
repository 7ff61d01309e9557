"""Ray workers for the two things that outgrow one machine first: DSA search candidates and grid runs.

* :class:`RayFitnessPool`: actors that each hold their own model, dense statistics and candidate context
  (built once per actor from a :class:`WorkerSpec`); a generation's allocations, then its fitness jobs, go
  to them in parallel and come back in job order, so :class:`workbench.search.Search` replays the serial
  pass exactly (same history, same best function). A worker that dies mid-job is replaced and the job re-run.
* :func:`run_entries` (handed to :func:`workbench.reproduce.run_grid` by :func:`grid_runner`): each grid
  entry one Ray task (one papermill run), threads per task set so the workers do not oversubscribe the
  cores; failures are recorded per entry, tables built as the serial run does. This module imports the grid
  runner, never the other way round: the caller (the CLI) hands the runner its executor.

Ray is imported only here, and this module only when ``--workers`` is given.
"""

from __future__ import annotations

import functools
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import WorkbenchError

CONNECT_TIMEOUT_S = 10.0
MAX_RETRIES = 3  # a job whose worker dies is re-run on a replacement at most this often


def check_workers(workers: Any) -> int:
    """``--workers``: an integer >= 1 (a warning when it is more than the machine's cores)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise WorkbenchError(f"workers={workers!r} must be an integer >= 1")
    cores = os.cpu_count() or 1
    if workers > cores:
        warnings.warn(f"workers={workers} is more than this machine's {cores} cores: the workers share them "
                      "(results are the same, only slower per worker)", stacklevel=2)
    return workers


def _check_reachable(address: str) -> None:
    """A ``ray://HOST:PORT`` or ``HOST:PORT`` address must accept a connection within CONNECT_TIMEOUT_S."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise WorkbenchError(f"address={address!r} is not allowed; allowed: auto, ray://HOST:PORT or HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise WorkbenchError(f"address={address!r}: no Ray cluster answers there ({type(err).__name__}: {err}); "
                              "start one with `ray start --head` or leave out --address for a local one") from None


def connect(address: str | None = None, workers: int = 1) -> None:
    """Join the Ray cluster at ``address`` (``auto``, ``ray://HOST:PORT``), or start a local one on 127.0.0.1
    with this machine's cores and no dashboard (already connected: nothing to do)."""
    import ray

    if address not in (None, "auto"):
        _check_reachable(address)
    if ray.is_initialized():
        return
    if address is None:
        ray.init(num_cpus=max(os.cpu_count() or 1, workers), include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, configure_logging=False)
        return
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError) as err:
        raise WorkbenchError(f"address={address!r}: could not join a Ray cluster ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None


# --------------------------------------------------------------------------- the one work loop

def work_loop(n_jobs: int, slots: int, submit: Callable[[int, int], Any],
              failed: Callable[[int, int, Exception], Any]) -> list:
    """Run jobs ``0..n_jobs-1`` on ``slots`` Ray slots, at most one job per slot at a time; results in job order.

    ``submit(slot, job)`` starts a job and returns its object ref. When a job's result raises a Ray error,
    ``failed(slot, job, err)`` says what to do: return :data:`RETRY` to run the job again (first in the queue),
    or a value that becomes the job's result. Both the search's actor pool and the grid's tasks use this loop.
    """
    import ray

    results: list = [None] * n_jobs
    queue = list(range(n_jobs))
    running: dict = {}  # object ref -> (slot, job)
    free = list(range(slots))
    while queue or running:
        while queue and free:
            slot, job = free.pop(0), queue.pop(0)
            running[submit(slot, job)] = (slot, job)
        done, _ = ray.wait(list(running), num_returns=1)
        slot, job = running.pop(done[0])
        try:
            results[job] = ray.get(done[0])
        except ray.exceptions.RayError as err:
            outcome = failed(slot, job, err)
            if outcome is RETRY:
                queue.insert(0, job)
            else:
                results[job] = outcome
        free.append(slot)
    return results


RETRY = object()  # what ``failed`` returns to have :func:`work_loop` run a job again


# --------------------------------------------------------------------------- search workers

@dataclass(frozen=True)
class WorkerSpec:
    """What a search worker needs: the search's setup (model, calibration, search spec, fitness dataset), from
    which it builds the same candidate context as the driver, and its thread count."""

    setup: Any  # workbench.search.SearchSetup
    threads: int = 1
    env: dict = field(default_factory=dict)


def build_context(spec: WorkerSpec):
    """(model, tokenizer, SearchContext) from ``spec``: the driver and every worker build it the same way."""
    return spec.setup.build(progress=False)


class _Worker:
    """A Ray actor's body: one candidate context, built once; fitness of one job at a time."""

    def __init__(self, spec: WorkerSpec):
        import torch

        torch.set_num_threads(spec.threads)
        self.ctx = build_context(spec)[2]

    def pid(self) -> int:
        return os.getpid()

    def fitness(self, counts: dict[str, int], fidelity: str) -> tuple[float, float]:
        start = time.perf_counter()
        return self.ctx.fitness(counts, fidelity), time.perf_counter() - start

    def allocation(self, function: dict) -> dict:
        from .allocation.dsa.function import AllocationFunction

        return self.ctx.allocation(AllocationFunction.from_dict(function))


class RayFitnessPool:
    """``workers`` Ray actors evaluating fitness jobs in parallel; results in job order."""

    parallel = True

    def __init__(self, spec: WorkerSpec, workers: int, address: str | None = None):
        import ray

        self.workers = check_workers(workers)
        connect(address, workers)
        self.spec = spec
        self._cls = ray.remote(num_cpus=0)(_Worker)  # CPU use is set by threads, not by Ray's scheduler
        self.actors = [self._start() for _ in range(self.workers)]
        self.replaced = 0  # workers that died and were replaced
        self.on_submit = None  # tests: called with (actor, job index) after each submission

    def _start(self):
        env = {"OMP_NUM_THREADS": str(self.spec.threads), "MKL_NUM_THREADS": str(self.spec.threads),
               **self.spec.env}
        return self._cls.options(runtime_env={"env_vars": env}).remote(self.spec)

    def pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def fitness(self, jobs: list[tuple[dict[str, int], str]]) -> list[tuple[float, float]]:
        """(fitness, seconds) of each (counts, fidelity) job, in order."""
        return self._map("fitness", jobs)

    def allocations(self, functions: list) -> list[dict]:
        """The candidate context's allocation of each function (as ``SearchContext.allocation``), in order."""
        return self._map("allocation", [(fn.to_dict(),) for fn in functions])

    def _map(self, method: str, jobs: list[tuple]) -> list:
        """``method(*job)`` of each job on the workers, results in job order; a job whose worker died is
        re-run on its replacement."""
        import ray

        def submit(slot: int, index: int):
            ref = getattr(self.actors[slot], method).remote(*jobs[index])
            if self.on_submit is not None:
                self.on_submit(self.actors[slot], index)
            return ref

        deaths: dict[int, int] = {}

        def failed(slot: int, index: int, err: Exception):
            if not isinstance(err, ray.exceptions.RayActorError):
                raise err
            deaths[index] = deaths.get(index, 0) + 1
            if deaths[index] > MAX_RETRIES:  # a worker that cannot even start would be replaced for ever
                raise RuntimeError(f"job {index} lost its worker {deaths[index]} times; last: "
                                   f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
            self.actors[slot] = self._start()  # a fresh worker builds its context again
            self.replaced += 1
            return RETRY

        return work_loop(len(jobs), len(self.actors), submit, failed)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def search_threads(workers: int) -> int:
    """Threads of each search worker (and of the driver): the machine's cores shared among the workers."""
    return max(1, (os.cpu_count() or 1) // workers)


# --------------------------------------------------------------------------- grid workers

def _execute_entry(run_dict: dict, model: str, folder: str) -> dict:
    """One grid entry in a Ray task: the serial path's own ``execute`` (papermill), error recorded."""
    from .reproduce import Run, execute

    return execute(Run(**run_dict), model, Path(folder))


def grid_runner(workers: int, address: str | None = None) -> Callable[[list[tuple[Any, str, Path]]], list[dict]]:
    """The executor :func:`workbench.reproduce.run_grid` takes as ``run_entries``: the entries as Ray tasks,
    ``workers`` at once (``address`` joins a cluster, default a local Ray); checked when it runs."""
    return functools.partial(run_entries, workers=workers, address=address)


def run_entries(entries: list[tuple[Any, str, Path]], workers: int, address: str | None = None) -> list[dict]:
    """Execute grid ``entries`` (run, model, folder) as Ray tasks, at most ``workers`` at once, each with
    cores // workers threads; records in entry order (a task that dies is recorded as an error)."""
    import ray

    from .reproduce import Run, finish_record

    check_workers(workers)
    connect(address, workers)
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    task = ray.remote(num_cpus=0, max_retries=0)(_execute_entry).options(runtime_env={"env_vars": env})

    def submit(_slot: int, index: int):
        run, model, folder = entries[index]
        return task.remote(asdict(run), model, str(folder))

    def failed(_slot: int, index: int, err: Exception) -> dict:
        run, _model, folder = entries[index]
        record = {"status": "error", "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
        return finish_record(record, Run(**asdict(run)), {}, 0.0, Path(folder) / "result.json")

    return work_loop(len(entries), workers, submit, failed)
