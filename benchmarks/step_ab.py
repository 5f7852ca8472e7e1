"""Paired, in-process timing of the step-time changes (issue 15): the machine's speed drifts more between runs
than these changes are worth, so each change is timed against its absence on alternating steps of one process,
same model, same batch; the ratio is taken per pair and the median reported.

A: torch's ``nn.Dropout`` in the LoRA layers and SimCSE's two views as two passes (today's l2v);
B: l2v's LoRA dropout (``l2v.train.lora.Dropout``) and one pass of 2B rows.
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


def set_dropout_kind(model, fast: bool) -> None:
    import torch

    from l2v.train.lora import Dropout

    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, dropout in list(dropouts.items()):
                p = dropout.p
                dropouts[name] = Dropout(p) if fast else torch.nn.Dropout(p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    import torch

    from l2v.batching import embed_in_groups
    from l2v.train.config import load_config
    from l2v.train.mntp import mntp_loss_grouped
    from l2v.train.runner import BatchPlan, _step_seed, load_objective, make_optimizer, trainable_parameters
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
        plan = BatchPlan(objective.groups(), config.batch_size, config.seed)
        batch = [objective.examples[i] for i in plan.batch(0)]
        seed = _step_seed(config, 0, 0)

        def step(new: bool) -> float:
            set_dropout_kind(encoder.model, fast=new)
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
    payload = {"what": "alternating steps in one process: nn.Dropout + two SimCSE passes (today) vs l2v's LoRA dropout + "
                       "one pass of 2B rows (now); ratio = today / now per pair", "date": time.strftime("%Y-%m-%d"),
               "results": results}
    write_result("step_ab", payload)
    print(json.dumps({s: {"median_ratio": r["median_ratio"], **r["median_seconds"]} for s, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
