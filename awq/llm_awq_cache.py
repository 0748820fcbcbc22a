"""llm-awq's search-result cache files: {"scale": [(prev_op, (layer names...), s)], "clip": [(layer, max_val)]}.

Names are full module names ("model.layers.0.input_layernorm"); s is (K,), max_val (N, G, 1). Files are read
with `torch.load(weights_only=True)` only (no arbitrary unpickling) and written with torch.save of plain lists,
tuples, strings and tensors (so llm-awq itself can load ours).
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from ..checkpoints.atomic import write_bytes_atomic
from ..errors import UserError


def load_llm_awq_cache(path: str | Path) -> tuple[list, list]:
    path = Path(path)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"AWQ cache {path} does not exist.", "Check the path given to --awq_cache.") from None
    except Exception as exc:  # a refused pickle or a corrupt file
        raise UserError(f"AWQ cache {path} could not be read as a weights-only torch file ({exc}).",
                        "Use a cache written by llm-awq's --dump_awq or by `run_awq --dump_awq`.") from None
    try:
        scales = [(str(p), tuple(str(n) for n in names), torch.as_tensor(s)) for p, names, s in data["scale"]]
        clips = [(str(n), torch.as_tensor(m)) for n, m in data["clip"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"AWQ cache {path} does not have the llm-awq layout ({exc}).",
                        'Expected {"scale": [(prev_op, (layers...), scales)], "clip": [(layer, max_val)]}.') from None
    return scales, clips


def is_llm_awq_cache(path: str | Path) -> bool:
    """True when `path` is a readable llm-awq cache file (an earlier --dump_awq may be replaced)."""
    try:
        load_llm_awq_cache(path)
    except UserError:
        return False
    return True


def save_llm_awq_cache(path: str | Path, scales: list, clips: list) -> None:
    buf = io.BytesIO()
    torch.save({"scale": [(p, tuple(n), s.float()) for p, n, s in scales],
                "clip": [(n, m.float()) for n, m in clips]}, buf)
    write_bytes_atomic(path, buf.getvalue())
