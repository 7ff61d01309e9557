"""DSA search on Ray workers: distinct candidates per minute, serial vs 1 and 2 workers (one thread each).

    .venv/bin/python benchmarks/search_workers.py [--model smollm2-135m] [--population 16] [--generations 3]

The same search (seed 0, the default multi-fidelity settings, with its random baseline) runs four times:
serial at one thread, serial at the machine's threads, and on a local Ray with 1 and 2 workers of one
thread each (the driver computes allocations at one thread). Printed: distinct candidates scored, seconds
of the search itself (worker start-up, which builds each worker's model and dense statistics once, is
printed apart), candidates per minute, and each as a ratio to the serial run at one thread; each worker's
resident memory and what its context holds; and whether every run's history equals the serial one-thread
run's (the Ray runs must: everything is computed at one thread; the serial run at more threads may round
differently).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _history(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((out / "history.json").read_text())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--generations", type=int, default=3)
    args = ap.parse_args()

    import ray
    import torch

    from workbench.distributed import RayFitnessPool, WorkerSpec, build_context
    from workbench.search import Search, SearchConfig, SearchSetup
    from workbench.spec import CalibrationSpec, ModelSpec

    config = SearchConfig(sparsity=0.7, population=args.population, generations=args.generations)
    spec = WorkerSpec(SearchSetup(ModelSpec(name=args.model), CalibrationSpec(), config), threads=1)
    cores = os.cpu_count() or 1
    rows, histories, memory = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        def search(label: str, threads: int, workers: int | None) -> None:
            torch.set_num_threads(threads)
            ctx = build_context(spec)[2]
            setup, pool = 0.0, None
            if workers:
                start = time.perf_counter()
                pool = RayFitnessPool(spec, workers)
                pool.pids()  # every worker has built its context
                setup = time.perf_counter() - start
            out = Path(tmp) / label.replace(" ", "_")
            start = time.perf_counter()
            Search(ctx, config, out, progress=False, pool=pool).run()
            seconds = time.perf_counter() - start
            if pool is not None:
                for pid in pool.pids():  # what each worker holds: model, dense copy, scores, orders, runtime
                    status = Path(f"/proc/{pid}/status").read_text()
                    rss = int(status.split("VmRSS:")[1].split()[0]) / 2 ** 20
                    memory.append(f"{label}: worker {pid} RSS {rss:.2f} GiB")
                pool.close()
            history = _history(out)
            histories[label] = history
            distinct = len({r["function_key"] for r in history})
            rows.append((label, distinct, seconds, setup))

        search("serial, 1 thread", 1, None)
        search(f"serial, {cores} threads", cores, None)
        ray.init(num_cpus=cores, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 configure_logging=False)
        search("1 worker", 1, 1)
        search("2 workers", 1, 2)
        ray.shutdown()
    base = rows[0][1] / rows[0][2]
    print(f"{args.model}, sparsity 0.7, population {args.population}, {args.generations} generations + random "
          f"baseline, cheap KL 1 x 64, promote 1; {cores} cores")
    print("| run | distinct candidates | search s | worker start-up s | candidates / min | vs serial 1 thread |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, distinct, seconds, setup in rows:
        rate = distinct / seconds
        print(f"| {label} | {distinct} | {seconds:.1f} | {setup:.1f} | {60 * rate:.1f} | {rate / base:.2f}x |")
    print("\n".join(memory))
    ctx = build_context(spec)[2]
    parts = {"model": sum(p.numel() * p.element_size() for p in ctx.model.parameters()),
             "dense copy of the prunable weights": sum(w.numel() * w.element_size()
                                                       for w in ctx.cache.weights.values()),
             "Wanda scores (float32)": sum(s.numel() * s.element_size() for s in ctx.scores.values()),
             "per-row sort orders": sum(o.numel() * o.element_size() for o in ctx.orders.values())}
    print("a worker's context: " + ", ".join(f"{k} {v / 2 ** 30:.3f} GiB" for k, v in parts.items()))
    reference = histories["serial, 1 thread"]
    print("history equal to serial at 1 thread: " + ", ".join(f"{k}: {v == reference}" for k, v in histories.items()))


if __name__ == "__main__":
    main()
