"""Read the files of a local Hugging Face checkpoint folder: config.json and the weights.

Weights, in order of preference:
  * `model.safetensors` (one file), or `model.safetensors.index.json` + the shards it names
    (`{"weight_map": {tensor_name: shard_file}}`). Tensors are memory-mapped by the safetensors library:
    nothing is read until a tensor is used, so building a model from them costs about one copy of the weights.
  * `pytorch_model.bin` (or its `.index.json` + shards), read only through `torch.load(weights_only=True,
    mmap=True)`: no arbitrary unpickling.
Every problem a user can fix (missing file, truncated or corrupt file, shard missing from the index) is raised
as `UserError` naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import UserError

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON object file; a missing, unreadable or malformed file is a `UserError` naming it."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path} is missing.", "Copy it from the original model folder.") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror or exc}).",
                        "Check that the file is readable by you (permissions), or copy it again.") from None
    except (ValueError, RecursionError) as exc:         # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{what} {path} is not valid JSON ({str(exc)[:200]}).",
                        "Replace it with the original file from the model's release.") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} does not hold a JSON object.",
                        "Replace it with the original file from the model's release.")
    return data


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files of a Hugging Face folder, safetensors first; [] when there are none."""
    for index_name, single in ((SAFE_INDEX, SAFE_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        index = model_dir / index_name
        if index.exists():
            weight_map = read_json(index, "Weight index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise UserError(f"Weight index {index} has no 'weight_map'.",
                                "Replace it with the original index file of the checkpoint.")
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (model_dir / s).exists()]
            if missing:
                raise UserError(f"Shard(s) {', '.join(missing)} listed in {index} are missing from {model_dir}.",
                                "Download or copy every shard of the checkpoint into that folder.")
            return [model_dir / s for s in shards]
        if (model_dir / single).exists():
            return [model_dir / single]
    return []


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"Weight file {path} is corrupt or truncated ({exc}).",
                        "Re-download or re-copy this file; compare its size and sha256 with the original.") from None


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for bad archives; all mean "this file is unusable"
        raise UserError(f"Weight file {path} could not be read as a weights-only PyTorch archive ({exc}).",
                        "Re-download the file, or convert the checkpoint to safetensors.") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"Weight file {path} does not hold a flat dict of tensors.",
                        "Use a checkpoint saved with save_pretrained (safetensors preferred).")
    return data


def load_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """All tensors of the given weight files by name (memory-mapped; values are read lazily)."""
    out: dict[str, torch.Tensor] = {}
    for path in files:
        part = _load_safetensors(path) if path.suffix == ".safetensors" else _load_bin(path)
        out.update(part)
    return out


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


MAX_HEADER_BYTES = 100 * 2**20   # the safetensors format's own limit on the JSON header


def _all_finite(tensor: torch.Tensor, block: int = 2**21) -> bool:
    """torch.isfinite(tensor).all(), a block of `block` elements at a time (its temporaries are several times the
    block, not the tensor: the embedding of a real model is hundreds of MB)."""
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + block]).all()) for i in range(0, flat.numel(), block))


def require_finite(name: str, tensor: torch.Tensor, source: Path) -> torch.Tensor:
    """`tensor`, after checking that a float tensor holds no NaN or infinity (quantizing them gives unusable
    scales)."""
    if tensor.is_floating_point() and tensor.numel() and not _all_finite(tensor):
        bad = int((~torch.isfinite(tensor)).sum())
        raise UserError(f"Tensor {name} in {source} holds {bad} NaN or infinite values; a checkpoint quantized from "
                        "it would produce garbage.", "Use the original, undamaged weights of the model (re-download "
                        "or re-copy them), or repair the training run that produced them.")
    return tensor


class CheckedTensors(dict):
    """Tensors already in memory (or memory-mapped) by name; `load(name)` returns one after `require_finite`."""

    def __init__(self, tensors: dict[str, torch.Tensor], source: Path) -> None:
        super().__init__(tensors)
        self.source = source

    def load(self, name: str) -> torch.Tensor:
        return require_finite(name, self[name], self.source)

    def shapes(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return {k: (v.dtype, tuple(v.shape)) for k, v in self.items()}


class StreamedSafetensors(dict):
    """Tensor names -> (file, dtype, shape, byte range) of safetensors files; `load(name)` reads one tensor.

    Unlike memory-mapping, every read goes into fresh anonymous memory that is freed with the tensor, so a
    layer-by-layer pass over a large checkpoint keeps only the current layer resident (the page cache holds the
    file, not this process). Format: 8-byte little-endian header length, JSON header {name: {"dtype", "shape",
    "data_offsets": [begin, end]}, "__metadata__": ...}, then the data block the offsets index into.
    """

    def __init__(self, files: list[Path]) -> None:
        super().__init__()
        for path in files:
            try:
                self._index(path)
            except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
                raise UserError(f"Weight file {path} is corrupt or truncated ({str(exc)[:200]}).",
                                "Re-download or re-copy this file; compare its size and sha256 with the original.") \
                    from None

    def _index(self, path: Path) -> None:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"its header claims {n} bytes; the file has {size}")
            header = json.loads(f.read(n).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if not isinstance(meta, dict):
                raise ValueError(f"the header entry of {name} is not an object")
            offsets, shape = meta.get("data_offsets"), meta.get("shape")
            if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                    or not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)):
                raise ValueError(f"tensor {name} has malformed offsets or shape")
            if meta.get("dtype") not in _ST_DTYPES:
                raise ValueError(f"tensor {name} has an unsupported dtype {meta.get('dtype')!r}")
            begin, end = offsets
            dtype, shape = _ST_DTYPES[meta["dtype"]], tuple(shape)
            if not 0 <= begin <= end or 8 + n + end > size or end - begin != dtype.itemsize * _numel(shape):
                raise ValueError(f"tensor {name} lies outside the file or does not match its shape")
            self[name] = (path, dtype, shape, 8 + n + begin, end - begin)

    def shapes(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return {k: (v[1], v[2]) for k, v in self.items()}

    def load(self, name: str) -> torch.Tensor:
        path, dtype, shape, offset, nbytes = self[name]
        buf = bytearray(nbytes)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                got = f.readinto(buf)
        except OSError as exc:
            raise UserError(f"Weight file {path} cannot be read ({exc.strerror or exc}).",
                            "Check the file and its permissions, or re-copy it.") from None
        if got != nbytes:
            raise UserError(f"Weight file {path} was truncated while it was read (tensor {name}).",
                            "Re-copy the file and run again.")
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        return require_finite(name, torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape), path)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
