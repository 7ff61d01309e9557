"""Mutation score per module from mutmut's results (``mutants/**/*.meta``), and the surviving mutants.

    make mutation                                   # mutmut run, then this report
    .venv/bin/python scripts/mutation_report.py [--survivors] [--equivalent data/mutation/equivalent.txt]
    # hours short? a stratified random sample of the unchecked mutants, run, then reported apart:
    .venv/bin/python scripts/mutation_report.py --sample 150 --seed 0 > sample.txt
    .venv/bin/mutmut run --max-children 2 $(cat sample.txt)
    .venv/bin/python scripts/mutation_report.py --sampled sample.txt
    # or an estimate over *all* mutants: a census (every mutant of a list run, e.g. past survivors) plus a
    # uniform sample of everything else; the score is the census exactly plus the rest at the sample's rate
    .venv/bin/python scripts/mutation_report.py --sample 150 --seed 4 --census census.txt > sample.txt
    .venv/bin/mutmut run --max-children 2 $(cat census.txt sample.txt)
    .venv/bin/python scripts/mutation_report.py --census census.txt --sampled sample.txt

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
    ap.add_argument("--census", type=Path, default=None, metavar="FILE",
                    help="mutants all run (one name per line); with --sample: draw uniformly from the others "
                         "(checked or not); with --sampled: estimate the score over all mutants")
    ap.add_argument("--sampled", type=Path, default=None, metavar="FILE",
                    help="also report the mutants named in FILE (a --sample draw) on their own, with a 95%% interval")
    args = ap.parse_args()
    status = load(args.mutants)
    if not status:
        raise SystemExit(f"no mutmut results under {args.mutants}/ (run `make mutation` first)")
    equivalent = equivalent_names(args.equivalent)
    census = args.census.read_text().split() if args.census is not None else None
    if args.sample is not None:
        names = (draw_sample(status, args.sample, args.seed) if census is None
                 else draw_uniform(status, census, equivalent, args.sample, args.seed))
        print("\n".join(names))
        return
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
        sample = args.sampled.read_text().split()
        report_sample(status, equivalent, sample)
        if census is not None:
            report_estimate(status, equivalent, census, sample)
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


def outside_census(status: dict[str, str], census: list[str], equivalent: set[str]) -> list[str]:
    """Every mutant neither in the census nor judged equivalent, sorted: what a uniform sample stands for."""
    skip = set(census) | equivalent
    return sorted(name for name in status if name not in skip)


def draw_uniform(status: dict[str, str], census: list[str], equivalent: set[str], n: int, seed: int) -> list[str]:
    """``n`` mutants drawn uniformly from :func:`outside_census`."""
    return random.Random(seed).sample(outside_census(status, census, equivalent), n)


def report_estimate(status: dict[str, str], equivalent: set[str], census: list[str], sample: list[str]) -> None:
    """Score over all mutants: the census counted exactly, the rest (N_rest) at the uniform sample's kill rate
    (equivalent mutants of the census and the rest counted apart), with the sample's Wilson 95% interval."""
    def verdicts(names):
        return Counter("equivalent" if n in equivalent else status[n] for n in names)

    a = verdicts(census)
    a_killed = a["killed"] + a["timeout"]
    a_tested = a_killed + a["survived"] + a["no tests"]
    rest = len(outside_census(status, census, equivalent))
    b = verdicts(sample)
    b_killed, b_tested = b["killed"] + b["timeout"], b["killed"] + b["timeout"] + b["survived"] + b["no tests"]
    if not b_tested or b["not checked"] or a["not checked"]:
        print(f"\nestimate: not every census ({a['not checked']}) and sample ({b['not checked']}) mutant is checked")
        return
    lo, p, hi = _wilson(b_killed, b_tested)
    est = [(a_killed + q * rest) / (a_tested + rest) for q in (lo, p, hi)]
    print(f"\ncensus: {a_killed}/{a_tested} killed ({a['equivalent']} equivalent); rest: {rest} mutants, sample "
          f"{b_killed}/{b_tested} killed ({100 * p:.1f}%)\nestimated score over all non-equivalent mutants: "
          f"{100 * est[1]:.1f}% (95% interval {100 * est[0]:.1f}-{100 * est[2]:.1f}%)")


def _wilson(killed: int, tested: int) -> tuple[float, float, float]:
    """(low, rate, high) of a Wilson 95% interval."""
    p, z = killed / tested, 1.96
    centre = (p + z * z / (2 * tested)) / (1 + z * z / tested)
    half = z * math.sqrt(p * (1 - p) / tested + z * z / (4 * tested * tested)) / (1 + z * z / tested)
    return centre - half, p, centre + half


def report_sample(status: dict[str, str], equivalent: set[str], names: list[str]) -> None:
    """Kill rate of a random sample of once-unchecked mutants, with a Wilson 95% interval."""
    c = Counter("equivalent" if status[n] == "survived" and n in equivalent else status[n] for n in names)
    killed, tested = c["killed"] + c["timeout"], c["killed"] + c["timeout"] + c["survived"] + c["no tests"]
    print(f"\nsample of {len(names)} mutants: {dict(c)}")
    if tested:
        lo, p, hi = _wilson(killed, tested)
        print(f"sample score {100 * p:.1f}% ({killed}/{tested}), 95% interval {100 * lo:.1f}%-{100 * hi:.1f}%")


def _row(module: str, c: Counter) -> None:
    killed = c["killed"] + c["timeout"]
    tested = killed + c["survived"] + c["no tests"]
    checked = sum(v for k, v in c.items() if k != "not checked")
    score = f"{100 * killed / tested:5.1f}%" if tested else "  -  "
    print(f"{module:45} {sum(c.values()):7} {checked:7} {killed:6} {c['survived']:5} {c['equivalent']:6} "
          f"{c['no tests']:7}  {score}")


if __name__ == "__main__":
    main()
