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

torch.manual_seed(0)
model = sys.argv[1]
enc = Encoder.from_pretrained(model, dtype="float32", merge_adapters=True)
rows = [l.split("\t") for l in open(DATA / "sts" / "stsb_dev.tsv").read().splitlines()[1:]]
sents = list(dict.fromkeys([r[0] for r in rows] + [r[1] for r in rows]))[:400]
ref = torch.from_numpy(enc.encode(sents, batch_size=32))
layers = decoder_layers(enc.model)
def bf(x): return x.to(torch.bfloat16).float()
patched = {}
def patch(mod):
    orig = mod.forward
    def fwd(x, _m=mod):
        return bf(F.linear(bf(x), bf(_m.weight), None if _m.bias is None else _m.bias))
    mod.forward = fwd; patched[mod] = orig
def unpatch():
    for m, o in patched.items(): m.forward = o
    patched.clear()
def linears(layer):
    return [(n, m) for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]
def score(tag):
    v = torch.from_numpy(enc.encode(sents, batch_size=32))
    c = (v * ref).sum(-1)
    print(f"{tag:50s} min {c.min():.5f} mean {c.mean():.6f}", flush=True)
split = int(sys.argv[2])
# 1. everything from split on in bf16 (today's mixed)
for L in layers[split:]:
    for n, m in linears(L): patch(m)
score(f"layers {split}+ all bf16 (today)")
# 2. plus early layers except down_proj
for L in layers[:split]:
    for n, m in linears(L):
        if "down_proj" not in n: patch(m)
score(f"+ layers <{split} all but down_proj")
unpatch()
for L in layers[split:]:
    for n, m in linears(L): patch(m)
for L in layers[:split]:
    for n, m in linears(L):
        if "down_proj" not in n and "o_proj" not in n: patch(m)
score(f"+ layers <{split} q,k,v,gate,up only")
unpatch()
for L in layers[split:]:
    for n, m in linears(L): patch(m)
for L in layers[:split]:
    for n, m in linears(L):
        if "mlp" not in n: patch(m)
score(f"+ layers <{split} attention projections only")
unpatch()
# 3. per-layer: all of layer i bf16 alone (others fp32)
for i in range(split):
    for n, m in linears(layers[i]): patch(m)
    score(f"only layer {i} all bf16")
    unpatch()
for i in range(split):
    for n, m in linears(layers[i]):
        if "down_proj" in n: patch(m)
    score(f"only layer {i} down_proj bf16")
    unpatch()
