"""Per-module wall time of prefill and decode forwards (`--profile FILE.csv`), one profiled generation per prompt
length.

* PyTorch engines (ModuleProfiler): forward hooks time every module of interest (embedding, each decoder layer's
  attention and MLP, every Linear or QLinearPerGrp, the norms and lm_head). Times of nested modules overlap (an
  attention module's time includes its projections).
* The native engine (NativeProfiler): the C++ decoder times each layer's steps (`model.layers.N.<step>`, steps
  input_norm, qkv_proj, rope_kv_store, attention, o_proj, post_norm, gate_up_proj, silu_mul, down_proj; a
  projection includes quantizing its input and the residual add), the engine the embedding lookup and the final
  norm + lm_head. The steps do not overlap: their sum is the forward's time.

CSV columns: prompt_tokens, module, kind, prefill_ms_total, prefill_calls, decode_ms_total, decode_calls,
decode_ms_per_token.
"""
from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from pathlib import Path

from torch import nn

from ..checkpoints.atomic import write_text_atomic


class _Totals:
    """Seconds and calls per (module, phase); `phase` ("prefill" or "decode") is set by the generation loop."""

    def __init__(self) -> None:
        self.phase = "prefill"
        self.totals: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self.kinds: dict[str, str] = {}

    def add(self, name: str, kind: str, seconds: float) -> None:
        self.kinds.setdefault(name, kind)
        self.totals[(name, self.phase)] += seconds
        self.calls[(name, self.phase)] += 1

    def rows(self, prompt_tokens: int, decoded_tokens: int) -> list[list]:
        out = []
        for name, kind in self.kinds.items():
            p, d = self.totals[(name, "prefill")] * 1e3, self.totals[(name, "decode")] * 1e3
            out.append([prompt_tokens, name, kind, f"{p:.4f}", self.calls[(name, "prefill")], f"{d:.4f}",
                        self.calls[(name, "decode")], f"{d / max(decoded_tokens, 1):.4f}"])
        return out


class ModuleProfiler(_Totals):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
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
            self.add(name, self.kinds[name], time.perf_counter() - self._starts.pop(name))
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class NativeProfiler(_Totals):
    """Attaches to a NativeEngine (cpu_backend/native_engine.py) until remove()."""

    def __init__(self, engine) -> None:
        super().__init__()
        self.engine = engine
        self.layers, self.steps = engine.layers, engine.profile_phases
        engine.decoder.set_profiling(True)
        engine.profiler = self

    def add_layers(self, seconds: list[float]) -> None:
        """seconds: one forward's (layers x steps) table, flattened row-major."""
        for i in range(self.layers):
            for j, step in enumerate(self.steps):
                self.add(f"model.layers.{i}.{step}", "native", seconds[i * len(self.steps) + j])

    def remove(self) -> None:
        self.engine.profiler = None
        self.engine.decoder.set_profiling(False)


def can_profile(engine) -> bool:
    """False for an ONNX Runtime graph (one opaque session call per forward)."""
    from ..cpu_backend.native_engine import NativeEngine

    return isinstance(engine, NativeEngine) or engine.name in ("transformers", "static-cache")


def profiler_for(engine, model: nn.Module) -> ModuleProfiler | NativeProfiler:
    """A profiler attached to `engine` (model: the PyTorch model it runs); detach with remove()."""
    from ..cpu_backend.native_engine import NativeEngine

    if not can_profile(engine):
        raise ValueError(f"the {engine.name} engine cannot be profiled per module")
    return NativeProfiler(engine) if isinstance(engine, NativeEngine) else ModuleProfiler(model)


HEADER = ["prompt_tokens", "module", "kind", "prefill_ms_total", "prefill_calls", "decode_ms_total", "decode_calls",
          "decode_ms_per_token"]


def is_profile_csv(path: Path) -> bool:
    """True for an earlier --profile file of this tool."""
    with open(path, encoding="utf-8") as f:
        return f.readline().strip() == ",".join(HEADER)


def write_profile_csv(path: str | Path, rows: list[list]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows([HEADER] + rows)
    write_text_atomic(path, buf.getvalue())
