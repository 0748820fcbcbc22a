"""Per-module wall time of prefill and decode forwards (`--profile FILE.csv`).

Forward hooks time every module of interest (embedding, each decoder layer's attention and MLP, every Linear or
QLinearPerGrp, the norms and lm_head) during one profiled generation per prompt length. Times of nested modules
overlap (an attention module's time includes its projections). CSV columns: prompt_tokens, module, kind,
prefill_ms_total, prefill_calls, decode_ms_total, decode_calls, decode_ms_per_token.
"""
from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from pathlib import Path

from torch import nn

from ..checkpoints.atomic import write_text_atomic


class ModuleProfiler:
    def __init__(self, model: nn.Module) -> None:
        self.phase = "prefill"
        self.totals: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self.kinds: dict[str, str] = {}
        self._handles = []
        self._starts: dict[str, float] = {}
        for name, module in model.named_modules():
            is_leaf = not any(True for _ in module.children())
            if not name or not (is_leaf or name.endswith(("self_attn", "mlp"))):
                continue
            self.kinds[name] = type(module).__name__
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(_m, _args):
            self._starts[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(_m, _args, _out):
            key = (name, self.phase)
            self.totals[key] += time.perf_counter() - self._starts.pop(name)
            self.calls[key] += 1
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def rows(self, prompt_tokens: int, decoded_tokens: int) -> list[list]:
        out = []
        for name, kind in self.kinds.items():
            p, d = self.totals[(name, "prefill")] * 1e3, self.totals[(name, "decode")] * 1e3
            out.append([prompt_tokens, name, kind, f"{p:.4f}", self.calls[(name, "prefill")], f"{d:.4f}",
                        self.calls[(name, "decode")], f"{d / max(decoded_tokens, 1):.4f}"])
        return out


HEADER = ["prompt_tokens", "module", "kind", "prefill_ms_total", "prefill_calls", "decode_ms_total", "decode_calls",
          "decode_ms_per_token"]


def write_profile_csv(path: str | Path, rows: list[list]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows([HEADER] + rows)
    write_text_atomic(path, buf.getvalue())
