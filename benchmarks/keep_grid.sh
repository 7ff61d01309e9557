#!/usr/bin/env bash
# Keep a long grid's finished runs in the repository, so that a later session (maybe on a fresh machine) resumes
# it instead of redoing hours of runs: `keep` gzips each finished run's result.json into
# benchmarks/results/grids/<grid>/<run id>.json.gz; `restore` puts them back where `workbench reproduce` looks
# (OUT/<grid>/<run id>/result.json), without overwriting a run folder that already has one.
# Usage: benchmarks/keep_grid.sh keep|restore GRID_NAME [OUT=runs/reproduce]
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?keep or restore}
grid=${2:?grid name, e.g. smolvlm or quant}
out=${3:-runs/reproduce}
keep_dir="benchmarks/results/grids/$grid"
case "$action" in
  keep)
    mkdir -p "$keep_dir"
    for result in "$out/$grid"/*/result.json; do
      [ -e "$result" ] || continue
      grep -q '"status": "ok"' "$result" || continue
      id=$(basename "$(dirname "$result")")
      kept="$keep_dir/$id.json.gz"
      [ -f "$kept" ] && cmp -s <(gunzip -c "$kept") "$result" && continue  # unchanged: no new bytes in git
      gzip -9 -n -c "$result" > "$kept.tmp" && mv "$kept.tmp" "$kept"
    done
    echo "kept $(ls "$keep_dir" | wc -l) runs of $grid in $keep_dir" ;;
  restore)
    for gz in "$keep_dir"/*.json.gz; do
      [ -e "$gz" ] || continue
      id=$(basename "$gz" .json.gz)
      target="$out/$grid/$id/result.json"
      [ -f "$target" ] && continue
      mkdir -p "$(dirname "$target")"
      gunzip -c "$gz" > "$target"
    done
    echo "restored $(ls "$keep_dir" 2>/dev/null | wc -l) runs of $grid under $out/$grid" ;;
  *) echo "usage: $0 keep|restore GRID [OUT]" >&2; exit 2 ;;
esac
