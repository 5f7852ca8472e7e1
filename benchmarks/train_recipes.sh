#!/usr/bin/env bash
# The README's training results: the unsupervised and supervised LLM2Vec recipes on the built-in SmolLM2-135M
# (configs/smollm2-l2v-unsup.yaml, configs/smollm2-l2v-sup.yaml). Resumable: rerun after an interruption.
# The supervised recipe starts from the same MNTP stage, so that stage is trained once and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${L2V_DATA:-../shared/data}"
L2V=.venv/bin/l2v
$L2V make-pairs --data "$DATA" --output runs/pairs.jsonl  # deterministic (seed 0); follows the code
$L2V convert --config configs/smollm2-l2v-unsup.yaml
if [ ! -e runs/smollm2-l2v-sup/mntp ] && [ -d runs/smollm2-l2v-unsup/mntp/encoder ]; then
  mkdir -p runs/smollm2-l2v-sup && cp -r runs/smollm2-l2v-unsup/mntp runs/smollm2-l2v-sup/mntp
fi
$L2V convert --config configs/smollm2-l2v-sup.yaml
