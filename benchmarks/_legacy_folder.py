"""Write a copy of a converted l2v model folder that transformers 4.44 (the official llm2vec 0.2.3 stack) reads.

transformers 4.44 cannot read the GGUF quant types of the built-in models, and differs from 5.x in what it
expects of a folder: ``rope_theta`` at the top of config.json, ``torch_dtype`` instead of ``dtype``,
``PreTrainedTokenizerFast`` as tokenizer class with explicit ``model_input_names``, and BPE merges written as
"a b" strings rather than pairs. The weights file is linked, not copied.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def write_legacy_folder(source: Path, target: Path) -> Path:
    source, target = Path(source), Path(target)
    if (target / "config.json").exists():
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = json.loads((source / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    config.pop("rope_parameters", None)
    if "dtype" in config:
        config["torch_dtype"] = config.pop("dtype")
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    merges = tokenizer.get("model", {}).get("merges")
    if merges and isinstance(merges[0], list):
        tokenizer["model"]["merges"] = [" ".join(pair) for pair in merges]
    (tmp / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config["model_input_names"] = ["input_ids", "attention_mask"]
    (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    for name in os.listdir(source):
        if name.endswith(".safetensors") or name == "model.safetensors.index.json":
            os.symlink((source / name).resolve(), tmp / name)
    os.replace(tmp, target)
    return target
