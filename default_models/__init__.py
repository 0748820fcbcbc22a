"""The embedded default models, shipped in the repository and used when `--model` is omitted.

Each subfolder is a Hugging Face checkpoint (config.json, model.safetensors in bf16, tokenizer files) trained
from scratch by `scripts/train_default_models.py` on the shipped corpus (data/corpus); its
`training_report.json` records how, and its test-split perplexity next to the unigram perplexity.
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

# alias -> folder; the first entry is the default.
DEFAULT_MODELS: dict[str, Path] = {
    "default-llama": HERE / "llama",   # Llama-3.2-like: GQA, tied embeddings, llama3 RoPE scaling
    "default-qwen2": HERE / "qwen2",   # Qwen2-like: q/k/v bias, GQA, untied lm_head
}
DEFAULT = "default-llama"


def resolve(name_or_path: str | None) -> Path:
    """`None` or 'default' -> the default model; a known alias -> its folder; anything else -> Path(it)."""
    if name_or_path is None or name_or_path == "default":
        return DEFAULT_MODELS[DEFAULT]
    if name_or_path in DEFAULT_MODELS:
        return DEFAULT_MODELS[name_or_path]
    return Path(name_or_path).expanduser()
