"""Tenstorrent weights of a loaded checkpoint, per precision config, converted once into a cache folder.

What is converted (names in the cache): for every decoder layer i, `layers.{i}.wqkv` (q, k, v concatenated along
the output), `layers.{i}.wo`, `layers.{i}.ff1` (gate), `layers.{i}.ff3` (up), `layers.{i}.ff2` (down), each stored
transposed as tt-metal stores LLM weights ([K, N] = [in, out]), and `lm_head`; they take the format of their
tensor group (wqkv, wo, ff1_3, ff2; lm_head) in the config. Embedding, norms and q/k/v biases stay bf16.
Quantized checkpoints are converted from their dequantized weights (codes x scales), float ones from their weights.

Cache folder: `$EDGEAWQ_CACHE/tt/<key>` (default ~/.cache/edgeawq/tt/<key>); key = sha256 of the format version,
the checkpoint's fingerprint (runtime/model_identity.py) and the weight formats of the config (fidelity settings do
not change the weights, so configs that differ only there share a folder). Files, written atomically:
  weights.safetensors   bfp tensors as uint8 (tiles, 1088 | 576 | 320) in the tile byte layout of blockfloat.py;
                        bf16 tensors as bf16 [K, N] (norms, biases and the embedding in their own shapes)
  tt_weights.json       {"format_version", "source_fingerprint", "formats", "tensors": {name: {"format",
                        "shape"}}, "ttnn": version or null, "files": {file: {"size", "xxh3_64"}}} (checked before
                        every use: a damaged cache is converted again, saying so)
  ttnn/<name>.tensorbin when `ttnn` is importable: the block-float tensors written by ttnn itself (Tensor +
                        dump_tensor, loadable with ttnn.load_tensor); ttnn is not installable on this project's
                        Python 3.11, so that branch is untested here (scripts/make_ttnn_golden.py uses the same
                        two calls and checks their bytes equal ours).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoints.cache_integrity import damage, file_table
from ..checkpoints.directory import atomic_directory
from ..errors import UserError
from ..progress import bar
from ..kernels.qlinear import QLinearPerGrp
from ..runtime.model_identity import cache_root, fingerprint_of
from ..runtime.model_loader import LoadedModel
from ..runtime.module_paths import get_module
from .blockfloat import TILE_BYTES, pack_tiles, unpack_tiles
from .precision import FORMAT_BITS, PrecisionConfig

FORMAT_VERSION = 1
RECORD = "tt_weights.json"
WEIGHTS = "weights.safetensors"
LAYER_WEIGHTS = {"wqkv": "wqkv", "wo": "wo", "ff1": "ff1_3", "ff3": "ff1_3", "ff2": "ff2"}   # name -> tensor group


def held(module: nn.Module) -> bool:
    """False for a module a pipeline stage does not run (left on the meta device: scale_out/shard_loader.py)."""
    return not any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def weight_formats(loaded: LoadedModel, config: PrecisionConfig) -> dict[str, str]:
    """Converted tensor name -> format, from the config."""
    formats = {f"layers.{i}.{name}": layer.tensors[group] for i, layer in enumerate(config.layers)
               for name, group in LAYER_WEIGHTS.items()}
    if held(get_module(loaded.model, loaded.family.lm_head)):
        formats["lm_head"] = config.lm_head
    return formats


def cache_folder(fingerprint: str, formats: dict[str, str]) -> Path:
    blob = json.dumps(formats, sort_keys=True)
    return cache_root() / "tt" / hashlib.sha256(f"tt:{FORMAT_VERSION}:{fingerprint}:{blob}".encode()).hexdigest()[:20]


def _float_weight(module: nn.Module) -> torch.Tensor:
    """(out, in) float32 weight of a Linear or a QLinearPerGrp (dequantized)."""
    if isinstance(module, QLinearPerGrp):
        return module.dequantized_weight(torch.float32)
    return module.weight.detach().float()


def linear_modules(loaded: LoadedModel):
    """Yield (converted name, the source modules it concatenates along the output) for every converted linear:
    layers.{i}.wqkv (q, k, v), .wo, .ff1 (gate), .ff3 (up), .ff2 (down), then lm_head."""
    m, f = loaded.model, loaded.family
    for i, layer in enumerate(get_module(m, f.layers)):
        attn, mlp = getattr(layer, f.attn), getattr(layer, f.mlp)
        yield f"layers.{i}.wqkv", tuple(getattr(attn, n) for n in (f.q, f.k, f.v))
        yield f"layers.{i}.wo", (getattr(attn, f.o),)
        yield f"layers.{i}.ff1", (getattr(mlp, f.gate),)
        yield f"layers.{i}.ff3", (getattr(mlp, f.up),)
        yield f"layers.{i}.ff2", (getattr(mlp, f.down),)
    if held(get_module(m, f.lm_head)):
        yield "lm_head", (get_module(m, f.lm_head),)


def source_tensors(loaded: LoadedModel):
    """Yield (name, float32 tensor, is_linear) of everything the tt engine needs; linears as [K, N]."""
    m, f = loaded.model, loaded.family
    if held(get_module(m, f.embed)):
        yield "embed", get_module(m, f.embed).weight.detach().float(), False
    for name, modules in linear_modules(loaded):
        yield name, torch.cat([_float_weight(p) for p in modules]).t(), True
        if name.endswith(".wqkv") and modules[0].bias is not None:
            yield name[:-4] + "bqkv", torch.cat([p.bias.detach().float() for p in modules]), False
    for i, layer in enumerate(get_module(m, f.layers)):
        yield f"layers.{i}.attn_norm", getattr(layer, f.input_norm).weight.detach().float(), False
        yield f"layers.{i}.ffn_norm", getattr(layer, f.post_attn_norm).weight.detach().float(), False
    if held(get_module(m, f.final_norm)):
        yield "norm", get_module(m, f.final_norm).weight.detach().float(), False


def source_count(loaded: LoadedModel) -> int:
    """How many tensors source_tensors yields (without computing them)."""
    linears = list(linear_modules(loaded))
    biases = sum(1 for name, mods in linears if name.endswith(".wqkv") and mods[0].bias is not None)
    m, f = loaded.model, loaded.family
    ends = sum(held(get_module(m, name)) for name in (f.embed, f.final_norm))
    return ends + len(linears) + biases + 2 * len(get_module(m, f.layers))


def _ttnn_version() -> str | None:
    if importlib.util.find_spec("ttnn") is None:
        return None
    try:
        return importlib.metadata.version("ttnn")
    except importlib.metadata.PackageNotFoundError:      # an importable ttnn without an installed distribution
        return None


def _write_tensorbin(path: Path, w_kn: torch.Tensor, fmt: str) -> None:
    """One block-float tensor written by ttnn itself (host tensor in tile layout; no device needed)."""
    import ttnn

    dtype = {"bfp8": ttnn.bfloat8_b, "bfp4": ttnn.bfloat4_b}[fmt]
    t = ttnn.Tensor(w_kn.reshape(-1).tolist(), list(w_kn.shape), dtype, ttnn.TILE_LAYOUT)
    ttnn.dump_tensor(str(path), t)


def convert(loaded: LoadedModel, formats: dict[str, str], folder: Path, fingerprint: str) -> dict:
    """Write the cache folder (atomically). Returns the record."""
    ttnn_version = _ttnn_version()
    tensors, table = {}, {}
    with atomic_directory(folder, wait=True) as tmp:
        for name, t, is_linear in bar(source_tensors(loaded), "converting tt weights", "tensor",
                                      source_count(loaded)):
            fmt = formats[name] if is_linear else "bf16"
            if fmt in FORMAT_BITS:
                tensors[name] = pack_tiles(t, FORMAT_BITS[fmt])                  # (tiles, TILE_BYTES)
                if ttnn_version and fmt in ("bfp8", "bfp4"):
                    (tmp / "ttnn").mkdir(exist_ok=True)
                    _write_tensorbin(tmp / "ttnn" / f"{name}.tensorbin", t, fmt)
            else:
                tensors[name] = t.to(torch.bfloat16).contiguous()
            table[name] = {"format": fmt, "shape": list(t.shape)}
        save_file(tensors, str(tmp / WEIGHTS))
        names = [WEIGHTS] + sorted(p.relative_to(tmp).as_posix() for p in (tmp / "ttnn").glob("*.tensorbin"))
        record = {"format_version": FORMAT_VERSION, "source_fingerprint": fingerprint, "formats": formats,
                  "tensors": table, "ttnn": ttnn_version, "files": file_table(tmp, names)}
        (tmp / RECORD).write_text(json.dumps(record, indent=1))
    return record


def read_record(folder: Path, fingerprint: str, formats: dict[str, str]) -> dict:
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{folder} is not a readable tt weight cache (no valid {RECORD}).",
                        "Delete the folder; the next run converts the weights again.") from None
    if (record.get("format_version") != FORMAT_VERSION or record.get("source_fingerprint") != fingerprint
            or record.get("formats") != formats):
        raise UserError(f"The tt weight cache {folder} was written for another checkpoint state, config or format "
                        "version.", "Delete the folder; the next run converts the weights again.")
    return record


@dataclass
class TTWeights:
    tensors: dict[str, torch.Tensor]    # name -> float32 values the device holds (linears [K, N])
    formats: dict[str, str]
    folder: Path
    stored_bytes: dict[str, int]        # name -> bytes on the device (tiles or bf16)


def load_weights(folder: Path, record: dict) -> TTWeights:
    try:
        raw = load_file(str(folder / WEIGHTS))
    except Exception as exc:            # safetensors raises its own error types for truncated or bad headers
        raise UserError(f"{folder / WEIGHTS} cannot be read ({type(exc).__name__}: {exc}).",
                        "Delete the folder; the next run converts the weights again.") from None
    out, sizes = {}, {}
    for name, info in record["tensors"].items():
        fmt, shape = info["format"], info["shape"]
        if name not in raw:
            raise UserError(f"{folder / WEIGHTS} lacks tensor {name}.", "Delete the folder and run again.")
        data = raw[name]
        sizes[name] = data.numel() * data.element_size()
        if fmt in FORMAT_BITS:
            bits = FORMAT_BITS[fmt]
            if data.dtype != torch.uint8 or data.shape[-1] != TILE_BYTES[bits]:
                raise UserError(f"{folder / WEIGHTS}: tensor {name} is not {fmt} tile data.",
                                "Delete the folder and run again.")
            out[name] = unpack_tiles(data, bits, *shape)
        else:
            out[name] = data.float().view(shape)
    return TTWeights(out, record["formats"], folder, sizes)


def ensure_weights(loaded: LoadedModel, config: PrecisionConfig) -> TTWeights:
    """Convert once (or reuse the cache) and load the device-side values."""
    fingerprint = fingerprint_of(loaded)
    formats = weight_formats(loaded, config)
    folder = cache_folder(fingerprint, formats)
    if (folder / RECORD).exists():
        record = read_record(folder, fingerprint, formats)
        problem = damage(folder, record.get("files"))
        if problem is None:
            print(f"[tt] reusing converted weights in {folder}", file=sys.stderr)
            return load_weights(folder, record)
        print(f"[tt] the weight cache {folder} is damaged ({problem}); converting again", file=sys.stderr)
    else:
        print(f"[tt] converting weights of {loaded.source} to {folder}", file=sys.stderr)
    record = convert(loaded, formats, folder, fingerprint)
    return load_weights(folder, record)
