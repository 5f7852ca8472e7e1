#!/usr/bin/env bash
# The README's Recursive ROAR results: the paper's BiLSTM models on SST and bAbI-1 (3 seeds each, all four
# measures, recursive), and the l2v-encoder variant on SST-2, then the report (RACU with 95 % CIs, curves).
# Every (measure, k, seed) step is cached under runs/roar: rerun this script to continue after a kill or a
# time limit. Each (stage, seed) is a separate process, JOBS at a time across stages, one CPU thread each (an
# LSTM at these sizes gains little from a second thread; two processes use two cores fully).
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

job() {  # LABEL SEED: one seed of one stage, on one CPU thread, logged to runs/roar/LABEL-seedSEED.log
  local label=$1 seed=$2
  case $label in
    sst|babi-1|babi-2)
      set -- $L2V roar run --dataset "$label" --data "$DATA" --output runs/roar ;;
    encoder)
      # The encoder variant: frozen l2v encoder + logistic-regression head on SST-2, masking with the model's
      # MNTP mask token. Sized for a CPU: 1,000 training and 500 validation/test sentences, the encoder in
      # bfloat16 (about 3x faster here than float32; one recursive step ~6 min on one core). Integrated
      # gradients (50 forward+backward passes per sentence through a 135M-parameter model) runs only where
      # ROAR_ENCODER_IG=1 is set.
      local measures="attention,gradient,input_x_gradient"
      [ "${ROAR_ENCODER_IG:-0}" = 1 ] && measures="$measures,integrated_gradient"
      set -- $L2V roar encoder --model "$ENCODER" --measures "$measures" --data "$DATA" --output runs/roar \
        --limit-train 1000 --limit-eval 500 --dtype bfloat16 ;;
  esac
  export OMP_NUM_THREADS=1
  exec "$@" --seeds "$seed" >> "runs/roar/$label-seed$seed.log" 2>&1  # exec: killing the job kills l2v
}

trap 'kill $(jobs -p) 2>/dev/null || true' EXIT  # a killed script takes its seed processes with it
report=0 pids=() names=()
for stage in $STAGES; do
  case $stage in
    sst|babi-1|babi-2|encoder)
      # every (stage, seed) job JOBS at a time across stages: one stage's last seed never leaves a core idle
      for seed in $SEEDS; do
        job "$stage" "$seed" &
        pids+=($!) names+=("$stage seed $seed")
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
      done ;;
    report) report=1 ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
failed=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "${names[$i]} failed (see runs/roar/${names[$i]%% *}-seed*.log)" >&2; failed=1; }
done
[ $failed = 0 ] || exit 1
if [ $report = 1 ]; then
  $L2V roar report runs/roar
  mkdir -p benchmarks/results/roar
  cp runs/roar/racu.md runs/roar/racu.json runs/roar/curves.png benchmarks/results/roar/
fi
