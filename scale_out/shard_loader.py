"""One rank's slice of a checkpoint, read straight from its files, as a small transformers model of its own.

The rank's model is the family's CausalLM built from a shard config: the local head counts (with padding heads),
the local MLP width, the stage's layers and the local vocabulary rows; its tensors are the checkpoint's rows and
columns that partition.py assigns to the rank (zeros for padding heads). Float tensors and quantized ones
(`.packed` (N, K*bits/8), `.scales` / `.zeros` / `.mins` (N, K/g), `.bias` (N,)) are cut the same way: rows by output
feature; columns by input channel (packed bytes: channels / codes per byte; scales, zeros, mins: channels / g).
Modules the stage does not run (the embedding off the first stage; final norm and lm_head off the last) stay on
the meta device and take no memory.

Memory: safetensors files are read range by range (the rows a rank keeps, never the whole file); a column cut
reads the tensor's rows in blocks of at most 16 MB and keeps the columns. Other formats (Meta, GGUF, AutoAWQ,
pytorch_model.bin) are read whole per tensor, then cut.
"""
from __future__ import annotations

import copy
import torch

from ..checkpoints.hf_files import StreamedSafetensors, require_finite
from ..errors import UserError
from ..kernels.formats import native_format
from ..kernels.quantizer import QuantSpec
from ..runtime.families import Family
from ..runtime.model_loader import (ACT_MODES, DTYPES, IGNORED_KEYS, CheckpointSource, LoadedModel, build_skeleton,
                                    check_names, rebuild_rotary)
from ..runtime.module_paths import get_module
from ..runtime.quantized_model import QuantLayout, install_qlinears
from .partition import RankShard, runs

Runs = list[tuple[int | None, int]]         # (source start or None for zeros, length)
BLOCK_BYTES = 16 * 2**20
QUANT_PARTS = (".packed", ".scales", ".zeros", ".mins", ".act_scale")


def _read_rows(state, name: str, start: int, count: int) -> torch.Tensor:
    """Rows [start, start + count) of tensor `name` (any rank >= 1)."""
    if isinstance(state, StreamedSafetensors):
        path, dtype, shape, offset, nbytes = state[name]
        row_bytes = nbytes // shape[0] if shape[0] else 0
        buf = bytearray(count * row_bytes)
        with open(path, "rb") as f:
            f.seek(offset + start * row_bytes)
            if f.readinto(buf) != len(buf):
                raise UserError(f"Weight file {path} was truncated while it was read (tensor {name}).",
                                "Re-copy the file and run again.")
        if not buf:
            return torch.empty((count, *shape[1:]), dtype=dtype)
        return torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(count, *shape[1:])
    return state[name][start:start + count].clone()


def _shape(state, name: str) -> tuple[int, ...]:
    if name not in state:                     # the same message a single-process load gives
        check_names(getattr(state, "source", None) or "the checkpoint", [name], [])
    return tuple(state[name][2]) if isinstance(state, StreamedSafetensors) else tuple(state[name].shape)


def read_block(state, name: str, rows: Runs | None = None, cols: Runs | None = None) -> torch.Tensor:
    """Tensor `name` cut to the row runs and column runs given (None = all), zeros where a run has no source."""
    shape = _shape(state, name)
    rows = rows if rows is not None else [(0, shape[0])]
    pieces = []
    for start, count in rows:
        if start is None:
            width = (*shape[1:],) if cols is None else (sum(n for _, n in cols),)
            pieces.append(torch.zeros((count, *width), dtype=_dtype(state, name)))
            continue
        if cols is None:
            pieces.append(_read_rows(state, name, start, count))
            continue
        row_bytes = max(1, _dtype(state, name).itemsize * shape[1])
        step = max(1, BLOCK_BYTES // row_bytes)
        for r in range(start, start + count, step):
            block = _read_rows(state, name, r, min(step, start + count - r))          # (n, K)
            pieces.append(torch.cat([block[:, c:c + n] if c is not None else
                                     torch.zeros(block.shape[0], n, dtype=block.dtype) for c, n in cols], dim=1))
    out = torch.cat(pieces) if len(pieces) > 1 else pieces[0].contiguous()
    return require_finite(name, out, getattr(state, "source", name))


def _dtype(state, name: str) -> torch.dtype:
    return state[name][1] if isinstance(state, StreamedSafetensors) else state[name].dtype


def _scaled(r: Runs, divisor: int) -> Runs:
    return [(None if s is None else s // divisor, n // divisor) for s, n in r]


def shard_config(config, shard: RankShard, head_dim: int):
    """The transformers config of the rank's own model (local heads, MLP width, layers, vocabulary rows)."""
    c = copy.deepcopy(config)
    a, b = shard.layers
    types = getattr(config, "layer_types", None)
    c.num_attention_heads, c.num_key_value_heads = len(shard.heads.q_heads), len(shard.heads.kv_heads)
    c.head_dim = head_dim
    c.intermediate_size = shard.ffn[1] - shard.ffn[0]
    c.num_hidden_layers = b - a
    c.vocab_size = shard.vocab[1] - shard.vocab[0]
    if types:
        c.layer_types = list(types[a:b])
    if hasattr(c, "max_window_layers"):               # Qwen2: sliding layers follow layer_types from here on
        c.max_window_layers = max(0, min(b, c.max_window_layers) - a)
    return c


def _linear_tensors(state, name: str, quantized: bool, bits: int | None, group: int | None, rows: Runs | None,
                    cols: Runs | None, keep_bias: bool, mins: bool = False) -> dict[str, torch.Tensor]:
    """The cut tensors of Linear `name` (float weight/bias, or packed/scales/zeros(/mins when `mins`)/bias, and
    act_scale when the checkpoint has it)."""
    out = {}
    if quantized:
        per_byte = {"u8": 1, "u4k": 2, "u2k": 4}[native_format(bits)]
        out[f"{name}.packed"] = read_block(state, f"{name}.packed", rows, None if cols is None else
                                           _scaled(cols, per_byte))
        for part in (".scales", ".zeros", ".mins") if mins else (".scales", ".zeros"):
            out[name + part] = read_block(state, name + part, rows, None if cols is None else _scaled(cols, group))
        if f"{name}.act_scale" in state:                # per-tensor W8A8: one static input scale, whole on every rank
            out[f"{name}.act_scale"] = read_block(state, f"{name}.act_scale")
    else:
        out[f"{name}.weight"] = read_block(state, f"{name}.weight", rows, cols)
    if f"{name}.bias" in state:
        bias = read_block(state, f"{name}.bias", rows)
        out[f"{name}.bias"] = bias if keep_bias else torch.zeros_like(bias)
    return out


def shard_state(state, config, family: Family, layout: QuantLayout | None, shard: RankShard, head_dim: int) \
        -> dict[str, torch.Tensor]:
    """The rank's tensors under the names of its own model (layer indices renumbered from 0)."""
    hd, heads = head_dim, shard.heads
    quantized = set(layout.modules) if layout is not None else set()
    bits = layout.spec.bits if layout is not None else None
    q_rows = runs(list(heads.q_heads), hd)
    kv_rows = runs(list(heads.kv_heads), hd)
    f0, f1 = shard.ffn
    out: dict[str, torch.Tensor] = {}
    v0, v1 = shard.vocab
    if shard.first_stage:
        name = f"{family.embed}.weight"
        out[name] = read_block(state, name, [(v0, v1 - v0)])
    a, b = shard.layers
    for local, i in enumerate(range(a, b)):
        src, dst = f"{family.layers}.{i}", f"{family.layers}.{local}"
        for norm in (family.input_norm, family.post_attn_norm):
            out[f"{dst}.{norm}.weight"] = read_block(state, f"{src}.{norm}.weight")
        cuts = {f"{family.attn}.{family.q}": (q_rows, None, True), f"{family.attn}.{family.k}": (kv_rows, None, True),
                f"{family.attn}.{family.v}": (kv_rows, None, True),
                f"{family.attn}.{family.o}": (None, q_rows, shard.tp == 0),
                f"{family.mlp}.{family.gate}": ([(f0, f1 - f0)], None, True),
                f"{family.mlp}.{family.up}": ([(f0, f1 - f0)], None, True),
                f"{family.mlp}.{family.down}": (None, [(f0, f1 - f0)], shard.tp == 0)}
        for rel, (rows, cols, keep_bias) in cuts.items():
            is_q = rel in quantized
            K = _in_features(state, f"{src}.{rel}", is_q, bits)
            group = layout.spec.group(K, f"{src}.{rel}") if is_q else None
            part = _linear_tensors(state, f"{src}.{rel}", is_q, bits, group, rows, cols, keep_bias,
                                   is_q and layout.spec.mins)
            out.update({dst + k[len(src):]: v for k, v in part.items()})
    if shard.last_stage:
        out[f"{family.final_norm}.weight"] = read_block(state, f"{family.final_norm}.weight")
        head_q = layout is not None and layout.lm_head_group_size is not None
        head_name = family.lm_head
        if tied_head(config, layout, state, family):
            if not shard.first_stage:                  # else the embedding rows already read are shared
                out[f"{head_name}.weight"] = read_block(state, f"{family.embed}.weight", [(v0, v1 - v0)])
        else:
            group = (QuantSpec(bits, layout.lm_head_group_size).group(config.hidden_size, head_name)
                     if head_q else None)
            out.update(_linear_tensors(state, head_name, head_q, bits, group, [(v0, v1 - v0)], None, True))
    return out


def tied_head(config, layout: QuantLayout | None, state, family: Family) -> bool:
    """lm_head is the embedding table (a float head the checkpoint does not store)."""
    head_q = layout is not None and layout.lm_head_group_size is not None
    return bool(config.tie_word_embeddings) and not head_q and f"{family.lm_head}.weight" not in state


def _in_features(state, name: str, quantized: bool, bits: int | None) -> int:
    if not quantized:
        return _shape(state, f"{name}.weight")[1]
    per_byte = {"u8": 1, "u4k": 2, "u2k": 4}[native_format(bits)]
    return _shape(state, f"{name}.packed")[1] * per_byte


def load_shard(src: CheckpointSource, dtype: str, act_dtype: str, shard: RankShard, head_dim: int) -> LoadedModel:
    """The rank's model from an opened checkpoint (runtime.model_loader.open_checkpoint, streamed): its config
    (shard_config), only its tensors, quantized Linears as QLinearPerGrp."""
    layout = QuantLayout.from_config(src.quant, src.family, src.folder) if src.quant is not None else None
    config = shard_config(src.config, shard, head_dim)
    state = shard_state(src.state, src.config, src.family, layout, shard, head_dim)
    config._attn_implementation = "sdpa"
    model = build_skeleton(config, src.family, src.folder)
    if layout is not None:
        install_qlinears(model, src.family, layout, ACT_MODES[act_dtype])
    keep = QUANT_PARTS
    state = {k: (v.to(DTYPES[dtype]) if v.is_floating_point() and not k.endswith(keep) else v)
             for k, v in state.items() if not k.endswith(IGNORED_KEYS)}
    result = model.load_state_dict(state, strict=False, assign=True)
    check_names(src.folder, [], list(result.unexpected_keys))
    if shard.first_stage and shard.last_stage and tied_head(src.config, layout, src.state, src.family):
        get_module(model, src.family.lm_head).weight = get_module(model, src.family.embed).weight
    rebuild_rotary(model, config, src.family, src.folder)
    if act_dtype == "aie":
        from ..kernels.qlinear import QLinearPerGrp

        for module in model.modules():
            if isinstance(module, QLinearPerGrp):
                module.numerics = "aie"
    model.eval().requires_grad_(False)
    loaded = LoadedModel(model, config, src.family, src.tokenizer, src.folder, DTYPES[dtype], layout)
    loaded.full_config = src.config
    return loaded

