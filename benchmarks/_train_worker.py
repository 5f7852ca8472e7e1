"""Time training steps of l2v or of the official llm2vec 0.2.3 training code, in this process.

``python _train_worker.py {l2v|llm2vec} {mntp|simcse} MODEL_FOLDER BATCH.json STEPS [--warmup=N] [--threads=N]
[--dtype=bfloat16] [--mixed=bf16]`` (an older l2v runs when its ``src`` is first on PYTHONPATH)

BATCH.json holds token ids (and, for MNTP, the masked labels) made once by benchmarks/train_step.py, so both
libraries see the very same inputs. The official side is set up the way its experiments/run_mntp.py and
run_simcse.py do it: ``LlamaBiForMNTP`` (a full-vocabulary LM head over every position, loss with the causal
shift) and ``LLM2Vec`` (left padding, two forward passes, ``HardNegativeNLLLoss`` at scale 20 = 1/0.05),
LoRA r=16, alpha=32, dropout 0.05 on all attention and MLP projections of the inner model (initialize_peft),
attention dropout 0.3 for SimCSE. l2v runs its own training objective (``l2v.train.runner.load_objective``).

Prints one JSON line: the loss with dropout off (the same weights, so it must agree across libraries), the
per-step seconds (``--warmup`` untimed steps, default 1, then STEPS timed steps of forward + backward + AdamW), peak RSS.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

LORA_TARGETS = ["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    length = max(len(r) for r in rows)
    return torch.tensor([([value] * (length - len(r)) + r) if left else (r + [value] * (length - len(r))) for r in rows])


def official(stage: str, folder: str, batch: dict):
    import torch.distributed.tensor  # noqa: F401 - peft 0.21 looks this submodule up without importing it

    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS, bias="none", task_type=None)
    ids = [item["input_ids"] for item in batch["items"]]
    pad_id = batch["pad_id"]
    if stage == "mntp":
        from llm2vec.models.bidirectional_llama import LlamaBiForMNTP

        model = LlamaBiForMNTP.from_pretrained(folder, torch_dtype=torch.float32)
        model.model = get_peft_model(model.model, lora)
        input_ids = pad(ids, pad_id, left=False)
        attention = pad([[1] * len(r) for r in ids], 0, left=False)
        labels = pad([item["labels"] for item in batch["items"]], -100, left=False)

        def loss():
            return model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        return model, loss
    from llm2vec import LLM2Vec
    from llm2vec.loss.HardNegativeNLLLoss import HardNegativeNLLLoss

    model = LLM2Vec.from_pretrained(folder, enable_bidirectional=True, pooling_mode="mean", max_length=batch["max_length"],
                                    torch_dtype=torch.float32, attention_dropout=0.3)
    model.model = get_peft_model(model.model, lora)
    loss_fn = HardNegativeNLLLoss(scale=1 / 0.05)
    features = {"input_ids": pad(ids, pad_id, left=True), "attention_mask": pad([[1] * len(r) for r in ids], 0, left=True)}
    features["embed_mask"] = features["attention_mask"].clone()

    def loss():
        return loss_fn(model(dict(features)), model(dict(features)))
    return model, loss


def l2v(stage: str, folder: str, batch: dict, dtype: str = "float32", mixed: str = "no"):
    """l2v's own objective (``load_objective``); for a pinned older l2v (on PYTHONPATH) its ``Stage`` class."""
    from l2v.encoder import Tokenized
    from l2v.train.config import load_config

    scratch = Path(tempfile.mkdtemp(prefix="l2v-train-bench-"))
    (scratch / "texts.txt").write_text("placeholder text\n" * 4)
    extra = "contrastive: {temperature: 0.05, attention_dropout: 0.3}\n" if stage == "simcse" else ""
    if mixed != "no":
        extra += f"mixed_precision: {mixed}\n"
    (scratch / "config.yaml").write_text(
        f"stage: {stage}\nmodel: {folder}\noutput: {scratch / 'out'}\ndata: {{train: {scratch / 'texts.txt'}}}\n"
        f"max_length: {batch['max_length']}\nbatch_size: 1\nsteps: 1\nlearning_rate: 5.0e-5\ndtype: {dtype}\n"
        f"lora: {{r: 16, alpha: 32, dropout: 0.05}}\n{extra}")
    config = load_config(scratch / "config.yaml")
    items = batch["items"]
    pairs = [(item["input_ids"], item.get("labels")) for item in items]
    tokenized = [Tokenized(item["input_ids"], [1] * len(item["input_ids"])) for item in items]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed == "bf16")
    try:
        from l2v.train.runner import load_objective, make_optimizer
    except ImportError:  # the pinned l2v from before the objectives
        from l2v.train.runner import Stage

        old = Stage(config, 0, 1)
        if stage == "mntp":
            from l2v.train.mntp import mntp_loss_grouped

            return old.module, lambda: mntp_loss_grouped(old.encoder.model, old.lm_head, pairs, old.tokenizer.pad_token_id, old.softcap), None
        from l2v.train.simcse import simcse_loss

        return old.module, lambda: simcse_loss(old.encoder, tokenized, 0.05, gather=False), None
    objective = load_objective(config)
    encoder = objective.encoder

    def loss():
        with autocast:
            if stage == "mntp":
                from l2v.train.mntp import mntp_loss_grouped

                return mntp_loss_grouped(encoder, encoder.lm_head, pairs, encoder.tokenizer.pad_token_id, encoder.logit_softcap)
            from l2v.train.simcse import simcse_loss

            return simcse_loss(encoder, encoder.collate, tokenized, 0.05, gather=False)
    return encoder, loss, lambda parameters: make_optimizer(parameters, config)


def use_source(src: str) -> None:
    """Import l2v from ``src`` (a pinned older checkout) instead of the installed, editable l2v."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in type(finder).__name__.lower()]
    sys.path.insert(0, src)


def main() -> None:
    library, stage, folder, batch_file, steps = sys.argv[1:6]
    source = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--source=")]
    if source:
        use_source(source[0])
    threads = [a for a in sys.argv if a.startswith("--threads=")]
    if threads:
        torch.set_num_threads(int(threads[0].split("=")[1]))
    batch = json.loads(Path(batch_file).read_text())
    torch.manual_seed(0)
    dtype = ([a.split("=", 1)[1] for a in sys.argv if a.startswith("--dtype=")] or ["float32"])[0]
    mixed = ([a.split("=", 1)[1] for a in sys.argv if a.startswith("--mixed=")] or ["no"])[0]
    if library == "llm2vec":
        model, loss = official(stage, folder, batch)
        optimizer_for = None
    else:
        model, loss, optimizer_for = l2v(stage, folder, batch, dtype, mixed)
    model.eval()
    with torch.no_grad():
        eval_loss = float(loss())
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer_for(parameters) if optimizer_for else torch.optim.AdamW(parameters, lr=5e-5)
    warmup = int(([a.split("=", 1)[1] for a in sys.argv if a.startswith("--warmup=")] or ["1"])[0])
    times, losses = [], []
    for step in range(int(steps) + warmup):
        begin = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        optimizer.step()
        elapsed = time.perf_counter() - begin
        losses.append(float(value))
        if step >= warmup:  # the first steps pay one-off allocations and kernel choices
            times.append(elapsed)
    print(json.dumps({"library": library, "stage": stage, "dtype": dtype, "mixed": mixed, "eval_loss": eval_loss, "train_losses": losses, "warmup_steps": warmup,
                      "step_seconds": times, "median_step_seconds": statistics.median(times),
                      "trainable_parameters": sum(p.numel() for p in parameters),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
