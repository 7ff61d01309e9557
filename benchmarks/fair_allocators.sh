#!/usr/bin/env bash
# The fair allocator comparison at 70% (issue 33), resumable: the grid data/grids/fair70.yaml (each
# hand-made method at its default and tuned on validation; DSA rows labelled by search space), then the
# report (runs/fair/report.md). About 2 h on 2 cores.
set -e
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p runs/fair
$PY -m workbench reproduce --grid data/grids/fair70.yaml --out runs/fair/grid > runs/fair/grid.log 2>&1
$PY benchmarks/fair_allocators_report.py --root runs/fair > runs/fair/report.md
