"""Bad weight files, manifests, prompts and flag values: exit 2 with a paragraph naming the problem (never a
traceback), at decode and at quantize (the streamed reader); quantize writes nothing."""
from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file


def header_of(path):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_raw(path, header_bytes: bytes, body: bytes, length: int | None = None):
    path.write_bytes(struct.pack("<Q", len(header_bytes) if length is None else length) + header_bytes + body)


@pytest.fixture
def model_copy(checkpoints, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(checkpoints["llama3"], folder)
    return folder


def quantize_args(folder, tmp_path):
    return ["--task", "quantize", "--model", str(folder), "--out", str(tmp_path / "q"), "--algorithm", "pergrp",
            "--group_size", "32"]


def decode_args(folder):
    return ["--task", "decode", "--model", str(folder), "--prompt", "x", "--max_new_tokens", "2", "--engine", "torch"]


def edit_tensors(folder, fn):
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("name,value", [("model.layers.1.mlp.down_proj.weight", float("nan")),
                                        ("model.embed_tokens.weight", float("inf")),
                                        ("model.norm.weight", float("-inf"))])
def test_quantize_refuses_non_finite_weights(model_copy, tmp_path, user_error, name, value):
    edit_tensors(model_copy, lambda t: t[name].view(-1).__setitem__(7, value))
    user_error(quantize_args(model_copy, tmp_path), f"Tensor {name}", "NaN or infinite")
    assert not (tmp_path / "q").exists() and sorted(os.listdir(tmp_path)) == ["model"]


@pytest.mark.parametrize("edit,needle", [
    (lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.weight", torch.zeros(64, 32)),
     "model.layers.0.self_attn.q_proj.weight in"),
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), "lack 1 tensors the config requires"),
    (lambda t: t.pop("model.norm.weight"), "(first: model.norm.weight)"),
    (lambda t: t.__setitem__("model.layers.2.mlp.up_proj.weight", torch.zeros(128, 64)),
     "does not describe (first: model.layers.2.mlp.up_proj.weight)"),
    (lambda t: t.__setitem__("model.embed_tokens.weight", torch.zeros(100, 64)), "model.embed_tokens.weight in"),
    (lambda t: t.__setitem__("model.norm.weight", torch.zeros(64, dtype=torch.int32)), "torch.int32"),
])
def test_quantize_checks_every_tensor_against_the_config(model_copy, tmp_path, user_error, edit, needle):
    edit_tensors(model_copy, edit)
    user_error(quantize_args(model_copy, tmp_path), needle)
    assert sorted(os.listdir(tmp_path)) == ["model"]


def _header_cases():
    def length(n):
        return lambda path, header, body: write_raw(path, json.dumps(header).encode(), body, length=n)

    def as_list(path, header, body):
        write_raw(path, json.dumps(list(header.items())).encode(), body)

    def non_utf8(path, header, body):
        raw = json.dumps(header).encode()
        write_raw(path, raw[:10] + b"\xff\xfe" + raw[12:], body)

    def entry(key, value, tensor="model.norm.weight"):
        def edit(path, header, body):
            header[tensor][key] = value
            write_raw(path, json.dumps(header).encode(), body)
        return edit

    return {
        "length 2**40": length(2**40), "length 2**63": length(2**63), "length 0": length(0),
        "a JSON list": as_list, "not UTF-8": non_utf8,
        "negative offsets": entry("data_offsets", [-8, 248]), "offsets beyond the file": entry("data_offsets",
                                                                                              [0, 10**12]),
        "unknown dtype": entry("dtype", "F8_E4M3X"), "shape of strings": entry("shape", ["64"]),
        "embedding shape edited": entry("shape", [4096, 32], "model.embed_tokens.weight"),
    }


HEADER_CASES = _header_cases()


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
@pytest.mark.parametrize("task", ["quantize", "decode"])
def test_damaged_safetensors_headers(model_copy, tmp_path, user_error, case, task):
    path = model_copy / "model.safetensors"
    header, body = header_of(path)
    HEADER_CASES[case](path, header, body)
    args = quantize_args(model_copy, tmp_path) if task == "quantize" else decode_args(model_copy)
    user_error(args, "model.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["model"]


@pytest.fixture
def checkpoint(rtn_llama3):
    return rtn_llama3


@pytest.mark.parametrize("damage,needle", [
    (lambda m: b"\xff\xfe" + m, "manifest"),
    (lambda m: json.dumps({"files": {"model.safetensors": {"size": 10}}}).encode(), "damaged entry"),
    (lambda m: json.dumps({"files": {"../../etc/passwd": {"size": 1, "sha256": "0" * 64}}}).encode(),
     "not a path inside"),
    (lambda m: json.dumps({"files": ["model.safetensors"]}).encode(), "no \"files\" table"),
    (lambda m: b"[" * 100000 + b"]" * 100000, "manifest"),
])
def test_damaged_manifests(checkpoint, tmp_path, user_error, damage, needle):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    (folder / "manifest.json").write_bytes(damage((folder / "manifest.json").read_bytes()))
    user_error(decode_args(folder), needle)


@pytest.mark.parametrize("args,needle", [
    (["--seed", str(10**20), "--temperature", "0.7"], "--seed"),
    (["--seed", "-1"], "--seed"),
])
def test_seed_out_of_range(checkpoints, cli, args, needle):
    code, _, err = cli(decode_args(checkpoints["llama3"]) + args)
    assert code == 2 and needle in err and "Traceback" not in err


@pytest.mark.parametrize("content,needle", [
    ("[" * 200000 + "]" * 200000, "too deeply"),
    ('["ok", "bad \\ud800 surrogate"]', "unpaired surrogate"),
    ('{"prompt": "\\udc00"}\n', "unpaired surrogate"),
])
def test_bad_prompts_files(checkpoints, tmp_path, cli, content, needle):
    path = tmp_path / "p.json"
    path.write_text(content)
    code, _, err = cli(decode_args(checkpoints["llama3"])[:4] + ["--prompts", str(path)])
    assert code == 2 and needle in err and "Traceback" not in err


def test_a_prompt_with_bytes_that_are_not_utf8(checkpoints, cli):
    code, _, err = cli(decode_args(checkpoints["llama3"])[:4] + ["--prompt", "caf\udce9"])   # argv b"caf\xe9"
    assert code == 2 and "unpaired surrogate" in err and "--prompt 1" in err
