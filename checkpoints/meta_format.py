"""Convert Meta's original Llama release format to a Hugging Face config dict and state dict, in memory.

Input folder: `params.json`, `consolidated.00.pth` [, `consolidated.01.pth`, ... for model-parallel shards],
`tokenizer.model`. `params.json` keys: dim, n_layers, n_heads, n_kv_heads (optional, default n_heads),
vocab_size (-1 in Llama 2: taken from the weights), multiple_of, ffn_dim_multiplier, norm_eps, rope_theta
(default 10000), use_scaled_rope (Llama 3.1+: llama3 RoPE scaling, factor 8, low 1, high 4, original 8192).

Weight names, Meta -> Hugging Face (per layer i):
  tok_embeddings.weight          -> model.embed_tokens.weight
  layers.i.attention.wq.weight   -> model.layers.i.self_attn.q_proj.weight   (rows permuted, see below)
  layers.i.attention.wk.weight   -> model.layers.i.self_attn.k_proj.weight   (rows permuted)
  layers.i.attention.wv.weight   -> model.layers.i.self_attn.v_proj.weight
  layers.i.attention.wo.weight   -> model.layers.i.self_attn.o_proj.weight
  layers.i.feed_forward.w1/w3/w2 -> model.layers.i.mlp.gate_proj/up_proj/down_proj
  layers.i.attention_norm.weight -> model.layers.i.input_layernorm.weight
  layers.i.ffn_norm.weight       -> model.layers.i.post_attention_layernorm.weight
  norm.weight, output.weight     -> model.norm.weight, lm_head.weight (absent output -> tied embeddings)
Meta applies RoPE to interleaved pairs (x[2j], x[2j+1]); transformers rotates halves (x[j], x[j+d/2]). The q/k
rows of each head are reordered so both compute the same thing: row (h, j, p) of Meta, p in {0,1}, j < d/2,
becomes row (h, p, j).
Model-parallel shards are concatenated: wq/wk/wv/w1/w3/output along dim 0, wo/w2 along dim 1,
tok_embeddings along whichever dim is split; norms are replicated.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import UserError
from ..progress import bar
from .hf_files import read_json

_DIM0 = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3", "output")
_DIM1 = ("attention.wo", "feed_forward.w2")


def is_meta_folder(model_dir: Path) -> bool:
    return (model_dir / "params.json").exists() and any(model_dir.glob("consolidated.*.pth"))


def _merge_shards(shards: list[dict[str, torch.Tensor]], dim: int) -> dict[str, torch.Tensor]:
    if len(shards) == 1:
        return shards[0]
    merged: dict[str, torch.Tensor] = {}
    for name in shards[0]:
        parts = [s[name] for s in shards]
        if name.endswith("norm.weight") or parts[0].dim() == 1:
            merged[name] = parts[0]
        elif any(f"{k}.weight" in name for k in _DIM0):
            merged[name] = torch.cat(parts, dim=0)
        elif any(f"{k}.weight" in name for k in _DIM1):
            merged[name] = torch.cat(parts, dim=1)
        elif name == "tok_embeddings.weight":
            split_dim = 1 if parts[0].shape[1] != dim else 0
            merged[name] = torch.cat(parts, dim=split_dim)
        else:
            merged[name] = parts[0]
    return merged


def _permute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    # (n_heads, d/2, 2, cols) -> (n_heads, 2, d/2, cols): interleaved pairs -> rotate-half layout
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def convert(model_dir: Path, bos_token_id: int, eos_token_id: int | list[int]) -> tuple[dict, dict[str, torch.Tensor]]:
    """Return (config dict for transformers' LlamaConfig, Hugging Face state dict) for a Meta-format folder."""
    params = read_json(model_dir / "params.json", "Meta params file")
    for key in ("dim", "n_layers", "n_heads"):
        if not isinstance(params.get(key), int):
            raise UserError(f"{model_dir / 'params.json'} has no integer '{key}'.",
                            "Use the params.json shipped with the Meta checkpoint.")
    files = sorted(model_dir.glob("consolidated.*.pth"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
    shards = []
    for path in files:
        try:
            shards.append(torch.load(str(path), map_location="cpu", weights_only=True, mmap=True))
        except Exception as exc:  # any failure to read the archive is a corrupt file for the user
            raise UserError(f"Meta weight file {path} could not be read ({exc}).",
                            "Re-download it; it must be the original consolidated.NN.pth.") from None
    dim, n_layers, n_heads = params["dim"], params["n_layers"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    meta = _merge_shards(shards, dim)
    need = ["tok_embeddings.weight", "norm.weight"] + [
        f"layers.{i}.{k}.weight" for i in range(n_layers)
        for k in ("attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1",
                  "feed_forward.w2", "feed_forward.w3", "attention_norm", "ffn_norm")]
    missing = [k for k in need if k not in meta]
    if missing:
        raise UserError(f"Meta checkpoint {model_dir} lacks {len(missing)} tensors (first: {missing[0]}).",
                        "The consolidated.*.pth files are incomplete or from another model; re-download them.")
    sd: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": meta["tok_embeddings.weight"],
        "model.norm.weight": meta["norm.weight"],
    }
    for i in bar(range(n_layers), "converting the Meta checkpoint", unit="layer"):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        sd[dst + "self_attn.q_proj.weight"] = _permute_rope_rows(meta[src + "attention.wq.weight"], n_heads)
        sd[dst + "self_attn.k_proj.weight"] = _permute_rope_rows(meta[src + "attention.wk.weight"], n_kv)
        sd[dst + "self_attn.v_proj.weight"] = meta[src + "attention.wv.weight"]
        sd[dst + "self_attn.o_proj.weight"] = meta[src + "attention.wo.weight"]
        sd[dst + "mlp.gate_proj.weight"] = meta[src + "feed_forward.w1.weight"]
        sd[dst + "mlp.up_proj.weight"] = meta[src + "feed_forward.w3.weight"]
        sd[dst + "mlp.down_proj.weight"] = meta[src + "feed_forward.w2.weight"]
        sd[dst + "input_layernorm.weight"] = meta[src + "attention_norm.weight"]
        sd[dst + "post_attention_layernorm.weight"] = meta[src + "ffn_norm.weight"]
    tied = "output.weight" not in meta
    if not tied:
        sd["lm_head.weight"] = meta["output.weight"]
    vocab = sd["model.embed_tokens.weight"].shape[0]
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": dim, "num_hidden_layers": n_layers, "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv, "intermediate_size": sd["model.layers.0.mlp.gate_proj.weight"].shape[0],
        "vocab_size": vocab, "rms_norm_eps": params.get("norm_eps", 1e-5),
        "rope_theta": float(params.get("rope_theta", 10000.0)), "tie_word_embeddings": tied,
        "max_position_embeddings": 131072 if params.get("use_scaled_rope") else (8192 if vocab >= 128000 else 4096),
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
        "dtype": str(sd["model.embed_tokens.weight"].dtype).replace("torch.", ""),
    }
    if params.get("use_scaled_rope"):
        config["rope_scaling"] = {"rope_type": "llama3", "factor": float(params.get("rope_scaling_factor", 8.0)),
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192}
    return config, sd
