#!/usr/bin/env bash
# Issue 15, part 2: the pilot runs that size the final training (configs/pilots/*.yaml), judged on STS-B dev and
# SICK-R trial only. Each run is resumable (rerun this script after an interruption); finished runs are skipped.
# Their dev.jsonl / metrics.jsonl / config.json are copied to benchmarks/results/pilots/records/ (runs/ is not kept
# between checkouts) and drawn by benchmarks/curves.py into benchmarks/results/pilots/.
#   bash benchmarks/pilots.sh [CONFIG ...]        (default: every configs/pilots/*.yaml)
# Two pilots at a time with one thread each use this 2-core machine fully; the hours in the curves are then
# per-thread hours on a shared machine (slower than one run with both threads).
set -euo pipefail
cd "$(dirname "$0")/.."
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(configs/pilots/*.yaml)
for config in "${configs[@]}"; do
  stage=$(sed -n 's/^stage: *//p' "$config")
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" .venv/bin/l2v train "$stage" --config "$config" --no-progress
done
mkdir -p benchmarks/results/pilots/records
for run in runs/pilots/*/; do
  [ -f "$run/dev.jsonl" ] || continue
  name=$(basename "$run")
  mkdir -p "benchmarks/results/pilots/records/$name"
  cp "$run"/dev.jsonl "$run"/metrics.jsonl "$run"/config.json "benchmarks/results/pilots/records/$name/"
done
.venv/bin/python benchmarks/curves.py benchmarks/results/pilots/records/simcse-* --output benchmarks/results/pilots/simcse \
  --title "SimCSE pilots on Bi or on an MNTP adapter (dev sets)"
ls -d benchmarks/results/pilots/records/mntp-* >/dev/null 2>&1 && .venv/bin/python benchmarks/curves.py \
  benchmarks/results/pilots/records/mntp-* --output benchmarks/results/pilots/mntp --title "MNTP pilots (dev sets)"
ls -d benchmarks/results/pilots/records/supervised-* >/dev/null 2>&1 && .venv/bin/python benchmarks/curves.py \
  benchmarks/results/pilots/records/supervised-* --output benchmarks/results/pilots/supervised \
  --title "Supervised pilots on the MNTP adapter (dev sets)"
