"""Mutation score per module from mutmut's results (``mutants/**/*.meta``), and the surviving mutants.

    make mutation                                   # mutmut run, then this report
    .venv/bin/python scripts/mutation_report.py [--survivors] [--equivalent data/mutation/equivalent.txt]
    # hours short? a stratified random sample of the unchecked mutants, run, then reported apart:
    .venv/bin/python scripts/mutation_report.py --sample 150 --seed 0 > sample.txt
    .venv/bin/mutmut run --max-children 2 $(cat sample.txt)
    .venv/bin/python scripts/mutation_report.py --sampled sample.txt

Score = (killed + timeout) / (killed + timeout + survived + no tests): a mutant no test runs counts
against the score. Mutants listed in the equivalent file
(one mutant name per line, '#' comments: why it is equivalent) are counted apart and not as survivors.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code  # mutmut's own exit code -> verdict table


def load(root: Path) -> dict[str, str]:
    """mutant name -> status, over every mutated file under ``root``."""
    out = {}
    for meta in sorted(root.rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = status_by_exit_code[code]
    return out


def module_of(mutant: str) -> str:
    head = mutant.split("__mutmut_")[0]
    parts = head.split(".")
    return ".".join(p for p in parts[:-1])


def equivalent_names(path: Path | None) -> set[str]:
    if path is None or not path.exists():
        return set()
    return {line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=Path, default=Path("mutants"))
    ap.add_argument("--equivalent", type=Path, default=Path("data/mutation/equivalent.txt"))
    ap.add_argument("--survivors", action="store_true", help="list every surviving non-equivalent mutant")
    ap.add_argument("--sample", type=int, default=None, metavar="N",
                    help="print N unchecked mutant names, drawn at random per module in proportion to its "
                         "unchecked count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampled", type=Path, default=None, metavar="FILE",
                    help="also report the mutants named in FILE (a --sample draw) on their own, with a 95%% interval")
    args = ap.parse_args()
    status = load(args.mutants)
    if not status:
        raise SystemExit(f"no mutmut results under {args.mutants}/ (run `make mutation` first)")
    if args.sample is not None:
        print("\n".join(draw_sample(status, args.sample, args.seed)))
        return
    equivalent = equivalent_names(args.equivalent)
    per_module: dict[str, Counter] = {}
    for name, st in status.items():
        st = "equivalent" if st == "survived" and name in equivalent else st
        per_module.setdefault(module_of(name), Counter())[st] += 1
    total = Counter()
    print(f"{'module':45} {'mutants':>7} {'checked':>7} {'killed':>6} {'surv.':>5} {'equiv.':>6} {'no test':>7}  score")
    for module, c in sorted(per_module.items()):
        total.update(c)
        _row(module, c)
    _row("all", total)
    if args.sampled is not None:
        report_sample(status, equivalent, args.sampled.read_text().split())
    if args.survivors:
        for name, st in sorted(status.items()):
            if st == "survived" and name not in equivalent:
                print("survived:", name)


def draw_sample(status: dict[str, str], n: int, seed: int) -> list[str]:
    """``n`` unchecked mutants, stratified: each module gets its proportional share (rounded, at least one)."""
    unchecked: dict[str, list[str]] = {}
    for name, st in sorted(status.items()):
        if st == "not checked":
            unchecked.setdefault(module_of(name), []).append(name)
    total = sum(len(v) for v in unchecked.values())
    rng, out = random.Random(seed), []
    for _module, names in sorted(unchecked.items()):
        out += rng.sample(names, min(len(names), max(1, round(n * len(names) / total))))
    return out


def report_sample(status: dict[str, str], equivalent: set[str], names: list[str]) -> None:
    """Kill rate of a random sample of once-unchecked mutants, with a Wilson 95% interval."""
    c = Counter("equivalent" if status[n] == "survived" and n in equivalent else status[n] for n in names)
    killed, tested = c["killed"] + c["timeout"], c["killed"] + c["timeout"] + c["survived"] + c["no tests"]
    print(f"\nsample of {len(names)} unchecked mutants: {dict(c)}")
    if tested:
        p, z = killed / tested, 1.96
        centre = (p + z * z / (2 * tested)) / (1 + z * z / tested)
        half = z * math.sqrt(p * (1 - p) / tested + z * z / (4 * tested * tested)) / (1 + z * z / tested)
        print(f"sample score {100 * p:.1f}% ({killed}/{tested}), 95% interval {100 * (centre - half):.1f}%"
              f"-{100 * (centre + half):.1f}%")


def _row(module: str, c: Counter) -> None:
    killed = c["killed"] + c["timeout"]
    tested = killed + c["survived"] + c["no tests"]
    checked = sum(v for k, v in c.items() if k != "not checked")
    score = f"{100 * killed / tested:5.1f}%" if tested else "  -  "
    print(f"{module:45} {sum(c.values()):7} {checked:7} {killed:6} {c['survived']:5} {c['equivalent']:6} "
          f"{c['no tests']:7}  {score}")


if __name__ == "__main__":
    main()
