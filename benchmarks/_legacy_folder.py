"""Write a copy of a converted l2v model folder that transformers 4.44 (the official llm2vec 0.2.3 stack) reads.

transformers 4.44 cannot read the GGUF quant types of the built-in models, and differs from 5.x in what it
expects of a folder (l2v.llm2vec_format.legacy_config / write_legacy_tokenizer: ``rope_theta`` at the top of
config.json, ``torch_dtype``, the fast tokenizer class, BPE merges as "a b" strings). The weights are linked.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from l2v.llm2vec_format import legacy_config, read_json, write_legacy_tokenizer


def write_legacy_folder(source: Path, target: Path) -> Path:
    source, target = Path(source), Path(target)
    if (target / "config.json").exists():
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(legacy_config(read_json(source / "config.json")), indent=2))
    write_legacy_tokenizer(source, tmp)
    for name in os.listdir(source):
        if name.endswith(".safetensors") or name == "model.safetensors.index.json":
            os.symlink((source / name).resolve(), tmp / name)
    os.replace(tmp, target)
    return target
