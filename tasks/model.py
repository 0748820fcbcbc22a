"""A loaded checkpoint with its engine, and what one does with it: generate, perplexity, benchmark.

The object behind `edgeawq.load` (api.py) and the decode / perplexity subcommands (tasks/decode.py,
tasks/perplexity.py), so the CLI and the Python API run the same code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..errors import UserError


def load(path: str | Path | None = None, target: str = "cpu", *, engine: str = "auto", dtype: str = "fp32",
         act_dtype: str = "bf16", flash_attention: bool = False, ep: str | None = None, strict_ep: bool = False,
         onnx_dir: str | Path | None = None, accuracy_level: int = 4, tt_precision: str = "performance",
         tt_device: str = "auto", prefill_chunk: int | None = None, kv_block_size: int | None = None,
         kv_max_blocks: int | None = None, kv_dtype: str = "fp32", kv_scales: str = "per_token") -> "Model":
    """Load a checkpoint (None or an alias: an embedded model) and build its engine on `target` (cpu, npu, tt); the
    keyword arguments are the flags of `run_awq decode`."""
    from ..runtime.backends import EngineOptions
    from ..runtime.chunked_prefill import check_prefill_chunk

    options = EngineOptions(engine=engine, ep=ep, strict_ep=strict_ep,
                            onnx_dir=Path(onnx_dir) if onnx_dir is not None else None, accuracy_level=accuracy_level,
                            tt_precision=tt_precision, tt_device=tt_device, flash_attention=flash_attention,
                            prefill_chunk=check_prefill_chunk(prefill_chunk), kv_block_size=kv_block_size,
                            kv_max_blocks=kv_max_blocks, kv_dtype=kv_dtype, kv_scales=kv_scales)
    return load_with_options(path, target, options, dtype, act_dtype)


def load_with_options(path: str | Path | None, target: str, options, dtype: str = "fp32",
                      act_dtype: str = "bf16") -> "Model":
    """`load` with the engine flags as a runtime.backends.EngineOptions (what the CLI's subcommands hold)."""
    from ..runtime.backends import require
    from ..runtime.model_loader import load_model
    from ..scale_out.driver import current, load_on_mesh

    session = current()
    if session is not None:                      # rank 0 of a mesh run: every rank loads its slice
        return Model(*load_on_mesh(session, path, target, options, dtype, act_dtype), target, dtype, act_dtype)
    backend = require(target)
    loaded = load_model(None if path is None else str(path), dtype, act_dtype)
    return Model(loaded, backend.make_engine(loaded, options), target, dtype, act_dtype)


@dataclass
class Model:
    """A loaded checkpoint and the engine that runs it on `target`."""
    loaded: object          # runtime.model_loader.LoadedModel (its PyTorch weights may be released by the engine)
    engine: object          # runtime/engines.py interface: start(batch, max_seq_len), forward(ids, positions, mask)
    target: str
    dtype: str = "fp32"
    act_dtype: str = "bf16"

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def context(self) -> int:
        """The model's context length in tokens."""
        return self.loaded.max_context

    @property
    def engine_name(self) -> str:
        return self.engine.name

    def generate(self, prompts: str | Iterable[str], max_new_tokens: int = 64, *, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int = 0, stop_at_eos: bool = True,
                 instruct: bool = False, max_seq_len: int | None = None,
                 stream: Callable[[str], None] | None = None) -> list:
        """Complete each prompt (at most 32, one batch); greedy unless `temperature` > 0. Returns one
        runtime.generate.Completion per prompt (.text, .token_ids, .prefill_ms, .token_ms, .as_json()). `stream`
        (one prompt only) receives new text as it is produced."""
        from ..runtime.generate import generate_text, resolve_max_seq_len
        from ..runtime.prompts import check_prompt_text
        from ..runtime.sampling import SamplingConfig

        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not texts:
            raise UserError("No prompt was given.", "Pass at least one prompt.")
        texts = [check_prompt_text(t, f"Prompt {i + 1}") for i, t in enumerate(texts)]
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens {max_new_tokens} is invalid.", "Use 1 or more.")
        sampling = SamplingConfig(temperature, top_p, top_k, seed).validate()
        seq_len = resolve_max_seq_len(max_seq_len, self.loaded.config)
        return generate_text(self.engine, self.tokenizer, self.loaded.config, texts, max_new_tokens, seq_len,
                             sampling, stop_at_eos, instruct, stream)

    def perplexity(self, text: str | None = None, *, dataset: str = "corpus-test", seqlen: int = 2048,
                   nsamples: int | None = None, windows=None) -> dict:
        """Perplexity of `text` (or of `dataset`: corpus-test, corpus-valid, wikitext2, a text file) in
        non-overlapping windows of `seqlen` tokens: {"perplexity", "mean_nll", "protocol"}. `windows`: already
        tokenized windows (n, seqlen) to evaluate instead."""
        from ..evaluation.perplexity import eval_windows, load_eval_text, perplexity, protocol

        desc = None
        if windows is None:
            text, desc = (text, "given text") if text is not None else load_eval_text(dataset)
            windows = eval_windows(self.tokenizer, text, seqlen, nsamples, self.context)
        ppl, nll = perplexity(self.engine, windows)
        return {"perplexity": ppl, "mean_nll": nll, "windows": windows,
                "protocol": protocol(desc, windows, self.dtype, self.target)}

    def benchmark(self, prompt_lengths: Iterable[int] = (64,), new_tokens: int = 32, repeats: int = 3) -> list[dict]:
        """Prefill and decode timing per prompt length (prompts: the shipped test split), medians of `repeats`
        runs after a warm-up: one dict per length (evaluation/benchmark.LengthResult fields)."""
        from ..evaluation.benchmark import benchmark_lengths, weight_bytes_per_token
        from ..runtime.module_paths import get_module

        if new_tokens < 2 or repeats < 1:
            raise UserError(f"new_tokens {new_tokens} / repeats {repeats} is too small.",
                            "Use new_tokens >= 2 and repeats >= 1.")
        model = self.loaded.model           # shapes only: counting works on released (meta) weights too
        bytes_per_token = getattr(self.engine, "weight_bytes_per_token",
                                  weight_bytes_per_token(model, get_module(model, self.loaded.family.embed)))
        return benchmark_lengths(self.engine, self.tokenizer, list(prompt_lengths), new_tokens, repeats,
                                 bytes_per_token, self.context)
