"""Run the official llm2vec 0.2.3 on checkpoint folders (in its own venv) and report what it computes.

``python _llm2vec_worker.py JOBS.json OUT.npz``: JOBS.json is a list of jobs
``{"id", "checkpoint", "adapter", "pooling", "instruction", "texts", "max_length", "doc_max_length", "load": bool}``.
For each job it writes, per text encoded alone (batch size 1), the embedding (``OUT.npz[id]``) and the token ids
and pooled mask llm2vec builds (``OUT.json``). With ``"load": false`` only the text preparation runs, on a
stand-in model object carrying the checkpoint's config (for families llm2vec cannot load bidirectionally).
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np


def main() -> None:
    jobs_file, out_file = sys.argv[1:3]
    import torch
    import torch.distributed.tensor  # noqa: F401 - peft 0.21 reads it without importing it (torch 2.13)
    from llm2vec import LLM2Vec
    from transformers import AutoConfig, AutoTokenizer

    jobs = json.loads(open(jobs_file, encoding="utf-8").read())
    embeddings, layouts, loaded = {}, {}, {}
    for job in jobs:
        key = (job["checkpoint"], job.get("adapter"), job["load"])
        options = dict(pooling_mode=job["pooling"], max_length=job["max_length"], doc_max_length=job["doc_max_length"])
        if key not in loaded:
            if job["load"]:
                loaded[key] = LLM2Vec.from_pretrained(job["checkpoint"], peft_model_name_or_path=job.get("adapter"),
                                                      torch_dtype=torch.float32, **options)
            else:
                tokenizer = AutoTokenizer.from_pretrained(job["checkpoint"])
                tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
                config = AutoConfig.from_pretrained(job["checkpoint"])
                config._name_or_path = json.load(open(f"{job['checkpoint']}/config.json"))["_name_or_path"]
                loaded[key] = LLM2Vec(types.SimpleNamespace(config=config), tokenizer, **options)
        model = loaded[key]
        for name, value in options.items():
            setattr(model, name, value)
        rows, layout = [], []
        for text in job["texts"]:
            pair = [job["instruction"], text]
            prepared = model.prepare_for_tokenization(model._convert_to_str(*pair))
            features = model.tokenize([prepared])
            layout.append({"input_ids": features["input_ids"][0].tolist(), "embed_mask": features["embed_mask"][0].tolist()})
            if job["load"]:
                rows.append(model.encode([pair], batch_size=1, show_progress_bar=False, convert_to_numpy=True)[0])
        layouts[job["id"]] = layout
        if rows:
            embeddings[job["id"]] = np.stack(rows).astype(np.float32)
    np.savez(out_file, **embeddings)
    with open(out_file.replace(".npz", ".json"), "w", encoding="utf-8") as handle:
        json.dump(layouts, handle)
    print(json.dumps({"jobs": len(jobs), "embedded": len(embeddings)}))


if __name__ == "__main__":
    main()
