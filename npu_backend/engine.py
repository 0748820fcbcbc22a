"""The runtime engine over an exported model folder (same interface as runtime/engines.py).

`start(batch, max_seq_len)` empties the KV cache; `forward(input_ids, position_ids, attention_mask, last_only)`
runs the graph once on OrtValues: the present KV OrtValues of one call are fed as the past of the next
without a copy through numpy, and with `last_only` the graph computes logits for the last position only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .providers import choose_providers, ort_module, session_options


class OrtEngine:
    name = "onnxruntime"

    def __init__(self, folder: Path, ep: str | None = None, strict: bool = False, threads: int | None = None) -> None:
        ort = ort_module()
        providers = choose_providers(ep, strict)
        threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(Path(folder) / "model.onnx"),
                                            sess_options=session_options(strict, threads, providers),
                                            providers=providers)
        self.providers = self.session.get_providers()
        self.provider = self.providers[0]
        self.name = f"onnxruntime/{self.provider}"
        self.folder = Path(folder)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.layers = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
        shape = inputs["past_key_values.0.key"].shape                 # [batch, kv_heads, past, head_dim]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.output_names = ["logits"] + [f"present.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]
        self.past: list | None = None
        self._ort = ort

    def start(self, batch: int, max_seq_len: int) -> None:
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
        value = self._ort.OrtValue.ortvalue_from_numpy(empty)
        self.past = [value] * (2 * self.layers)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                last_only: bool = True) -> torch.Tensor:
        value = self._ort.OrtValue.ortvalue_from_numpy
        feeds = {"input_ids": value(input_ids.to(torch.int64).numpy()),
                 "attention_mask": value(attention_mask.to(torch.int64).numpy()),
                 "position_ids": value(position_ids.to(torch.int64).numpy()),
                 "num_logits_to_keep": value(np.array([1 if last_only else 0], dtype=np.int64))}
        for i in range(self.layers):
            feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = self.past[2 * i: 2 * i + 2]
        outputs = self.session.run_with_ort_values(self.output_names, feeds)
        self.past = outputs[1:]
        return torch.from_numpy(outputs[0].numpy())                   # (B, T or 1, V)
