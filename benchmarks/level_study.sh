#!/usr/bin/env bash
# The search study at the paper's budget (issue 36): SmolLM2-135M, 70% Wanda (per-row masks of the dense scores),
# fitness on sotu validation only (cheap KL 1 x 64 for every candidate, validation ppl 8 x 512 for the best one of
# each generation), the final choices re-scored on 8 held-out validation windows.
#   block granularity, 5 seeds: function space (DSA functions: evolution + equal-budget random search) and
#   level space (EvoPress levels, step 0.02: evolution + equal-budget random search), 64 new candidates a
#   generation (EvoPress's offspring count; 1 promoted to the full fitness), 32 generations = 2050 (functions:
#   66 with 2 elites) / 2049 (levels: 65 with the parent) distinct candidates per method and seed;
#   projection granularity, 3 seeds: the two evolutions only, 16 generations = 1026 / 1025 candidates.
# Two searches run side by side, one thread each (2 cores). Resumable: rerun to continue (each search resumes from
# its state.json; the states are also kept, gzipped, in benchmarks/results/level_study/ and restored from there).
# Usage: benchmarks/level_study.sh [ROOT=runs/level_study]; `benchmarks/level_study.sh ROOT keep` only saves them;
# `benchmarks/level_study.sh ROOT stop` stops a running study (it resumes where it was) and saves them.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${1:-runs/level_study}
mkdir -p "$ROOT"

search() {  # granularity space seed generations [extra flags]
  local out="$ROOT/$1/$2-s$3"
  local shape=(--population 66 --elite 2)
  [ "$2" = levels ] && shape=(--population 65 --elite 1)
  local resume=()
  [ -f "$out/state.json" ] && resume=(--resume)
  [ -f "$out/progress.json" ] && grep -q '"phase": "done"' "$out/progress.json" && return 0
  mkdir -p "$(dirname "$out")"
  OMP_NUM_THREADS=1 $PY -m workbench search --model smollm2-135m --sparsity 0.7 --granularity "$1" --space "$2" \
      --seed "$3" --generations "$4" "${shape[@]}" --promote 1 "${@:5}" --out "$out" "${resume[@]}" \
      >> "$out.log" 2>&1
}
export -f search
export PY ROOT

# Checkpoints kept in the repository (a later session may be a fresh machine): restored where the run folder lacks
# them, written back (gzip) every 10 minutes and when this script ends or is stopped. A finished search's small
# outputs (progress, best choices and profiles) are kept beside its state, so a fresh machine neither re-runs its
# last step nor lacks what the report and the transfer grid read.
KEEP=benchmarks/results/level_study
OUTPUTS="progress.json best.json best_function.json best_profile.json best_random_profile.json"
restore() {
  for gz in "$KEEP"/*/*.state.json.gz; do
    [ -e "$gz" ] || continue
    local rel=${gz#"$KEEP"/}
    local out="$ROOT/${rel%.state.json.gz}"
    [ -f "$out/state.json" ] || { mkdir -p "$out"; gunzip -c "$gz" > "$out/state.json"; }
    for name in $OUTPUTS; do
      [ -f "$KEEP/${rel%.state.json.gz}/$name" ] && [ ! -f "$out/$name" ] && cp "$KEEP/${rel%.state.json.gz}/$name" "$out/"
    done
  done
  return 0
}
keep() {
  for state in "$ROOT"/*/*/state.json; do
    [ -e "$state" ] || continue
    local rel=${state#"$ROOT"/}
    local kept="$KEEP/${rel%/state.json}.state.json.gz"
    mkdir -p "$(dirname "$kept")"
    [ -f "$kept" ] && cmp -s <(gunzip -c "$kept") "$state" && continue  # unchanged: no new bytes in git
    gzip -9 -n -c "$state" > "$kept.tmp"
    mv "$kept.tmp" "$kept"
  done
  for progress in "$ROOT"/*/*/progress.json; do  # finished searches only: their outputs no longer change
    [ -e "$progress" ] && grep -q '"phase": "done"' "$progress" || continue
    local folder; folder=$(dirname "$progress")
    local kept="$KEEP/${folder#"$ROOT"/}"
    mkdir -p "$kept"
    for name in $OUTPUTS; do
      [ -f "$folder/$name" ] && ! cmp -s "$folder/$name" "$kept/$name" && cp "$folder/$name" "$kept/$name"
    done
  done
  return 0
}
if [ "${2:-}" = keep ]; then keep; exit 0; fi
if [ "${2:-}" = stop ]; then  # the running study (its xargs first, or it starts the next search), then keep
  pkill -f "^bash $0 $ROOT\$" || true; pkill -f "^xargs -P 2 -I.* bash -c search" || true
  pkill -f "workbench search .* --out $ROOT/" || true; pkill -f "^sleep ${KEEP_EVERY:-600}\$" || true
  sleep 2; keep; exit 0
fi
restore
# kept every KEEP_EVERY seconds as well: a session stopped at once runs no EXIT trap, and what was not kept is lost
( while sleep "${KEEP_EVERY:-600}"; do keep; done ) &
keeper=$!
trap 'kill $keeper 2>/dev/null; keep' EXIT

jobs=()
for seed in 0 1 2 3 4; do
  jobs+=("block functions $seed 32" "block levels $seed 32")
done
for seed in 0 1 2; do
  jobs+=("projection functions $seed 16 --no-random-baseline" "projection levels $seed 16 --no-random-baseline")
done
printf '%s\n' "${jobs[@]}" | xargs -P 2 -I{} bash -c 'search {}'
$PY benchmarks/level_study_report.py --root "$ROOT" > "$ROOT/report.md"
