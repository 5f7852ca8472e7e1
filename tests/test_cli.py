import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from l2v import Encoder
from l2v.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_encode_txt_keeps_every_line_in_order(tiny_llama_folder, tmp_path):
    lines = ["a man is playing a guitar", "", "the cat sits on the mat", "paris", ""]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    result = run("encode", "--model", tiny_llama_folder, "--input", source, "--output", out, "--batch-size", 2)
    assert result.exit_code == 0, result.output
    matrix = np.load(out)
    assert matrix.shape == (5, 32) and matrix.dtype == np.float32
    encoder = Encoder.from_pretrained(str(tiny_llama_folder))
    for row, line in zip(matrix, lines):
        assert np.abs(row - encoder.encode([line])[0]).max() < 1e-4


def test_encode_jsonl_with_options(tiny_llama_folder, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["paris", "the cat"])) + "\n")
    out = tmp_path / "out.npy"
    result = run("encode", "-m", tiny_llama_folder, "-i", source, "-o", out, "--pooling", "weighted_mean",
                 "--instruction", "classify the sentiment of the review", "--no-normalize", "--max-length", 64)
    assert result.exit_code == 0, result.output
    expected = Encoder.from_pretrained(str(tiny_llama_folder), pooling="weighted_mean").encode(
        ["paris", "the cat"], instruction="classify the sentiment of the review", normalize=False)
    assert np.abs(np.load(out) - expected).max() < 1e-4


def test_truncation_is_reported(tiny_llama_folder, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("a man is playing a guitar on the stage\nparis\n")
    result = run("encode", "-m", tiny_llama_folder, "-i", source, "-o", tmp_path / "o.npy", "--max-length", 4)
    assert result.exit_code == 0
    assert "1 of 2 texts were longer than 4 tokens and were truncated" in result.output


@pytest.mark.parametrize(
    "content,suffix,message",
    [
        (None, ".txt", "input file not found"),
        (b"fine\nalso fine\nbad \xff byte\n", ".txt", "line 3 is not valid UTF-8"),
        (b'{"text": "ok"}\n{"text": broken}\n', ".jsonl", "line 2 is not valid JSON"),
        (b'{"text": "ok"}\n{"body": "no text"}\n', ".jsonl", "line 2 has no 'text' field"),
        (b'{"text": 5}\n', ".jsonl", "line 1: 'text' must be a string"),
        (b"", ".txt", "no texts to encode"),
        (b"x\n", ".csv", "unsupported input format"),
    ],
)
def test_bad_input_is_one_clear_line_and_no_output(tiny_llama_folder, tmp_path, content, suffix, message):
    source = tmp_path / f"in{suffix}"
    if content is not None:
        source.write_bytes(content)
    out = tmp_path / "out.npy"
    result = run("encode", "-m", tiny_llama_folder, "-i", source, "-o", out)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not list(tmp_path.glob(".out.npy*"))


@pytest.mark.parametrize(
    "options,message",
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "./missing/folder"], "model folder not found"),
        (["--pooling", "max"], "unknown pooling 'max'"),
        (["--output", "out.txt"], "--output must end in .npy"),
    ],
)
def test_bad_options_are_one_clear_line(tiny_llama_folder, tmp_path, options, message):
    source = tmp_path / "in.txt"
    source.write_text("paris\n")
    base = {"--model": str(tiny_llama_folder), "--input": str(source), "--output": str(tmp_path / "out.npy")}
    for flag, value in zip(options[::2], options[1::2]):
        base[flag] = value
    args = ["encode"] + [x for pair in base.items() for x in pair]
    for flag, value in zip(options[::2], options[1::2]):
        if flag not in base:
            args += [flag, value]
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_failed_run_leaves_an_existing_output_untouched(tiny_llama_folder, tmp_path):
    out = tmp_path / "out.npy"
    np.save(out, np.arange(3))
    result = run("encode", "-m", tiny_llama_folder, "-i", tmp_path / "missing.txt", "-o", out)
    assert result.exit_code == 2
    assert np.array_equal(np.load(out), np.arange(3))


def test_info_reports_the_model(tiny_llama_folder):
    result = run("info", tiny_llama_folder, "--json")
    assert result.exit_code == 0, result.output
    details = json.loads(result.output)
    assert details["family"] == "llama" and details["hidden_size"] == 32
    assert details["bidirectional_verified"] is True and details["parameters"] > 0
    assert str(tiny_llama_folder) in details["loaded_from"]


def test_models_lists_builtins():
    result = run("models")
    assert result.exit_code == 0 and "smollm2-135m" in result.output and "gemma3-270m" in result.output
    assert "smollm2-135m-l2v-sup" in result.output and "minilm-l6" in result.output


def test_the_installed_command_prints_no_traceback(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "l2v.cli", "encode", "--model", "smollm2-135m", "--input", str(tmp_path / "none.txt"),
         "--output", str(tmp_path / "o.npy")],
        capture_output=True, text=True,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().startswith("error: input file not found")
    assert len(completed.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["encode", "--input", "x.txt", "--output", "o.npy"], "Missing option '--model'"),
        (["encode", "-m", "x", "-i", "x.txt", "-o", "o.npy", "--batch-size", "0"], "--batch-size"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line(args, message):
    completed = subprocess.run([sys.executable, "-m", "l2v.cli", *args], capture_output=True, text=True)
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: ") and message in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1


def test_no_arguments_prints_help():
    completed = subprocess.run([sys.executable, "-m", "l2v.cli"], capture_output=True, text=True)
    assert completed.returncode == 0 and "encode" in completed.stdout and "eval" in completed.stdout
