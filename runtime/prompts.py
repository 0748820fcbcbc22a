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


def check_prompt_text(text: str, where: str) -> str:
    """A prompt must be text a tokenizer can encode: valid Unicode without unpaired surrogates (JSON escapes such
    as \\ud800, or command-line bytes that are not UTF-8, produce them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"{where} holds an unpaired surrogate or invalid character at position {exc.start} "
                        f"({text[exc.start]!r}), which is not text.",
                        "Fix the prompt's encoding: UTF-8 text, and in JSON only paired \\uXXXX surrogate "
                        "escapes.") from None
    return text


def _item(value, where: str, path: Path) -> str:
    if isinstance(value, dict):
        value = value.get("prompt")
    if not isinstance(value, str):
        raise UserError(f"Prompts file {path}: {where} is neither a string nor an object with a \"prompt\" string.",
                        _FIX)
    return check_prompt_text(value, f"Prompts file {path}, {where},")


def read_prompts_file(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"Prompts file {path} does not exist.", "Check the path given to --prompts.") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise UserError(f"Prompts file {path} is not a UTF-8 text file ({exc}).", _FIX) from None
    except OSError as exc:
        raise UserError(f"Prompts file {path} cannot be read ({exc.strerror or exc}).",
                        "Check the path and the file's permissions.") from None
    stripped = text.strip()
    if not stripped:
        raise UserError(f"Prompts file {path} is empty.", _FIX)
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise UserError(f"Prompts file {path} is not valid JSON ({exc}).", _FIX) from None
        except RecursionError:
            raise UserError(f"Prompts file {path} nests JSON lists or objects too deeply to be a prompts file.",
                            _FIX) from None
        if not isinstance(items, list):
            raise UserError(f"Prompts file {path} is not a JSON list.", _FIX)
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
            except RecursionError:
                raise UserError(f"Prompts file {path}, line {n}, nests JSON too deeply to be a prompt.", _FIX) \
                    from None
            prompts.append(_item(value, f"line {n}", path))
    if not prompts:
        raise UserError(f"Prompts file {path} holds no prompts.", _FIX)
    return prompts
