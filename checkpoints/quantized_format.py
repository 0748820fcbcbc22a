"""The project's quantized checkpoint format (format_version 1).

A folder with:
  config.json       the model's transformers config plus `quantization_config` (below)
  model.safetensors (or model-NNNNN-of-MMMMM.safetensors + model.safetensors.index.json above
                    `max_shard_bytes`), metadata {"format": "pt"}
  tokenizer files   copied from the source model
  manifest.json     size and sha256 of every other file (checkpoints/directory.py)

Tensors: float tensors keep their transformers names. A quantized Linear `<name>` (unfused names, e.g.
`model.layers.0.self_attn.q_proj`) is stored as
  <name>.packed  uint8, native packed codes (kernels/formats.py: u4k for 3/4 bits, u2k for 2, u8 for 8),
                 shape (N, K*bits_in_container/8)
  <name>.scales  float16 (N, K/g)
  <name>.zeros   uint8 (N, K/g), unpacked zero points (codes - zeros) * scales = weight
  <name>.mins    float16 (N, K/g), only when "group_mins" (GGUF Q4_1 imports, zeros 0):
                 (codes - zeros) * scales + mins = weight, in float32
  <name>.bias    float32 (N,), when the Linear has a bias
  <name>.act_scale float32 (1,), only in per-tensor W8A8 checkpoints (SmoothQuant): the static int8 scale of
                 the Linear's input (kernels/act_quant.py)

quantization_config = {"quant_method": "edgeawq", "format_version": 1, "bits": b, "group_size": g,
  "zero_point": bool, "group_mins": bool (absent = false), "packing": "u4k"|"u2k"|"u8", "scale_dtype": "float16", "container_bits": 4 for w3,
  "algorithm": "awq"|"rtn"|"gptq"|"awq+gptq"|"smoothquant"|"gguf-q4_0"|"gguf-q4_1",
  "awq": {...search settings...} | null, "gptq": {...} | null,
  "act_quant": {"mode": "per_token"|"per_tensor", "alpha": float, ...calibration...} (absent or null: weight-only;
  present only with bits 8, group_size -1, zero_point false, lm_head false), "lm_head": bool,
  "lm_head_group_size": int|null, "quantized_modules": [relative Linear names per layer], "fused_layout": false}
Older format versions must keep loading: readers dispatch on `format_version`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..kernels.formats import native_format, pack
from ..kernels.quantizer import QuantizedWeight
from .directory import atomic_directory, write_manifest
from .tokenizer_files import TOKENIZER_FILES

FORMAT_VERSION = 1
QUANT_METHOD = "edgeawq"
EXTRA_TOKENIZER_FILES = ("special_tokens_map.json", "chat_template.jinja", "merges.txt", "generation_config.json")


def quantized_tensors(name: str, qw: QuantizedWeight, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    out = {f"{name}.packed": pack(qw.codes, native_format(qw.spec.bits)),
           f"{name}.scales": qw.scales.to(torch.float16).contiguous(),
           f"{name}.zeros": qw.zeros.contiguous()}
    if qw.mins is not None:
        out[f"{name}.mins"] = qw.mins.to(torch.float16).contiguous()
    if bias is not None:
        out[f"{name}.bias"] = bias.detach().float().contiguous()
    return out


class QuantizedCheckpointWriter:
    """A sink for awq.driver: buffers tensors and writes a shard whenever `max_shard_bytes` is reached.

    Use as a context manager; the folder appears at `destination` only when the block exits without error."""

    def __init__(self, destination: Path, config: dict, quantization_config: dict, tokenizer_dir: Path,
                 max_shard_bytes: int = 512 * 2**20, tensor_fn=None, float_dtype: torch.dtype | None = None,
                 expected_bytes: int | None = None, tokenizer=None) -> None:
        """`quantization_config` is stored as given when it names a quant_method (an export format), else as the
        native format's. `tensor_fn(name, QuantizedWeight, bias)` lays out one quantized Linear (default: native);
        `float_dtype` converts the float tensors (default: kept); `expected_bytes`: the checkpoint's estimated
        size (a filesystem with less free space is refused before any work)."""
        self.destination = Path(destination)
        self.config = dict(config)
        if "quant_method" not in quantization_config:
            quantization_config = {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION,
                                   **quantization_config}
        self.config["quantization_config"] = quantization_config
        self.tensor_fn = tensor_fn or quantized_tensors
        self.float_dtype = float_dtype
        self.tokenizer_dir = Path(tokenizer_dir)
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self._ctx = None
        self.expected_bytes = expected_bytes
        self.tokenizer = tokenizer          # saved with save_pretrained when tokenizer_dir has no tokenizer files
        self.folder: Path | None = None

    def __enter__(self) -> "QuantizedCheckpointWriter":
        self._ctx = atomic_directory(self.destination, self.expected_bytes)
        self.folder = self._ctx.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as err:
                self._ctx.__exit__(type(err), err, err.__traceback__)   # removes the temporary (or re-raises)
                raise
        self._ctx.__exit__(exc_type, exc, tb)      # an error of the final move into place propagates from here
        return False

    def write(self, floats: dict[str, torch.Tensor], quantized: dict[str, QuantizedWeight]) -> None:
        biases = tuple(f"{q}.bias" for q in quantized)
        tensors = {k: (v if self.float_dtype is None else v.to(self.float_dtype)).detach().contiguous()
                   for k, v in floats.items() if not k.endswith(biases)}
        for name, qw in quantized.items():
            tensors.update(self.tensor_fn(name, qw, floats.get(f"{name}.bias")))
        size = sum(v.numel() * v.element_size() for v in tensors.values())
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()  # keep a shard (and the serializer's copy of it) within the limit
        self._pending.update(tensors)
        self._pending_bytes += size
        if self._pending_bytes >= self.max_shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        path = self.folder / f"shard-{len(self._shards):05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def _finish(self) -> None:
        self._flush()
        n = len(self._shards)
        if n == 1:
            self._shards[0][0].rename(self.folder / "model.safetensors")
        else:
            weight_map, total = {}, 0
            for i, (path, names) in enumerate(self._shards):
                final = self.folder / f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                path.rename(final)
                total += final.stat().st_size
                weight_map.update({name: final.name for name in names})
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
        (self.folder / "config.json").write_text(json.dumps(self.config, indent=2, default=str) + "\n")
        copied = 0
        for name in TOKENIZER_FILES + EXTRA_TOKENIZER_FILES:
            src = self.tokenizer_dir / name
            if src.exists():
                shutil.copy(src, self.folder / name)
                copied += 1
        if not copied and self.tokenizer is not None:      # e.g. a GGUF source: the tokenizer is in its metadata
            self.tokenizer.save_pretrained(str(self.folder))
        write_manifest(self.folder, FORMAT_VERSION)
