#!/usr/bin/env bash
# The DSA study (issue 14): SmolLM2-135M, embedded data, 70% unstructured. Evolution vs equal-budget random
# search, 3 seeds, 48 x 9 generations = 416 distinct candidates each (elite 2, 2 promotions per generation
# to the full fitness, validation ppl 8 x 512; cheap stage KL 1 x 128: the settings the study ran with, not
# today's search defaults). Two searches run side by side with one thread each (2 cores). Then the searched functions go to workbench/resources/functions/ and the application grid
# (Wanda and SparseGPT, test ppl + embedded zero-shot) runs; then the search-cost benchmark. Resumable.
set -e
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p runs/study
search() {
  OMP_NUM_THREADS=1 $PY -m workbench search --model smollm2-135m --sparsity 0.7 --population 48 --generations 9 \
      --elite 2 --promote 2 --cheap-seqlen 128 --seed "$1" --out "runs/study/search-seed$1" --resume > "runs/study/search-seed$1.log" 2>&1
}
search 0 & search 1 & wait
search 2 &
OMP_NUM_THREADS=1 $PY benchmarks/search_cost.py > runs/study/search_cost.log 2>&1 &
wait
$PY benchmarks/dsa_study_functions.py runs/study/search-seed0 runs/study/search-seed1 runs/study/search-seed2 \
    > runs/study/functions.log
$PY -m workbench reproduce --grid data/grids/dsa_study.yaml --out runs/study/grid > runs/study/grid.log 2>&1
$PY benchmarks/dsa_study_report.py --root runs/study > runs/study/report.md
