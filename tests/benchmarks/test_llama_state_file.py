"""benchmarks/llama_state_file.py: the byte layout of a depth state file, and (where llama-server is built) a real
llama-server restoring it, measured through benchmarks/long_context.py at a restored depth."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import long_context  # noqa: E402
from llama_state_file import write_depth_state  # noqa: E402
from serve_load import llama_server_exe  # noqa: E402

# a tiny Llama-2-style layout (no grouped KV heads, as the 7B layout the restore is for)
TINY_MHA = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=2048, hidden_size=128,
                intermediate_size=384, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                bos_token_id=1, eos_token_id=2)


def read_fields(data: bytes, fmt: str, at: int) -> tuple[tuple, int]:
    return struct.unpack_from(fmt, data, at), at + struct.calcsize(fmt)


@pytest.mark.parametrize("v_trans", [False, True])
def test_layout_of_a_depth_state_file(tmp_path, v_trans):
    """Header, token list, one stream of D cells (positions 0..D-1 of sequence 0), then per layer the f16 keys and
    (rows, or transposed columns) values, all zero; the size is exactly the sum of those parts."""
    tokens, n_layer, width = [5, 6, 7], 2, 4
    path = tmp_path / "depth.bin"
    size = write_depth_state(path, tokens, n_layer, width, v_trans)
    data = path.read_bytes()
    assert size == len(data)
    (magic, version, n), at = read_fields(data, "<III", 0)
    assert (magic, version, n) == (0x67677371, 3, 3)
    got, at = read_fields(data, "<3i", at)
    assert list(got) == tokens
    (streams, cells), at = read_fields(data, "<II", at)
    assert (streams, cells) == (1, 3)
    for pos in range(3):
        got, at = read_fields(data, "<iIi", at)
        assert got == (pos, 1, 0)
    (trans, layers), at = read_fields(data, "<II", at)
    assert (trans, layers) == (int(v_trans), 2)
    for _ in range(n_layer):
        got, at = read_fields(data, "<iQ", at)
        assert got == (1, 2 * width) and data[at:at + 3 * 2 * width] == bytes(3 * 2 * width)
        at += 3 * 2 * width
    for _ in range(n_layer):
        got, at = read_fields(data, "<iII" if v_trans else "<iQ", at)
        assert got == ((1, 2, width) if v_trans else (1, 2 * width))
        assert data[at:at + 3 * 2 * width] == bytes(3 * 2 * width)
        at += 3 * 2 * width
    assert at == len(data)


@pytest.mark.skipif(llama_server_exe() is None, reason="llama-server not built (bash scripts/build_llama_cpp.sh)")
@pytest.mark.parametrize("options", ["-fa off", "-fa on"])
def test_llama_server_restores_the_depth(tmp_path, monkeypatch, options):
    """A real llama-server (a random Q4_0 GGUF of a tiny shape) takes the file for its flash-attention layout: after
    the restore, request 1 evaluates only the last of the 200 cached tokens and request 2 prefills only the 32 new
    ones (LlamaServerAtDepth.measure checks both). Told the other V layout, llama.cpp refuses the file."""
    monkeypatch.setattr("edgeawq.runtime.random_model.read_shape", lambda name: dict(TINY_MHA))
    server = long_context.LlamaServerAtDepth("tiny", tmp_path, options, depth="restore")
    server.prepare()
    got = server.measure(200, 32, 4)
    assert got["depth_restore_ms"] >= 0 and got["prefill_tok_s"] > 0 and got["decode_ms_per_token"] > 0
    monkeypatch.setattr(long_context, "flash_attention", lambda extra: "off" in extra)       # the wrong layout
    with pytest.raises(RuntimeError, match="restore"):
        server.measure(200, 32, 4)
