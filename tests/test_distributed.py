"""Ray workers (workbench/distributed.py) on a local Ray started here (num_cpus=2) with the tiny model:
a parallel search equals the serial one, a killed worker is survived, a parallel grid equals the serial grid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch

ray = pytest.importorskip("ray")

from workbench import reproduce  # noqa: E402
from workbench.cli import main  # noqa: E402
from workbench.distributed import (  # noqa: E402
    RayFitnessPool,
    WorkerSpec,
    build_context,
    check_workers,
    grid_runner,
)
from workbench.search import Search, SearchConfig, SearchSetup  # noqa: E402
from workbench.spec import CalibrationSpec, ModelSpec  # noqa: E402

CONFIG = SearchConfig(sparsity=0.5, population=6, generations=3, elite=1, fitness_windows=2, fitness_seqlen=64,
                      cheap_windows=1, cheap_seqlen=32, promote=1)
SPEC = WorkerSpec(SearchSetup(ModelSpec(name="tiny-llama"), CalibrationSpec(nsamples=4, seqlen=32), CONFIG), threads=1)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@contextmanager
def one_thread():
    """Every process of a comparison at the workers' thread count (reductions may round differently at
    another): the serial search, and the parallel search's driver (which computes the allocations)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _search(out, pool=None, resume=False) -> dict:
    with one_thread():
        return Search(build_context(SPEC)[2], CONFIG, out, resume=resume, progress=False, pool=pool).run()


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The serial search: its history and best."""
    out = tmp_path_factory.mktemp("serial")
    best = _search(out)
    return _history(out), best


def _history(out) -> list[dict]:
    """The history without wall times (the only field that differs between two equal runs)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((out / "history.json").read_text())]


@pytest.fixture(scope="module")
def pool(local_ray):
    pool = RayFitnessPool(SPEC, 2)
    yield pool
    pool.close()


def test_parallel_search_equals_the_serial_search(serial, pool, tmp_path):
    history, best = serial
    got = _search(tmp_path, pool)
    assert _history(tmp_path) == history and len(history) >= 2 * CONFIG.population
    assert got["evolution"]["function"] == best["evolution"]["function"]
    assert got["random"]["full_fitness"] == best["random"]["full_fitness"]
    state = json.loads((tmp_path / "state.json").read_text())
    assert set(state["meta"]["baselines"]) == {"uniform", "owl"}
    assert len(set(pool.pids())) == 2 and os.getpid() not in pool.pids()  # two worker processes did the work


def test_a_parallel_level_search_equals_the_serial_one(local_ray, tmp_path):
    """The level space (EvoPress) on the Ray pool: the same history as the serial search, record for record."""
    config = SearchConfig(**(CONFIG.to_dict() | {"space": "levels", "level_step": 0.05, "population": 7}))
    spec = WorkerSpec(SearchSetup(SPEC.setup.model, SPEC.setup.calibration, config), threads=1)
    with one_thread():
        serial = Search(build_context(spec)[2], config, tmp_path / "serial", progress=False).run()
    pool = RayFitnessPool(spec, 2)
    try:
        with one_thread():
            parallel = Search(build_context(spec)[2], config, tmp_path / "parallel", progress=False, pool=pool).run()
    finally:
        pool.close()
    history = _history(tmp_path / "serial")
    assert _history(tmp_path / "parallel") == history and all("levels" in r for r in history)
    assert history[0]["levels"] == [10] * len(history[0]["levels"])  # the uniform start (0.5 / 0.05)
    assert parallel["evolution"]["levels"] == serial["evolution"]["levels"]


def test_a_killed_worker_is_replaced_and_its_candidate_rerun(serial, local_ray, tmp_path):
    history, best = serial
    pool = RayFitnessPool(SPEC, 2)
    pids = dict(zip(map(id, pool.actors), pool.pids(), strict=True))
    killed = []

    def kill_once(actor, _index):
        if not killed and id(actor) in pids:
            os.kill(pids[id(actor)], signal.SIGKILL)  # mid-candidate: the job was just submitted to it
            killed.append(pids[id(actor)])

    pool.on_submit = kill_once
    try:
        got = _search(tmp_path, pool)
    finally:
        pool.close()
    assert killed and pool.replaced >= 1
    assert _history(tmp_path) == history and got["evolution"]["function"] == best["evolution"]["function"]


def test_an_interrupted_parallel_search_resumes_to_the_serial_result(serial, pool, tmp_path):
    history, _best = serial
    calls = {"n": 0}
    original = pool.fitness

    def failing(jobs):
        calls["n"] += 1
        if calls["n"] == 4:  # inside generation 1
            raise KeyboardInterrupt
        return original(jobs)

    pool.fitness = failing
    try:
        with pytest.raises(KeyboardInterrupt):
            _search(tmp_path, pool)
    finally:
        pool.fitness = original
    assert json.loads((tmp_path / "state.json").read_text())["generation"] == 0
    _search(tmp_path, pool, resume=True)
    assert _history(tmp_path) == history


def _grid(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("""name: g
model: tiny-llama
defaults: {metric: wanda, nsamples: 4, seqlen: 64, eval_seqlen: 256}
perplexity:
  dense: false
  sparsities: [0.5]
  methods:
    - {label: uniform, allocation: uniform}
    - {label: too long, allocation: uniform, eval_seqlen: 100000000}
    - {label: OWL, allocation: owl}
""")
    return grid


def test_a_parallel_grid_gives_the_serial_tables_and_isolates_a_failing_entry(local_ray, tmp_path):
    grid = _grid(tmp_path)
    serial = reproduce.run_grid(grid, tmp_path / "serial", progress=False)
    parallel = reproduce.run_grid(grid, tmp_path / "parallel", progress=False, run_entries=grid_runner(2))
    assert parallel["tables"] == serial["tables"]
    for name in ("perplexity.md", "perplexity.csv"):
        assert (tmp_path / "parallel/g/tables" / name).read_text() == (tmp_path / "serial/g/tables" / name).read_text()
    assert [r["run"]["id"] for r in parallel["failed"]] == ["perplexity-too_long-0.5"]
    assert "seqlen=100000000 is larger" in parallel["failed"][0]["error"]
    ok = [r for r in parallel["records"] if r["status"] == "ok"]
    assert len(ok) == 2 and all(r["metrics"]["perplexity"] > 1 for r in ok)
    again = reproduce.run_grid(grid, tmp_path / "parallel", progress=False, run_entries=grid_runner(2))
    assert [r["run_seconds"] for r in again["records"] if r["status"] == "ok"] == [r["run_seconds"] for r in ok]


def test_grid_tasks_get_their_share_of_the_cores(local_ray, tmp_path, monkeypatch):
    from workbench import distributed

    seen = []
    monkeypatch.setattr(distributed, "_execute_entry", lambda run, model, folder: (
        seen.append(1), {"status": "ok", "threads": os.environ.get("OMP_NUM_THREADS")})[1])
    run = reproduce.Run("perplexity", "x", 0.5, {})
    records = distributed.run_entries([(run, "tiny-llama", tmp_path / "a"), (run, "tiny-llama", tmp_path / "b")], 2)
    assert [r["threads"] for r in records] == [str(max(1, (os.cpu_count() or 1) // 2))] * 2


def test_bad_worker_arguments_are_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["search", "--model", "tiny-llama", "--out", str(out), "--workers", "0"]) == 2
    assert "workers=0 must be an integer >= 1" in capsys.readouterr().err
    assert main(["search", "--model", "tiny-llama", "--out", str(out), "--address", "auto"]) == 2
    assert "--address names the Ray cluster of --workers" in capsys.readouterr().err
    start = time.perf_counter()
    assert main(["search", "--model", "tiny-llama", "--out", str(out), "--workers", "2", "--address",
                 "ray://127.0.0.1:9"]) == 2
    assert time.perf_counter() - start < 30
    assert "address='ray://127.0.0.1:9': no Ray cluster answers there" in capsys.readouterr().err
    assert not out.exists()
    with pytest.warns(UserWarning, match="more than this machine's"):
        assert check_workers((os.cpu_count() or 1) + 1) == (os.cpu_count() or 1) + 1


def test_without_workers_nothing_imports_ray(tmp_path):
    argv = ["search", "--model", "tiny-llama", "--population", "2", "--generations", "1", "--elite", "0",
            "--fitness-windows", "1", "--fitness-seqlen", "32", "--cheap-windows", "0", "--nsamples", "2",
            "--seqlen", "16", "--no-random-baseline", "--out", str(tmp_path / "s")]
    code = ("import sys; from workbench.cli import main; "
            f"assert main({argv!r}) == 0; "
            "print('ray' in sys.modules, 'workbench.distributed' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.stdout.strip().splitlines()[-1] == "False False"


def test_cli_search_with_workers_runs_on_the_local_ray(local_ray, tmp_path):
    out = tmp_path / "s"
    argv = ["search", "--model", "tiny-llama", "--population", "4", "--generations", "2", "--elite", "1",
            "--fitness-windows", "1", "--fitness-seqlen", "32", "--cheap-seqlen", "16", "--nsamples", "2",
            "--seqlen", "16", "--out", str(out), "--workers", "2"]
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    history = json.loads((out / "history.json").read_text())
    assert {r["kind"] for r in history} == {"evolution", "random"} and (out / "best_function.json").is_file()
    assert json.loads((out / "progress.json").read_text())["phase"] == "done"
