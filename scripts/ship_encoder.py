"""Copy a trained l2v encoder folder (base model by name + LoRA adapters) into the package as a built-in.

    python scripts/ship_encoder.py runs/smollm2-l2v-unsup/encoder smollm2-135m-l2v-unsup [--provenance FILE.json]

Adapters are stored in float16 safetensors (half the size; the embeddings of the shipped encoder are checked
against the float32 original before anything is written: cosine >= 0.9999 on the demo sentences). Adapter
folders with identical weights (the MNTP adapter both recipes start from) are stored once, in
``src/l2v/encoders/_shared``, and referenced by a relative path. The tokenizer is not copied: it is the base's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "l2v" / "encoders"


def adapter_to_fp16(source: Path, target: Path) -> str:
    target.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(source / "adapter_model.safetensors"))
    half = {k: v.to(torch.float16).contiguous() for k, v in weights.items()}
    save_file(half, str(target / "adapter_model.safetensors"))
    config = json.loads((source / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None  # l2v supplies the base; no machine-specific path in the package
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    digest = hashlib.sha256()
    for key in sorted(half):
        digest.update(key.encode())
        digest.update(half[key].numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("encoder", type=Path)
    parser.add_argument("name")
    parser.add_argument("--provenance", type=Path, help="JSON with how it was trained, copied beside the config")
    parser.add_argument("--max-length", type=int, default=None,
                        help="override the inference max length (default: the saved encoder's own, encoder_max_length)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from l2v import Encoder

    config = json.loads((args.encoder / "l2v_config.json").read_text())
    if config["base_model"] in (".", None) or "/" in config["base_model"]:
        sys.exit(f"{args.encoder}: the base must be a built-in name, got {config['base_model']!r}")
    staging = Path(tempfile.mkdtemp(prefix="ship-", dir=PACKAGE.parent))
    shared = staging / "_shared"
    folders = [*config["merged_adapters"], *([config["adapters"]] if config["adapters"] else [])]
    renamed = {}
    for sub in folders:
        scratch = staging / "scratch" / sub
        digest = adapter_to_fp16(args.encoder / sub, scratch)
        final = shared / f"adapter-{digest}"
        if not final.exists():
            shutil.move(str(scratch), str(final))
        renamed[sub] = f"../_shared/adapter-{digest}"
    shutil.rmtree(staging / "scratch", ignore_errors=True)
    out = staging / args.name
    out.mkdir()
    config["merged_adapters"] = [renamed[s] for s in config["merged_adapters"]]
    config["adapters"] = renamed[config["adapters"]] if config["adapters"] else None
    if args.max_length is not None:
        config["max_length"] = args.max_length
    (out / "l2v_config.json").write_text(json.dumps(config, indent=2) + "\n")
    if args.provenance:
        shutil.copy(args.provenance, out / "provenance.json")
    texts = (ROOT / "src" / "l2v" / "data" / "demo_sentences.txt").read_text().splitlines()
    reference = Encoder.from_pretrained(str(args.encoder)).encode(texts)
    shipped = Encoder.from_pretrained(str(out)).encode(texts)
    cosine = float(np.min((reference * shipped).sum(axis=1)))
    print(f"min cosine of the float16-adapter encoder to the original: {cosine:.7f}")
    if cosine < 0.9999:
        shutil.rmtree(staging)
        sys.exit("the float16 adapters change the embeddings too much; not shipped")
    PACKAGE.mkdir(exist_ok=True)
    (PACKAGE / "_shared").mkdir(exist_ok=True)
    for adapter in shared.iterdir():
        if not (PACKAGE / "_shared" / adapter.name).exists():
            shutil.move(str(adapter), str(PACKAGE / "_shared" / adapter.name))
    if (PACKAGE / args.name).exists():
        shutil.rmtree(PACKAGE / args.name)
    shutil.move(str(out), str(PACKAGE / args.name))
    shutil.rmtree(staging)
    # adapters no shipped encoder refers to any more (a re-shipped encoder's old ones) leave the package
    used = set()
    for config_file in PACKAGE.glob("*/l2v_config.json"):
        shipped = json.loads(config_file.read_text())
        used |= {Path(a).name for a in [*shipped.get("merged_adapters", []), shipped.get("adapters")] if a}
    for adapter in (PACKAGE / "_shared").iterdir():
        if adapter.name not in used:
            shutil.rmtree(adapter)
            print(f"removed unused {adapter.name}")
    print(f"shipped {args.name} in {PACKAGE / args.name}")


if __name__ == "__main__":
    main()
