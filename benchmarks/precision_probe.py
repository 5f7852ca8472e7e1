"""Where does bfloat16 change the embedding? (issue 16, first step: find the cause before fixing it)

Encodes STS-B test sentences with an encoder in float32 (the reference) and in bfloat16 variants, and reports for
each variant the embedding's cosine to float32 (min / mean) and, per layer, the cosine of the token states
(min / mean over real tokens) and their relative error, so the layer where the error appears and the operation
that makes it can be read off. Variants:

  autocast        torch.autocast(bfloat16) over float32 weights (residual stream and norms stay float32)
  autocast+attn32 the same, attention (scores, softmax, weighted sum) computed in float32
  bf16-weights    weights and activations in bfloat16
  weights-rounded      float32 throughout, the decoder's linear weights rounded to bfloat16 (attention float32)
  activations-rounded  float32 throughout, the linear layers' inputs rounded to bfloat16 (attention float32)
  weights-hi+lo        bfloat16 inputs times the weights as two bfloat16 terms (hi + lo), float32 accumulation:
                       two bfloat16 products per linear layer (attention float32)

    .venv/bin/python benchmarks/precision_probe.py [--model smollm2-135m-l2v-sup] [--sentences 200]
Results: benchmarks/results/precision_probe.json
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from _common import stsb_test_sentences, write_result


@contextlib.contextmanager
def attention_in_float32():
    """scaled_dot_product_attention on float32 inputs, outside autocast, cast back to the caller's dtype."""
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention

    def float32_attention(query, key, value, attn_mask=None, *args, **kwargs):
        dtype = query.dtype
        with torch.autocast(query.device.type, enabled=False):
            mask = attn_mask.float() if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
            out = original(query.float(), key.float(), value.float(), mask, *args, **kwargs)
        return out.to(dtype)

    functional.scaled_dot_product_attention = float32_attention
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original


@contextlib.contextmanager
def linear_variant(model, mode: str):
    """Replace every decoder linear layer's forward by one of the rounding experiments (float32 elsewhere)."""
    functional = torch.nn.functional
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}."]
    saved = []
    for module in linears:
        w32 = module.weight.detach().float()
        hi = w32.to(torch.bfloat16)
        lo = (w32 - hi.float()).to(torch.bfloat16)

        def forward(x, module=module, w32=w32, hi=hi, lo=lo):
            x = x.float()
            if mode == "weights-rounded":
                y = functional.linear(x, hi.float())
            elif mode == "activations-rounded":
                y = functional.linear(x.to(torch.bfloat16).float(), w32)
            else:  # weights-hi+lo
                xb = x.to(torch.bfloat16)
                y = functional.linear(xb, hi).float() + functional.linear(xb, lo).float()
            return y if module.bias is None else y + module.bias.float()

        saved.append((module, module.forward))
        module.forward = forward
    try:
        yield
    finally:
        for module, original in saved:
            module.forward = original


def run(encoder, texts: list[str], batch: int = 32):
    """Pooled embeddings (float32), per layer the token states of real tokens (a list of [tokens, H] arrays), and
    each real token's (position in its text, token string)."""
    embeddings, layers, where = [], None, []
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            features = encoder.collate(encoder.tokenize(texts[start: start + batch]))
            pooled, output = encoder(features, output_hidden_states=True)
            embeddings.append(pooled.float().numpy())
            mask = features["attention_mask"].bool()
            positions = mask.long().cumsum(dim=1) - 1
            ids = features["input_ids"][mask].tolist()
            where += list(zip(positions[mask].tolist(), encoder.tokenizer.convert_ids_to_tokens(ids)))
            states = [h.float()[mask].numpy() for h in output.hidden_states]
            layers = states if layers is None else [np.concatenate([a, b]) for a, b in zip(layers, states)]
    return np.concatenate(embeddings), layers, where


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-l2v-sup")
    parser.add_argument("--sentences", type=int, default=200)
    args = parser.parse_args()
    from l2v import Encoder

    texts = stsb_test_sentences()[: args.sentences]
    reference = Encoder.from_pretrained(args.model, merge_adapters=True)
    reference.eval()
    ref_embeddings, ref_layers, where = run(reference, texts)
    variants = {
        "autocast": lambda: (reference, torch.autocast("cpu", dtype=torch.bfloat16)),
        "autocast+attn32": lambda: (reference, contextlib.ExitStack()),
        "bf16-weights": lambda: (Encoder.from_pretrained(args.model, merge_adapters=True, dtype="bfloat16"), contextlib.nullcontext()),
        "weights-rounded": lambda: (reference, contextlib.ExitStack()),
        "activations-rounded": lambda: (reference, contextlib.ExitStack()),
        "weights-hi+lo": lambda: (reference, contextlib.ExitStack()),
    }
    results = {}
    for name, make in variants.items():
        encoder, context = make()
        encoder.eval()
        if name == "autocast+attn32":
            context.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
            context.enter_context(attention_in_float32())
        elif name in ("weights-rounded", "activations-rounded", "weights-hi+lo"):
            context.enter_context(attention_in_float32())
            context.enter_context(linear_variant(encoder.model, name))
        begin = time.perf_counter()
        with context:
            embeddings, layers, _ = run(encoder, texts)
        seconds = time.perf_counter() - begin
        cos = cosine_rows(embeddings, ref_embeddings)
        per_layer = []
        for index, (got, want) in enumerate(zip(layers, ref_layers)):
            token_cos = cosine_rows(got, want)
            relative = np.linalg.norm(got - want, axis=-1) / (np.linalg.norm(want, axis=-1) + 1e-30)
            per_layer.append({"layer": index, "token_cos_min": float(token_cos.min()), "token_cos_mean": float(token_cos.mean()),
                              "relative_error_mean": float(relative.mean()), "state_norm_mean": float(np.linalg.norm(want, axis=-1).mean())})
        pooled_norm = float(np.linalg.norm(ref_embeddings, axis=-1).mean())
        last_cos = cosine_rows(layers[-1], ref_layers[-1])
        worst = [{"position": where[i][0], "token": where[i][1], "token_cos": float(last_cos[i]),
                  "layer_29_norm": float(np.linalg.norm(ref_layers[-2][i]))} for i in np.argsort(last_cos)[:12]]
        first = np.array([w[0] == 0 for w in where])
        results[name] = {"embedding_cos_min": float(cos.min()), "embedding_cos_mean": float(cos.mean()), "seconds": round(seconds, 2),
                         "pooled_norm_over_token_norm": pooled_norm / per_layer[-1]["state_norm_mean"],
                         "worst_tokens_last_layer": worst,
                         "last_layer_token_cos_min_first_position": float(last_cos[first].min()),
                         "last_layer_token_cos_min_other_positions": float(last_cos[~first].min()), "layers": per_layer}
        print(f"{name:16s} embedding cos min {cos.min():.5f} mean {cos.mean():.6f}   last layer token cos min "
              f"{per_layer[-1]['token_cos_min']:.4f}   {seconds:.1f} s", flush=True)
        print("    worst last-layer tokens:", [(w["position"], w["token"], round(w["token_cos"], 3)) for w in worst[:8]])
        print(f"    last-layer token cos min: first position {last_cos[first].min():.4f}, others {last_cos[~first].min():.4f}")
        for row in per_layer:
            print(f"    layer {row['layer']:2d}  token cos min {row['token_cos_min']:.5f} mean {row['token_cos_mean']:.6f}  "
                  f"rel err {row['relative_error_mean']:.4f}  |h| {row['state_norm_mean']:.1f}")
    write_result("precision_probe", {"model": args.model, "sentences": len(texts), "date": time.strftime("%Y-%m-%d"),
                                     "results": results})


if __name__ == "__main__":
    main()
