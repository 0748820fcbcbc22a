"""`run_awq` end to end: decode output and JSON, and one test per user error (one paragraph, exit code 2)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeawq.cli import main


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def assert_user_error(code, err, *needles):
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("Error: ") and err.strip().count("\n") == 0, err  # one paragraph
    for needle in needles:
        assert needle in err, err


def test_decode_streams_and_writes_json(checkpoints, tmp_path, capsys):
    out_file = tmp_path / "out.json"
    code, out, err = run(["--task", "decode", "--model", str(checkpoints["llama3"]), "--prompt", "The hacker",
                          "--max_new_tokens", "6", "--ignore_eos", "--flash_attention", "--output", str(out_file)],
                         capsys)
    assert code == 0 and out.startswith("The hacker")
    data = json.loads(out_file.read_text())
    r = data["results"][0]
    assert r["prompt"] == "The hacker" and r["new_tokens"] == 6 and len(r["token_ms"]) == 5
    assert out.strip() == ("The hacker" + r["completion"]).strip()
    assert data["engine"] == "static-cache" and r["prefill_ms"] > 0


def test_decode_batch_from_jsonl_with_instruct(checkpoints, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hello"}\n"A plain string prompt"\n\n{"prompt": "Third"}\n')
    out_file = tmp_path / "o.json"
    code, out, _ = run(["--task", "decode", "--model", str(checkpoints["qwen2"]), "--prompts", str(prompts),
                        "--instruct", "--max_new_tokens", "4", "--temperature", "0.8", "--top_p", "0.9",
                        "--top_k", "20", "--seed", "3", "--output", str(out_file)], capsys)
    assert code == 0
    results = json.loads(out_file.read_text())["results"]
    assert [r["prompt"] for r in results] == ["Hello", "A plain string prompt", "Third"]
    assert all(r["prompt_tokens"] > 5 for r in results)  # the chat template wrapped each prompt


@pytest.mark.parametrize("args,needles", [
    (["--model", "/nonexistent/model"], ["does not exist", "omit --model"]),
    (["--temperature", "-1"], ["--temperature -1.0 is invalid"]),
    (["--top_p", "0"], ["--top_p 0.0 is invalid"]),
    (["--top_p", "1.5"], ["--top_p 1.5 is invalid"]),
    (["--top_k", "-3"], ["--top_k -3 is invalid"]),
])
def test_bad_values(args, needles, capsys):
    code, _, err = run(["--task", "decode", "--prompt", "x"] + args, capsys)
    assert_user_error(code, err, *needles)


def test_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = run(["--task", "decode", "--model", str(tmp_path), "--prompt", "x"], capsys)
    assert_user_error(code, err, "is not a model folder", "config.json")


def test_unsupported_model_type_lists_supported(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    code, _, err = run(["--task", "decode", "--model", str(tmp_path), "--prompt", "x"], capsys)
    assert_user_error(code, err, "'gpt2'", "llama (", "qwen2 (", "mistral (")


def test_corrupt_safetensors(checkpoints, tmp_path, capsys):
    dst = tmp_path / "m"
    shutil.copytree(checkpoints["llama3"], dst)
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[:1000])
    code, _, err = run(["--task", "decode", "--model", str(dst), "--prompt", "x"], capsys)
    assert_user_error(code, err, "model.safetensors", "corrupt or truncated")


def test_prompt_longer_than_context(checkpoints, capsys):
    code, _, err = run(["--task", "decode", "--model", str(checkpoints["llama3"]), "--max_seq_len", "16",
                        "--prompt", "word " * 40], capsys)
    assert_user_error(code, err, "more than the context of 16 tokens", "Shorten the prompt")


def test_max_seq_len_beyond_model_context(checkpoints, capsys):
    code, _, err = run(["--task", "decode", "--model", str(checkpoints["llama3"]), "--max_seq_len", "100000",
                        "--prompt", "x"], capsys)
    assert_user_error(code, err, "exceeds the model's context of 256")


def test_batch_over_32(checkpoints, tmp_path, capsys):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([f"prompt {i}" for i in range(33)]))
    code, _, err = run(["--task", "decode", "--model", str(checkpoints["llama3"]), "--prompts", str(prompts)], capsys)
    assert_user_error(code, err, "33 prompts", "limit is 32")


@pytest.mark.parametrize("content,needle", [
    ("[1, 2", "not valid JSON"),
    ('[{"text": "no prompt key"}]', 'neither a string nor an object with a "prompt"'),
    ("", "is empty"),
    ("[]", "holds no prompts"),
    ('{"prompt": "ok"}\nnot json\n', "line 2, is not valid JSON"),
])
def test_bad_prompts_file(checkpoints, tmp_path, capsys, content, needle):
    prompts = tmp_path / "p.json"
    prompts.write_text(content)
    code, _, err = run(["--task", "decode", "--model", str(checkpoints["llama3"]), "--prompts", str(prompts)], capsys)
    assert_user_error(code, err, needle)


def test_missing_prompts_file(capsys):
    code, _, err = run(["--task", "decode", "--prompts", "/nonexistent/prompts.json"], capsys)
    assert_user_error(code, err, "does not exist")


def test_bad_flag_value_exits_2(capsys):
    code, _, err = run(["--task", "decode", "--dtype", "fp8", "--prompt", "x"], capsys)
    assert code == 2 and "fp8" in err and "Traceback" not in err


def test_debug_shows_traceback():
    proc = subprocess.run([sys.executable, "-m", "edgeawq.cli", "--task", "decode", "--model", "/nonexistent",
                           "--prompt", "x", "--debug"], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError" in proc.stderr


def console_script() -> str:
    """The `run_awq` installed for the interpreter running the tests (a venv's bin/, whether or not it is on PATH)."""
    script = Path(sys.executable).parent / "run_awq"
    assert script.is_file(), f"{script} is missing: install the project into this interpreter (pip install -e .)"
    return str(script)


def test_console_script_error_has_no_traceback():
    proc = subprocess.run([console_script(), "--task", "decode", "--model", "/nonexistent", "--prompt", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "does not exist" in proc.stderr


def test_quantize_then_decode_and_perplexity(checkpoints, tmp_path, capsys):
    out = tmp_path / "q"
    code, _, err = run(["--task", "quantize", "--model", str(checkpoints["qwen2"]), "--out", str(out), "--w_bit", "3",
                        "--group_size", "32", "--n_samples", "4", "--seqlen", "64"], capsys)
    assert code == 0, err
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["bits"] == 3 and summary["algorithm"] == "awq" and (out / "manifest.json").exists()
    code, out_text, err = run(["--task", "decode", "--model", str(out), "--prompt", "The hacker", "--flash_attention",
                               "--max_new_tokens", "5", "--ignore_eos"], capsys)
    assert code == 0 and out_text.startswith("The hacker")
    code, out_text, _ = run(["--task", "perplexity", "--model", str(out), "--seqlen", "128", "--nsamples", "2",
                             "--compare", "--format", "json"], capsys)
    r = json.loads(out_text)
    assert code == 0 and r["quantization"]["bits"] == 3 and r["compare"]["model"] == str(checkpoints["qwen2"])


@pytest.mark.parametrize("args,needles", [
    (["--group_size", "128"], ["K=64", "g=128", "model.layers.0.self_attn.q_proj",
                               "fit every layer of this model: 32, 64, -1"]),
    (["--awq", "load"], ["--awq_cache"]),
    (["--export", "awq", "--w_bit", "3"], ["only 4-bit"]),
    (["--flash_attention"], ["--flash_attention is not a flag of `run_awq quantize`", "decode"]),
    (["--calib_dataset", "/no/such/calib.txt"], ["local Hugging Face datasets cache"]),
])
def test_quantize_errors(checkpoints, tmp_path, capsys, args, needles):
    code, _, err = run(["--task", "quantize", "--model", str(checkpoints["llama3"]), "--out", str(tmp_path / "o"),
                        "--n_samples", "2", "--seqlen", "32", "--group_size", "32"] + args, capsys)
    assert_user_error(code, err, *needles)
    assert not (tmp_path / "o").exists()


def test_quantize_needs_out(capsys):
    code, _, err = run(["--task", "quantize"], capsys)
    assert_user_error(code, err, "--out")


def test_perplexity_seqlen_beyond_context(checkpoints, capsys):
    code, _, err = run(["--task", "perplexity", "--model", str(checkpoints["llama3"]), "--seqlen", "4096"], capsys)
    assert_user_error(code, err, "longer than the model's context of 256")


def test_benchmark_cli_markdown_and_bad_values(checkpoints, capsys):
    code, out, _ = run(["--task", "benchmark", "--model", str(checkpoints["llama3"]), "--prompt_lengths", "4,8",
                        "--new_tokens", "3", "--repeats", "1", "--flash_attention"], capsys)
    assert code == 0 and "| prompt | new | total ms | prefill ms (TTFT) |" in out and "\n| 8 | 3 |" in out
    code, _, err = run(["--task", "benchmark", "--model", str(checkpoints["llama3"]), "--new_tokens", "1"], capsys)
    assert_user_error(code, err, "--new_tokens 1 is too small")


def test_lm_head_group_size_that_does_not_fit_lists_those_that_do(checkpoints, tmp_path, capsys):
    code, _, err = run(["--task", "quantize", "--model", str(checkpoints["llama3"]), "--out", str(tmp_path / "o"),
                        "--group_size", "32", "--lm_head", "--lm_head_group_size", "128", "--algorithm", "pergrp"],
                       capsys)
    assert_user_error(code, err, "lm_head", "K=64", "fit it: 32, 64, -1")
