"""Paired, in-process timing of the step-time changes (issue 15): the machine's speed drifts more between runs
than these changes are worth, so each change is timed against its absence on alternating steps of one process,
same model, same batch; the ratio is taken per pair and the median reported.

A: torch's ``nn.Dropout`` in the LoRA layers, peft's float32 LoRA path (each adapted projection's bf16 input cast up
to the adapter's float32), SDPA attention and SimCSE's two views as two passes (today's l2v);
B: l2v's LoRA dropout (``l2v.train.lora.Dropout``), LoRA's products in the base weights' dtype with float32 master
weights (``lora.compute_in_base_dtype``), the attention training picks on a CPU (``attn_implementation: auto``:
eager at these lengths) and one pass of 2B rows.
MNTP 16 x 128 and SimCSE 32 x 64 on SmolLM2-135M with bfloat16 base weights (the recipes' setting).

    python benchmarks/step_ab.py [--pairs 4] [--dtype bfloat16]
Writes benchmarks/results/step_ab.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import write_result
from profile_step import write_config


def set_kind(model, fast: bool, attention: str) -> None:
    """Today's LoRA layers (nn.Dropout, peft's float32 path) and SDPA, or l2v's (its Dropout, products in the
    base dtype) and ``attention``."""
    import torch
    from peft.tuners.lora import LoraLayer

    from l2v.train.lora import Dropout, InputDtypeLinear

    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name, dropout in list(module.lora_dropout.items()):
            module.lora_dropout[name] = Dropout(dropout.p) if fast else torch.nn.Dropout(dropout.p)
        module.cast_input_dtype_enabled = not fast
        for factors in (module.lora_A, module.lora_B):
            for linear in factors.values():
                linear.__class__ = InputDtypeLinear if fast else torch.nn.Linear  # same parameters, other forward
    model.get_base_model().set_attn_implementation(attention if fast else "sdpa")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    import torch

    from l2v.batching import embed_in_groups
    from l2v.train.config import load_config
    from l2v.train.mntp import mntp_loss_grouped
    from l2v.train.runner import (BatchPlan, _step_seed, load_objective, make_optimizer, trainable_parameters,
                                  training_attention)
    from l2v.train.simcse import info_nce, simcse_loss

    results = {}
    for stage in ("mntp", "simcse"):
        folder = Path(tempfile.mkdtemp(prefix=f"l2v-ab-{stage}-"))
        config = load_config(write_config(folder, stage, {"dtype": args.dtype, "mixed_precision": "no"}))
        objective = load_objective(config)
        encoder = objective.encoder
        encoder.train()
        parameters = list(trainable_parameters(encoder).values())
        optimizer = make_optimizer(parameters, config)
        attention = training_attention(config, "cpu") or "sdpa"
        plan = BatchPlan(objective.groups(), config.batch_size, config.seed)
        batch = [objective.examples[i] for i in plan.batch(0)]
        seed = _step_seed(config, 0, 0)

        def step(new: bool) -> float:
            set_kind(encoder.model, fast=new, attention=attention)
            torch.manual_seed(seed)
            begin = time.perf_counter()
            if stage == "mntp":
                loss = mntp_loss_grouped(encoder, encoder.lm_head, objective.mask(batch, seed), encoder.tokenizer.pad_token_id,
                                         encoder.logit_softcap)
            elif new:
                loss = simcse_loss(encoder, encoder.collate, encoder.tokenize(batch), 0.05, gather=False)
            else:
                tokenized = encoder.tokenize(batch)
                loss = info_nce(embed_in_groups(encoder, encoder.collate, tokenized),
                                embed_in_groups(encoder, encoder.collate, tokenized), 0.05, gather=False)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return time.perf_counter() - begin

        step(False), step(True)  # warm-up both
        pairs = []
        for index in range(args.pairs):
            order = (False, True) if index % 2 == 0 else (True, False)
            timed = {new: step(new) for new in order}
            pairs.append({"today": timed[False], "now": timed[True], "ratio": timed[False] / timed[True]})
            print(f"{stage} pair {index}: today {timed[False]:.2f} s, now {timed[True]:.2f} s", flush=True)
        results[stage] = {"batch": config.batch_size, "max_length": config.max_length, "dtype": args.dtype, "pairs": pairs,
                          "median_ratio": statistics.median(p["ratio"] for p in pairs),
                          "median_seconds": {"today": statistics.median(p["today"] for p in pairs),
                                             "now": statistics.median(p["now"] for p in pairs)}}
    payload = {"what": "alternating steps in one process: nn.Dropout + peft's float32 LoRA path + SDPA + two SimCSE passes "
                       "(today) vs l2v's LoRA dropout + LoRA in the base dtype + attention 'auto' (eager) + one pass of "
                       "2B rows (now); ratio = today / now per pair", "date": time.strftime("%Y-%m-%d"),
               "results": results}
    write_result("step_ab", payload)
    print(json.dumps({s: {"median_ratio": r["median_ratio"], **r["median_seconds"]} for s, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
