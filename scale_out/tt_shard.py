"""One rank's part of the model on the tt emulation: one chip of an emulated multi-chip Tenstorrent system.

`--target tt --tt_mesh N150|N300|T3K|TG` names the system (1, 2, 8 or 32 chips, as tt-metal's device names;
partition.TT_SYSTEMS); each chip is a rank holding its slice (partition.py) with the tt engine's numerics
(tt_backend/engine.py): block-float weights with math fidelity, activations written in the config's format.
Between chips, as on the device: every row-parallel Linear (o_proj, ff2/down_proj) writes its partial output in the
activation format on each chip, the partials are summed over the chips (all-reduce) and the sum is written in the
activation format again; the embedding is vocabulary-parallel (local rows, all-reduce), lm_head's logits are
gathered. So a mesh rounds each chip's partial sum once more than one chip does: its logits differ from the
single-chip emulation by about one bf16 step of the reduced activations (measured in tests/scale_out).

Weight cache per device layout: each rank converts its own slice once into the tt weight cache, keyed by the
checkpoint's fingerprint, the slice (layers, heads, MLP channels, vocabulary rows) and the weight formats; the
same slice on another mesh (or another data-parallel replica) reuses the folder.
"""
from __future__ import annotations

import sys
from dataclasses import replace

import torch

from ..runtime.model_identity import source_fingerprint
from ..runtime.model_loader import LoadedModel
from ..tt_backend.backend import check_memory, check_tt_numerics
from ..tt_backend.engine import TTEngine, stored
from ..tt_backend.precision import PrecisionConfig, load_precision
from ..tt_backend.weights import ensure_weights
from .comm import Comm
from .partition import RankShard


class TTShard(TTEngine):
    def __init__(self, loaded: LoadedModel, shard: RankShard, comm: Comm, vocab_sizes: list[int],
                 precision: str, full_layers: int) -> None:
        config: PrecisionConfig = load_precision(precision, loaded.family.model_type, full_layers)
        a, b = shard.layers
        config = replace(config, layers=config.layers[a:b])              # the stage's layers of the config
        loaded.fingerprint = f"{source_fingerprint(loaded.source)}|{shard.key()}"
        check_tt_numerics(loaded)
        check_memory(loaded, config)
        super().__init__(loaded, config, ensure_weights(loaded, config))
        self.loaded, self.shard, self.comm, self.vocab_sizes = loaded, shard, comm, vocab_sizes
        self.vocab = sum(vocab_sizes)
        self.hidden = loaded.config.hidden_size
        self.name = f"tt-emulation ({config.name})"
        self.held_bytes = self.weight_bytes = self.weight_bytes_per_token
        loaded.model.to("meta")
        if comm.rank == 0:
            print(f"[tt] CPU emulation of Tenstorrent numerics per chip, precision {config.describe()}",
                  file=sys.stderr)

    def reduce(self, partial: torch.Tensor, act: str) -> torch.Tensor:
        """Each chip's written partial (b, T, D), summed over the chips, written again in the activation format."""
        return stored(self.comm.all_reduce(partial.contiguous()), act)

    def begin(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        super().begin(input_ids, position_ids, attention_mask)
        self.batch_shape = tuple(input_ids.shape)

    def hidden_shape(self) -> tuple[tuple[int, ...], torch.dtype]:
        return (*self.batch_shape, self.hidden), torch.float32

    @torch.inference_mode()
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """ids (b, T) -> (b, T, D): the rows this chip holds, zeros elsewhere, summed over the chips."""
        return self.comm.vocab_parallel_embedding(self.embed, input_ids, self.shard.vocab)

    @torch.inference_mode()
    def logits(self, h: torch.Tensor, last_only: bool) -> torch.Tensor:
        return self.comm.all_gather_last(super().logits(h, last_only), self.vocab_sizes)   # (b, T or 1, V)
