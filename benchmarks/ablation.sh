#!/usr/bin/env bash
# The paper's ablation on the built-in SmolLM2-135M (README "Training results"): STS-B test and SICK-R test,
# Spearman x100 of cosine, mean pooling, no instructions, for causal (Uni), bidirectional untrained (Bi),
# Bi + MNTP (the shared MNTP stage of both recipes), Bi + MNTP + SimCSE (the shipped smollm2-135m-l2v-unsup) and
# supervised (smollm2-135m-l2v-sup); then the word-level probes (CoNLL-2003 POS, chunk, NER; linear probes on the
# first 2000 training sentences) for Uni against Bi + MNTP.
# Needs the MNTP run of `bash benchmarks/train_recipes.sh` (runs/smollm2-l2v-mntp/encoder). Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${L2V_DATA:-../shared/data}"
.venv/bin/l2v eval smollm2-135m@causal smollm2-135m runs/smollm2-l2v-mntp/encoder \
  smollm2-135m-l2v-unsup smollm2-135m-l2v-sup --tasks sts --data "$DATA" --output benchmarks/results/ablation "$@"
.venv/bin/l2v eval smollm2-135m@causal runs/smollm2-l2v-mntp/encoder --tasks word_level --word-train-sentences 2000 \
  --data "$DATA" --output benchmarks/results/ablation/word_level "$@"
