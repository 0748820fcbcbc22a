"""Checkpoint directories' manifest, and what makes a folder an earlier checkpoint of this tool.

A checkpoint directory is written atomically (checkpoints/atomic.py: a temporary sibling, moved into place only
when complete; an interrupted or failed write leaves the previous checkpoint untouched).

`manifest.json`: {"format": "edgeawq-checkpoint", "format_version": N,
                  "files": {relative path: {"size": bytes, "sha256": hex}}} for every file but itself.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

from ..errors import UserError
from .atomic import atomic_directory  # noqa: F401  (re-exported: the writers of every artefact use it)
from .cache_integrity import hash_file
from .output_path import unlisted_files_problem

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    return hash_file(path, hashlib.sha256())


def write_manifest(folder: Path, format_version: int) -> None:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(folder).as_posix()
            files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    data = {"format": "edgeawq-checkpoint", "format_version": format_version, "files": files}
    (folder / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")


def _manifest_files(path: Path) -> dict[str, dict]:
    """The "files" table of a manifest, every entry checked: a relative path inside the folder -> {"size": int,
    "sha256": 64 hex digits}. Anything else is a UserError naming the manifest."""
    fix = "Re-create the checkpoint with `run_awq quantize`, or restore it from a copy."
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"The manifest {path} is missing or unreadable ({exc}).", fix) from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise UserError(f"The manifest {path} has no \"files\" table.", fix)
    for rel, meta in files.items():
        pure = PurePosixPath(rel)
        if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
            raise UserError(f"The manifest {path} lists {rel!r}, which is not a path inside the checkpoint.", fix)
        ok = (isinstance(meta, dict) and type(meta.get("size")) is int and meta["size"] >= 0
              and isinstance(meta.get("sha256"), str) and len(meta["sha256"]) == 64
              and all(c in "0123456789abcdef" for c in meta["sha256"]))
        if not ok:
            raise UserError(f"The manifest {path} has a damaged entry for {rel} (it needs a size and a sha256).", fix)
    return files


def verify_manifest(folder: Path) -> dict:
    """Check every file listed in the manifest (size, then sha256). A mismatch is a UserError naming the file."""
    path = folder / MANIFEST
    files = _manifest_files(path)
    for rel, meta in files.items():
        f = folder / rel
        if not f.is_file():
            raise UserError(f"Checkpoint file {f} listed in the manifest is missing.",
                            "Restore the complete checkpoint folder or quantize the model again.")
        try:
            same = f.stat().st_size == meta["size"] and sha256_file(f) == meta["sha256"]
        except OSError as exc:
            raise UserError(f"Checkpoint file {f} cannot be read ({exc.strerror or exc}).",
                            "Check its permissions, or restore it from a good copy.") from None
        if not same:
            raise UserError(f"Checkpoint file {f} is corrupt: its size or sha256 differs from the manifest.",
                            "Restore it from a good copy or quantize the model again.")
    return {"files": files}


def checkpoint_problem(folder: Path) -> str | None:
    """None when `folder` holds an earlier checkpoint of this tool and nothing else (a quantize may replace it);
    else why it is not one."""
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return f"it has no readable {MANIFEST}"
    if not isinstance(data, dict) or data.get("format") != "edgeawq-checkpoint" or not isinstance(
            data.get("files"), dict):
        return f"its {MANIFEST} is not an edgeawq checkpoint manifest"
    return unlisted_files_problem(folder, data["files"], MANIFEST)
