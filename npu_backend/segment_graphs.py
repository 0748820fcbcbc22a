"""The decoder cut into ONNX graphs at every point where tensor-parallel ranks must sum their partial results.

A mesh rank (scale_out/ort_shard.py) cannot run its part of the decoder as one ONNX Runtime graph: after o_proj
and after down_proj the ranks all-reduce their partial outputs, outside ONNX Runtime. So the rank's layers are
written as segments, each a graph of the same ops as the whole-model graph (graph_builder.py):

  attn.{i}.onnx   inputs  hidden float32 (batch, sequence, D)      the residual stream, right-padded rows
                          attention_mask int64 (batch, total_sequence)   as graph_builder.py's
                          cos_cache, sin_cache float32 (positions, head_dim / 2)   RoPE tables (bound once,
                                                                   shared by every attention segment)
                          past_key_values.{i}.key / .value float32 (batch, kv_heads, cache slots, head_dim)
                  outputs partial float32 (batch, sequence, D)     o_proj(attention(RMSNorm(hidden))), this rank's
                                                                   heads only: summed over the ranks by the caller
                          present.{i}.key / .value                 bound to the past buffers (in place)
  mlp.{i}.onnx    inputs  hidden                                   outputs partial = down(SiLU(gate) * up) of
                                                                   RMSNorm(hidden), this rank's MLP channels
  head.onnx       inputs  hidden float32 (batch, positions, D)     outputs logits float32 (batch, positions,
                                                                   local vocabulary): final RMSNorm and lm_head
                                                                   over this rank's vocabulary rows

Residual adds, the embedding lookup (vocabulary rows of the rank) and the choice of logit positions stay in the
caller. Every segment has its own external-data file (`<segment>.onnx.data`). Quantized Linears are MatMulNBits of
the rank's own codes, scales and zero points, exactly as the whole-model export writes them.
"""
from __future__ import annotations

from pathlib import Path

from onnx import TensorProto

from ..runtime.fusion import head_dim, layer_windows, linear_groups
from ..runtime.model_loader import LoadedModel
from ..runtime.module_paths import get_module
from .graph_builder import DecoderGraphBuilder
from .onnx_writer import GraphWriter


def segment_names(layers: int, has_head: bool) -> list[str]:
    """The segment files of a stage with `layers` layers, in execution order (without the head: not last)."""
    names = [f"{kind}.{i}" for i in range(layers) for kind in ("attn", "mlp")]
    return names + (["head"] if has_head else [])


def write_segments(loaded: LoadedModel, folder: Path, accuracy_level: int, has_head: bool) -> list[str]:
    """Write every segment of `loaded` (a rank's slice: local heads, MLP width, vocabulary rows) into `folder`.
    Returns the file names written (graphs and their data files)."""
    c, f = loaded.config, loaded.family
    nh, kvh, hd = c.num_attention_heads, c.num_key_value_heads, head_dim(c)
    D = c.hidden_size
    layers = get_module(loaded.model, f.layers)
    windows = layer_windows(c)
    files: list[str] = []

    def writer(name: str) -> tuple[GraphWriter, DecoderGraphBuilder]:
        w = GraphWriter(folder, f"{name}.onnx.data")
        files.extend([f"{name}.onnx", f"{name}.onnx.data"])
        return w, DecoderGraphBuilder(loaded, w, accuracy_level)

    for i, layer in enumerate(layers):
        groups = linear_groups(layer, f)
        w, b = writer(f"attn.{i}")
        h = w.input("hidden", TensorProto.FLOAT, ["batch", "sequence", D])
        mask = w.input("attention_mask", TensorProto.INT64, ["batch", "total_sequence"])
        cos = w.input("cos_cache", TensorProto.FLOAT, ["positions", hd // 2])
        sin = w.input("sin_cache", TensorProto.FLOAT, ["positions", hd // 2])
        past_k = w.input(f"past_key_values.{i}.key", TensorProto.FLOAT, ["batch", kvh, "past_sequence", hd])
        past_v = w.input(f"past_key_values.{i}.value", TensorProto.FLOAT, ["batch", kvh, "past_sequence", hd])
        seqlens, total = b.gqa_lengths(mask)
        x = b.rms_norm(h, getattr(layer, f.input_norm), "input_norm")
        qkv = b.linear(x, groups["qkv"], "attn.qkv_proj")
        y, pk, pv = w.node("GroupQueryAttention", [qkv, "", "", past_k, past_v, seqlens, total, cos, sin],
                           n_out=3, domain="com.microsoft", name="attn.gqa", num_heads=nh, kv_num_heads=kvh,
                           scale=float(hd) ** -0.5, do_rotary=1, rotary_interleaved=0,
                           local_window_size=-1 if windows[i] is None else windows[i])
        w.output(w.rename_output(pk, f"present.{i}.key"), TensorProto.FLOAT, ["batch", kvh, "total_sequence", hd])
        w.output(w.rename_output(pv, f"present.{i}.value"), TensorProto.FLOAT,
                 ["batch", kvh, "total_sequence", hd])
        out = b.linear(y, groups["o"], "attn.o_proj")
        w.output(w.rename_output(out, "partial"), TensorProto.FLOAT, ["batch", "sequence", D])
        w.save(f"attn.{i}.onnx", f"attn_{i}")

        w, b = writer(f"mlp.{i}")
        h = w.input("hidden", TensorProto.FLOAT, ["batch", "sequence", D])
        x = b.rms_norm(h, getattr(layer, f.post_attn_norm), "post_attn_norm")
        gate_up = b.linear(x, groups["gate_up"], "mlp.gate_up_proj")
        width = groups["gate_up"][0].out_features
        gate, up = w.node("Split", [gate_up, w.const([width] * 2)], n_out=2, axis=-1)
        act = w.node("Mul", [w.node("Mul", [gate, w.node("Sigmoid", [gate])]), up])
        out = b.linear(act, groups["down"], "mlp.down_proj")
        w.output(w.rename_output(out, "partial"), TensorProto.FLOAT, ["batch", "sequence", D])
        w.save(f"mlp.{i}.onnx", f"mlp_{i}")

    if has_head:
        w, b = writer("head")
        h = w.input("hidden", TensorProto.FLOAT, ["batch", "positions", D])
        x = b.rms_norm(h, get_module(loaded.model, f.final_norm), "final_norm")
        head = get_module(loaded.model, f.lm_head)
        logits = b.linear(x, [head], "lm_head")
        w.output(w.rename_output(logits, "logits"), TensorProto.FLOAT, ["batch", "positions", head.out_features])
        w.save("head.onnx", "head")
    return files
