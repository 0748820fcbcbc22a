"""Write a random-weight Hugging Face checkpoint of a real model shape (configs/shapes/*.json), layer by layer.

Tensor names and shapes come from the transformers model class built on the meta device. Weights ~ N(0, 0.02)
in bf16 (norm weights 1), one safetensors shard per decoder layer plus one for the embedding/head, with model.safetensors.index.json; peak memory is about the largest tensor in fp32. The embedded default model's
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

from edgeawq.data_sources import SHAPES_DIR
from edgeawq.default_models import DEFAULT_MODELS
from edgeawq.runtime.random_model import meta_skeleton, read_shape

TOKENIZER = DEFAULT_MODELS["default-llama"]


def random_tensor(shape: tuple[int, ...], name: str, gen: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)


def write(shape: str, out: Path, seed: int, layers: int | None = None) -> int:
    """Write the checkpoint; `layers`: keep only the first that many decoder layers (a shorter model of the same
    shape, e.g. to time a per-layer pass). -> bytes of weights written."""
    cfg = read_shape(shape)
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    config, family, skeleton = meta_skeleton(cfg)
    shapes = {k: tuple(t.shape) for k, t in skeleton.state_dict().items()
              if not (config.tie_word_embeddings and k == f"{family.lm_head}.weight")}
    out.mkdir(parents=True, exist_ok=False)
    gen = torch.Generator().manual_seed(seed)
    n = config.num_hidden_layers
    prefixes = [f"{family.layers}.{i}." for i in range(n)]
    weight_map, total = {}, 0
    for i in range(n + 1):
        if i < n:
            names = [k for k in shapes if k.startswith(prefixes[i])]
        else:
            names = [k for k in shapes if not k.startswith(f"{family.layers}.")]
        tensors = {k: random_tensor(shapes[k], k, gen) for k in names}
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
    ap.add_argument("--shape", required=True, choices=sorted(p.stem for p in SHAPES_DIR.glob("*.json")))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=None, help="Decoder layers to keep (default: all of the shape).")
    args = ap.parse_args()
    total = write(args.shape, args.out, args.seed, args.layers)
    print(json.dumps({"shape": args.shape, "out": str(args.out), "weight_bytes": total}))


if __name__ == "__main__":
    main()
