"""The corpus job: streamed, sharded, atomic, resumable after SIGKILL, split across ranks; and exact search."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from l2v import Encoder
from l2v.cli import app
from l2v.corpus import iter_shards, load_manifest

WORDS = ["a man is playing a guitar", "the cat sits on the mat", "what is the capital of france ?", "paris",
         "scientists discovered a new species of frog", "she plays the piano every evening", "the dog sleeps"]
TEXTS = [f"{WORDS[i % 7]} {WORDS[(i * 3) % 7]}" if i % 2 else WORDS[i % 7] for i in range(23)]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def write_jsonl(path: Path, texts=TEXTS) -> Path:
    path.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def read_all(folder: Path):
    parts = list(iter_shards(folder))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# A crash after shard 2, as a test hook: the library's on_shard_written callback, in a process of its own.
KILL_AFTER_SHARD = """
import os, signal, sys
from l2v.corpus import CorpusJob, embed_corpus
job = CorpusJob(model=sys.argv[1], input=sys.argv[2], output=sys.argv[3], shard_size=4)
embed_corpus(job, show_progress=False, on_shard_written=lambda shard: os.kill(os.getpid(), signal.SIGKILL) if shard == 2 else None)
"""


def cli(*args, env=None, check=True):
    command = [sys.executable, "-m", "l2v.cli", *[str(a) for a in args]]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_jsonl_to_shards_and_manifest(tiny_llama_folder, tmp_path):
    source = write_jsonl(tmp_path / "corpus.jsonl")
    out = tmp_path / "out"
    result = run("embed-corpus", "-m", tiny_llama_folder, "-i", source, "-o", out, "--shard-size", 5, "--no-progress")
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    assert manifest["complete"] and manifest["records"] == 23 and manifest["shards"] == 5 and manifest["dimension"] == 32
    assert [s["count"] for s in manifest["shard_files"]] == [5, 5, 5, 5, 3]
    embeddings, ids = read_all(out)
    assert list(ids) == [f"doc-{i}" for i in range(23)]
    expected = Encoder.from_pretrained(str(tiny_llama_folder)).encode(TEXTS)
    assert embeddings.dtype == np.float32 and np.abs(embeddings - expected).max() < 1e-5
    assert not list(out.glob(".*tmp"))


def test_txt_and_parquet_inputs_and_float16(tiny_llama_folder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected = Encoder.from_pretrained(str(tiny_llama_folder)).encode(TEXTS)
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    assert run("embed-corpus", "-m", tiny_llama_folder, "-i", txt, "-o", tmp_path / "t", "--shard-size", 10,
               "--dtype", "float16", "--no-progress").exit_code == 0
    embeddings, ids = read_all(tmp_path / "t")
    assert embeddings.dtype == np.float16 and ids.dtype == np.int64 and list(ids) == list(range(23))
    assert np.abs(embeddings.astype(np.float32) - expected).max() < 2e-3
    parquet = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": list(range(100, 123)), "body": TEXTS}), parquet, row_group_size=7)
    assert run("embed-corpus", "-m", tiny_llama_folder, "-i", parquet, "-o", tmp_path / "p", "--text-field", "body",
               "--no-progress").exit_code == 0
    embeddings, ids = read_all(tmp_path / "p")
    assert list(ids) == list(range(100, 123)) and np.abs(embeddings - expected).max() < 1e-5


def test_sigkill_then_rerun_resumes_and_equals_an_uninterrupted_run(tiny_llama_folder, tmp_path):
    source = write_jsonl(tmp_path / "corpus.jsonl")
    args = ["embed-corpus", "-m", tiny_llama_folder, "-i", source, "--shard-size", 4, "--no-progress"]
    cli(*args, "-o", tmp_path / "whole")
    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SHARD, str(tiny_llama_folder), str(source), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.glob("shard-*.npz")) == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    assert not (out / "manifest.json").exists()
    (out / ".shard-00003.npz.abc123.tmp").write_bytes(b"half a shard")  # what a kill during a write leaves
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")}
    with pytest.raises(Exception, match="unfinished"):
        load_manifest(out)
    resumed = cli(*args, "-o", out)
    assert "resuming: 3 of 6 shards already written" in resumed.stderr
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in before.items())  # not recomputed
    assert not list(out.glob(".*tmp"))
    got, want = read_all(out), read_all(tmp_path / "whole")
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_kill_at_an_arbitrary_moment(tiny_llama_folder, tmp_path):
    texts = TEXTS * 8
    source = write_jsonl(tmp_path / "corpus.jsonl", texts)
    args = [sys.executable, "-m", "l2v.cli", "embed-corpus", "-m", str(tiny_llama_folder), "-i", str(source),
            "--shard-size", "2", "--no-progress", "-o"]
    out = tmp_path / "out"
    process = subprocess.Popen(args + [str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob("shard-*.npz")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    assert process.poll() is None, "the job finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    for shard in out.glob("shard-*.npz"):  # whatever is there under a final name is whole
        with np.load(shard) as data:
            assert data["embeddings"].shape == (2, 32)
    cli(*args[3:], out)
    cli(*args[3:], tmp_path / "ref")
    got, want = read_all(out), read_all(tmp_path / "ref")
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_two_ranks_under_torchrun_equal_one_process(tiny_llama_folder, tmp_path):
    source = write_jsonl(tmp_path / "corpus.jsonl")
    common = ["embed-corpus", "-m", str(tiny_llama_folder), "-i", str(source), "--shard-size", "3", "--no-progress"]
    cli(*common, "-o", tmp_path / "single")
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "l2v.cli", *common,
                             "-o", str(tmp_path / "ranks")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = load_manifest(tmp_path / "ranks")
    assert manifest["complete"] and manifest["shards"] == 8
    got, want = read_all(tmp_path / "ranks"), read_all(tmp_path / "single")
    # torchrun gives each rank one CPU thread, so float sums may round differently from the single process
    assert np.array_equal(got[1], want[1]) and np.abs(got[0] - want[0]).max() < 1e-5


def test_ranks_take_their_share(tiny_llama_folder, tmp_path):
    from l2v.corpus import CorpusJob, embed_corpus

    encoder = Encoder.from_pretrained(str(tiny_llama_folder))
    job = CorpusJob(model=str(tiny_llama_folder), input=str(write_jsonl(tmp_path / "c.jsonl")), output=str(tmp_path / "o"), shard_size=4)
    status = embed_corpus(job, rank=1, world=2, encoder=encoder, show_progress=False)
    assert status == {"complete": False, "shards_missing": 3, "seconds": status["seconds"]}
    assert sorted(p.name for p in (tmp_path / "o").glob("shard-*.npz")) == ["shard-00001.npz", "shard-00003.npz", "shard-00005.npz"]
    manifest = embed_corpus(job, rank=0, world=2, encoder=encoder, show_progress=False)
    assert manifest["complete"] and len(manifest["shard_files"]) == 6


def test_a_different_job_in_the_same_folder_is_refused(tiny_llama_folder, tmp_path):
    source = write_jsonl(tmp_path / "corpus.jsonl")
    out = tmp_path / "out"
    assert run("embed-corpus", "-m", tiny_llama_folder, "-i", source, "-o", out, "--shard-size", 5, "--no-progress").exit_code == 0
    other = run("embed-corpus", "-m", tiny_llama_folder, "-i", source, "-o", out, "--shard-size", 4, "--no-progress")
    assert other.exit_code == 2 and "different job (shard_size: 5 there, 4 now)" in other.output
    other = run("embed-corpus", "-m", tiny_llama_folder, "-i", source, "-o", out, "--shard-size", 5, "--compute-dtype",
                "bfloat16", "--no-progress")  # bf16 shards would mix with float32 ones
    assert other.exit_code == 2 and "compute_dtype: 'float32' there, 'bfloat16' now" in other.output
    write_jsonl(source, TEXTS[:-1])
    changed = run("embed-corpus", "-m", tiny_llama_folder, "-i", source, "-o", out, "--shard-size", 5, "--no-progress")
    assert changed.exit_code == 2 and "different job" in changed.output


@pytest.mark.parametrize("name, content, needle", [
    ("empty.jsonl", b"", "no records to embed"),
    ("blank.txt", b"paris\n\nthe cat\n", "line 2 is empty"),
    ("empty_text.jsonl", b'{"text": "paris"}\n{"text": ""}\n', "line 2: 'text' is an empty string"),
    ("no_text.jsonl", b'{"text": "paris"}\n{"body": "x"}\n', "line 2 has no 'text' field"),
    ("not_json.jsonl", b'{"text": "paris"}\n{"text": "x"\n', "line 2 is not valid JSON"),
    ("not_string.jsonl", b'{"text": "paris"}\n{"text": 7}\n', "line 2: 'text' must be a string, got int"),
    ("bad_id.jsonl", b'{"text": "paris", "id": null}\n', "line 1: 'id' must be a string or an integer"),
    ("latin1.txt", b"paris\ncaf\xe9\n", "line 2 is not valid UTF-8"),
    ("corpus.csv", b"text\nparis\n", "unsupported input format '.csv'"),
    ("mixed_ids.jsonl", b'{"text": "a", "id": "x"}\n{"text": "b"}\n', "record 1 lacks an 'id' field"),
    ("dup_ids.jsonl", b'{"text": "a", "id": 3}\n{"text": "b", "id": 3}\n', "record 1 repeats the id 3"),
    ("kinds.jsonl", b'{"text": "a", "id": 3}\n{"text": "b", "id": "3"}\n', "ids mix integers and strings"),
    ("big_id.jsonl", b'{"text": "a", "id": 99999999999999999999}\n', "does not fit in 64 bits"),
])
def test_bad_input_is_a_clear_error_before_anything_is_written(tiny_llama_folder, tmp_path, name, content, needle):
    source = tmp_path / name
    source.write_bytes(content)
    out = tmp_path / "out"
    result = run("embed-corpus", "-m", tiny_llama_folder, "-i", source, "-o", out, "--no-progress")
    assert result.exit_code == 2 and needle in result.output, result.output
    assert not out.exists() or not list(out.iterdir())


def test_search_finds_the_text_itself(tiny_llama_folder, tmp_path):
    source = write_jsonl(tmp_path / "corpus.jsonl")
    out = tmp_path / "out"
    assert run("embed-corpus", "-m", tiny_llama_folder, "-i", source, "-o", out, "--shard-size", 6, "--no-progress").exit_code == 0
    unique = next(t for t in TEXTS if TEXTS.count(t) == 1)
    result = run("search", out, "--query", TEXTS[4], "--query", unique, "-k", 3, "--json", "--show-text")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert hits[0]["hits"][0]["id"] in {f"doc-{i}" for i, t in enumerate(TEXTS) if t == TEXTS[4]}
    assert hits[0]["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4) and hits[0]["hits"][0]["text"] == TEXTS[4]
    assert len(hits[1]["hits"]) == 3 and hits[1]["hits"][0]["score"] >= hits[1]["hits"][2]["score"]
    embeddings, ids = read_all(out)
    query = Encoder.from_pretrained(str(tiny_llama_folder)).encode([unique])[0]
    scores = embeddings @ query
    assert hits[1]["hits"][0]["id"] == str(ids[int(np.argmax(scores))])
    assert [h["score"] for h in hits[1]["hits"]] == pytest.approx(sorted(scores, reverse=True)[:3], abs=1e-5)
    empty = run("search", out, "--query", " ")
    assert empty.exit_code == 2 and "query 0 is empty" in empty.output
    source.write_text(source.read_text() + json.dumps({"id": "new", "text": "paris"}) + "\n")
    changed = run("search", out, "--query", "paris", "--show-text")
    assert changed.exit_code == 2 and "changed since it was embedded" in changed.output
    (out / "manifest.json").unlink()
    unfinished = run("search", out, "--query", "paris")
    assert unfinished.exit_code == 2 and "unfinished" in unfinished.output


def test_no_truncate_names_the_record_and_float16_overflow_is_refused(tiny_llama_folder, tmp_path):
    source = write_jsonl(tmp_path / "corpus.jsonl")
    long_one = run("embed-corpus", "-m", tiny_llama_folder, "-i", source, "-o", tmp_path / "a", "--max-length", 5,
                   "--no-truncate", "--no-progress")
    assert long_one.exit_code == 2 and "record 0 (id 'doc-0') is longer than 5 tokens" in long_one.output
    assert not list((tmp_path / "a").glob("shard-*.npz"))
    from l2v.corpus import CorpusJob, embed_corpus

    encoder = Encoder.from_pretrained(str(tiny_llama_folder))
    original = encoder.embed_tokenized
    encoder.embed_tokenized = lambda *a, **k: original(*a, **k) * 1e6  # unnormalised values beyond float16
    job = CorpusJob(model=str(tiny_llama_folder), input=str(source), output=str(tmp_path / "b"), dtype="float16", normalize=False)
    with pytest.raises(Exception, match="overflow float16"):
        embed_corpus(job, encoder=encoder, show_progress=False)
    assert not list((tmp_path / "b").glob("shard-*.npz"))
