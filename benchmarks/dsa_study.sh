#!/usr/bin/env bash
# DSA study: evolution vs equal-budget random search, SmolLM2-135M, 70%, 3 seeds, 416 distinct candidates each
set -e
for seed in 0 1 2; do
  .venv/bin/python -m workbench search --model smollm2-135m --sparsity 0.7 --population 48 --generations 9 \
      --elite 2 --promote 2 --seed $seed --out runs/study/search-seed$seed --resume > runs/study/search-seed$seed.log 2>&1
done
