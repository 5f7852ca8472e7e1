"""The ``l2v`` command: parse, call the library, print. Errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import L2VError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="l2v: turn any decoder-only LLM into a text encoder (LLM2Vec).")

EXIT_USER_ERROR = 2
EXIT_TIME_LIMIT = 75  # sysexits' EX_TEMPFAIL: stopped at --time-limit with a checkpoint; the same command resumes


def parse_duration(text: str | None) -> float | None:
    """``--time-limit``: seconds, or a number with s, m or h (``90``, ``90s``, ``9m``, ``2.5h``)."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    value = text.strip().lower()
    scale = units.get(value[-1:], None)
    number = value[:-1] if scale else value
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        seconds = float("nan")
    if not (seconds >= 0 and seconds != float("inf")):
        raise L2VError(f"--time-limit {text!r}: give seconds or a number with s, m or h (e.g. 540, 9m, 2.5h)")
    return seconds


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


def _close_process_group() -> None:
    """Destroy a torch.distributed group this command started (``l2v train``/``convert`` under torchrun).

    Left to interpreter shutdown, gloo's worker threads can abort the process after its work is done."""
    dist_module = sys.modules.get("torch.distributed")  # never import torch just for this
    if dist_module is not None and dist_module.is_available() and dist_module.is_initialized():
        dist_module.destroy_process_group()


def _run(action):
    """Run ``action`` turning every failure into one line (set L2V_DEBUG=1 for the traceback)."""
    try:
        return action()
    except typer.Exit:
        raise
    except L2VError as error:
        from .train.runner import TimeLimitReached

        if isinstance(error, TimeLimitReached):  # every process stops; one says so (torchrun then exits 1)
            if os.environ.get("RANK", "0") == "0":
                typer.echo(str(error), err=True)
            raise typer.Exit(EXIT_TIME_LIMIT) from None
        _fail(str(error))
    except KeyboardInterrupt:
        _fail("interrupted")
    except Exception as error:  # noqa: BLE001 - the CLI promises one line, never a traceback
        if os.environ.get("L2V_DEBUG"):
            raise
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _fail(f"{type(error).__name__}: {text} (set L2V_DEBUG=1 for the traceback)")
    finally:
        _close_process_group()


def _encoding_process() -> None:
    """For commands whose process only encodes: quiet libraries, CPU kernel caches bounded before the first product
    (unless the environment sets them; ``l2v.memory.bound_kernel_caches``)."""
    from .memory import bound_kernel_caches

    _quiet_libraries()
    bound_kernel_caches()


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")


@app.command()
def encode(
    model: str = typer.Option(..., "--model", "-m", help="built-in name, Hugging Face id, model folder or l2v encoder folder"),
    input: Path = typer.Option(..., "--input", "-i", help=".txt (one text per line, empty lines kept) or .jsonl ({'text': ...} per line)"),
    output: Path = typer.Option(..., "--output", "-o", help="OUT.npy: float32, one row per input line, in order"),
    pooling: Optional[str] = typer.Option(None, help="mean, weighted_mean, eos_token, last_token, bos_token, latent_attention"),
    instruction: Optional[str] = typer.Option(None, help="instruction for every text (attended to, not pooled)"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=2, help="tokens per text (default 512); longer texts are truncated"),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="L2-normalise the embeddings"),
    adapters: Optional[list[str]] = typer.Option(None, "--adapters", help="a peft LoRA adapter: folder or Hugging Face id (repeatable; e.g. an llm2vec -mntp-supervised repo on top of its -mntp checkpoint)"),
    dtype: str = typer.Option("float32", help="compute precision: float32, mixed (float32 up to the massive-activation layer, bfloat16 products after: within cosine 0.999 of float32, faster), bfloat16 (fastest, not exact), float16 (GPU), auto (mixed where the device has native bfloat16, else float32)"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"),
    bidirectional: Optional[bool] = typer.Option(None, "--bidirectional/--causal", help="attention direction (default: bidirectional)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Encode a file of texts into an .npy matrix."""
    _encoding_process()

    def action():
        from .encoder import Encoder
        from .fileio import read_texts, save_npy_atomic
        from .pooling import canonical_pooling

        if output.suffix.lower() != ".npy":
            raise L2VError(f"--output must end in .npy, got {output}")
        if pooling is not None:
            canonical_pooling(pooling)  # fail on a bad name before loading anything
        texts = read_texts(input)
        if not texts:
            raise L2VError(f"{input}: no texts to encode (the file is empty)")
        encoder = Encoder.from_pretrained(
            model, adapters=list(adapters or []) or None, pooling=pooling, max_length=max_length,
            dtype=dtype, device=device, bidirectional=bidirectional,
        )
        if dtype != "float32":
            typer.echo(f"computing in {encoder.precision_description}", err=True)
        embeddings, stats = encoder.encode(
            texts, batch_size=batch_size, normalize=normalize, instruction=instruction, show_progress=progress, return_stats=True
        )
        save_npy_atomic(embeddings.astype("float32"), output)
        if stats.truncated:
            typer.echo(
                f"note: {stats.truncated} of {len(texts)} texts were longer than {encoder.config.max_length} "
                "tokens and were truncated",
                err=True,
            )
        typer.echo(f"wrote {output} ({embeddings.shape[0]} x {embeddings.shape[1]}, float32)", err=True)

    _run(action)


@app.command()
def info(
    model: str = typer.Argument(..., help="built-in name, Hugging Face id, model folder or l2v encoder folder"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    bidirectional: Optional[bool] = typer.Option(None, "--bidirectional/--causal"),
    adapters: Optional[list[str]] = typer.Option(None, "--adapters", help="a peft LoRA adapter: folder or Hugging Face id (repeatable; e.g. an llm2vec -mntp-supervised repo on top of its -mntp checkpoint)"),
):
    """Family, parameters, hidden size, whether bidirectional attention holds, where it loaded from."""
    _quiet_libraries()

    def action():
        from .encoder import Encoder

        details = Encoder.from_pretrained(model, adapters=list(adapters or []) or None, bidirectional=bidirectional).info()
        if as_json:
            typer.echo(json.dumps(details, indent=2))
            return
        width = max(len(k) for k in details)
        for key, value in details.items():
            if key == "parameters":
                value = f"{value:,}"
            typer.echo(f"{key:<{width}}  {value}")

    _run(action)


@app.command()
def models():
    """List the built-in models, the LLM2Vec authors' published encoders, and whether their weights are here."""
    import importlib.util

    from .registry import BASELINE_MODELS, BUILTIN_MODELS, TRAINED_ENCODERS, trained_encoder_folder

    for spec in BUILTIN_MODELS.values():
        installed = importlib.util.find_spec(spec.package) is not None
        status = "installed" if installed else f"not installed: {spec.install_command}"
        typer.echo(f"{spec.name:<24} {spec.description}; licence {spec.licence}; {status}")
    for trained in TRAINED_ENCODERS.values():
        shipped = (trained_encoder_folder(trained.name) / "l2v_config.json").exists()
        status = "adapters shipped" if shipped else f"adapters missing: l2v convert --config {trained.recipe}"
        typer.echo(f"{trained.name:<24} {trained.description}; {status}")
    for baseline in BASELINE_MODELS.values():
        installed = importlib.util.find_spec(baseline.package) is not None
        status = "installed" if installed else f"not installed: {baseline.install_command}"
        typer.echo(f"{baseline.name:<24} {baseline.description} (the encoder baseline); licence {baseline.licence}; {status}")
    from .llm2vec_format import PUBLISHED, cache_status

    typer.echo("\nThe LLM2Vec authors' encoders (Hugging Face hub; l2v loads them without their custom code):")
    for published in PUBLISHED.values():
        repos = published.checkpoint + (f" + {published.adapter}" if published.adapter else "")
        gated = "gated: accept the licence on the hub and log in" if published.gated else "not gated"
        typer.echo(f"{published.name:<32} {published.description}; {repos}; base {published.base}, licence "
                   f"{published.licence} ({gated}); {cache_status(published)}")


@app.command()
def demo(
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="models to compare (repeatable; NAME@causal for the "
                                              "causal decoder); default: SmolLM2 causal, bidirectional untrained, and "
                                              "the trained smollm2-135m-l2v-sup"),
    pooling: Optional[str] = typer.Option(None),
    top_k: int = typer.Option(2, "--top-k", min=1),
):
    """What LLM2Vec does, on shipped sentences: each query's nearest sentences and each paraphrase pair's margin,
    for the causal decoder, the untrained bidirectional one and the trained encoder, side by side."""
    _quiet_libraries()

    def action():
        from .demo import DEFAULT_MODELS, run_demo

        result = run_demo(list(model) if model else DEFAULT_MODELS, pooling=pooling, top_k=top_k)
        for entry in result.models:
            typer.echo(f"== {entry.label} [{entry.spec}]: {entry.description}; {entry.seconds:.1f} s")
            for query, near in zip(result.queries, entry.neighbours):
                typer.echo(f"  query: {query}")
                for score, index in near:
                    typer.echo(f"    {score:.3f}  {result.sentences[index]}")
            typer.echo("")
        width = max(len(e.spec) for e in result.models)
        typer.echo("paraphrase margin: cosine of the pair minus the mean cosine to the other sentences (higher is better)")
        typer.echo(f"  {'pair':<44} " + " ".join(f"{e.spec:>{width}}" for e in result.models))
        for pair, first in enumerate(result.sentences[0::2]):
            typer.echo(f"  {first[:44]:<44} " + " ".join(f"{e.margins[pair]:>{width}.3f}" for e in result.models))
        typer.echo(f"  {'mean':<44} " + " ".join(f"{sum(e.margins) / len(e.margins):>{width}.3f}" for e in result.models))
        typer.echo(f"  {'queries answered by the right pair':<44} " +
                   " ".join(f"{f'{e.hits}/{len(result.queries)}':>{width}}" for e in result.models))

    _run(action)


@app.command("eval")
def evaluate(
    models: Optional[list[str]] = typer.Argument(None, help="models to evaluate side by side in one table and chart; NAME[@causal,pooling=P,skip_first_token,max_length=N,adapters=A]"),
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="model to evaluate (repeatable)"),
    tasks: Optional[str] = typer.Option(None, help="comma-separated families or task names: sts,classification,pair_classification,retrieval,clustering,word_level"),
    data: Optional[Path] = typer.Option(None, help="folder with the data sets (sts/, classification/, ...)"),
    file: Optional[list[str]] = typer.Option(None, "--file", help="a user task FAMILY:PATH[:PATH2] (repeatable)"),
    output: Path = typer.Option(Path("results/eval"), "--output", "-o", help="folder for results.json, results.md, results.png"),
    cache: Optional[Path] = typer.Option(None, help="embedding cache folder (default: $L2V_CACHE/embeddings)"),
    no_cache: bool = typer.Option(False, "--no-cache"),
    instructions: bool = typer.Option(False, "--instructions/--no-instructions", help="use each task's instruction (queries only for retrieval)"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    word_train_sentences: Optional[int] = typer.Option(None, help="train the word-level probes on the first N CoNLL sentences"),
    samples_per_label: int = typer.Option(16, help="classification: training examples per label in each of the 10 experiments (MTEB protocol)"),
    probe_layer: int = typer.Option(-1, help="word-level probes: which hidden layer (-1 = last)"),
    probe_subword: str = typer.Option("mean", help="word-level probes: 'mean' of a word's sub-tokens or its 'first'"),
    probe_read_previous: bool = typer.Option(False, "--probe-read-previous", help="read each word from the previous position (MNTP models)"),
    adapters: Optional[list[str]] = typer.Option(None, "--adapters", help="peft LoRA adapters (folders or Hugging Face ids) for every l2v model evaluated (per model: NAME@adapters=A)"),
    dtype: str = typer.Option("float32", "--dtype", help="compute precision of every l2v model: float32, mixed, bfloat16, float16 (GPU), auto (as l2v encode --dtype)"),
):
    """Evaluate one or more encoders on MTEB-style tasks and word-level probes; write JSON, markdown and a PNG."""
    _encoding_process()

    def action():
        from .evaluate import run_evaluation, select_tasks
        from .registry import cache_dir

        chosen = list(model or []) + list(models or [])
        if not chosen:
            raise L2VError("no model: pass one or more models (l2v eval NAME [NAME ...]) or --model NAME")
        names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
        from .evaluate.tasks import TaskOptions

        if probe_subword not in ("mean", "first"):
            raise L2VError(f"--probe-subword must be 'mean' or 'first', got {probe_subword!r}")
        options = TaskOptions(samples_per_label, word_train_sentences, probe_layer, probe_subword, probe_read_previous)
        selected = select_tasks(names, data, list(file or []), options)
        cache_folder = None if no_cache else (cache or cache_dir() / "embeddings")
        records = run_evaluation(chosen, selected, output, cache_dir=cache_folder, instructions=instructions,
                                 batch_size=batch_size, log=lambda line: typer.echo(line, err=True),
                                 **({"adapters": list(adapters)} if adapters else {}), **({"dtype": dtype} if dtype != "float32" else {}))
        from .evaluate.report import markdown_table

        typer.echo(markdown_table(records))
        typer.echo(f"wrote {output / 'results.json'}, {output / 'results.md'}, {output / 'results.png'}", err=True)

    _run(action)


@app.command()
def train(
    stage: str = typer.Argument(..., help="mntp, simcse or supervised"),
    config: Path = typer.Option(..., "--config", "-c", help="YAML training config (see configs/)"),
    steps: Optional[int] = typer.Option(None, help="override the config's steps"),
    output: Optional[str] = typer.Option(None, help="override the config's output folder"),
    settings: Optional[list[str]] = typer.Option(None, "--set", help="override any config key: KEY=VALUE (dotted for "
                                                 "sections, value read as YAML), e.g. --set data.train=x.txt --set lora.r=8; repeatable"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    time_limit: Optional[str] = typer.Option(None, "--time-limit", help="stop at a checkpoint before this much time "
                                             f"has passed (540, 9m, 2.5h) and exit with {EXIT_TIME_LIMIT}; rerun to resume"),
):
    """Train one stage of the LLM2Vec recipe. Rerunning the same command resumes from the last checkpoint."""
    _quiet_libraries()

    def action():
        from .train.config import load_config
        from .train.objectives import OBJECTIVES
        from .train.runner import train as run_training

        if stage not in OBJECTIVES:
            raise L2VError(f"unknown stage {stage!r}; choose one of: {', '.join(OBJECTIVES)}")
        overrides = {k: v for k, v in {"steps": steps, "output": output}.items() if v is not None}
        loaded = load_config(config, overrides, settings or [])
        if loaded.stage != stage:
            raise L2VError(f"{config}: stage is {loaded.stage!r}, but the command asked for {stage!r}")
        run_training(loaded, show_progress=progress, log=lambda line: typer.echo(line, err=True),
                     time_limit=parse_duration(time_limit))

    _run(action)


@app.command()
def convert(
    config: Path = typer.Option(..., "--config", "-c", help="YAML recipe: model, output, stages (mntp, simcse, supervised), evaluate"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    time_limit: Optional[str] = typer.Option(None, "--time-limit", help="stop the training stages at a checkpoint before "
                                             f"this much time has passed (540, 9m, 2.5h), exit {EXIT_TIME_LIMIT}; rerun to resume"),
):
    """The whole recipe from one file: MNTP -> SimCSE and/or supervised (each stage on the merged adapters before it) -> encoder -> evaluation report."""
    _quiet_libraries()

    def action():
        from .train.convert import convert as run_convert

        run_convert(config, show_progress=progress, log=lambda line: typer.echo(line, err=True),
                    time_limit=parse_duration(time_limit))

    _run(action)


@app.command("make-pairs")
def make_pairs(
    data: Path = typer.Option(..., help="folder with sts/, pair_classification/, retrieval/scifact/ (training splits are read)"),
    output: Path = typer.Option(..., "--output", "-o", help="JSONL of {query, positive, negative, instruction, dataset}"),
    seed: int = typer.Option(0),
):
    """Build supervised training triples from the training splits of the local data sets."""

    def action():
        from collections import Counter

        from .train.pairs import build_triples, write_triples

        triples = build_triples(data, seed)
        write_triples(triples, output)
        counts = Counter(t["dataset"] for t in triples)
        typer.echo(f"wrote {len(triples)} triples to {output}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), err=True)

    _run(action)


def _parse_prompts(values: list[str]) -> dict[str, str]:
    prompts = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name.strip() or not text:
            raise L2VError(f"--prompt must look like NAME=INSTRUCTION, got {value!r}")
        prompts[name.strip()] = text
    return prompts


@app.command()
def export(
    model: str = typer.Argument(..., help="built-in name, Hugging Face id, model folder or l2v encoder folder"),
    output: Path = typer.Option(..., "--output", "-o", help="the folder to write (must not exist unless --overwrite)"),
    format: str = typer.Option("sentence-transformers", "--format", help="sentence-transformers, hf, or llm2vec (a folder the official llm2vec package loads)"),
    prompt: list[str] = typer.Option([], "--prompt", help="NAME=INSTRUCTION, a sentence-transformers prompt (repeatable)"),
    default_prompt: Optional[str] = typer.Option(None, "--default-prompt", help="the prompt applied when none is named"),
    adapters: Optional[list[str]] = typer.Option(None, "--adapters", help="a peft LoRA adapter: folder or Hugging Face id (repeatable; e.g. an llm2vec -mntp-supervised repo on top of its -mntp checkpoint)"),
    pooling: Optional[str] = typer.Option(None, help="override the pooling"),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=2),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing folder"),
):
    """Write merged safetensors weights as a sentence-transformers folder, a plain Hugging Face folder, or an llm2vec folder."""
    _quiet_libraries()

    def action():
        from .encoder import Encoder
        from .export import FORMATS
        from .export import export as run_export

        if format not in FORMATS:
            raise L2VError(f"unknown --format {format!r}; choose one of: {', '.join(FORMATS)}")
        prompts = _parse_prompts(prompt)
        if output.exists() and not overwrite:
            raise L2VError(f"{output} already exists (pass --overwrite to replace it)")
        encoder = Encoder.from_pretrained(model, adapters=list(adapters or []) or None, pooling=pooling, max_length=max_length)
        run_export(encoder, output, format=format, prompts=prompts, default_prompt_name=default_prompt, overwrite=overwrite)
        how = {"sentence-transformers": f"SentenceTransformer({str(output)!r}, trust_remote_code=True)",
               "llm2vec": f"llm2vec.LLM2Vec.from_pretrained({str(output)!r}) or l2v.Encoder.from_pretrained({str(output)!r})",
               }.get(format, f"l2v.Encoder.from_pretrained({str(output)!r})")
        typer.echo(f"wrote {output} (load it with {how})", err=True)

    _run(action)


@app.command()
def serve(
    model: str = typer.Option(..., "--model", "-m", help="built-in name, Hugging Face id, model folder or l2v encoder folder"),
    host: str = typer.Option("127.0.0.1", help="interface to bind (loopback by default)"),
    port: int = typer.Option(8000, min=0, max=65535),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="L2V_API_KEY", help="require 'Authorization: Bearer KEY'"),
    served_name: Optional[str] = typer.Option(None, "--served-name", help="the model name clients send (default: --model)"),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="merge concurrent requests into one forward pass"),
    max_batch_tokens: int = typer.Option(16384, "--max-batch-tokens", min=1, help="token budget of one merged batch"),
    max_texts: int = typer.Option(2048, "--max-texts", min=1, help="texts per request (more: 413)"),
    max_chars: int = typer.Option(100_000, "--max-chars", min=1, help="characters per text (more: 413)"),
    max_queue: int = typer.Option(8192, "--max-queue", min=1, help="texts waiting for the model (more: 503 + Retry-After)"),
    request_timeout: float = typer.Option(120.0, "--request-timeout", min=0.1, help="the longest a request may take (a client may ask for less with X-Request-Timeout); a request that cannot finish by then is refused at once with 503"),
    max_pending_mb: int = typer.Option(512, "--max-pending-mb", min=1, help="memory for admitted requests' bodies, tokens and responses (more: 503 + Retry-After)"),
    truncate: bool = typer.Option(False, "--truncate/--no-truncate", help="cut texts over --max-length tokens instead of 413"),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=2),
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="expose Prometheus /metrics"),
    dtype: str = typer.Option("float32", help="compute precision: float32, mixed (float32 up to the massive-activation layer, bfloat16 products after: within cosine 0.999 of float32, faster), bfloat16 (fastest, not exact), float16 (GPU), auto (mixed where the device has native bfloat16, else float32)"),
    device: Optional[str] = typer.Option(None),
    adapters: Optional[list[str]] = typer.Option(None, "--adapters", help="a peft LoRA adapter: folder or Hugging Face id (repeatable; e.g. an llm2vec -mntp-supervised repo on top of its -mntp checkpoint)"),
    model_process: bool = typer.Option(True, "--model-process/--no-model-process", help="run the model in its own process, so a burst of connections cannot slow it down (off: a thread of the server's process, one copy of the weights fewer while loading)"),
    http_nice: int = typer.Option(10, "--http-nice", min=0, max=19, help="with --model-process: how much the HTTP process lowers its own CPU priority below the model's, so that under a burst the model keeps its speed and admission keeps admitting (0: equal)"),
):
    """Serve embeddings over HTTP, compatible with the OpenAI embeddings API (POST /v1/embeddings)."""
    _encoding_process()

    def action():
        from .encoder import Encoder
        from .serve.app import ServerSettings
        from .serve.app import serve as run_server

        if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
            typer.echo(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", err=True)
        load = dict(model=model, adapters=list(adapters or []) or None, max_length=max_length, dtype=dtype, device=device)
        # errors in the arguments surface here, in this process; with a model process this one reads no weights
        # (tokenizer, config and dimension only: ~150 MB less than loading and releasing them)
        encoder = Encoder.from_pretrained(**load, weights=not model_process)
        worker = None
        if model_process:
            from .serve.worker import ModelProcess

            worker = ModelProcess(load)
            if http_nice:  # the model process, started above, keeps its priority; parsing a burst yields to it
                os.nice(http_nice)
        settings = ServerSettings(model_name=served_name or model, api_key=api_key, max_texts_per_request=max_texts,
                                  max_chars_per_text=max_chars, max_queue_texts=max_queue, max_batch_tokens=max_batch_tokens,
                                  batching=batching, request_timeout=request_timeout,
                                  max_pending_bytes=max_pending_mb * 1024 * 1024, truncate=truncate, metrics=metrics)
        run_server(encoder, settings, host=host, port=port, worker=worker)

    _run(action)


@app.command("embed-corpus")
def embed_corpus(
    model: str = typer.Option(..., "--model", "-m", help="built-in name, Hugging Face id, model folder or l2v encoder folder"),
    input: Path = typer.Option(..., "--input", "-i", help=".txt (one text per line), .jsonl ({'text', 'id'}) or .parquet"),
    output: Path = typer.Option(..., "--output", "-o", help="folder for shards and manifest.json"),
    shard_size: int = typer.Option(10_000, "--shard-size", min=1, help="records per shard"),
    dtype: str = typer.Option("float32", "--dtype", help="stored embedding type: float32 or float16"),
    text_field: str = typer.Option("text", "--text-field"),
    id_field: str = typer.Option("id", "--id-field", help="ids come from this field when present, else the record number"),
    instruction: Optional[str] = typer.Option(None, help="instruction for every text"),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize"),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=2),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    truncate: bool = typer.Option(True, "--truncate/--no-truncate", help="cut texts over --max-length tokens (counted), or fail naming the record"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda:0 ... (default: this rank's GPU under torchrun, else cpu)"),
    compute_dtype: str = typer.Option("float32", "--compute-dtype", help="float32, mixed, bfloat16, float16 (GPU), auto (as l2v encode --dtype)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Embed a large file into resumable shards. Rerun the same command to resume; run under torchrun to scale out."""
    _encoding_process()

    def action():
        from .corpus import CorpusJob
        from .corpus import embed_corpus as run_job

        model_ref = str(Path(model).resolve()) if Path(model).exists() else model
        job = CorpusJob(model=model_ref, input=str(input), output=str(output), shard_size=shard_size, dtype=dtype,
                        text_field=text_field, id_field=id_field, instruction=instruction, normalize=normalize,
                        max_length=max_length, batch_size=batch_size, truncate=truncate, device=device,
                        compute_dtype=compute_dtype)
        result = run_job(job, show_progress=progress, log=lambda line: typer.echo(line, err=True))
        if result.get("complete"):
            typer.echo(f"wrote {output}: {result['records']} records in {result['shards']} shards "
                       f"({result['dimension']} dims, {result['dtype']})", err=True)
        else:
            typer.echo(f"this process's shards are done; {result['shards_missing']} shards are left to other ranks", err=True)

    _run(action)


@app.command()
def search(
    folder: Path = typer.Argument(..., help="an embed-corpus output folder"),
    query: list[str] = typer.Option(..., "--query", "-q", help="query text (repeatable)"),
    top_k: int = typer.Option(10, "--top-k", "-k", min=1),
    instruction: Optional[str] = typer.Option(None, help="instruction for the queries"),
    show_text: bool = typer.Option(False, "--show-text", help="print each hit's text (re-reads the input file)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
):
    """Exact cosine top-k over an embed-corpus folder, for a quick look."""
    _encoding_process()

    def action():
        from .corpus import search as run_search
        from .corpus import texts_of

        results = run_search(folder, list(query), top_k=top_k, instruction=instruction)
        texts = texts_of(folder, [record_id for hits in results for _, record_id in hits]) if show_text else {}
        if as_json:
            typer.echo(json.dumps([{"query": q, "hits": [{"id": i, "score": s, **({"text": texts.get(i)} if show_text else {})}
                                                         for s, i in hits]} for q, hits in zip(query, results)], indent=2))
            return
        for q, hits in zip(query, results):
            typer.echo(f"query: {q}")
            for rank, (score, record_id) in enumerate(hits, start=1):
                line = f"  {rank:>3}. {score:.4f}  {record_id}"
                if show_text:
                    line += f"  {texts.get(record_id, '')[:120]}"
                typer.echo(line)

    _run(action)


roar_app = typer.Typer(no_args_is_help=True, help="Recursive ROAR: are importance measures faithful?")
app.add_typer(roar_app, name="roar")


def _int_list(value: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise L2VError(f"{option} must be comma-separated integers, got {value!r}") from None
    if not values:
        raise L2VError(f"{option} is empty; give comma-separated integers")
    return values


@roar_app.command("run")
def roar_run(
    dataset: str = typer.Option(..., "--dataset", help="sst, babi-1 or babi-2"),
    measures: str = typer.Option("attention,gradient,input_x_gradient,integrated_gradient", help="comma-separated"),
    seeds: str = typer.Option("0", help="comma-separated model seeds, e.g. 0,1,2"),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Recursive ROAR (default) or plain ROAR"),
    data: Path = typer.Option(Path("../shared/data/roar"), help="folder with sst_trees/ and babi/"),
    output: Path = typer.Option(Path("runs/roar"), "--output", "-o", help="cache folder; rerun to continue"),
    epochs: Optional[int] = typer.Option(None, min=1, help="override the paper's epochs (SST 8, bAbI up to 100)"),
    limit_train: Optional[int] = typer.Option(None, "--limit-train", min=1, help="a seeded sample of N training examples (micro runs)"),
    limit_eval: Optional[int] = typer.Option(None, "--limit-eval", min=1, help="a seeded sample of N validation and N test examples"),
    ratios: str = typer.Option("0,10,20,30,40,50,60,70,80,90,100", help="masking ratios in %"),
    ig_steps: int = typer.Option(50, "--ig-steps", min=1),
    ig_variant: str = typer.Option("official", "--ig-variant", help="official (the paper's code: extra alpha) or textbook"),
):
    """Mask the tokens each measure calls important, retrain, compare with random masking. Every step is cached."""

    def action():
        from .roar.data import load
        from .roar.runner import run
        from .roar.training import TrainSettings

        from .roar.importance import check_measures

        chosen = check_measures(measures, ig_variant)
        loaded = load(dataset, data)
        if limit_train or limit_eval:
            loaded = loaded.limit(limit_train, limit_eval)
        settings = TrainSettings.for_dataset(dataset)
        if epochs is not None:
            settings.epochs = epochs
        run(loaded, output, chosen, _int_list(seeds, "--seeds"), recursive=recursive, settings=settings,
            ig_steps=ig_steps, ig_variant=ig_variant, ratios=_int_list(ratios, "--ratios"),
            log=lambda line: typer.echo(line, err=True))
        typer.echo(f"done; summarise with: l2v roar report {output}", err=True)

    _run(action)


@roar_app.command("encoder")
def roar_encoder(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="an l2v encoder (built-in name, folder, hub id)"),
    measures: str = typer.Option("attention,gradient,input_x_gradient,integrated_gradient", help="comma-separated"),
    seeds: str = typer.Option("0", help="comma-separated seeds (the head's)"),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive"),
    data: Path = typer.Option(Path("../shared/data/roar"), help="folder with sst_trees/"),
    output: Path = typer.Option(Path("runs/roar"), "--output", "-o"),
    limit_train: Optional[int] = typer.Option(None, "--limit-train", min=1, help="a seeded sample of N training sentences"),
    limit_eval: Optional[int] = typer.Option(None, "--limit-eval", min=1, help="a seeded sample of N validation and N test sentences"),
    ratios: str = typer.Option("0,10,20,30,40,50,60,70,80,90,100"),
    ig_steps: int = typer.Option(50, "--ig-steps", min=1),
    ig_variant: str = typer.Option("official", "--ig-variant", help="official (the paper's code: extra alpha) or textbook"),
    max_length: int = typer.Option(128, "--max-length", min=4),
    dtype: str = typer.Option("float32", "--dtype", help="the encoder's compute precision: float32 or bfloat16 "
                              "(about 3x faster on a CPU with bf16; gradients in bf16)"),
):
    """Recursive ROAR for an l2v encoder + linear head on SST-2 (masking with the model's MNTP mask token)."""
    _quiet_libraries()

    def action():
        from .roar.encoder_classifier import run_encoder_roar

        run_encoder_roar(model, data, output, measures, _int_list(seeds, "--seeds"), recursive=recursive,
                         limit_train=limit_train, limit_eval=limit_eval, ratios=_int_list(ratios, "--ratios"),
                         ig_steps=ig_steps, ig_variant=ig_variant, max_length=max_length, dtype=dtype,
                         log=lambda line: typer.echo(line, err=True))
        typer.echo(f"done; summarise with: l2v roar report {output}", err=True)

    _run(action)


@roar_app.command("report")
def roar_report(folder: Path = typer.Argument(..., help="the --output folder of `l2v roar run`")):
    """Write racu.md / racu.json (RACU per measure with 95 % bootstrap CIs) and curves.png."""

    def action():
        from .roar.report import write_report

        path = write_report(folder)
        typer.echo(path.read_text())
        typer.echo(f"wrote {path}, {path.with_name('racu.json')}, {path.with_name('curves.png')}", err=True)

    _run(action)


@roar_app.command("synthetic")
def roar_synthetic(seed: int = typer.Option(0)):
    """The paper's synthetic check: Recursive ROAR follows the ground truth, plain ROAR does not (seconds)."""

    def action():
        from .roar.synthetic import run

        result = run(seed=seed)
        for name in ("ground_truth", "recursive", "plain", "random"):
            typer.echo(f"{name:<13} " + " ".join(f"{v:.2f}" for v in result[name]))
        typer.echo("RACU: " + ", ".join(f"{k} {v:.3f}" for k, v in result["racu"].items()))
        typer.echo("area between curve and ground truth: " + ", ".join(f"{k} {v:.4f}" for k, v in result["gap_to_truth"].items()))

    _run(action)


# ---------------------------------------------------------------------- imagecode (issue 17)
imagecode_app = typer.Typer(no_args_is_help=True, help="ImageCoDe: retrieve the image a contextual description is about "
                            "from ten minimally different candidates (zero-shot, ContextBatch, context module, l2v text side).")
app.add_typer(imagecode_app, name="imagecode")

IMAGECODE_DATA = Path("../shared/data/imagecode")


@imagecode_app.command("eval")
def imagecode_eval(
    images: Path = typer.Option(..., "--images", help="the unzipped image-sets folder (one sub-folder of 10 images per set)"),
    model: str = typer.Option("openai/clip-vit-base-patch16", "--model", "-m", help="a CLIP/SigLIP hub id or folder "
                              "(zero-shot), or a folder `l2v imagecode train` wrote (its output, final/ or best/)"),
    split: str = typer.Option("valid", help="train, valid or test (test: leaderboard predictions only, labels are withheld)"),
    data: Path = typer.Option(IMAGECODE_DATA, help="folder with the description files (official .json or Hugging Face .jsonl)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="folder for results.json/.md, predictions.json, "
                                          "scores.jsonl (default runs/imagecode/eval-SPLIT)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="a seeded sample of N descriptions (a quick look)"),
    cache: Optional[Path] = typer.Option(None, help="image-embedding cache folder (default $L2V_CACHE/imagecode)"),
    no_cache: bool = typer.Option(False, "--no-cache"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="images per forward pass"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"),
):
    """Score every description of a split against its ten images; accuracy overall / video / static, per source, MRR."""
    _quiet_libraries()

    def action():
        from .imagecode.data import canonical_split, check_image_sets, load_split
        from .imagecode.evaluate import evaluate as run_eval
        from .imagecode.evaluate import load_pipeline
        from .imagecode.report import write_report
        from .registry import cache_dir

        chosen = canonical_split(split)
        examples = load_split(data, chosen, limit)
        sets = check_image_sets(images, examples)  # a missing folder fails here, before a model loads
        pipeline = load_pipeline(model, device=device)
        folder = output or Path("runs/imagecode") / f"eval-{chosen}"
        records = run_eval(pipeline, examples, sets, cache=None if no_cache else (cache or cache_dir() / "imagecode"),
                           image_batch_size=batch_size, log=lambda line: typer.echo(line, err=True))
        meta = {"split": chosen, "model": model, "pipeline": pipeline.name, "text_limit": pipeline.text_limit,
                "truncated": pipeline.truncated, "limit": limit, "images": str(images)}
        summary = write_report(folder, records, meta)
        typer.echo((folder / "results.md").read_text())
        if summary["labelled"] is False:
            typer.echo(f"leaderboard file: {folder / 'predictions.json'}", err=True)
        typer.echo(f"wrote {folder}/results.json, results.md, predictions.json, scores.jsonl", err=True)

    _run(action)


@imagecode_app.command("train")
def imagecode_train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (keys of ImageCodeTrainConfig); options override it"),
    mode: Optional[str] = typer.Option(None, help="contextbatch (fine-tune CLIP), context (context module on frozen "
                                       "embeddings) or lit (l2v text encoder + trained projection)"),
    images: Optional[Path] = typer.Option(None, "--images", help="the unzipped image-sets folder"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="CLIP/SigLIP hub id or folder (default openai/clip-vit-base-patch16)"),
    data: Optional[Path] = typer.Option(None, help=f"description folder (default {IMAGECODE_DATA})"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="run folder; rerun the same command to resume"),
    epochs: Optional[int] = typer.Option(None, min=1),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="descriptions per step (default 36)"),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate"),
    text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="lit mode: the l2v encoder (default smollm2-135m)"),
    settings: Optional[list[str]] = typer.Option(None, "--set", help="any config key: KEY=VALUE (dotted for sections, "
                                                 "e.g. context.layers=4, lit.max_length=96); repeatable"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Train ContextBatch, the context module or the l2v text side. Rerunning the same command resumes."""
    _quiet_libraries()

    def action():
        from .imagecode.train import load_config
        from .imagecode.train import train as run_training

        overrides = {"mode": mode, "images": str(images) if images else None, "model": model,
                     "data": str(data) if data else None, "output": str(output) if output else None, "epochs": epochs,
                     "max_steps": max_steps, "batch_size": batch_size, "learning_rate": learning_rate}
        extra = [f"lit.text_encoder={text_encoder}"] if text_encoder else []
        loaded = load_config(config, overrides, list(settings or []) + extra)
        run_training(loaded, log=lambda line: typer.echo(line, err=True), show_progress=progress)

    _run(action)


@imagecode_app.command("floors")
def imagecode_floors(
    data: Path = typer.Option(IMAGECODE_DATA, help="folder with the description files"),
    output: Path = typer.Option(Path("runs/imagecode/floors.json"), "--output", "-o", help="JSON (a .md beside it)"),
    encoder: str = typer.Option("smollm2-135m", "--encoder", help="l2v encoder of the text-only classifier"),
    no_text: bool = typer.Option(False, "--no-text", help="skip the text-only classifier (random and majority only)"),
    limit_train: Optional[int] = typer.Option(None, "--limit-train", min=1, help="fit the text classifier on a seeded sample of N"),
    limit_valid: Optional[int] = typer.Option(None, "--limit-valid", min=1),
    max_length: int = typer.Option(128, "--max-length", min=4),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
):
    """Accuracy without images: random, majority target index, and a text-only classifier on an l2v embedding."""
    _quiet_libraries()

    def action():
        from .imagecode.floors import compute_floors, floors_markdown, write_floors

        result = compute_floors(data, None if no_text else encoder, limit_train=limit_train, limit_valid=limit_valid,
                                batch_size=batch_size, max_length=max_length, log=lambda line: typer.echo(line, err=True))
        write_floors(result, output)
        typer.echo(floors_markdown(result))
        typer.echo(f"wrote {output} and {output.with_suffix('.md')}", err=True)

    _run(action)
# ---------------------------------------------------------------------- end of imagecode


def main() -> None:
    """Entry point: usage errors too are one line on stderr (exit 2), never a multi-line panel."""
    import logging

    logging.getLogger("l2v").setLevel(logging.ERROR)  # the CLI prints its own notes (e.g. truncation)
    if len(sys.argv) == 1:
        sys.argv.append("--help")
    try:
        result = app(standalone_mode=False)
    except Exception as error:  # typer vendors click, so match its exception classes by name
        kinds = {cls.__name__ for cls in type(error).__mro__}
        if "UsageError" in kinds:
            typer.echo(f"error: {error.format_message()}", err=True)
            raise SystemExit(EXIT_USER_ERROR) from None
        if "Abort" in kinds:
            typer.echo("error: aborted", err=True)
            raise SystemExit(1) from None
        raise
    raise SystemExit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
