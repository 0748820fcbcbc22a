"""`--target tt` on the CPU: the Llama-family decoder with Tenstorrent numerics (docs/tenstorrent.md).

Per op, what the device does and how it is emulated (B batch, T new tokens, S filled cache slots):
  weights      the values of the converted block-float / bf16 tensors (weights.py), [K, N]
  matmul       fidelity.py: SrcA = weights (or K^T, V in attention), SrcB = activations, the op group's math
               fidelity and accumulation (a call with T == 1 uses the *_decode groups, otherwise *_prefill)
  activations  every op's output is written in the config's activation format: bf16 (rounded to nearest even)
               or bfloat8_b (device-pack rounding, blocks of 16 along the last dim)
  RMSNorm      fp32 statistics, bf16 weight, output in the activation format
  RoPE         rotate-half with bf16 cos/sin tables from the model's own rotary module, fp32 math, then rounded
  KV cache     (B, kv_heads, max_seq_len, head_dim) holding what the device stores: bf16 values or bfloat8_b /
               bfloat4_b by device-pack rounding (blocks of 16 along head_dim)
  SDPA         scores = Q @ K^T and out = P @ V with the sdpa op group's fidelity; scale, mask and softmax in
               fp32; P rounded to bf16 before the second matmul; GQA by repeating KV heads
  lm_head      the lm_head tensor's format with li_lm_head's fidelity; logits rounded to bf16
Softmax and SiLU use exact exp (the device's approximate modes are not emulated).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from ..kernels.attention import attention_mask as build_mask
from ..kernels.attention import rotate_half
from ..runtime.chunked_prefill import DEFAULT_PREFILL_CHUNK
from ..runtime.fusion import head_dim, layer_windows
from ..runtime.held_memory import tensor_bytes
from ..runtime.model_loader import LoadedModel
from ..runtime.module_paths import get_module
from ..runtime.rope_extension import rope_tables
from .device_pack import device_round_trip
from .fidelity import SrcA, fidelity_matmul_srca
from .precision import FIDELITY_SETTINGS, FORMAT_BITS, LayerPrecision, PrecisionConfig
from .weights import TTWeights


def bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


def stored(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """x as the device writes it in format `fmt` (bf16, or block float by device-pack rounding), float32."""
    return bf16(x) if fmt == "bf16" else device_round_trip(x, FORMAT_BITS[fmt])


# converted linear (weights.py names) -> the op groups that multiply by it
LINEAR_OPS = {"wqkv": ("li_qkv_decode", "li_qkv_prefill"), "wo": ("li_o_decode", "li_o_prefill"),
              "ff1": ("li_ff1_3",), "ff3": ("li_ff1_3",), "ff2": ("li_ff2",)}


def weights_needing_hi(config: PrecisionConfig) -> set[str]:
    """Linears some op group multiplies at LoFi or HiFi3 (which read SrcA's 5-bit `hi` part)."""
    names = {f"layers.{i}.{n}" for i, p in enumerate(config.layers) for n, ops in LINEAR_OPS.items()
             if any(p.fidelity(o)[0] in ("LoFi", "HiFi3") for o in ops)}
    if FIDELITY_SETTINGS[config.li_lm_head][0] in ("LoFi", "HiFi3"):
        names.add("lm_head")
    return names


class TTEngine:
    prefill_chunk = DEFAULT_PREFILL_CHUNK["tt"]

    def __init__(self, loaded: LoadedModel, config: PrecisionConfig, weights: TTWeights) -> None:
        c = loaded.config
        self.config, self.weights = config, weights
        self.name = f"tt-emulation ({config.name})"
        self.nh, self.nkv, self.hd = c.num_attention_heads, c.num_key_value_heads, head_dim(c)
        self.windows = layer_windows(c)
        self.eps = float(getattr(c, "rms_norm_eps", 1e-6))
        self.n_layers = c.num_hidden_layers
        self.max_context = loaded.max_context
        w = weights.tensors
        coarse = weights_needing_hi(config)
        self.embed = w.get("embed")                # (V, D), bf16 values (None on a later pipeline stage)
        self.srca = {n: SrcA.of(t, need_hi=n in coarse) for n, t in w.items() if n in weights.formats}  # [K, N]
        cos, sin = rope_tables(get_module(loaded.model, loaded.family.rotary), c, self.max_context)
        self.cos, self.sin = bf16(cos), bf16(sin)                                    # (positions, hd)
        self.weight_bytes_per_token = sum(weights.stored_bytes[n] for n in weights.formats)
        self.k = self.v = None
        self.length = 0

    @property
    def weights_bytes(self) -> int:
        """Bytes of the emulation's weight copies (float32 SrcA views of the block-float values, bf16 tensors)."""
        srca = (t for a in self.srca.values() for t in (a.full, a.hi))
        return tensor_bytes(itertools.chain(self.weights.tensors.values(), srca))

    @property
    def kv_bytes(self) -> int:
        """Bytes of the emulated cache (float32 holding the device's stored values)."""
        return 0 if self.k is None else self.k.nbytes + self.v.nbytes

    def start(self, batch: int, max_seq_len: int) -> None:
        shape = (self.n_layers, batch, self.nkv, max_seq_len, self.hd)
        if self.k is None or self.k.shape != shape:
            self.k, self.v = torch.zeros(shape), torch.zeros(shape)
        self.length = 0

    # --- ops ----------------------------------------------------------------------------------------------
    def linear(self, x: torch.Tensor, name: str, fidelity: tuple[str, bool]) -> torch.Tensor:
        """x (..., K) -> (..., N) float32 (before the output is written)."""
        return fidelity_matmul_srca(x, self.srca[name], *fidelity)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, act: str) -> torch.Tensor:
        return stored(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight, act)

    def attention(self, i: int, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, start: int,
                  p: LayerPrecision, mode: str) -> torch.Tensor:
        B, T, _ = x.shape
        act, kv = p.tensors["activation"], p.tensors["kv_cache"]
        qkv = self.linear(x, f"layers.{i}.wqkv", p.fidelity(f"li_qkv_{mode}"))       # (B, T, (nh + 2 nkv) hd)
        if f"layers.{i}.bqkv" in self.weights.tensors:
            qkv = qkv + self.weights.tensors[f"layers.{i}.bqkv"]
        qkv = stored(qkv, act)
        q, k, v = qkv.split([self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], dim=-1)
        q = q.view(B, T, self.nh, self.hd).transpose(1, 2)                           # (B, nh, T, hd)
        k = k.view(B, T, self.nkv, self.hd).transpose(1, 2)                          # (B, nkv, T, hd)
        v = v.view(B, T, self.nkv, self.hd).transpose(1, 2)
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # (B, 1, T, hd)
        q = stored(q * cos + rotate_half(q) * sin, act)
        k = k * cos + rotate_half(k) * sin
        S = start + T
        self.k[i, :, :, start:S] = stored(k, kv)
        self.v[i, :, :, start:S] = stored(v, kv)
        keys = self.k[i, :, :, :S].repeat_interleave(self.nh // self.nkv, dim=1)      # (B, nh, S, hd)
        values = self.v[i, :, :, :S].repeat_interleave(self.nh // self.nkv, dim=1)
        fid = p.fidelity(f"sdpa_{mode}")
        coarse = fid[0] in ("LoFi", "HiFi3")                  # only these read SrcA's 5-bit part
        scores = fidelity_matmul_srca(q, SrcA.of(keys.transpose(-1, -2), coarse), *fid) * self.hd ** -0.5  # (B,nh,T,S)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = bf16(torch.softmax(scores, dim=-1))
        out = stored(fidelity_matmul_srca(probs, SrcA.of(values, coarse), *fid), act)  # (B, nh, T, hd)
        out = out.transpose(1, 2).reshape(B, T, self.nh * self.hd)
        return self.reduce(stored(self.linear(out, f"layers.{i}.wo", p.fidelity(f"li_o_{mode}")), act), act)

    def mlp(self, i: int, x: torch.Tensor, p: LayerPrecision, mode: str) -> torch.Tensor:
        act, fid = p.tensors["activation"], p.fidelity("li_ff1_3")
        gate = stored(self.linear(x, f"layers.{i}.ff1", fid), act)
        up = stored(self.linear(x, f"layers.{i}.ff3", fid), act)
        hidden = stored(stored(F.silu(gate), act) * up, act)
        return self.reduce(stored(self.linear(hidden, f"layers.{i}.ff2", p.fidelity("li_ff2")), act), act)

    def reduce(self, partial: torch.Tensor, act: str) -> torch.Tensor:
        """The sum of a row-parallel Linear's written outputs over the chips of a mesh (one chip: itself)."""
        return partial

    # --- the engine interface (runtime/engines.py), in the steps a mesh rank runs (scale_out/tt_shard.py) ------
    def begin(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """The call's inputs: ids, positions (B, T); attention_mask (B, S)."""
        self.positions, self.tokens = position_ids, input_ids.shape[1]
        self.masks = {win: build_mask(attention_mask, self.length, win) for win in set(self.windows)}  # (B,1,T,S)

    @torch.inference_mode()
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed[input_ids]                                                 # (B, T, D)

    @torch.inference_mode()
    def run_layers(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, D) through the decoder layers; the KV cache advances by T."""
        w, start = self.weights.tensors, self.length
        mode = "decode" if self.tokens == 1 else "prefill"
        for i, p in enumerate(self.config.layers):
            act = p.tensors["activation"]
            x = self.rms_norm(h, w[f"layers.{i}.attn_norm"], act)
            h = stored(h + self.attention(i, x, self.positions, self.masks[self.windows[i]], start, p, mode), act)
            x = self.rms_norm(h, w[f"layers.{i}.ffn_norm"], act)
            h = stored(h + self.mlp(i, x, p, mode), act)
        self.length = start + self.tokens
        return h

    @torch.inference_mode()
    def logits(self, h: torch.Tensor, last_only: bool) -> torch.Tensor:
        """h (B, T, D) -> final norm -> lm_head: (B, T or 1, V) float32 (bf16 values)."""
        if last_only:
            h = h[:, -1:]
        x = self.rms_norm(h, self.weights.tensors["norm"], self.config.layers[-1].tensors["activation"])
        return bf16(self.linear(x, "lm_head", FIDELITY_SETTINGS[self.config.li_lm_head]))

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                last_only: bool = True) -> torch.Tensor:
        """input_ids, position_ids (B, T); attention_mask (B, S) -> logits (B, T or 1, V) float32."""
        self.begin(input_ids, position_ids, attention_mask)
        return self.logits(self.run_layers(self.embed_tokens(input_ids)), last_only)
