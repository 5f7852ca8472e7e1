"""Which layers of a model can take bfloat16 products without moving its embeddings (issue 16: why mixed keeps the
first layers in float32, and what a 2x mode would need). bfloat16 products are emulated on float32 weights: inputs
and weights rounded to bfloat16, the product accumulated in float32 and rounded to bfloat16 (as oneDNN's bf16
GEMM does). Min / mean cosine to float32 over the first 400 distinct STS-B dev sentences, for: today's split (every
layer from SPLIT on), that plus parts of the earlier layers, and each earlier layer alone (all its linear layers,
then its down_proj only).

    OMP_NUM_THREADS=1 python benchmarks/precision_layers.py smollm2-135m 12 > benchmarks/results/precision_layers.txt
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import DATA  # noqa: E402

from l2v import Encoder  # noqa: E402
from l2v.precision import decoder_layers  # noqa: E402


def bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).float()


def main() -> None:
    torch.manual_seed(0)
    model, split = sys.argv[1], int(sys.argv[2])
    encoder = Encoder.from_pretrained(model, dtype="float32", merge_adapters=True)
    rows = [line.split("\t") for line in (DATA / "sts" / "stsb_dev.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    sentences = list(dict.fromkeys([r[0] for r in rows] + [r[1] for r in rows]))[:400]
    reference = torch.from_numpy(encoder.encode(sentences, batch_size=32))
    layers = decoder_layers(encoder.model)

    def emulated(module):
        return lambda x: bf16(F.linear(bf16(x), bf16(module.weight), module.bias))

    def trial(tag: str, chosen) -> None:
        """Min / mean cosine to float32 with bf16 products in the linear layers ``chosen(layer_index, name)``."""
        saved = {}
        for index, layer in enumerate(layers):
            for name, module in layer.named_modules():
                if isinstance(module, torch.nn.Linear) and chosen(index, name):
                    saved[module] = module.forward
                    module.forward = emulated(module)
        try:
            cosine = (torch.from_numpy(encoder.encode(sentences, batch_size=32)) * reference).sum(-1)
        finally:
            for module, forward in saved.items():
                module.forward = forward
        print(f"{tag:50s} min {cosine.min():.5f} mean {cosine.mean():.6f}", flush=True)

    trial(f"layers {split}+ all bf16 (today)", lambda i, name: i >= split)
    trial(f"+ layers <{split} all but down_proj", lambda i, name: i >= split or "down_proj" not in name)
    trial(f"+ layers <{split} q,k,v,gate,up only",
          lambda i, name: i >= split or ("down_proj" not in name and "o_proj" not in name))
    trial(f"+ layers <{split} attention projections only", lambda i, name: i >= split or "mlp" not in name)
    for layer in range(split):
        trial(f"only layer {layer} all bf16", lambda i, name, layer=layer: i == layer)
    for layer in range(split):
        trial(f"only layer {layer} down_proj bf16", lambda i, name, layer=layer: i == layer and "down_proj" in name)


if __name__ == "__main__":
    main()
