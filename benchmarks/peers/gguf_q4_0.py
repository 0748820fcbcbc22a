"""A llama.cpp Q4_0 GGUF file of a shipped shape with random weights (for speed only), written with `gguf`.

Every 2-D weight (token_embd, attention q/k/v/output, ffn gate/up/down, output) is Q4_0: blocks of 32 weights as
an fp16 scale d then 16 bytes of 4-bit codes (w = d * (code - 8)); here d is a random small value and the codes
random bytes, so values are finite and speed matches a real model of the shape. Norm weights are F32 ones. The
vocabulary is a placeholder SentencePiece list of the shape's size (llama-bench feeds random token ids). A shape
with linear or yarn RoPE scaling gets llama.cpp's rope.scaling type / factor / original_context_length keys; other
scaling types (llama3's frequency bands) change only the rotation angles, not the cost, and are not written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

Q4_0_BLOCK, Q4_0_BYTES = 32, 18


def _q4_0_bytes(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (rows, cols / 32 * 18): random Q4_0 blocks."""
    blocks = rows * cols // Q4_0_BLOCK
    out = np.empty((blocks, Q4_0_BYTES), np.uint8)
    d = (rng.random(blocks, dtype=np.float32) * 0.004 + 0.001).astype(np.float16)
    out[:, :2] = d.view(np.uint8).reshape(blocks, 2)
    out[:, 2:] = rng.integers(0, 256, size=(blocks, 16), dtype=np.uint8)
    return out.reshape(rows, cols // Q4_0_BLOCK * Q4_0_BYTES)


def write_random_q4_0_gguf(config: dict, path: Path, seed: int = 0) -> Path:
    import gguf

    rng = np.random.default_rng(seed)
    D, F, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    H, KV = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    hd = config.get("head_dim") or D // H
    V = config["vocab_size"]
    tensors: list[tuple[str, tuple[int, int] | tuple[int], str]] = [("token_embd.weight", (V, D), "q")]
    for i in range(L):
        tensors += [(f"blk.{i}.attn_norm.weight", (D,), "f"), (f"blk.{i}.attn_q.weight", (H * hd, D), "q"),
                    (f"blk.{i}.attn_k.weight", (KV * hd, D), "q"), (f"blk.{i}.attn_v.weight", (KV * hd, D), "q"),
                    (f"blk.{i}.attn_output.weight", (D, H * hd), "q"), (f"blk.{i}.ffn_norm.weight", (D,), "f"),
                    (f"blk.{i}.ffn_gate.weight", (F, D), "q"), (f"blk.{i}.ffn_up.weight", (F, D), "q"),
                    (f"blk.{i}.ffn_down.weight", (D, F), "q")]
    tensors += [("output_norm.weight", (D,), "f"), ("output.weight", (V, D), "q")]

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name("random " + config.get("_name_or_path", "shape"))
    w.add_context_length(config.get("max_position_embeddings", 4096))
    w.add_embedding_length(D)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    w.add_rope_freq_base(float((config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta",
                                                                                                  10000.0))))
    scaling = config.get("rope_scaling") or {}
    kind = {"linear": gguf.RopeScalingType.LINEAR, "yarn": gguf.RopeScalingType.YARN}.get(
        scaling.get("rope_type", scaling.get("type")))
    if kind is not None:                                                    # the keys convert_hf_to_gguf.py writes
        w.add_rope_scaling_type(kind)
        w.add_rope_scaling_factor(float(scaling["factor"]))
        if "original_max_position_embeddings" in scaling:
            w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_vocab_size(V)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, V)])
    w.add_token_scores([0.0] * V)
    w.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
                      + [gguf.TokenType.NORMAL] * (V - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, shape, kind in tensors:
        if kind == "q":
            w.add_tensor_info(name, (shape[0], shape[1] // Q4_0_BLOCK * Q4_0_BYTES), np.dtype(np.uint8),
                              shape[0] * shape[1] // Q4_0_BLOCK * Q4_0_BYTES, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float32), shape[0] * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, kind in tensors:
        w.write_tensor_data(_q4_0_bytes(*shape, rng) if kind == "q" else np.ones(shape, np.float32))
    w.close()
    tmp.replace(path)
    return path
