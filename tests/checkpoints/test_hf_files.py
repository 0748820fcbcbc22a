"""Loading Hugging Face folders: single and sharded safetensors, weights-only .bin, and the corrupt cases."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from edgeawq.errors import UserError
from edgeawq.runtime.model_loader import load_model

from ..conftest import write_checkpoint


def logits(path):
    loaded = load_model(path)
    with torch.no_grad():
        return loaded.model(input_ids=torch.tensor([[0, 5, 6, 7, 8]])).logits


def test_sharded_safetensors_load_like_single_file(tmp_path, checkpoints):
    sharded = write_checkpoint(tmp_path / "sharded", "qwen2", max_shard_size="200KB")
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 2 and (sharded / "model.safetensors.index.json").exists()
    assert not (sharded / "model.safetensors").exists()
    assert torch.equal(logits(sharded), logits(checkpoints["qwen2"]))


def test_pytorch_bin_is_read_weights_only(tmp_path, checkpoints):
    src = checkpoints["llama2"]
    dst = tmp_path / "bin"
    shutil.copytree(src, dst)
    from safetensors.torch import load_file
    torch.save(load_file(dst / "model.safetensors"), dst / "pytorch_model.bin")
    (dst / "model.safetensors").unlink()
    assert torch.equal(logits(dst), logits(src))


class _NotATensor:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_in_bin_are_refused(tmp_path, checkpoints):
    dst = tmp_path / "evil"
    shutil.copytree(checkpoints["llama2"], dst)
    (dst / "model.safetensors").unlink()
    torch.save({"x": _NotATensor()}, dst / "pytorch_model.bin")
    with pytest.raises(UserError, match="pytorch_model.bin"):
        load_model(dst)


def test_truncated_safetensors_is_named(tmp_path, checkpoints):
    dst = tmp_path / "trunc"
    shutil.copytree(checkpoints["llama3"], dst)
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="model.safetensors is corrupt or truncated"):
        load_model(dst)


def test_garbage_safetensors_header_is_named(tmp_path, checkpoints):
    dst = tmp_path / "garbage"
    shutil.copytree(checkpoints["llama3"], dst)
    (dst / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64)
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_model(dst)


def test_missing_shard_is_named(tmp_path):
    sharded = write_checkpoint(tmp_path / "sharded", "llama3", max_shard_size="200KB")
    victim = sorted(sharded.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(UserError, match=victim.name):
        load_model(sharded)


def test_weights_that_do_not_fit_the_config(tmp_path, checkpoints):
    dst = tmp_path / "mismatch"
    shutil.copytree(checkpoints["llama3"], dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["intermediate_size"] = 256
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="do not fit its config"):
        load_model(dst)


def test_bf16_checkpoint_loads_as_fp32_and_bf16(tmp_path, checkpoints):
    loaded = load_model(checkpoints["qwen2"], dtype="bf16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_model(checkpoints["qwen2"]).model.parameters()} == {torch.float32}


def test_streamed_reader_matches_safetensors(checkpoints, tmp_path):
    from safetensors.torch import load_file

    from edgeawq.checkpoints.hf_files import StreamedSafetensors

    path = checkpoints["qwen2"] / "model.safetensors"
    expected = load_file(path)
    streamed = StreamedSafetensors([path])
    assert set(streamed) == set(expected)
    for name, t in expected.items():
        assert torch.equal(streamed.load(name), t), name
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(UserError, match="cut.safetensors is corrupt or truncated"):
        StreamedSafetensors([tmp_path / "cut.safetensors"])
