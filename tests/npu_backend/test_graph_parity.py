"""The exported ONNX graph computes what the PyTorch reference computes, for every family.

Float checkpoints and quantized checkpoints at accuracy_level 0 (fp32 MatMulNBits): logits equal the reference
(fp32, max abs diff <= 1e-4) with left padding, in one pass and token by token. Every quantized Linear is a
MatMulNBits node (grouped q/k/v and gate/up), none is a float MatMul.
"""
from __future__ import annotations

import onnx
import pytest
import torch

from edgeawq.npu_backend.engine import OrtEngine
from edgeawq.runtime.model_identity import source_fingerprint
from edgeawq.npu_backend.export_folder import export_model
from edgeawq.runtime.engines import TransformersEngine
from edgeawq.runtime.generate import left_pad
from edgeawq.runtime.model_loader import load_model

from ..conftest import FAMILY_CONFIGS, quantize_tiny

PROMPTS = [list(range(5, 25)), list(range(40, 52)), [7, 8, 9]]  # 20, 12, 3 tokens (window 8 for mistral)


def _export(path, out, accuracy_level=0):
    loaded = load_model(path, "fp32", "fp32")
    record = export_model(loaded, out, accuracy_level, source_fingerprint(loaded.source))
    return record, OrtEngine(out, "CPU")


def _compare(ref_engine, ort_engine, steps=4):
    ids, mask, positions = left_pad(PROMPTS, pad_id=2)
    for e in (ref_engine, ort_engine):
        e.start(ids.shape[0], 64)
    want, got = (e.forward(ids, positions, mask, last_only=False) for e in (ref_engine, ort_engine))
    real = mask.bool()
    diffs = [(got[real] - want[real]).abs().max().item()]
    token = want[:, -1].argmax(-1, keepdim=True)
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones_like(token)], 1)
        positions = positions[:, -1:] + 1
        want, got = (e.forward(token, positions, mask) for e in (ref_engine, ort_engine))
        diffs.append((got - want).abs().max().item())
        token = want[:, -1].argmax(-1, keepdim=True)
    return max(diffs)


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_float_graph_matches_transformers(checkpoints, family, tmp_path):
    record, engine = _export(checkpoints[family], tmp_path / "onnx")
    assert record["matmulnbits_nodes"] == 0
    assert _compare(TransformersEngine(load_model(checkpoints[family])), engine) <= 1e-4


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
@pytest.mark.parametrize("bits,lm_head", [(4, False), (3, True)])
def test_quantized_graph_matches_reference(checkpoints, family, bits, lm_head, tmp_path):
    quantize_tiny(checkpoints[family], tmp_path / "q", w_bit=bits, awq_mode="none", algorithm="pergrp",
                  lm_head=lm_head)
    record, engine = _export(tmp_path / "q", tmp_path / "onnx")
    layers = FAMILY_CONFIGS[family][1].get("num_hidden_layers", 2)
    assert record["matmulnbits_nodes"] == 4 * layers + lm_head       # qkv, o, gate_up, down (+ lm_head)
    assert record["quantized_linears"] == 7 * layers + lm_head
    assert record["float_matmuls"] == (0 if lm_head else 1)
    assert record["bits"] == bits and record["container_bits"] == 4
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulNBits") == record["matmulnbits_nodes"]
    assert ops.count("GroupQueryAttention") == layers
    float_matmuls = [n.name for n in graph.node if n.op_type == "MatMul"]
    assert float_matmuls == ([] if lm_head else ["lm_head"])       # no quantized Linear became a float MatMul
    reference = TransformersEngine(load_model(tmp_path / "q", "fp32", "fp32"))
    assert _compare(reference, engine) <= 1e-4


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
@pytest.mark.parametrize("mode", ["per_token", "per_tensor"])
def test_w8a8_graph_matches_reference(checkpoints, family, mode, tmp_path):
    """SmoothQuant W8A8: every quantized projection is one MatMulInteger on int8 activations (no MatMulNBits), and
    the logits follow the reference's int8 math (codes can flip where fp32 op order puts an input on a rounding
    boundary of its int8 grid, so: most positions equal within 2e-4 relative, PCC >= 0.99999)."""
    from edgeawq.evaluation.parity import pcc

    quantize_tiny(checkpoints[family], tmp_path / "q", w_bit=None, group_size=None, algorithm="smoothquant",
                  awq_mode="run", act_quant=mode)
    record, engine = _export(tmp_path / "q", tmp_path / "onnx")
    layers = FAMILY_CONFIGS[family][1].get("num_hidden_layers", 2)
    assert record["matmulinteger_nodes"] == 4 * layers and record["matmulnbits_nodes"] == 0
    assert record["quantized_linears"] == 7 * layers and record["act_quant"] == mode
    ops = [n.op_type for n in onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False).graph.node]
    assert ops.count("MatMulInteger") == 4 * layers and ops.count("ReduceMax") == (4 * layers if mode == "per_token"
                                                                                    else 0)
    reference = TransformersEngine(load_model(tmp_path / "q", "fp32", "fp32"))
    ids, mask, positions = left_pad(PROMPTS, pad_id=2)
    for e in (reference, engine):
        e.start(ids.shape[0], 64)
    want, got = (e.forward(ids, positions, mask, last_only=False)[mask.bool()] for e in (reference, engine))
    exact = ((got - want).abs() <= 2e-4 * want.abs().max()).all(-1)
    assert exact.float().mean() >= 0.8 and pcc(got, want) >= 0.99999


def test_fp16_load_exports_fp16_values_into_the_float32_graph(checkpoints, tmp_path):
    """--dtype fp16 with the ONNX graph: the embedding table is stored as float16, the other float weights are
    their float16 values in float32; the graph equals the float32 reference of those rounded weights."""
    path = checkpoints["qwen2"]
    loaded = load_model(path, "fp16")
    export_model(loaded, tmp_path / "onnx", 0, "fp16-test")
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False).graph
    types = {t.name: t.data_type for t in graph.initializer}
    assert types["embed.weight"] == onnx.TensorProto.FLOAT16
    rounded = load_model(path, "fp32")
    for p in rounded.model.parameters():
        p.data = p.data.half().float()
    assert _compare(TransformersEngine(rounded), OrtEngine(tmp_path / "onnx", "CPU")) <= 1e-4


def test_held_memory_is_the_exported_files_and_the_cache_arrays(checkpoints, tmp_path):
    _, engine = _export(checkpoints["llama3"], tmp_path / "onnx")
    assert engine.kv_bytes == 0
    engine.start(3, 64)
    c = load_model(checkpoints["llama3"], "fp32", "fp32").config
    per_slot = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    assert engine.kv_bytes == 3 * 64 * per_slot
    files = [tmp_path / "onnx" / "model.onnx", tmp_path / "onnx" / "model.onnx.data"]
    assert engine.weights_bytes == sum(f.stat().st_size for f in files)
    assert engine.weights_bytes > 4 * sum(p.numel() for p in load_model(checkpoints["llama3"]).model.parameters())
