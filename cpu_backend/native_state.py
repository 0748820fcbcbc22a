"""What the native engine runs: a loaded model's weights in the native kernels' layout, and their cache.

State = (tensors, spec):
  spec     {"format": "edgeawq-native", "format_version", "source_fingerprint", "hidden", "heads", "kv_heads",
            "head_dim", "ffn", "layers", "eps", "norm_eps", "windows": [int, 0 = full attention],
            "groups": [[qkv, o, gate_up, down] group size per layer], "qkv_bias": bool,
            "lm_head": {"kind": "quantized", "N", "K", "group"}, {"kind": "float"} or {"kind": "tied"} (the
            embedding table as float32), "vocab"}
  tensors  "rope.cos", "rope.sin" float32 (positions, head_dim/2); "embed" (V, D) in the model's dtype;
           "norm" float32 (D,); per layer i: "layers.{i}.input_norm", "layers.{i}.post_norm" float32 (D,) and
           "layers.{i}.{qkv,o,gate_up,down}.{lines,meta}" uint8 (cpu_backend/native_pack.py) plus
           "layers.{i}.qkv.bias" float32 when the model has q/k/v biases, "layers.{i}.{qkv,o,gate_up,down}.act_scale"
           float32 (1,) in per-tensor W8A8 checkpoints (the static int8 input scale), "layers.{i}.k_channel_scale" and
           "layers.{i}.v_channel_scale" float32 (kv_heads * head_dim,) in checkpoints with calibrated int8 KV cache
           scales (kernels/kv_quant.py); "lm_head.lines"/"lm_head.meta"
           (quantized) or "lm_head.weight" float32 (V, D); "lm_head.bias" float32 when present.

Cache: `$EDGEAWQ_CACHE/native/<key>` (key from format version and the source fingerprint) holding
weights.safetensors and native.json (the spec, plus "files": the size and xxh3_64 of weights.safetensors,
checkpoints/cache_integrity.py); written atomically, verified before every use (a damaged cache is rebuilt, saying
so), then read back (every run holds the same
memory: private copies of the packed weights, the embedding table memory-mapped so that only the rows a run
touches are resident); reused by later runs (random-weight shapes then need no weights at all).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from ..checkpoints.cache_integrity import damage, file_table
from ..checkpoints.directory import atomic_directory
from ..errors import UserError
from ..progress import bar
from ..kernels.formats import native_format, unpack
from ..kernels.kv_quant import KEY_SCALE, VALUE_SCALE
from .native_pack import layout_problem, pack_native
from ..kernels.qlinear import QLinearPerGrp
from ..runtime.fusion import head_dim, layer_windows, linear_groups, rope_half_tables
from ..runtime.model_identity import cache_root, fingerprint_of
from ..runtime.memory import release_free_memory
from ..runtime.model_loader import LoadedModel
from ..runtime.module_paths import get_module
from ..runtime.quantized_model import kv_channel_scales

FORMAT = "edgeawq-native"
FORMAT_VERSION = 3                      # 2: dense 2- and 3-bit lines; 3: RoPE rows to the context limit
SPEC_FILE, WEIGHTS_FILE = "native.json", "weights.safetensors"
SUPPORTED_ACTIVATIONS = ("silu",)


def native_problem(loaded: LoadedModel) -> str | None:
    """Why the native kernels cannot run this model, or None (checks shapes and formats, never values; the first
    call that passes them builds the kernels, about 30 s once per machine)."""
    from . import native_build

    reason = native_build.unavailable_reason()
    if reason:
        return reason
    problem = _model_problem(loaded)
    return problem or native_build.build_problem()


def _model_problem(loaded: LoadedModel) -> str | None:
    c, f = loaded.config, loaded.family
    if getattr(c, "hidden_act", "silu") not in SUPPORTED_ACTIVATIONS:
        return f"hidden_act {c.hidden_act!r} (the native decoder implements SiLU)"
    if head_dim(c) % 16:
        return f"head_dim {head_dim(c)} (the native attention needs a multiple of 16)"
    for i, layer in enumerate(get_module(loaded.model, f.layers)):
        for name, parts in linear_groups(layer, f).items():
            where = f"layers.{i}.{name}"
            if not all(isinstance(p, QLinearPerGrp) for p in parts):
                return f"{where} is not quantized (the native decoder runs quantized decoder Linears only)"
            if len({(p.spec.bits, p.spec.group(p.in_features), p.spec.mins, p.scales.dtype, p.act_quant)
                    for p in parts}) != 1:
                return f"{where} groups Linears with different bits, group sizes, scale dtypes or activation modes"
            p = parts[0]
            if p.act_quant == "per_token" and p.spec.group(p.in_features) != p.in_features:
                return f"{where} quantizes activations per token with weight groups of {p.spec.group(p.in_features)}"
            if p.act_quant == "per_tensor" and not all(torch.equal(q.act_scale, p.act_scale) for q in parts):
                return f"{where} fuses Linears with different static activation scales"
            problem = layout_problem(p.out_features, p.in_features, p.spec.group(p.in_features), p.spec.bits,
                                     p.scales.dtype)
            if problem:
                return f"{where} has {problem}"
            if name != "qkv" and any(q.bias is not None for q in parts):
                return f"{where} has a bias (the native decoder adds biases to q/k/v only)"
    head = get_module(loaded.model, f.lm_head)
    if isinstance(head, QLinearPerGrp):
        problem = layout_problem(head.out_features, head.in_features, head.spec.group(head.in_features),
                                 head.spec.bits, head.scales.dtype)
        if problem:
            return f"lm_head has {problem}"
    return None


def pack_group(parts: list[QLinearPerGrp], prefix: str, tensors: dict) -> int:
    """Stack `parts` along N into the native layout under `prefix`; -> group size."""
    bits = parts[0].spec.bits
    codes = torch.cat([unpack(p.packed, native_format(bits)) for p in parts])                 # (N, K) uint8
    mins = torch.cat([p.mins for p in parts]) if parts[0].spec.mins else None                 # (N, G) fp16
    w = pack_native(codes, torch.cat([p.scales for p in parts]), torch.cat([p.zeros for p in parts]), mins, bits)
    tensors[f"{prefix}.lines"], tensors[f"{prefix}.meta"] = w.lines, w.meta
    if parts[0].act_scale is not None:                      # per-tensor W8A8: one static input scale, shared
        tensors[f"{prefix}.act_scale"] = parts[0].act_scale.detach().float().reshape(1).clone()
    if any(p.bias is not None for p in parts):
        tensors[f"{prefix}.bias"] = torch.cat([p.bias.detach().float() if p.bias is not None
                                               else torch.zeros(p.out_features) for p in parts])
    return w.group


@torch.no_grad()
def pack_layer(layer, family) -> tuple[dict[str, torch.Tensor], list[int]]:
    """One decoder layer in the native layout: ({"input_norm", "post_norm", "{qkv,o,gate_up,down}.{lines,meta}",
    "qkv.bias"?, "{qkv,o,gate_up,down}.act_scale"?}, [qkv, o, gate_up, down] group sizes)."""
    tensors = {"input_norm": getattr(layer, family.input_norm).weight.detach().float(),
               "post_norm": getattr(layer, family.post_attn_norm).weight.detach().float()}
    groups = [pack_group(parts, name, tensors) for name, parts in linear_groups(layer, family).items()]
    return tensors, groups


def build_state(loaded: LoadedModel) -> tuple[dict[str, torch.Tensor], dict]:
    """Pack a loaded model (native_problem must be None). Releases each decoder layer's PyTorch weights as it
    goes (they move to the meta device), so the peak stays near one copy."""
    c, f, m = loaded.config, loaded.family, loaded.model
    layers = get_module(m, f.layers)
    first = layers[0]
    eps = float(getattr(getattr(first, f.input_norm), "variance_epsilon", 1e-6))
    norm = get_module(m, f.final_norm)
    cos, sin = rope_half_tables(m, c, f)
    tensors: dict[str, torch.Tensor] = {"rope.cos": cos, "rope.sin": sin,
                                        "embed": get_module(m, f.embed).weight.detach(),
                                        "norm": norm.weight.detach().float()}
    groups = []
    for i, (k, v) in kv_channel_scales(m, f).items():          # calibrated int8 KV cache scales (--calibrate_kv)
        tensors[f"layers.{i}.{KEY_SCALE}"], tensors[f"layers.{i}.{VALUE_SCALE}"] = k.clone(), v.clone()
    with torch.no_grad():
        for i, layer in enumerate(bar(layers, "packing for the native engine", unit="layer")):
            packed, layer_groups = pack_layer(layer, f)
            tensors.update({f"layers.{i}.{k}": v for k, v in packed.items()})
            groups.append(layer_groups)
            layer.to("meta")
        head = get_module(m, f.lm_head)
        if isinstance(head, QLinearPerGrp):
            group = pack_group([head], "lm_head", tensors)
            lm_head = {"kind": "quantized", "N": head.out_features, "K": head.in_features, "group": group}
        else:
            if head.weight.data_ptr() == tensors["embed"].data_ptr():
                lm_head = {"kind": "tied"}                   # the embedding table, as float32
            else:
                tensors["lm_head.weight"] = head.weight.detach().float()
                lm_head = {"kind": "float"}
            if head.bias is not None:
                tensors["lm_head.bias"] = head.bias.detach().float()
    spec = {"format": FORMAT, "format_version": FORMAT_VERSION, "source_fingerprint": fingerprint_of(loaded),
            "hidden": c.hidden_size, "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads,
            "head_dim": head_dim(c), "ffn": getattr(getattr(first, f.mlp), f.gate).out_features,
            "layers": len(layers), "eps": eps, "norm_eps": float(getattr(norm, "variance_epsilon", eps)),
            "windows": [w or 0 for w in layer_windows(c)], "groups": groups,
            "qkv_bias": "layers.0.qkv.bias" in tensors, "lm_head": lm_head, "vocab": c.vocab_size}
    return tensors, spec


def cache_folder(fingerprint: str) -> Path:
    key = hashlib.sha256(f"{FORMAT}:{FORMAT_VERSION}:{fingerprint}".encode()).hexdigest()[:20]
    return cache_root() / "native" / key


def cache_problem(folder: Path, fingerprint: str) -> str | None:
    """None when `folder` holds a complete, undamaged native state of the model `fingerprint`; else what is wrong
    ("missing" when there is no cache)."""
    if not (folder / SPEC_FILE).exists():
        return "missing"
    try:
        spec = json.loads((folder / SPEC_FILE).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        return f"{SPEC_FILE} is unreadable ({e})"
    if not isinstance(spec, dict):
        return f"{SPEC_FILE} is not an object"
    if spec.get("format_version") != FORMAT_VERSION or spec.get("source_fingerprint") != fingerprint:
        return "it belongs to another model or format version"
    return damage(folder, spec.get("files"))


def cached(loaded: LoadedModel) -> bool:
    """True when the native cache holds this model, undamaged (then no weights are needed to run it)."""
    fingerprint = fingerprint_of(loaded)
    return cache_problem(cache_folder(fingerprint), fingerprint) is None


def save_state(folder: Path, tensors: dict[str, torch.Tensor], spec: dict) -> None:
    """Write the cache folder atomically; `spec` gains the files' sizes and hashes (checked before every use)."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    expected = sum(v.numel() * v.element_size() for v in tensors.values())
    with atomic_directory(folder, expected_bytes=expected, wait=True) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        spec = {**spec, "files": file_table(tmp, [WEIGHTS_FILE])}
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=1))


def _mapped(path: Path, name: str) -> torch.Tensor:
    """Tensor `name` of a safetensors file as a copy-on-write memory map: pages are read (and resident) only when
    touched, as for the embedding table, of which a run reads a few rows."""
    import numpy as np

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(n))[name]
    dtypes = {"BF16": (np.uint16, torch.bfloat16), "F16": (np.uint16, torch.float16), "F32": (np.float32, None)}
    np_dtype, view = dtypes[entry["dtype"]]
    start, end = entry["data_offsets"]
    array = np.memmap(path, dtype=np_dtype, mode="c", offset=8 + n + start, shape=tuple(entry["shape"]))
    if array.nbytes != end - start:
        raise ValueError(f"{name}: {end - start} bytes recorded for shape {entry['shape']} {entry['dtype']}")
    t = torch.from_numpy(array)
    return t.view(view) if view is not None else t


def load_state(folder: Path, fingerprint: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The cached state; every tensor in private memory except the embedding table (memory-mapped)."""
    from safetensors import safe_open

    fix = f"Delete {folder} (it is a cache; the next run rebuilds it)."
    try:
        spec = json.loads((folder / SPEC_FILE).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"The native weight cache {folder} is damaged ({SPEC_FILE}: {e}).", fix) from None
    if spec.get("format_version") != FORMAT_VERSION or spec.get("source_fingerprint") != fingerprint:
        raise UserError(f"The native weight cache {folder} belongs to another model or format version.", fix)
    try:
        tensors = {}
        with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
            for name in f.keys():
                if name != "embed":
                    tensors[name] = f.get_tensor(name).clone()      # private memory, not the file mapping
        tensors["embed"] = _mapped(folder / WEIGHTS_FILE, "embed")
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise UserError(f"The native weight cache {folder} is damaged ({WEIGHTS_FILE}: {e}).", fix) from None
    return tensors, spec


def native_state(loaded: LoadedModel) -> tuple[dict[str, torch.Tensor], dict]:
    """The model's native state from the cache, else packed now and cached."""
    fingerprint = fingerprint_of(loaded)
    folder = cache_folder(fingerprint)
    problem = cache_problem(folder, fingerprint)
    if problem is not None:
        if problem == "missing":
            print(f"[native] packing {loaded.source} into {folder}", file=sys.stderr)
        else:
            print(f"[native] the weight cache {folder} is damaged ({problem}); rebuilding it", file=sys.stderr)
        save_state(folder, *build_state(loaded))
    loaded.model.to("meta")                  # the engine holds what it needs, read back from the cache
    release_free_memory()
    return load_state(folder, fingerprint)
