#!/usr/bin/env bash
# The README's evaluation table: the built-in SmolLM2-135M (causal and bidirectional, untrained, mean pooling)
# and the MiniLM-L6 baseline on every shared task. Resumable: rerun the same command after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${L2V_DATA:-../shared/data}"
.venv/bin/l2v eval smollm2-135m@causal smollm2-135m minilm-l6 \
  --tasks sts,pair_classification,classification,clustering,word_level,retrieval \
  --data "$DATA" --word-train-sentences 2000 --output benchmarks/results/eval "$@"
