"""Which set of layers must stay float32 for a model's embeddings to keep within cosine 0.999 of float32, when the set
need not be a prefix (issue 16: whether mixed's split at the massive-activation layer keeps more float32 layers than
needed). bfloat16 products emulated per linear layer as in ``precision_layers.py`` (inputs and weights rounded to
bfloat16, float32 accumulation, output rounded); min / mean cosine to float32 over the first 400 distinct STS-B dev
sentences and min over mixed's 32 calibration texts, for: every layer in bfloat16; each layer alone in bfloat16
(its damage); then float32 for the most damaging layers (by the calibration texts), one more at a time.

    OMP_NUM_THREADS=2 python benchmarks/precision_layer_sets.py smollm2-135m-l2v-sup > benchmarks/results/precision_layer_sets.txt

``--real 0,1,2,4,8,9,10,11`` instead runs the real mixed path (bfloat16 weights and autocast, float32 attention,
norms and residual stream, as ``dtype="mixed"`` builds it) with those layers in float32 and, for comparison, with
the prefix of ``--prefix`` layers (mixed's split), over the 2,758 STS-B test sentences: min / mean cosine to
float32 and tokens/s against float32 in the same process.
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import DATA  # noqa: E402

from l2v import Encoder  # noqa: E402
from l2v.precision import CALIBRATION, decoder_layers  # noqa: E402


def bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).float()


def real(model: str, sets: list[set[int]]) -> None:
    """The real mixed path with each of ``sets`` in float32, against float32, on the STS-B test sentences."""
    import time

    from _common import stsb_test_sentences

    import l2v.precision as mixed

    reference = Encoder.from_pretrained(model, dtype="float32", merge_adapters=True)
    tokenized = reference.tokenize(stsb_test_sentences())
    reference.embed_tokenized(tokenized[:32], batch_size=32)
    began = time.perf_counter()
    expected = reference.embed_tokenized(tokenized, batch_size=32)
    float32_seconds = time.perf_counter() - began
    del reference
    for float32_layers in sets:
        encoder = Encoder.from_pretrained(model, dtype="float32", merge_adapters=True)
        mixed._register_float32_attention()
        mixed._set_attention_implementation(encoder.model, mixed.FLOAT32_ATTENTION)
        encoder.precision = mixed.MixedPrecision(float32_layers=0, layers=len(decoder_layers(encoder.model)), device_type="cpu")
        mixed._install(encoder.model, float32_layers)  # mixed's own set-up, with a set of layers for its split
        mixed._store_bfloat16(encoder.model, float32_layers)
        encoder.embed_tokenized(tokenized[:32], batch_size=32)
        began = time.perf_counter()
        vectors = encoder.embed_tokenized(tokenized, batch_size=32)
        seconds = time.perf_counter() - began
        cosine = (vectors * expected).sum(-1)
        print(f"real mixed, float32 {sorted(float32_layers)}: test min {cosine.min():.5f} mean {cosine.mean():.6f} "
              f"below 0.999 {int((cosine < 0.999).sum())} speed x{float32_seconds / seconds:.2f} float32", flush=True)
        del encoder


def main() -> None:
    if "--real" in sys.argv:
        model = sys.argv[1]
        chosen = {int(i) for i in sys.argv[sys.argv.index("--real") + 1].split(",")}
        prefix = int(sys.argv[sys.argv.index("--prefix") + 1]) if "--prefix" in sys.argv else 12
        real(model, [set(range(prefix)), chosen])
        return
    model = sys.argv[1]
    encoder = Encoder.from_pretrained(model, dtype="float32", merge_adapters=True)
    rows = [line.split("\t") for line in (DATA / "sts" / "stsb_dev.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    sentences = list(dict.fromkeys([r[0] for r in rows] + [r[1] for r in rows]))[:400]
    reference = torch.from_numpy(encoder.encode(sentences, batch_size=32))
    calibration_reference = torch.from_numpy(encoder.encode(CALIBRATION, batch_size=32))
    layers = decoder_layers(encoder.model)

    def emulated(module):
        return lambda x: bf16(F.linear(bf16(x), bf16(module.weight), module.bias))

    def trial(float32_layers: set[int]) -> tuple[float, float, float]:
        saved = {}
        for index, layer in enumerate(layers):
            if index in float32_layers:
                continue
            for module in layer.modules():
                if isinstance(module, torch.nn.Linear):
                    saved[module] = module.forward
                    module.forward = emulated(module)
        try:
            dev = (torch.from_numpy(encoder.encode(sentences, batch_size=32)) * reference).sum(-1)
            calibration = (torch.from_numpy(encoder.encode(CALIBRATION, batch_size=32)) * calibration_reference).sum(-1)
        finally:
            for module, forward in saved.items():
                module.forward = forward
        return float(dev.min()), float(dev.mean()), float(calibration.min())

    count = len(layers)
    print(f"# {model}: every layer bfloat16: dev min {{:.5f}} mean {{:.6f}} calibration min {{:.5f}}".format(*trial(set())), flush=True)
    damage = {}
    for index in range(count):
        damage[index] = trial(set(range(count)) - {index})
        print(f"only layer {index} bfloat16: dev min {damage[index][0]:.5f} mean {damage[index][1]:.6f} "
              f"calibration min {damage[index][2]:.5f}", flush=True)
    order = sorted(range(count), key=lambda i: damage[i][2])
    print("layers by calibration damage:", order)
    kept: set[int] = set()
    for index in order[:8]:
        kept.add(index)
        dev_min, dev_mean, calibration_min = trial(kept)
        print(f"float32 {sorted(kept)}: dev min {dev_min:.5f} mean {dev_mean:.6f} calibration min {calibration_min:.5f}", flush=True)
    for split in (12,):
        dev_min, dev_mean, calibration_min = trial(set(range(split)))
        print(f"float32 layers 0-{split - 1} (mixed's prefix): dev min {dev_min:.5f} mean {dev_mean:.6f} "
              f"calibration min {calibration_min:.5f}", flush=True)


if __name__ == "__main__":
    main()
