"""GGUF files (llama.cpp's format) as an input: `--model FILE.gguf`, or a folder holding exactly one .gguf file.

Read with the `gguf` package (the reference implementation shipped by llama.cpp): the file is memory-mapped, and
each tensor is dequantized to float32 only when it is read (`GGUFTensors.load`, in blocks of rows so that a large
tensor such as the embedding needs no temporaries beyond one block), so a layer-by-layer pass keeps one layer
resident; the reader's parsed metadata (the tokenizer's arrays) is dropped once the tensors are indexed.
benchmarks/gguf_streaming_rss.py measures the peak. Config, tokenizer and chat template come from the file's metadata through transformers' GGUF
support (`load_gguf_checkpoint`, `AutoTokenizer.from_pretrained(gguf_file=...)`).

Architectures: llama (Llama 2/3, Mistral and SmolLM2 convert to it), qwen2, mistral. Tensor names map to the
transformers layout (below); llama.cpp stores llama-architecture q/k rows permuted for its interleaved RoPE, which
is undone here (`unpermute`), so the weights equal the Hugging Face checkpoint's up to the GGUF rounding.
Tensor types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K (whatever `gguf.quants` dequantizes); another
type is a UserError naming it and the tensor.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .hf_files import require_finite

LOAD_BLOCK_BYTES = 8 * 2**20       # float32 output bytes dequantized at a time
ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}   # GGUF general.architecture -> model_type
PERMUTED_QK = ("llama", "mistral")      # llama.cpp's converter permutes q/k rows for these
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}
LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj"}


def gguf_file(path: Path) -> Path | None:
    """The GGUF file `path` names (the file itself, or the only .gguf in a folder without config.json), else None."""
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise UserError(f"{path} holds {len(found)} GGUF files ({', '.join(f.name for f in found)}).",
                            "Pass --model with the one to use.")
        return found[0] if found else None
    return None


def hf_name(name: str) -> str | None:
    """The transformers tensor name of a GGUF tensor name (None for tensors transformers does not hold)."""
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def read_config(path: Path) -> dict:
    """The transformers config dict of a GGUF file (from its metadata)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        info = load_gguf_checkpoint(str(path), return_tensors=False)
    except Exception as exc:  # noqa: BLE001 - the gguf reader raises ValueError, KeyError, struct errors...
        raise UserError(f"GGUF file {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}).",
                        "Re-download or re-copy the file; it may be truncated or of an unsupported architecture.") \
            from None
    config = {k: v for k, v in info["config"].items() if not k.startswith("_")}
    if config.get("model_type") not in ARCHITECTURES.values():
        raise UserError(f"GGUF file {path} holds a {config.get('model_type')!r} model, which this tool does not "
                        "support.", f"Supported GGUF architectures: {', '.join(ARCHITECTURES)}.")
    return config


def load_tokenizer(path: Path):
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001 - tokenizer conversion raises many types for bad metadata
        raise UserError(f"The tokenizer in GGUF file {path} cannot be converted ({type(exc).__name__}: "
                        f"{str(exc)[:200]}).", "Use a GGUF file written by llama.cpp's converter.") from None


def unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation: rows (heads, 2, half) of HF order were written as (heads, half, 2)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


class GGUFTensors(dict):
    """transformers tensor name -> GGUF reader tensor; `load(name)` dequantizes one to float32 (and unpermutes q/k)."""

    def __init__(self, path: Path, config: dict) -> None:
        super().__init__()
        import gguf

        self.path = path
        try:
            self.reader = gguf.GGUFReader(str(path), "r")
        except Exception as exc:  # noqa: BLE001 - truncated files raise ValueError / struct / index errors
            raise UserError(f"GGUF file {path} is corrupt or truncated ({type(exc).__name__}: {str(exc)[:200]}).",
                            "Re-download or re-copy the file.") from None
        self.heads = {"q_proj": config["num_attention_heads"],
                      "k_proj": config.get("num_key_value_heads") or config["num_attention_heads"]}
        self.permuted = config["model_type"] in PERMUTED_QK
        for t in self.reader.tensors:
            name = hf_name(t.name)
            if name is not None:
                self[name] = t
        self.reader.fields.clear()        # the metadata (config, tokenizer) is read by read_config / load_tokenizer

    def shapes(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return {k: (torch.float32, tuple(int(d) for d in reversed(t.shape.tolist()))) for k, t in self.items()}

    def load(self, name: str) -> torch.Tensor:
        from gguf.quants import dequantize

        t = self[name]
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        rows = shape[0]
        step = max(1, LOAD_BLOCK_BYTES // (4 * max(1, int(np.prod(shape[1:])))))
        w = torch.empty(shape, dtype=torch.float32)
        try:
            for r0 in range(0, rows, step):                           # (step, ...) float32 temporaries at most
                block = dequantize(t.data[r0:r0 + step], t.tensor_type)
                w[r0:r0 + step] = torch.from_numpy(np.array(block, dtype=np.float32).reshape(
                    (min(step, rows - r0),) + shape[1:]))
        except NotImplementedError:
            raise UserError(f"GGUF file {self.path}: tensor {t.name} has type {t.tensor_type.name}, which cannot be "
                            "dequantized here.", "Convert the model with a supported type (F16, BF16, Q8_0, Q4_0, "
                            "Q4_1, Q4_K, Q5_K, Q6_K).") from None
        proj = name.split(".")[-2]
        if self.permuted and proj in self.heads and name.endswith(".weight"):
            w = unpermute(w, self.heads[proj])
        return require_finite(name, w, self.path)
