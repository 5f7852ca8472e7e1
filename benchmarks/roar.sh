#!/usr/bin/env bash
# The README's Recursive ROAR results: the paper's BiLSTM models on SST and bAbI-1 (3 seeds each, all four
# measures, recursive), and the l2v-encoder variant on SST-2, then the report (RACU with 95 % CIs, curves).
# Every (measure, k, seed) step is cached under runs/roar: rerun this script to continue after a kill or a
# time limit. Seeds run as separate processes, JOBS at a time, one CPU thread each (an LSTM at these sizes
# gains little from a second thread; two processes use two cores fully).
#   JOBS=2 bash benchmarks/roar.sh            # everything
#   STAGES="sst" bash benchmarks/roar.sh      # one part: sst, babi-1, encoder, report
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${L2V_DATA:-../shared/data}/roar"
L2V=.venv/bin/l2v
JOBS="${JOBS:-2}"
SEEDS="${SEEDS:-0 1 2}"
STAGES="${STAGES:-sst babi-1 encoder report}"
ENCODER="${ROAR_ENCODER:-smollm2-135m-l2v-sup}"
mkdir -p runs/roar

seeds_in_parallel() {  # LABEL COMMAND...: the command once per seed (--seeds S), JOBS processes at a time, one
  # CPU thread each, logs in runs/roar/LABEL-seedS.log; fails if any seed failed
  local label=$1 failed=0 pids=()
  shift
  for seed in $SEEDS; do
    OMP_NUM_THREADS=1 "$@" --seeds "$seed" >> "runs/roar/$label-seed$seed.log" 2>&1 &
    pids+=($!)
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  done
  for pid in "${pids[@]}"; do wait "$pid" || { echo "$label: a seed failed (see runs/roar/$label-seed*.log)" >&2; failed=1; }; done
  return $failed
}
trap 'kill $(jobs -p) 2>/dev/null' EXIT  # a killed script takes its seed processes with it

for stage in $STAGES; do
  case $stage in
    sst|babi-1|babi-2)
      seeds_in_parallel "$stage" $L2V roar run --dataset "$stage" --data "$DATA" --output runs/roar ;;
    encoder)
      # The encoder variant: frozen l2v encoder + logistic-regression head on SST-2, masking with the model's
      # MNTP mask token. Sized for a CPU: 1,000 training and 500 validation/test sentences, the encoder in
      # bfloat16 (about 3x faster here than float32; one recursive step ~6 min on one core); seeds as parallel
      # processes like the BiLSTM's. Integrated gradients (50 forward+backward passes per sentence through a
      # 135M-parameter model) runs only where ROAR_ENCODER_IG=1 is set.
      measures="attention,gradient,input_x_gradient"
      [ "${ROAR_ENCODER_IG:-0}" = 1 ] && measures="$measures,integrated_gradient"
      seeds_in_parallel encoder $L2V roar encoder --model "$ENCODER" --measures "$measures" --data "$DATA" \
        --output runs/roar --limit-train 1000 --limit-eval 500 --dtype bfloat16 ;;
    report)
      $L2V roar report runs/roar
      mkdir -p benchmarks/results/roar
      cp runs/roar/racu.md runs/roar/racu.json runs/roar/curves.png benchmarks/results/roar/ ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
