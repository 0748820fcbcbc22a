"""The Llama-family decoder as one ONNX graph (opset 23 + com.microsoft), from a loaded model.

Graph inputs (onnxruntime-genai names):
  input_ids        int64 (batch, sequence)         each row's real tokens first (right padding)
  attention_mask   int64 (batch, total_sequence)   per row: as many ones as the row has tokens so far
                                                   (GroupQueryAttention's seqlens_k), and in its last `sequence`
                                                   columns as many as it has in this chunk
  position_ids     int64 (batch, sequence)         accepted (onnxruntime-genai feeds it), not used: RoPE positions
                                                   are the rows' token counts (GroupQueryAttention's do_rotary)
  past_key_values.{i}.key / .value   float32 (batch, kv_heads, cache slots, head_dim); bound to the same buffer
                                     as present.{i} for in-place updates
  num_logits_to_keep  int64 (1,)                   0 = every position, 1 = each row's last real token
Graph outputs:
  logits           float32 (batch, sequence or num_logits_to_keep, vocab), right-aligned per row
  present.{i}.key / .value           float32 (batch, kv_heads, cache slots, head_dim)

Per layer: SimplifiedLayerNormalization (RMSNorm) -> grouped q/k/v projection (one MatMulNBits for a quantized
checkpoint, + bias for Qwen2) -> com.microsoft.GroupQueryAttention on the packed q/k/v (rotary inside it, with
cos/sin tables from the model's own rotary module, so Llama-3 scaling is included; GQA by kv_num_heads; causal;
sliding window as local_window_size) -> o_proj -> residual; SimplifiedLayerNormalization -> grouped gate/up
projection -> Split -> SiLU(gate) * up -> down_proj -> residual. Quantized Linears become MatMulNBits with the
checkpoint's own codes, scales and zero points; float Linears become MatMul with the transposed float32 weight.
W8A8 Linears (SmoothQuant checkpoints, kernels/act_quant.py) become an int8 activation quantizer (per token:
ReduceMax(Abs(x)) / 127, floored at FLT_MIN, then Mul by its reciprocal; per tensor: Mul by the constant 1 / s;
Round (half to even), Clip to +-127, + 128, Cast uint8) -> MatMulInteger (activation zero point 128) with the int8
weight codes - 128 (K, N), int32 accumulation -> Cast float -> Mul by the weight scales (N,) and the activation scale.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from onnx import TensorProto
from torch import nn

from ..kernels.formats import native_format, unpack
from ..kernels.qlinear import QLinearPerGrp
from ..runtime.fusion import head_dim, layer_windows, linear_groups, rope_half_tables
from ..runtime.model_loader import LoadedModel
from ..runtime.module_paths import get_module
from ..progress import bar
from .matmulnbits import container_bits, to_matmulnbits
from .onnx_writer import GraphWriter


@dataclass
class GraphSummary:
    matmulnbits: int = 0                 # MatMulNBits nodes written
    matmulintegers: int = 0              # MatMulInteger nodes written (W8A8 Linears)
    float_matmuls: int = 0               # float MatMul nodes written for Linears
    quantized_linears: int = 0           # quantized Linear modules of the source model covered by MatMulNBits or
                                         # MatMulInteger
    op_counts: dict = field(default_factory=dict)


def _exact_in_bf16(t: torch.Tensor) -> bool:
    return bool(torch.equal(t.to(torch.bfloat16).float(), t.float()))


class DecoderGraphBuilder:
    def __init__(self, loaded: LoadedModel, writer: GraphWriter, accuracy_level: int,
                 keep_input: bool = True) -> None:
        self.m, self.c, self.f = loaded.model, loaded.config, loaded.family
        self.w = writer
        self.accuracy_level = accuracy_level
        self.keep_input = keep_input
        self.summary = GraphSummary()

    # --- Linears -------------------------------------------------------------------------------------------
    def linear(self, x: str, parts: list[nn.Module], name: str) -> str:
        """x (B, T, K) -> (B, T, sum of parts' N); `parts` are Linears sharing the input, grouped into one op."""
        if all(isinstance(p, QLinearPerGrp) for p in parts) and len({(p.spec, p.act_quant) for p in parts}) == 1:
            y = self._matmulinteger(x, parts, name) if parts[0].act_quant else self._matmulnbits(x, parts, name)
        elif all(isinstance(p, nn.Linear) for p in parts):
            weight = torch.cat([p.weight.detach().float() for p in parts]).t().contiguous()     # (K, N)
            y = self.w.node("MatMul", [x, self.w.weight(f"{name}.weight_t", weight)], name=name)
            self.summary.float_matmuls += 1
        else:
            return self.w.node("Concat", [self.linear(x, [p], f"{name}.{i}") for i, p in enumerate(parts)],
                               name=f"{name}/concat", axis=-1)
        biases = [p.bias for p in parts]
        if any(b is not None for b in biases):
            bias = torch.cat([b.detach().float() if b is not None else torch.zeros(p.out_features)
                              for b, p in zip(biases, parts)])
            y = self.w.node("Add", [y, self.w.weight(f"{name}.bias", bias)], name=f"{name}/bias")
        return y

    def _matmulnbits(self, x: str, parts: list[QLinearPerGrp], name: str) -> str:
        bits = parts[0].spec.bits
        codes = torch.cat([unpack(p.packed, native_format(bits)) for p in parts])                 # (N, K)
        scales = torch.cat([p.scales for p in parts])                                             # (N, K/g)
        zeros = torch.cat([p.zeros for p in parts])                                               # (N, K/g)
        residual = None
        if parts[0].spec.mins:
            zeros, residual = centre_group_mins(scales, torch.cat([p.mins for p in parts]), bits)
        q = to_matmulnbits(codes, scales, zeros, bits, where=name)
        self.summary.matmulnbits += 1
        self.summary.quantized_linears += len(parts)
        y = self.w.node("MatMulNBits", [x, self.w.weight(f"{name}.qweight", q.B),
                                        self.w.weight(f"{name}.scales", q.scales),
                                        self.w.weight(f"{name}.qzeros", q.zero_points)],
                        domain="com.microsoft", name=name, K=q.K, N=q.N, bits=q.bits, block_size=q.block_size,
                        accuracy_level=self.accuracy_level)
        if residual is not None:
            y = self._add_group_residual(x, residual, y, name)
        return y

    def _matmulinteger(self, x: str, parts: list[QLinearPerGrp], name: str) -> str:
        """W8A8: x (B, T, K) float32 -> (B, T, N) float32 (the module docstring); symmetric int8 per-channel
        weights only (codes - 128, one fp16 scale per output row)."""
        w = self.w
        first = parts[0]
        if first.spec.bits != 8 or first.spec.zero_point or first.spec.group(first.in_features) != first.in_features:
            raise ValueError(f"{name}: W8A8 needs symmetric 8-bit weights with one group per output channel")
        codes = torch.cat([unpack(p.packed, "u8") for p in parts])                                # (N, K) uint8
        weight = (codes.to(torch.int16) - 128).to(torch.int8).t().contiguous()                    # (K, N) int8
        w_scale = torch.cat([p.scales for p in parts]).float().reshape(-1)                        # (N,)
        if first.act_quant == "per_token":
            top = w.node("ReduceMax", [w.node("Abs", [x], name=f"{name}/abs"), w.const([-1])], keepdims=1,
                         name=f"{name}/absmax")                                                     # (B, T, 1)
            s = w.node("Max", [w.node("Div", [top, w.const(127.0, np.float32)], name=f"{name}/act_scale"),
                               w.const(np.finfo(np.float32).tiny, np.float32)], name=f"{name}/act_scale_floor")
            inv = w.node("Div", [w.const(1.0, np.float32), s], name=f"{name}/act_inv")     # IEEE division, as 1/s
        else:
            scale = first.act_scale.detach().float().reshape(1)
            s = w.weight(f"{name}.act_scale", scale)
            inv = w.weight(f"{name}.act_inv", (1.0 / scale).float())
        q = w.node("Clip", [w.node("Round", [w.node("Mul", [x, inv], name=f"{name}/act_div")], name=f"{name}/round"),
                            w.const(-127.0, np.float32), w.const(127.0, np.float32)], name=f"{name}/clip")
        # uint8 codes q + 128 with zero point 128: the same int32 products, on ONNX Runtime's u8s8 kernels (20-50x
        # faster than s8s8 at one token here: benchmarks/results/matmulinteger_types.jsonl)
        q = w.node("Cast", [w.node("Add", [q, w.const(128.0, np.float32)], name=f"{name}/act_offset")],
                   to=TensorProto.UINT8, name=f"{name}/act_uint8")                                 # (B, T, K) uint8
        acc = w.node("MatMulInteger", [q, w.weight(f"{name}.weight_int8_t", weight),
                                       w.const(128, np.uint8)], name=name)                         # (B, T, N) int32
        y = w.node("Mul", [w.node("Cast", [acc], to=TensorProto.FLOAT, name=f"{name}/acc_float"),
                           w.weight(f"{name}.weight_scale", w_scale)], name=f"{name}/weight_scale")
        self.summary.matmulintegers += 1
        self.summary.quantized_linears += len(parts)
        return w.node("Mul", [y, s], name=f"{name}/act_scale_mul")

    def _add_group_residual(self, x: str, residual: torch.Tensor, y: str, name: str) -> str:
        """y + sum_j residual[n, j] * sum_{k in group j} x[..., k]: what MatMulNBits' integer zero points leave of
        the minimums of W = code * scale + min (GGUF Q4_1 imports; `centre_group_mins`). x (B, T, K), residual fp32
        (N, G), y (B, T, N)."""
        w = self.w
        N, G = residual.shape
        sums = w.node("ReduceSum", [w.node("Reshape", [x, w.const([0, 0, G, -1])]), w.const([-1])],
                      keepdims=0, name=f"{name}/group_sums")                                    # (B, T, G)
        shift = w.node("MatMul", [sums, w.weight(f"{name}.mins_residual_t", residual.t().contiguous())],
                       name=f"{name}/mins_residual")                                            # (B, T, N)
        return w.node("Add", [y, shift], name=f"{name}/add_mins")

    def rms_norm(self, x: str, norm: nn.Module, name: str) -> str:
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        # SimplifiedLayerNormalization (ONNX Runtime's RMSNorm): its optimizer fuses it with the residual Add
        return self.w.node("SimplifiedLayerNormalization",
                           [x, self.w.weight(f"{name}.weight", norm.weight.detach().float())],
                           name=name, axis=-1, epsilon=eps, stash_type=1)

    # --- graph pieces ----------------------------------------------------------------------------------------
    def _scalar_dim(self, tensor: str, axis: int) -> str:
        s = self.w.node("Shape", [tensor], start=axis, end=axis + 1)
        return self.w.node("Squeeze", [s, self.w.const([0])])

    def gqa_lengths(self, attention_mask: str) -> tuple[str, str]:
        """-> (seqlens_k int32 (B,) = real tokens per row - 1, total_sequence_length int32 scalar = mask width)."""
        w = self.w
        rows = w.node("ReduceSum", [attention_mask, w.const([1])], keepdims=0)                       # (B,)
        seqlens = w.node("Cast", [w.node("Sub", [rows, w.const(1)])], to=TensorProto.INT32)
        total = w.node("Cast", [self._scalar_dim(attention_mask, 1)], to=TensorProto.INT32)
        return seqlens, total

    def keep_logit_positions(self, h: str, attention_mask: str, input_ids: str, keep: str) -> str:
        """h (B, T, D) -> (B, n, D): n = T when keep is 0, else keep; per row the last n positions of its chunk.
        A row's chunk holds its real tokens first (right padding), sum(mask[:, -T:]) of them; the outputs are
        right-aligned, i.e. in the left-padded layout of the caller."""
        w = self.w
        T = self._scalar_dim(input_ids, 1)
        chunk = w.node("ReduceSum", [w.node("Slice", [attention_mask, w.node("Neg", [w.node("Unsqueeze", [
            T, w.const([0])])]), w.const([np.iinfo(np.int64).max]), w.const([1])]), w.const([1])], keepdims=1)  # (B,1)
        keep_s = w.node("Squeeze", [keep, w.const([0])])
        n = w.node("Where", [w.node("Equal", [keep_s, w.const(0)]), T, keep_s])
        j = w.node("Unsqueeze", [w.node("Range", [w.const(0), n, w.const(1)]), w.const([0])])          # (1, n)
        idx = w.node("Max", [w.node("Add", [j, w.node("Sub", [chunk, n])]), w.const([[0]])])            # (B, n)
        idx = w.node("Unsqueeze", [idx, w.const([2])])                                                  # (B, n, 1)
        return w.node("GatherND", [h, idx], name="keep_logit_positions", batch_dims=1)                  # (B, n, D)

    def rope_tables(self) -> tuple[str, str]:
        cos, sin = rope_half_tables(self.m, self.c, self.f)
        return self.w.weight("rope.cos", cos), self.w.weight("rope.sin", sin)

    def embedding(self, input_ids: str) -> str:
        table = get_module(self.m, self.f.embed).weight.detach()
        if table.dtype != torch.bfloat16 and _exact_in_bf16(table):
            table = table.to(torch.bfloat16)        # half the memory, bit-identical values
        h = self.w.node("Gather", [self.w.weight("embed.weight", table), input_ids], name="embed")
        return h if table.dtype == torch.float32 else self.w.node("Cast", [h], to=TensorProto.FLOAT)

    # --- whole graph -----------------------------------------------------------------------------------------
    def build(self) -> GraphSummary:
        c, f, w = self.c, self.f, self.w
        nh, kvh, hd = c.num_attention_heads, c.num_key_value_heads, head_dim(c)
        layers = get_module(self.m, f.layers)
        windows = layer_windows(c)
        input_ids = w.input("input_ids", TensorProto.INT64, ["batch", "sequence"])
        attention_mask = w.input("attention_mask", TensorProto.INT64, ["batch", "total_sequence"])
        w.input("position_ids", TensorProto.INT64, ["batch", "sequence"])   # genai feeds it; RoPE positions
        # are the rows' token counts (GroupQueryAttention's do_rotary), the runtime's own convention
        seqlens, total = self.gqa_lengths(attention_mask)
        cos, sin = self.rope_tables()
        h = self.embedding(input_ids)
        for i, layer in enumerate(bar(layers, "writing the ONNX graph", unit="layer")):
            groups = linear_groups(layer, f)
            past_k = w.input(f"past_key_values.{i}.key", TensorProto.FLOAT, ["batch", kvh, "past_sequence", hd])
            past_v = w.input(f"past_key_values.{i}.value", TensorProto.FLOAT, ["batch", kvh, "past_sequence", hd])
            x = self.rms_norm(h, getattr(layer, f.input_norm), f"layers.{i}.input_norm")
            qkv = self.linear(x, groups["qkv"], f"layers.{i}.attn.qkv_proj")
            y, pk, pv = w.node("GroupQueryAttention", [qkv, "", "", past_k, past_v, seqlens, total, cos, sin],
                               n_out=3, domain="com.microsoft", name=f"layers.{i}.attn.gqa", num_heads=nh,
                               kv_num_heads=kvh, scale=float(hd) ** -0.5, do_rotary=1, rotary_interleaved=0,
                               local_window_size=-1 if windows[i] is None else windows[i])
            w.output(w.rename_output(pk, f"present.{i}.key"), TensorProto.FLOAT,
                     ["batch", kvh, "total_sequence", hd])
            w.output(w.rename_output(pv, f"present.{i}.value"), TensorProto.FLOAT,
                     ["batch", kvh, "total_sequence", hd])
            h = w.node("Add", [h, self.linear(y, groups["o"], f"layers.{i}.attn.o_proj")])
            x = self.rms_norm(h, getattr(layer, f.post_attn_norm), f"layers.{i}.post_attn_norm")
            gate_up = self.linear(x, groups["gate_up"], f"layers.{i}.mlp.gate_up_proj")
            width = groups["gate_up"][0].out_features
            gate, up = w.node("Split", [gate_up, w.const([width] * 2)], n_out=2, axis=-1)
            act = w.node("Mul", [w.node("Mul", [gate, w.node("Sigmoid", [gate])]), up])
            h = w.node("Add", [h, self.linear(act, groups["down"], f"layers.{i}.mlp.down_proj")])
        keep = "num_logits_to_keep"
        if self.keep_input:
            w.inputs.append(_scalar_input(keep))
        else:
            w.weight(keep, np.array([0], dtype=np.int64))            # every position
        h = self.keep_logit_positions(h, attention_mask, input_ids, keep)
        h = self.rms_norm(h, get_module(self.m, f.final_norm), "final_norm")
        logits = self.linear(h, [get_module(self.m, f.lm_head)], "lm_head")
        w.output(w.rename_output(logits, "logits"), TensorProto.FLOAT, ["batch", "logit_positions", c.vocab_size])
        self.summary.op_counts = dict(w.op_counts)
        return self.summary


def _scalar_input(name: str):
    from onnx import helper

    return helper.make_tensor_value_info(name, TensorProto.INT64, [1])


def centre_group_mins(scales: torch.Tensor, mins: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W = code * scale + min as (code - z) * scale + residual with the integer zero point z = round(-min / scale)
    (clamped to the code range) and residual = min + z * scale, fp32 (N, G): exact in real arithmetic. The
    MatMulNBits part then holds centred weights, as for an ordinary zero point, so ONNX Runtime's int8 activation
    blocks (accuracy_level 4) cost what they cost there; the residual (at most half a step) takes the group sums
    of the unquantized activations. scales fp16 (N, G), mins fp16 (N, G) -> (z uint8 (N, G), residual)."""
    s, m = scales.float(), mins.float()
    z = torch.where(s > 0, torch.round(-m / s.clamp(min=torch.finfo(torch.float32).tiny)), torch.zeros_like(s))
    z = z.clamp(0, 2 ** container_bits(bits) - 1)
    return z.to(torch.uint8), m + z * s
