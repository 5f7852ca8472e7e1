"""The training objectives: MNTP masking and loss, InfoNCE / SimCSE, gradient caching, gathered negatives."""

import copy
import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn import functional as F

from l2v import Encoder
from l2v.errors import L2VError
from l2v.train.mntp import MaskingConfig, mask_for_mntp, mask_token_id, mntp_loss
from l2v.train.simcse import info_nce, set_dropout, simcse_loss
from l2v.train.supervised import contrastive_loss, grad_cache_step


def test_masking_follows_the_80_10_10_recipe():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 300, (64, 200), generator=generator)
    attention = torch.ones_like(ids)
    attention[:, 150:] = 0
    special = torch.zeros_like(ids)
    special[:, 0] = 1
    corrupted, labels = mask_for_mntp(ids, attention, special, mask_id=5, vocab_size=320, generator=generator)
    selected = labels != -100
    assert not selected[:, 150:].any() and not selected[:, 0].any() and selected[:, 1].any()
    eligible = 64 * (150 - 1)
    assert abs(selected.sum().item() / eligible - 0.2) < 0.01
    assert torch.equal(labels[selected], ids[selected])
    masked = (corrupted == 5) & selected
    kept = (corrupted == ids) & selected
    assert abs(masked.sum().item() / selected.sum().item() - 0.8) < 0.02
    assert abs(kept.sum().item() / selected.sum().item() - 0.1) < 0.02  # random draws rarely equal the original
    assert torch.equal(corrupted[~selected], ids[~selected])


def test_first_token_is_never_a_target():
    ids = torch.randint(10, 300, (8, 5))
    _, labels = mask_for_mntp(ids, torch.ones_like(ids), None, 5, 320, MaskingConfig(probability=1.0))
    assert (labels[:, 0] == -100).all() and (labels[:, 1:] != -100).all()


def test_mntp_loss_equals_the_full_vocabulary_shifted_loss(tiny_llama_folder):
    from l2v import Encoder

    encoder = Encoder.from_pretrained(str(tiny_llama_folder), with_lm_head=True)
    ids = torch.randint(10, 300, (3, 9), generator=torch.Generator().manual_seed(1))
    attention = torch.ones_like(ids)
    attention[2, 6:] = 0
    corrupted, labels = mask_for_mntp(ids, attention, None, 5, 320, MaskingConfig(probability=0.5), torch.Generator().manual_seed(2))
    ours = mntp_loss(encoder, encoder.lm_head, corrupted, attention, labels)
    hidden = encoder({"input_ids": corrupted, "attention_mask": attention}, pool=False)
    logits = encoder.lm_head(hidden)  # every position, the whole vocabulary
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, 320), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    ours.backward()
    assert encoder.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in encoder.lm_head.parameters())  # the LM head stays frozen


def test_length_groups_cover_every_text_once_with_little_padding():
    from l2v.batching import length_groups

    lengths = [5, 40, 38, 7, 6, 39, 12, 64, 11, 5, 33, 8]
    groups = length_groups(lengths, max_padding=0.15, min_tokens=1)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    padded = sum(max(lengths[i] for i in g) * len(g) for g in groups)
    assert padded <= 1.3 * sum(lengths) < max(lengths) * len(lengths)
    assert length_groups(lengths, min_tokens=10_000) == [sorted(range(12), key=lambda i: -lengths[i])]


def test_grouped_mntp_loss_and_embeddings_equal_the_padded_batch(tiny_llama_folder):
    from l2v import Encoder
    from l2v.batching import embed_in_groups
    from l2v.train.mntp import mntp_loss_grouped

    encoder = Encoder.from_pretrained(str(tiny_llama_folder), with_lm_head=True)
    generator = torch.Generator().manual_seed(3)
    lengths = [9, 3, 12, 4, 11, 2]
    ids = torch.randint(10, 300, (6, 12), generator=generator)
    attention = (torch.arange(12)[None, :] < torch.tensor(lengths)[:, None]).long()
    corrupted, labels = mask_for_mntp(ids, attention, None, 5, 320, MaskingConfig(probability=0.5), generator)
    padded = mntp_loss(encoder, encoder.lm_head, corrupted, attention, labels)
    items = [(corrupted[i, :n].tolist(), labels[i, :n].tolist()) for i, n in enumerate(lengths)]
    grouped = mntp_loss_grouped(encoder, encoder.lm_head, items, 0, min_tokens=1)
    assert grouped.item() == pytest.approx(padded.item(), rel=1e-5)
    grouped.backward()
    assert encoder.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0

    encoder = Encoder.from_pretrained(str(tiny_llama_folder))
    tokenized = encoder.tokenize(["the cat sits on the mat while the dog sleeps", "paris", "a man is playing a guitar",
                                  "what is the capital of france ?", "she plays the piano every evening"])
    together = encoder(encoder.collate(tokenized))
    apart = embed_in_groups(encoder, encoder.collate, tokenized, min_tokens=1)
    assert torch.allclose(together, apart, atol=1e-5)


def test_mask_token_choice(tiny_llama_folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_folder)
    assert tokenizer.mask_token_id is None
    with pytest.raises(L2VError, match="family 'mystery' has no mask token"):
        mask_token_id(tokenizer, "mystery")
    with pytest.raises(L2VError, match="2 tokens"):
        mask_token_id(tokenizer, "llama", override="the cat")
    assert mask_token_id(tokenizer, "llama", override="cat") == tokenizer.convert_tokens_to_ids("cat")
    with pytest.raises(L2VError, match="not in this tokenizer"):
        mask_token_id(tokenizer, "llama")  # "_" is not in the tiny vocabulary
    assert mask_token_id(tokenizer, "llama", override="<unk>") == tokenizer.unk_token_id


def test_info_nce_by_hand():
    torch.manual_seed(0)
    q, k = torch.randn(4, 8), torch.randn(6, 8)
    similarity = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T / 0.05
    expected = -torch.log_softmax(similarity, dim=1).diagonal()[:4].mean()
    assert info_nce(q, k).item() == pytest.approx(expected.item(), rel=1e-6)


def test_simcse_views_differ_only_by_dropout(tiny_llama_folder):
    encoder = Encoder.from_pretrained(str(tiny_llama_folder))
    tokenized = encoder.tokenize(["the cat sits on the mat", "paris", "a man is playing a guitar"])
    features = encoder.collate(tokenized)
    encoder.train()
    set_dropout(encoder.model, attention_dropout=0.0)
    assert torch.allclose(encoder(features), encoder(features))
    set_dropout(encoder.model, attention_dropout=0.3)
    assert not torch.allclose(encoder(features), encoder(features))
    loss = simcse_loss(encoder, encoder.collate, tokenized)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()


def _encoder_and_batches(folder, dropout):
    encoder = Encoder.from_pretrained(str(folder))
    set_dropout(encoder.model, attention_dropout=dropout)
    encoder.train()
    texts = ["the cat sits on the mat", "paris", "a man is playing a guitar", "the dog sleeps",
             "she plays the piano every evening", "what is the capital of france ?"]
    queries = [("retrieve documents that answer the question", t) for t in texts[:4]]
    positives, negatives = texts[1:5], texts[2:6]
    return encoder, queries, positives, negatives


def _chunks(encoder, items, size):
    return [encoder.collate(encoder.tokenize(items[i: i + size])) for i in range(0, len(items), size)]


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _grad_cache_matches(encoder, reference, batches, chunk, loss_fn, plain):
    """One GradCache step from seed 11 on ``encoder``; its loss and gradients equal ``plain``'s on ``reference``."""
    torch.manual_seed(11)
    groups = [_chunks(encoder, x, chunk) for x in batches]
    cached = grad_cache_step(encoder, groups, loss_fn, module=encoder)
    assert cached.item() == pytest.approx(plain.item(), rel=1e-5)
    expected, got = _grads(reference), _grads(encoder)
    assert expected.keys() == got.keys() and len(got) > 0
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-5, rtol=1e-4), name
    return groups, cached


@pytest.mark.parametrize("dropout,chunk", [(0.0, 1), (0.0, 3), (0.2, 4)])
def test_grad_cache_equals_the_full_batch(tiny_llama_folder, dropout, chunk):
    encoder, queries, positives, negatives = _encoder_and_batches(tiny_llama_folder, dropout)
    reference = copy.deepcopy(encoder)
    loss_fn = lambda q, p, n: contrastive_loss(q, p, n, temperature=0.02)  # noqa: E731
    torch.manual_seed(11)
    plain = loss_fn(*[reference(f) for f in (_chunks(reference, x, len(x))[0] for x in (queries, positives, negatives))])
    plain.backward()
    _grad_cache_matches(encoder, reference, (queries, positives, negatives), chunk, loss_fn, plain)


@pytest.mark.parametrize("chunk", [1, 3])
def test_grad_cache_replays_dropout_across_chunks(tiny_llama_folder, chunk):
    """With dropout on and several chunks per role, the replayed forwards draw the dropout masks of the first,
    gradient-free pass: the loss and gradients equal the same chunked forwards run with graph."""
    encoder, queries, positives, negatives = _encoder_and_batches(tiny_llama_folder, 0.3)
    reference = copy.deepcopy(encoder)
    loss_fn = lambda q, p, n: contrastive_loss(q, p, n, temperature=0.02)  # noqa: E731
    torch.manual_seed(11)
    embeddings = [torch.cat([reference(c) for c in _chunks(reference, x, chunk)]) for x in (queries, positives, negatives)]
    plain = loss_fn(*embeddings)
    plain.backward()
    groups, cached = _grad_cache_matches(encoder, reference, (queries, positives, negatives), chunk, loss_fn, plain)
    torch.manual_seed(12)  # and the dropout does act: another seed gives another loss
    assert grad_cache_step(copy.deepcopy(encoder), groups, loss_fn).item() != pytest.approx(cached.item(), rel=1e-4)


def _rank_loss(rank, world, init_file, queries, keys, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = queries.shape[0] // world
    local_q = queries[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    positives = keys[: queries.shape[0]]
    negatives = keys[queries.shape[0]:]
    m = negatives.shape[0] // world
    local_k = torch.cat([positives[rank * n:(rank + 1) * n], negatives[rank * m:(rank + 1) * m]]).clone().requires_grad_(True)
    loss = info_nce(local_q, local_k, temperature=0.05)
    loss.backward()
    torch.save({"loss": loss.detach(), "q_grad": local_q.grad, "k_grad": local_k.grad}, f"{result_file}.{rank}")
    # Gloo can abort a process whose peer tears its pair down first, or at interpreter shutdown while its worker
    # threads still hold tensors (a SIGABRT seen once in CI after both results were written): wait for both ranks,
    # destroy the group, and leave without interpreter finalisation.
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def test_gathered_negatives_across_two_processes_equal_one_process():
    torch.manual_seed(0)
    queries, keys = torch.randn(8, 16), torch.randn(12, 16)  # 8 positives + 4 hard negatives
    with tempfile.TemporaryDirectory() as folder:
        init_file, result_file = os.path.join(folder, "init"), os.path.join(folder, "result")
        mp.start_processes(_rank_loss, args=(2, init_file, queries, keys, result_file), nprocs=2, join=True, start_method="spawn")
        ranks = [torch.load(f"{result_file}.{r}") for r in range(2)]
    # One process, the same global batch; keys laid out as all positives then all negatives, as gathered.
    q = queries.clone().requires_grad_(True)
    k = keys.clone().requires_grad_(True)
    single = info_nce(q, k, temperature=0.05, gather=False)
    single.backward()
    mean_loss = sum(r["loss"] for r in ranks) / 2
    assert mean_loss.item() == pytest.approx(single.item(), rel=1e-6)
    # Gradients: averaging over processes (as DDP does) gives the single-process gradients.
    q_grad = torch.cat([r["q_grad"] for r in ranks]) / 2
    assert torch.allclose(q_grad, q.grad, atol=1e-6)
    k_grad_pos = torch.cat([ranks[0]["k_grad"][:4], ranks[1]["k_grad"][:4]]) / 2
    k_grad_neg = torch.cat([ranks[0]["k_grad"][4:], ranks[1]["k_grad"][4:]]) / 2
    assert torch.allclose(torch.cat([k_grad_pos, k_grad_neg]), k.grad, atol=1e-6)


def test_lora_dropout_draws_the_same_distribution_faster(tiny_llama_folder):
    from l2v.train.config import TrainConfig
    from l2v.train.lora import Dropout, apply_lora

    x = torch.randn(400, 300)
    dropout = Dropout(0.2).train()
    out = dropout(x)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - 0.2) < 0.01  # keep probability 1 - p
    assert torch.allclose(out[~dropped], x[~dropped] / 0.8)  # survivors scaled by 1 / (1 - p)
    assert torch.equal(dropout.eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
    ones = torch.ones(2000, 500, dtype=torch.bfloat16)
    assert abs(Dropout(0.05).train()(ones).float().mean().item() - 1.0) < 0.01  # unbiased in bf16 too
    torch.manual_seed(3)
    first = Dropout(0.3).train()(x)
    torch.manual_seed(3)
    assert torch.equal(first, Dropout(0.3).train()(x))  # seeded like every other draw: resumption replays it
    assert Dropout(0.3).train()(torch.ones(0)).shape == (0,)
    model = apply_lora(Encoder.from_pretrained(str(tiny_llama_folder)).model,
                       TrainConfig(stage="simcse", model="x", output="y"))
    dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
    assert dropouts and all(d.p == 0.05 for d in dropouts)
    assert not [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and "lora" in str(type(m))]


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_lora_dropout_positions_are_a_bernoulli_process(p):
    """Drawn as geometric gaps, the drops are what independent Bernoulli(p) draws give: the rate, no correlation
    between neighbours, and the same rate at the first and last elements of small tensors."""
    import math

    from l2v.train.lora import drop_elements, drop_positions

    torch.manual_seed(0)
    n = 2_000_000
    dropped = 1.0 - drop_elements(torch.ones(n, dtype=torch.float64), p)
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(dropped.mean().item() - p) < 5 * sigma
    both = (dropped[:-1] * dropped[1:]).mean().item()  # neighbours drop together with probability p^2
    assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n)
    small = torch.stack([1.0 - drop_elements(torch.ones(3, dtype=torch.float64), p) for _ in range(20_000)])
    for column in small.T:  # each position of a 3-element tensor, over 20,000 tensors
        assert abs(column.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / 20_000)
    positions = drop_positions(1000, p)
    assert positions.dtype == torch.int64 and bool((positions[1:] > positions[:-1]).all())
    assert positions.numel() == 0 or (positions.min() >= 0 and positions.max() < 1000)


def test_simcse_in_one_pass_of_both_views_equals_two_passes_without_dropout(tiny_llama_folder):
    from l2v.batching import embed_in_groups

    encoder = Encoder.from_pretrained(str(tiny_llama_folder))
    tokenized = encoder.tokenize(["the cat sits on the mat while the dog sleeps", "paris", "a man is playing a guitar",
                                  "what is the capital of france ?", "she plays the piano every evening"])
    encoder.train()
    set_dropout(encoder.model, attention_dropout=0.0)
    two_passes = info_nce(embed_in_groups(encoder, encoder.collate, tokenized), embed_in_groups(encoder, encoder.collate, tokenized))
    assert simcse_loss(encoder, encoder.collate, tokenized).item() == pytest.approx(two_passes.item(), rel=1e-5)
    set_dropout(encoder.model, attention_dropout=0.3)  # with dropout the copies differ: the views are not identical
    both = embed_in_groups(encoder, encoder.collate, tokenized + tokenized)
    assert not torch.allclose(both[:5], both[5:])


def _lora_loss_and_grads(folder, dtype, in_base_dtype):
    """A SimCSE loss (no dropout) and its LoRA gradients, LoRA B factors set to the same non-zero values."""
    from l2v.train.config import LoraConfig, TrainConfig
    from l2v.train.lora import apply_lora

    encoder = Encoder.from_pretrained(str(folder), dtype=dtype)
    torch.manual_seed(0)
    config = TrainConfig(stage="simcse", model="x", output="y",
                         lora=LoraConfig(r=4, dropout=0.0, compute_in_base_dtype=in_base_dtype))
    encoder.model = apply_lora(encoder.model, config)
    generator = torch.Generator().manual_seed(1)
    for name, parameter in encoder.model.named_parameters():
        if "lora_B" in name:
            parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    encoder.train()
    set_dropout(encoder.model, attention_dropout=0.0)
    tokenized = encoder.tokenize(["the cat sits on the mat while the dog sleeps", "paris", "a man is playing a guitar",
                                  "what is the capital of france ?"])
    loss = simcse_loss(encoder, encoder.collate, tokenized)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in encoder.model.named_parameters() if p.grad is not None}
    return encoder, loss.item(), grads


def test_lora_products_in_the_base_dtype_keep_the_loss_and_gradients(tiny_llama_folder):
    from peft import get_peft_model_state_dict

    from l2v.train.lora import InputDtypeLinear

    # float32 base weights: the switch changes nothing but float rounding (the fused forward that comes with it
    # folds LoRA's scale into the B factor and adds inside the product)
    _, reference_loss, reference = _lora_loss_and_grads(tiny_llama_folder, "float32", True)
    _, other_loss, other = _lora_loss_and_grads(tiny_llama_folder, "float32", False)
    assert reference_loss == pytest.approx(other_loss, rel=1e-6)
    assert reference.keys() == other.keys() and all(torch.allclose(reference[n], other[n], rtol=1e-4, atol=1e-7) for n in other)
    # bf16 base weights: LoRA's products in bf16 stay as close to float32 as peft's float32 LoRA path does
    fast, fast_loss, fast_grads = _lora_loss_and_grads(tiny_llama_folder, "bfloat16", True)
    _, slow_loss, slow_grads = _lora_loss_and_grads(tiny_llama_folder, "bfloat16", False)
    factors = [m for m in fast.model.modules() if isinstance(m, InputDtypeLinear)]
    assert factors and all(m.weight.dtype == torch.float32 for m in factors)  # master weights stay float32
    assert fast_grads.keys() == slow_grads.keys() == reference.keys() and any("lora_A" in n for n in reference)
    assert abs(fast_loss - reference_loss) <= 2 * abs(slow_loss - reference_loss) + 1e-3

    def worst_cosine(grads):
        return min(F.cosine_similarity(grads[n].float().flatten(), reference[n].flatten(), dim=0).item() for n in reference)

    assert all(g.dtype == torch.float32 for g in fast_grads.values())
    assert worst_cosine(fast_grads) > 0.99 and worst_cosine(fast_grads) >= worst_cosine(slow_grads) - 0.005
    # the saved adapter has peft's keys whichever path ran
    keys = set(get_peft_model_state_dict(fast.model))
    assert keys and all(".lora_A.weight" in k or ".lora_B.weight" in k for k in keys)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_lora_forward_computes_peft_s_function(tiny_llama_folder, dtype):
    """The fused LoRA forward (scales folded into the factors, dropout as a sparse fill, the update added inside the
    B product) against peft's forward on the very same module, dropout draws and batch: same loss and gradients to
    float rounding, with LoRA dropout on; state dict and merging untouched."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    from l2v.train.config import LoraConfig, TrainConfig
    from l2v.train.lora import _fused_class, apply_lora

    encoder = Encoder.from_pretrained(str(tiny_llama_folder), dtype=dtype)
    config = TrainConfig(stage="simcse", model="x", output="y", lora=LoraConfig(r=4, alpha=8, dropout=0.2))
    encoder.model = apply_lora(encoder.model, config)
    fused = [m for m in encoder.model.modules() if isinstance(m, LoraLinear)]
    assert fused and all(type(m) is _fused_class() for m in fused)
    generator = torch.Generator().manual_seed(1)
    for name, parameter in encoder.model.named_parameters():
        if "lora_B" in name:
            parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    encoder.train()
    set_dropout(encoder.model, attention_dropout=0.0)  # LoRA dropout stays on: the two paths must draw alike
    tokenized = encoder.tokenize(["the cat sits on the mat while the dog sleeps", "paris", "a man is playing a guitar",
                                  "what is the capital of france ?"])

    def run(kind):
        for module in fused:
            module.__class__ = kind
        encoder.model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        loss = simcse_loss(encoder, encoder.collate, tokenized)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in encoder.model.named_parameters() if p.grad is not None}

    fused_loss, fused_grads = run(_fused_class())
    peft_loss, peft_grads = run(LoraLinear)
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    assert fused_loss == pytest.approx(peft_loss, rel=tolerance)
    assert fused_grads.keys() == peft_grads.keys() and any("lora_A" in n for n in fused_grads)
    for name, grad in fused_grads.items():
        cosine = F.cosine_similarity(grad.flatten(), peft_grads[name].flatten(), dim=0).item()
        assert cosine > (0.99999 if dtype == "float32" else 0.99), name
    # one projection: the same seed draws the same drops in both paths, another seed other drops
    module = next(m for m in fused if m.in_features == m.out_features)
    x = torch.randn(3, 5, module.in_features, dtype=module.base_layer.weight.dtype)

    def project(kind, seed):
        module.__class__ = kind
        torch.manual_seed(seed)
        with torch.no_grad():
            return module(x).float()

    same = project(_fused_class(), 3)
    assert torch.allclose(same, project(LoraLinear, 3), atol=1e-5 if dtype == "float32" else 5e-2)
    assert not torch.allclose(same, project(_fused_class(), 4), atol=1e-3)  # dropout is really on
    # merged (or disabled) adapters take peft's path: the merged model computes what the fused forward did
    for module in fused:
        module.__class__ = _fused_class()
    encoder.eval()
    features = encoder.collate(tokenized)
    with torch.no_grad():
        before = encoder(features)
        encoder.model.merge_adapter()
        after = encoder(features)
        encoder.model.unmerge_adapter()
    assert torch.allclose(before.float(), after.float(), atol=1e-4 if dtype == "float32" else 5e-2)


def test_fused_lora_forward_leaves_other_cases_to_peft(tiny_llama_folder):
    from peft.tuners.lora.layer import Linear as LoraLinear

    from l2v.train.config import LoraConfig, TrainConfig
    from l2v.train.lora import _fused_class, apply_lora

    encoder = Encoder.from_pretrained(str(tiny_llama_folder))
    # peft's own float32 path asked for: nothing fused
    plain = apply_lora(encoder.model, TrainConfig(stage="simcse", model="x", output="y",
                                                  lora=LoraConfig(r=4, compute_in_base_dtype=False)))
    assert not [m for m in plain.modules() if type(m) is _fused_class()]
    assert [m for m in plain.modules() if type(m) is LoraLinear]


def test_training_asks_glibc_for_a_steady_heap():
    import platform

    from l2v.train.runner import steady_cpu_allocator

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert steady_cpu_allocator() is True
    big = torch.ones(64 * 2**20 // 4)  # 64 MB from the heap now: allocation and release still work
    assert big.sum().item() == big.numel()
