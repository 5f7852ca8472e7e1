#!/usr/bin/env bash
# Issue 15: the paper-sized unsupervised recipe (configs/smollm2-mntp-paper.yaml, then
# configs/smollm2-simcse-paper.yaml on its adapter) on one GPU, then a check of what it wrote.
#
#   bash benchmarks/gpu_paper.sh OUT [STEPS]
#
# OUT gets mntp/ and simcse/ (metrics.jsonl, dev.jsonl, checkpoints, encoder/adapter) and summary.json (wall time
# per stage, final dev scores, device). STEPS overrides both stages' steps (the CPU try-out: `... OUT 2`, with
# L2V_SMALL=1 for short texts and small batches). Rerunning resumes both stages from their checkpoints.
# Environment: L2V_DATA (the data folder, default ../shared/data), PYTHON (default .venv/bin/python, else python3).
#
# On the lent GPU machine (no internet, a 64 MiB working-tree limit per call, files kept between calls while the
# machine is warm): `bash benchmarks/gpu_pack.sh` writes .gpu/part1, .gpu/part2 (ignored); carry them in two
# back-to-back calls, the second one running
#   bash benchmarks/gpu_unpack.sh && L2V_TIME_LIMIT=420 L2V_DATA=.gpu/data PYTHON=python3 EXPORT=$OUT bash benchmarks/gpu_paper.sh /tmp/paper
# (the run folder off $OUT, so a second call resumes it; EXPORT= brings the adapters and logs back).
# Meant to fit 12 minutes of an H200 (1000 + 1000 steps of a 135M model, each batch one padded group on a GPU since
# 2026-12-05: benchmarks/results/gpu/README.md; not yet confirmed there); the machine start comes on top. First
# tried there at ~2.5 s a step (7 length groups per batch then).
# L2V_TIME_LIMIT=SECONDS bounds this call's training (both stages; `l2v train --time-limit`): a stage that would
# overrun stops at a checkpoint and the script exits 75 without a summary; the same command resumes (while the
# machine keeps /tmp/paper). The bound is the training's: each stage's load and first step, the checks and the
# export come on top, so leave slack (e.g. L2V_TIME_LIMIT=420 under the device tool's 600 s per call).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: gpu_paper.sh OUT [STEPS]}"
STEPS="${2:-}"
DATA="${L2V_DATA:-../shared/data}"
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
site=""
[ -d .gpu/site ] && site="$PWD/.gpu/site:"   # the GPU machine: the GGUF and the gguf package (gpu_pack.sh)
export PYTHONPATH="$PWD/src:$site${PYTHONPATH:-}" PYTHONUNBUFFERED=1
steps=()
[ -n "$STEPS" ] && steps=(--steps "$STEPS")
small=()
[ -n "${L2V_SMALL:-}" ] && small=(--set batch_size=4 --set max_length=32 --set dev.sts="[$DATA/sts/sickr_trial.tsv]" --set save_every=1)
dev="[$DATA/sts/stsb_dev.tsv, $DATA/sts/sickr_trial.tsv]"
if [ -n "${L2V_TIME_LIMIT:-}" ] && ! [[ "$L2V_TIME_LIMIT" =~ ^[0-9]+$ ]]; then
  echo "gpu_paper.sh: L2V_TIME_LIMIT must be whole seconds, not '$L2V_TIME_LIMIT'" >&2; exit 2
fi
mkdir -p "$OUT"
start=$(date +%s)
limit() {  # --time-limit for the next stage: what this call has left (none without L2V_TIME_LIMIT)
  local left
  [ -n "${L2V_TIME_LIMIT:-}" ] && left=$((L2V_TIME_LIMIT - ($(date +%s) - start))) && echo --time-limit "$((left > 0 ? left : 0))s"
  return 0
}
stage() {  # stage NAME ARGS...: train it; exit 75 (resumable) when it stops at the time limit
  local code=0
  "$PY" -m l2v.cli train "$@" $(limit) --no-progress || code=$?
  if [ "$code" = 75 ]; then echo "gpu_paper.sh: $1 stopped at L2V_TIME_LIMIT; run the same command again to resume" >&2; exit 75; fi
  return "$code"
}
reused=""; [ -f "$OUT/mntp/encoder/adapter/adapter_model.safetensors" ] && reused=1  # MNTP finished in an earlier call
stage mntp --config configs/smollm2-mntp-paper.yaml --output "$OUT/mntp" "${steps[@]}" \
  --set data.train="[$DATA/text/unlabeled/wikipedia_en_WikiTasks_2021.txt.gz]" --set dev.sts="$dev" "${small[@]}"
middle=$(date +%s)
if [ -z "$reused" ] && [ -n "${L2V_TIME_LIMIT:-}" ] && [ "$((middle - start))" -ge "$L2V_TIME_LIMIT" ]; then
  echo "gpu_paper.sh: MNTP done, no time left for SimCSE in this call; run the same command again" >&2; exit 75
fi
stage simcse --config configs/smollm2-simcse-paper.yaml --output "$OUT/simcse" "${steps[@]}" \
  --set adapters="[$OUT/mntp/encoder/adapter]" --set data.train="$DATA/text/wiki1m_subset.txt" --set dev.sts="$dev" "${small[@]}"
end=$(date +%s)
"$PY" - "$OUT" "$((middle - start))" "$((end - middle))" <<'PY'
import json, math, sys
from pathlib import Path

import torch

out, seconds = Path(sys.argv[1]), {"mntp": int(sys.argv[2]), "simcse": int(sys.argv[3])}
summary = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "wall_seconds_this_call": seconds}  # a resumed run: training_seconds below span every call
for stage in ("mntp", "simcse"):
    run = out / stage
    config = json.loads((run / "config.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    dev = [json.loads(line) for line in (run / "dev.jsonl").read_text().splitlines()]
    assert len(losses) == config["steps"] and all(math.isfinite(x) for x in losses), f"{stage}: bad metrics"
    assert (run / "encoder" / "adapter" / "adapter_model.safetensors").exists(), f"{stage}: no adapter"
    assert dev and dev[-1]["step"] == config["steps"], f"{stage}: no final dev scores"
    summary[stage] = {"steps": config["steps"], "training_seconds": records[-1]["seconds"], "first_loss": losses[0],
                      "last_loss": losses[-1], "dev": dev}
from l2v import Encoder

vectors = Encoder.from_pretrained(str(out / "simcse" / "encoder")).encode(["A man plays a guitar.", "Someone is playing music."])
summary["paraphrase_cosine"] = float((vectors[0] * vectors[1]).sum())
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps({k: v for k, v in summary.items() if k not in ("mntp", "simcse")} | {
    s: {"training_seconds": summary[s]["training_seconds"], "last_loss": summary[s]["last_loss"], "dev": summary[s]["dev"][-1]}
    for s in ("mntp", "simcse")}, indent=1))
PY
# EXPORT=folder: what the device tool can bring back (at most 8 flat files of 16 MiB): the final encoder's two
# adapters in float16 (the MNTP one merged first, then SimCSE's) and a tar of everything else but the checkpoints.
if [ -n "${EXPORT:-}" ]; then
  mkdir -p "$EXPORT"
  "$PY" - "$OUT/simcse/encoder" "$EXPORT" <<'PY'
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

encoder, export = Path(sys.argv[1]), Path(sys.argv[2])
for name in ("merged_adapter_0", "adapter"):
    tensors = {k: v.half().contiguous() for k, v in load_file(encoder / name / "adapter_model.safetensors").items()}
    save_file(tensors, export / f"{name}.float16.safetensors")
PY
  tar -C "$OUT" --exclude=checkpoints --exclude=adapter_model.safetensors -cf "$EXPORT/paper_run.tar" .
  cp "$OUT/summary.json" "$EXPORT/"
  ls -l "$EXPORT"
fi
