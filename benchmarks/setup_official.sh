#!/usr/bin/env bash
# The official llm2vec 0.2.3 in its own venv (it resolves transformers 4.44.2), for the comparison benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-llm2vec
.venv-llm2vec/bin/pip install -q --upgrade pip
.venv-llm2vec/bin/pip install -q torch==2.13.0 llm2vec==0.2.3
.venv-llm2vec/bin/python -c "import llm2vec, transformers; print('llm2vec', llm2vec.__version__ if hasattr(llm2vec, '__version__') else '0.2.3', 'transformers', transformers.__version__)"
