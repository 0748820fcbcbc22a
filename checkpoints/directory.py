"""Atomic checkpoint directories and their manifest.

A checkpoint directory is written into a temporary sibling (`.<name>.tmp-<random>`) and renamed into place only
when complete; an existing checkpoint at the destination is replaced only then (it is first renamed to
`.<name>.old-<random>` and removed after the new one is in place). An exception during the write removes the
temporary directory and leaves the previous checkpoint untouched.

`manifest.json`: {"format": "edgeawq-checkpoint", "format_version": N,
                  "files": {relative path: {"size": bytes, "sha256": hex}}} for every file but itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import UserError

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path, format_version: int) -> None:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(folder).as_posix()
            files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    data = {"format": "edgeawq-checkpoint", "format_version": format_version, "files": files}
    (folder / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")


def verify_manifest(folder: Path) -> dict:
    """Check every file listed in the manifest (size, then sha256). A mismatch is a UserError naming the file."""
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text())
        files = data["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"The manifest {path} is missing or unreadable ({exc}).",
                        "Re-create the checkpoint with `run_awq --task quantize`, or restore it from a copy.") from None
    for rel, meta in files.items():
        f = folder / rel
        if not f.exists():
            raise UserError(f"Checkpoint file {f} listed in the manifest is missing.",
                            "Restore the complete checkpoint folder or quantize the model again.")
        if f.stat().st_size != meta["size"] or sha256_file(f) != meta["sha256"]:
            raise UserError(f"Checkpoint file {f} is corrupt: its size or sha256 differs from the manifest.",
                            "Restore it from a good copy or quantize the model again.")
    return data


@contextmanager
def atomic_directory(destination: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `destination`, on error it is removed."""
    destination = Path(destination).absolute()
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a checkpoint folder gets the usual permissions
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if destination.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
            old.rmdir()
            os.replace(destination, old)
        os.replace(tmp, destination)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
