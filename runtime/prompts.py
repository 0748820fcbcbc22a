"""Read prompts files.

Accepted formats (UTF-8):
  * a JSON list whose items are strings or objects with a "prompt" string (the tt-metal demo input files are
    `[{"prompt": "..."}, ...]`);
  * JSON Lines: one item per non-empty line, each a JSON string or an object with a "prompt" string.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

_FIX = ('Write a JSON list such as ["first prompt", "second prompt"] or [{"prompt": "..."}], or JSON Lines with '
        'one such item per line.')


def _item(value, where: str, path: Path) -> str:
    if isinstance(value, dict):
        value = value.get("prompt")
    if not isinstance(value, str):
        raise UserError(f"Prompts file {path}: {where} is neither a string nor an object with a \"prompt\" string.",
                        _FIX)
    return value


def read_prompts_file(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"Prompts file {path} does not exist.", "Check the path given to --prompts.") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise UserError(f"Prompts file {path} is not a UTF-8 text file ({exc}).", _FIX) from None
    stripped = text.strip()
    if not stripped:
        raise UserError(f"Prompts file {path} is empty.", _FIX)
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise UserError(f"Prompts file {path} is not valid JSON ({exc}).", _FIX) from None
        prompts = [_item(v, f"item {i}", path) for i, v in enumerate(items)]
    else:
        prompts = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"Prompts file {path}, line {n}, is not valid JSON ({exc}).", _FIX) from None
            prompts.append(_item(value, f"line {n}", path))
    if not prompts:
        raise UserError(f"Prompts file {path} holds no prompts.", _FIX)
    return prompts
