"""Random bytes written into a derived cache (the native weight cache, an ONNX export's model.onnx.data, the tt weight
cache) are detected before use and the cache is rebuilt, saying so: decode prints the same text as before."""
from __future__ import annotations

import random
from pathlib import Path

import pytest



@pytest.fixture
def checkpoint(rtn_llama3):
    return rtn_llama3


def scribble(path: Path, seed: int) -> None:
    """Overwrite 256 bytes in the middle of `path` with random ones (the file keeps its size)."""
    rng = random.Random(seed)
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start:start + 256] = bytes(rng.randrange(256) for _ in range(256))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("target,engine,pattern,message", [
    ("cpu", "native", "native/*/weights.safetensors", "[native] the weight cache"),
    ("cpu", "onnx", "onnx/*/model.onnx.data", "Exporting it again"),
    ("tt", "auto", "tt/*/weights.safetensors", "[tt] the weight cache"),
])
def test_a_damaged_cache_is_rebuilt(checkpoint, tmp_path, cli, monkeypatch, target, engine, pattern, message):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    args = ["--task", "decode", "--model", str(checkpoint), "--target", target, "--engine", engine, "--prompt",
            "The hacker", "--max_new_tokens", "8", "--ignore_eos"]
    code, first, err = cli(args)
    assert code == 0, err
    [cached] = (tmp_path / "cache").glob(pattern)
    scribble(cached, seed=len(pattern))
    code, again, err = cli(args)
    assert code == 0 and message in err and "is damaged" in err, err
    assert again == first
    code, third, err = cli(args)
    assert code == 0 and "is damaged" not in err and third == first       # the rebuilt cache is reused
