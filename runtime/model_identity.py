"""Identity of a loaded model's weights and the project's cache folder, shared by every backend that caches
converted weights (npu_backend's ONNX export, tt_backend's block-float weights).

A model's fingerprint is the sha256 of its checkpoint manifest (edgeawq checkpoints record every file's sha256
there), else of its files' names, sizes and modification times; in-memory models (random weights) carry their own
`LoadedModel.fingerprint`. A model loaded with float weights in another dtype than fp32 (`--dtype bf16|fp16`: the
values are rounded to it) is another model to the caches: its fingerprint ends in ":<dtype>".
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..checkpoints.directory import MANIFEST
from .model_loader import DTYPE_NAMES, LoadedModel


def source_fingerprint(folder: Path) -> str:
    """sha256 of a checkpoint's manifest (edgeawq checkpoints) or of its files' names, sizes and mtimes."""
    manifest = folder / MANIFEST
    h = hashlib.sha256()
    if manifest.exists():
        h.update(manifest.read_bytes())
    else:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def fingerprint_of(loaded: LoadedModel) -> str:
    """Identity of `loaded`'s weights as loaded: the source's fingerprint, plus ":bf16" / ":fp16" when its float
    weights were loaded in that dtype."""
    base = getattr(loaded, "fingerprint", None) or source_fingerprint(loaded.source)
    return base if loaded.dtype == torch.float32 else f"{base}:{DTYPE_NAMES[loaded.dtype]}"


def cache_root() -> Path:
    """$EDGEAWQ_CACHE, else ~/.cache/edgeawq."""
    return Path(os.environ.get("EDGEAWQ_CACHE", Path.home() / ".cache" / "edgeawq")).expanduser()
