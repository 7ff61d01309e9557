"""How fast SparsityCurves redraws when a control changes, against the one-time dense statistics pass
it avoids (the issue's target: a redraw in well under a second on the embedded model).

    .venv/bin/python benchmarks/curves_redraw.py [--model smollm2-135m] [--repeats 5]

The first redraw also computes the Wanda scores and OWL/DSA block statistics once (memoised by the
Session); later redraws only re-allocate and rebuild the figure.
"""

import argparse
import statistics
import time

from workbench.session import Session
from workbench.widgets import SparsityCurves


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    t0 = time.perf_counter()
    session = Session(args.model)
    session.cache  # noqa: B018 - load the model and gather the dense statistics now
    t_stats = time.perf_counter() - t0
    t0 = time.perf_counter()
    curves = SparsityCurves(session, sparsity=0.7)
    t_first = time.perf_counter() - t0

    changes = {"target": (curves.sparsity, [0.5, 0.6, 0.7]), "λ": (curves.lam, [0.05, 0.12, 0.08]),
               "M": (curves.M, [3.0, 8.0, 5.0]), "DSA function": (curves.function, ["readme", "poster"])}
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, (control, values) in changes.items():
            for value in values:
                before = [list(t.y) for t in curves.figure.data]
                t0 = time.perf_counter()
                control.value = value  # the observer re-allocates and redraws synchronously
                times.setdefault(name, []).append(time.perf_counter() - t0)
                if name != "DSA function" or value == "poster":
                    assert [list(t.y) for t in curves.figure.data] != before, f"{name}={value} did not redraw"
    every = [t for ts in times.values() for t in ts]
    median = statistics.median(every)
    print(f"model={args.model}: load + dense statistics {t_stats:.2f} s; widget built (scores, first draw) "
          f"{t_first:.2f} s")
    for name, ts in times.items():
        print(f"redraw after a {name} change: median {statistics.median(ts):.3f} s, max {max(ts):.3f} s "
              f"({len(ts)} changes)")
    print(f"redraw median {median:.3f} s (target < 1 s); ratio redraw / statistics pass: {median / t_stats:.4f}")


if __name__ == "__main__":
    main()
