#!/usr/bin/env bash
# The README's training results: the unsupervised and supervised LLM2Vec recipes on the built-in SmolLM2-135M
# (configs/smollm2-l2v-unsup.yaml, configs/smollm2-l2v-sup.yaml). Resumable: rerun after an interruption.
# Both recipes share one MNTP stage (runs/smollm2-l2v-mntp: the second finds it trained and reuses it).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${L2V_DATA:-../shared/data}"
L2V=.venv/bin/l2v
$L2V make-pairs --data "$DATA" --output runs/pairs.jsonl  # deterministic (seed 0); follows the code
$L2V convert --config configs/smollm2-l2v-unsup.yaml
$L2V convert --config configs/smollm2-l2v-sup.yaml
