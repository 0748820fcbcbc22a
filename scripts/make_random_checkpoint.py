"""Write a random-weight Hugging Face checkpoint of a real model shape (configs/shapes/*.json), layer by layer.

Weights ~ N(0, 0.02) in bf16 (norm weights 1), one safetensors shard per decoder layer plus one for the
embedding/head, with model.safetensors.index.json; peak memory is about the largest tensor in fp32. The embedded default model's
tokenizer is copied in (its ids are a subset of any shipped vocabulary), so every task can run on the folder.
Speed and memory do not depend on the values, which is what these checkpoints are for.

Usage: python scripts/make_random_checkpoint.py --shape llama-3.2-1b --out /tmp/llama-3.2-1b-random [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ROOT / "configs" / "shapes"
TOKENIZER = ROOT / "default_models" / "llama"


def layer_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    d, inter = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d),
              "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, q),
              "mlp.gate_proj.weight": (inter, d), "mlp.up_proj.weight": (inter, d),
              "mlp.down_proj.weight": (d, inter), "input_layernorm.weight": (d,),
              "post_attention_layernorm.weight": (d,)}
    if cfg["model_type"] == "qwen2":
        shapes.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)})
    return shapes


def random_tensor(shape: tuple[int, ...], name: str, gen: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)


def write(shape: str, out: Path, seed: int) -> int:
    cfg = json.loads((SHAPES / f"{shape}.json").read_text())
    out.mkdir(parents=True, exist_ok=False)
    gen = torch.Generator().manual_seed(seed)
    n = cfg["num_hidden_layers"]
    weight_map, total = {}, 0
    for i in range(n + 1):
        if i < n:
            tensors = {f"model.layers.{i}.{k}": random_tensor(s, k, gen) for k, s in layer_shapes(cfg).items()}
        else:
            tensors = {"model.embed_tokens.weight": random_tensor((cfg["vocab_size"], cfg["hidden_size"]), "e", gen),
                       "model.norm.weight": torch.ones(cfg["hidden_size"], dtype=torch.bfloat16)}
            if not cfg.get("tie_word_embeddings"):
                tensors["lm_head.weight"] = random_tensor((cfg["vocab_size"], cfg["hidden_size"]), "h", gen)
        name = f"model-{i + 1:05d}-of-{n + 1:05d}.safetensors"
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(TOKENIZER / f, out / f)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, choices=sorted(p.stem for p in SHAPES.glob("*.json")))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    total = write(args.shape, args.out, args.seed)
    print(json.dumps({"shape": args.shape, "out": str(args.out), "weight_bytes": total}))


if __name__ == "__main__":
    main()
