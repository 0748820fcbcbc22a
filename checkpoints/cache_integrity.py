"""Integrity of derived artefacts (the native weight cache, the tt weight cache, ONNX exports): each records the
size and a fast hash of every file it is made of when it is built, and is checked against that record before use.

Record format: {file name: {"size": bytes, "xxh3_64": 16 hex digits}}. xxh3_64 (the `xxhash` package) reads at
memory speed (about 25 GB/s measured on the project's machine), so checking a 4 GB cache costs well under a
second once it is in the page cache. It detects accidental damage (bit rot, truncation, a stray write), not
tampering: checkpoints themselves carry sha256 in their manifest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import xxhash

from ..errors import UserError

HASH = "xxh3_64"


class DamagedArtefact(UserError):
    """A derived artefact whose files no longer match their record; callers rebuild it (saying so)."""


def hash_file(path: Path, h, chunk: int = 1 << 24) -> str:
    """The hex digest of `path` under the hash object `h` (hashlib or xxhash), read in chunks."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fast_hash(path: Path) -> str:
    return hash_file(path, xxhash.xxh3_64())


def file_table(folder: Path, names: Iterable[str]) -> dict[str, dict]:
    """The record of the files `names` of `folder`."""
    return {n: {"size": (folder / n).stat().st_size, HASH: fast_hash(folder / n)} for n in names}


def damage(folder: Path, table: object) -> str | None:
    """None when every file of `table` is in `folder` with its recorded size and hash; else what differs."""
    if not isinstance(table, dict) or not table:
        return "it records no file hashes (written by an older version)"
    for name, meta in table.items():
        path = folder / str(name)
        if not isinstance(meta, dict) or not path.is_file():
            return f"{name} is missing"
        try:
            if path.stat().st_size != meta.get("size"):
                return f"{name} has {path.stat().st_size} bytes, {meta.get('size')} were written"
            if fast_hash(path) != meta.get(HASH):
                return f"the contents of {name} changed after it was written"
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror or exc})"
    return None
