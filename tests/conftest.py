"""Shared fixtures: tiny random-weight checkpoints of every supported family, written as real HF folders."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import transformers

from edgeawq.cpu_backend import native_build
from edgeawq.default_models import DEFAULT_MODELS

# One build of the native kernels for every test and subprocess (tests point EDGEAWQ_CACHE at temporary folders);
# the build folder name carries the source hash, so an edited kernel is rebuilt.
os.environ.setdefault("EDGEAWQ_NATIVE_BUILD", str(Path(tempfile.gettempdir()) / f"edgeawq-native-build-{os.getuid()}"))

TOKENIZER_SOURCE = DEFAULT_MODELS["default-llama"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

# name -> (config class, config kwargs). Small, but every feature of the family is on.
TINY = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            head_dim=16, max_position_embeddings=256, bos_token_id=0, eos_token_id=1, pad_token_id=2)
FAMILY_CONFIGS = {
    # Llama 3.2-like: GQA, tied embeddings, llama3 RoPE scaling
    "llama3": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 4.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    # Llama 2-like: multi-head attention, untied, plain RoPE
    "llama2": ("LlamaConfig", dict(num_key_value_heads=4, tie_word_embeddings=False)),
    # Qwen2/2.5-like: q/k/v bias, GQA
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=False,
                                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    # Mistral-like: GQA and a sliding window shorter than the test sequences
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=8, tie_word_embeddings=False)),
}


def make_config(name: str, **overrides):
    cls_name, extra = FAMILY_CONFIGS[name]
    return getattr(transformers, cls_name)(**{**TINY, **extra, **overrides})


def write_checkpoint(path: Path, name: str, seed: int = 0, **save_kwargs) -> Path:
    """A random-weight HF folder for family config `name`, with the default model's tokenizer files."""
    return write_model(path, make_config(name), seed, **save_kwargs)


def write_model(path: Path, config, seed: int = 0, **save_kwargs) -> Path:
    """A random-weight HF folder for a transformers `config`, with the default model's tokenizer files."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger-than-init weights so that differences in the math show in the logits
        for p in model.parameters():
            p.normal_(0.0, 0.2 if p.dim() > 1 else 0.5).add_(1.0 if p.dim() == 1 else 0.0)
    model.save_pretrained(path, **save_kwargs)
    for f in TOKENIZER_FILES:
        if (TOKENIZER_SOURCE / f).exists():
            shutil.copy(TOKENIZER_SOURCE / f, path / f)
    return path


# The native kernel builds this machine can run (the AVX2 one everywhere it builds at all).
ISAS = [isa for isa, need in native_build.CPU_FLAGS.items() if need <= native_build.cpu_flags()]


def use_isa(monkeypatch, isa: str) -> None:
    """Native engines built from now on run the `isa` kernels (the AVX2 ones on an AVX-512 machine too)."""
    load = native_build.load
    monkeypatch.setattr(native_build, "load", lambda which=None: load(which or isa))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {name: write_checkpoint(root / name, name) for name in FAMILY_CONFIGS}


def quantize_tiny(src: Path, out: Path, **overrides) -> dict:
    """`run_awq quantize` in-process with settings small enough for the tiny checkpoints."""
    from edgeawq.tasks.quantize import quantize_task

    args = dict(w_bit=4, group_size=32, zero_point=True, algorithm="awq", awq_mode="run", awq_cache=None,
                dump_awq=None, lm_head=False, lm_head_group_size=32, calib_dataset=None, n_samples=4, seqlen=64,
                seed=0, duo_scaling=False, progress=False)
    args.update(overrides)
    return quantize_task(str(src), str(out), **args)


def rtn_tiny(checkpoints: dict, root: Path, families: tuple[str, ...]) -> dict[str, Path]:
    """RTN w4 g32 checkpoints of the tiny `families` under `root`: family -> folder."""
    out = {}
    for family in families:
        out[family] = root / family
        quantize_tiny(checkpoints[family], out[family], algorithm="pergrp", awq_mode="none")
    return out


@pytest.fixture(scope="session")
def rtn_llama3(checkpoints, tmp_path_factory) -> Path:
    """An RTN w4 g32 checkpoint of the tiny llama3 model (for tests that need any quantized checkpoint)."""
    out = tmp_path_factory.mktemp("rtn") / "q"
    quantize_tiny(checkpoints["llama3"], out, algorithm="pergrp", awq_mode="none")
    return out


@pytest.fixture
def cli(capsys):
    """cli(args) -> (exit code, stdout, stderr) of `run_awq args`, in-process."""
    from edgeawq.cli import main

    def run(args: list[str]) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main(args)
            raise SystemExit(0)
        out = capsys.readouterr()
        return exc.value.code, out.out, out.err
    return run


def rtn_default_checkpoint(model: str, bits: int, tmp_path: Path) -> Path:
    """An RTN w`bits` g128 checkpoint of an embedded default model (parity does not depend on how codes were
    chosen, and RTN is fast)."""
    out = tmp_path / f"{model}-w{bits}g128"
    quantize_tiny(DEFAULT_MODELS[model], out, w_bit=bits, group_size=128, awq_mode="none", algorithm="pergrp")
    return out


PARITY_PROMPTS = ["The hacker ethic", "A bug is", "Kludge: a", "Politeness, n.", "When the system crashed, the"]


def assert_engine_parity(reference, candidate, loaded) -> None:
    """The parity acceptance of the fast engines on a default model: greedy tokens equal on PARITY_PROMPTS (24
    tokens) or the first divergence has logits PCC >= 0.999; last-token logits PCC >= 0.999 on six 512-token
    windows of the test split; perplexity within 0.5%."""
    from edgeawq.data_sources import corpus_split
    from edgeawq.evaluation.parity import greedy_parity, window_parity
    from edgeawq.evaluation.perplexity import eval_windows

    tok = loaded.tokenizer
    greedy = greedy_parity(reference, candidate, [tok(p)["input_ids"] for p in PARITY_PROMPTS], 24)
    for d in greedy.first_divergence:
        assert d is None or d["pcc"] >= 0.999, greedy
    assert greedy.min_pcc >= 0.999, greedy
    windows = eval_windows(tok, corpus_split("test").read_text(encoding="utf-8"), 512, 6, loaded.max_context)
    win = window_parity(reference, candidate, windows)
    assert win.min_last_token_pcc >= 0.999, win
    assert win.ppl_rel_diff <= 0.005, win
