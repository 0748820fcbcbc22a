"""Precision configs of the tt target (`--tt_precision performance|accuracy|FILE.json`), tt-metal's vocabulary.

Tensor groups (weight / cache formats): ff1_3 (MLP gate+up), ff2 (MLP down), wqkv (q/k/v), wo (attention out),
kv_cache, activation (what ops write between each other), and lm_head (this project's addition; top level only).
Formats: bfp2, bfp4, bfp8 (bfloat2_b / bfloat4_b / bfloat8_b) and bf16.
Op groups (math fidelity): li_ff1_3, li_ff2, li_qkv_decode, li_o_decode, sdpa_decode, li_qkv_prefill,
li_o_prefill, sdpa_prefill, and li_lm_head (top level only). A call with one new token per row is decode, more is
prefill. Fidelity settings -> (math fidelity, fp32 destination accumulation), as tt-metal's compute-kernel configs:
lofi (LoFi, bf16), hifi2 (HiFi2, fp32), hifi2na and hifi2fp16 (HiFi2, bf16; the packer's L1 accumulation that
tells them apart is not emulated), hifi4 and hifi4fp32 (HiFi4, fp32); and hifi3 (HiFi3, fp32), which ttnn's
MathFidelity has but tt-metal's demo settings do not use.

tt-metal LLM demo defaults (models/tt_transformers ModelOptimizations):
  every layer starts from bfp8 weights and KV cache, bf16 activations, MLP hifi2fp16, attention hifi2,
  sdpa_prefill hifi4; lm_head bfp8 with hifi2;
  performance = ff1_3 bfp4 with lofi;
  accuracy    = the defaults for Llama and Mistral (bfp8 attention and KV, MLP hifi2fp16); for Qwen2/2.5
                wqkv, wo and kv_cache in bf16 with hifi4 for the attention ops.
A FILE.json has the shape
  {"base": "performance" | "accuracy",                    (optional; default performance)
   "tensor_precision": {"ff1_3": "bfp4", ...},            (optional; every layer)
   "op_fidelity": {"li_ff1_3": "lofi", ...},              (optional; every layer)
   "decoders": {"0": {"tensor_precision": {...}, "op_fidelity": {...}}, ...}}   (optional; per-layer overrides)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UserError

FORMATS = ("bfp2", "bfp4", "bfp8", "bf16")
FORMAT_BITS = {"bfp2": 2, "bfp4": 4, "bfp8": 8}
LAYER_TENSOR_GROUPS = ("ff1_3", "ff2", "wqkv", "wo", "kv_cache", "activation")
LAYER_OP_GROUPS = ("li_ff1_3", "li_ff2", "li_qkv_decode", "li_o_decode", "sdpa_decode", "li_qkv_prefill",
                   "li_o_prefill", "sdpa_prefill")
FIDELITY_SETTINGS = {"lofi": ("LoFi", False), "hifi2": ("HiFi2", True), "hifi2na": ("HiFi2", False),
                     "hifi2fp16": ("HiFi2", False), "hifi3": ("HiFi3", True), "hifi4": ("HiFi4", True),
                     "hifi4fp32": ("HiFi4", True)}
NAMED = ("performance", "accuracy")

DEFAULT_TENSORS = {"ff1_3": "bfp8", "ff2": "bfp8", "wqkv": "bfp8", "wo": "bfp8", "kv_cache": "bfp8",
                   "activation": "bf16"}
DEFAULT_OPS = {"li_ff1_3": "hifi2fp16", "li_ff2": "hifi2fp16", "li_qkv_decode": "hifi2", "li_o_decode": "hifi2",
               "sdpa_decode": "hifi2", "li_qkv_prefill": "hifi2", "li_o_prefill": "hifi2", "sdpa_prefill": "hifi4"}


@dataclass(frozen=True)
class LayerPrecision:
    tensors: dict[str, str]            # tensor group -> format
    ops: dict[str, str]                # op group -> fidelity setting

    def fidelity(self, op_group: str) -> tuple[str, bool]:
        """-> (LoFi|HiFi2|HiFi4, fp32 destination accumulation)."""
        return FIDELITY_SETTINGS[self.ops[op_group]]


@dataclass(frozen=True)
class PrecisionConfig:
    name: str
    layers: tuple[LayerPrecision, ...]
    lm_head: str = "bfp8"
    li_lm_head: str = "hifi2"
    overrides: dict = field(default_factory=dict)   # per-layer overrides as given (for the record)

    def to_json(self) -> dict:
        """The resolved config, every layer spelled out (the weight-cache key and the run record use it)."""
        return {"name": self.name, "lm_head": self.lm_head, "li_lm_head": self.li_lm_head,
                "layers": [{"tensor_precision": dict(sorted(l.tensors.items())),
                            "op_fidelity": dict(sorted(l.ops.items()))} for l in self.layers]}

    def describe(self) -> str:
        """One line: the settings shared by every layer, and which layers differ."""
        first = self.layers[0]
        t = ", ".join(f"{k} {first.tensors[k]}" for k in LAYER_TENSOR_GROUPS)
        o = ", ".join(f"{k} {first.ops[k]}" for k in LAYER_OP_GROUPS)
        differing = [str(i) for i, l in enumerate(self.layers) if l != first]
        extra = f"; layers {', '.join(differing)} differ from layer 0" if differing else ""
        return f"{self.name}: {t}; {o}; lm_head {self.lm_head} {self.li_lm_head}{extra}"


def named_settings(name: str, model_type: str) -> tuple[dict, dict]:
    """(tensor precision, op fidelity) of a named config for one layer of a model family."""
    tensors, ops = dict(DEFAULT_TENSORS), dict(DEFAULT_OPS)
    if name == "performance":
        tensors["ff1_3"], ops["li_ff1_3"] = "bfp4", "lofi"
    elif model_type == "qwen2":          # accuracy, Qwen2/2.5: bf16 attention, HiFi4
        tensors.update(wqkv="bf16", wo="bf16", kv_cache="bf16")
        ops.update({k: "hifi4" for k in ("li_qkv_decode", "li_qkv_prefill", "sdpa_decode", "sdpa_prefill",
                                          "li_o_decode", "li_o_prefill")})
    return tensors, ops


def _check(kind: str, settings: dict, allowed_keys: tuple[str, ...], allowed_values, where: str) -> dict:
    if not isinstance(settings, dict):
        raise UserError(f"{where}: {kind} must be a JSON object, not {type(settings).__name__}.",
                        f"Write it as {{\"{allowed_keys[0]}\": ...}}.")
    for key, value in settings.items():
        if key not in allowed_keys:
            raise UserError(f"{where}: unknown {kind} key {key!r}.", f"Use one of: {', '.join(allowed_keys)}.")
        if not isinstance(value, str) or value not in allowed_values:
            raise UserError(f"{where}: {kind} {key} = {value!r} is not a known setting.",
                            f"Use one of: {', '.join(allowed_values)}.")
    if kind == "tensor_precision" and settings.get("activation", "bf16") not in ("bf16", "bfp8"):
        raise UserError(f"{where}: activation must be bf16 or bfp8.", "Activations are written by ops as bf16 or "
                        "bfloat8_b; pick one of those.")
    return settings


def load_precision(spec: str, model_type: str, n_layers: int) -> PrecisionConfig:
    """`--tt_precision` value (performance, accuracy or a JSON file path) -> the resolved config."""
    if spec in NAMED:
        tensors, ops = named_settings(spec, model_type)
        return PrecisionConfig(spec, tuple(LayerPrecision(dict(tensors), dict(ops)) for _ in range(n_layers)))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"--tt_precision {spec!r} is neither a named config nor an existing file.",
                        f"Use {' or '.join(NAMED)}, or the path of a JSON precision file (docs/tenstorrent.md).")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:    # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"--tt_precision file {path} is not valid JSON ({str(exc)[:200]}).",
                        "Fix the file (docs/tenstorrent.md shows the format).") from None
    except OSError as exc:
        raise UserError(f"--tt_precision file {path} cannot be read ({exc.strerror or exc}).",
                        "Check the file's permissions.") from None
    if not isinstance(raw, dict):
        raise UserError(f"--tt_precision file {path} must hold a JSON object.", "See docs/tenstorrent.md.")
    unknown = set(raw) - {"base", "tensor_precision", "op_fidelity", "decoders", "lm_head", "li_lm_head"}
    if unknown:
        raise UserError(f"--tt_precision file {path}: unknown key(s) {', '.join(sorted(unknown))}.",
                        "Allowed: base, tensor_precision, op_fidelity, decoders, lm_head, li_lm_head.")
    base = raw.get("base", "performance")
    if not isinstance(base, str) or base not in NAMED:
        raise UserError(f"--tt_precision file {path}: base {base!r} is not a named config.",
                        f"Use one of: {', '.join(NAMED)}.")
    where = f"--tt_precision file {path}"
    tensors, ops = named_settings(base, model_type)
    tensors.update(_check("tensor_precision", raw.get("tensor_precision", {}), LAYER_TENSOR_GROUPS, FORMATS, where))
    ops.update(_check("op_fidelity", raw.get("op_fidelity", {}), LAYER_OP_GROUPS, FIDELITY_SETTINGS, where))
    layers = [LayerPrecision(dict(tensors), dict(ops)) for _ in range(n_layers)]
    decoders = raw.get("decoders", {})
    if not isinstance(decoders, dict):
        raise UserError(f"{where}: decoders must map layer numbers to settings.",
                        'Write it as {"0": {"tensor_precision": {...}}}.')
    for key, settings in decoders.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < n_layers):
            raise UserError(f"{where}: decoders key {key!r} is not a layer of this model (0..{n_layers - 1}).",
                            f"Use layer numbers from 0 to {n_layers - 1}.")
        if not isinstance(settings, dict) or set(settings) - {"tensor_precision", "op_fidelity"}:
            raise UserError(f"{where}: decoders[{key}] may only hold tensor_precision and op_fidelity.",
                            "Remove the other keys.")
        i = int(key)
        layers[i] = LayerPrecision(
            {**layers[i].tensors, **_check("tensor_precision", settings.get("tensor_precision", {}),
                                           LAYER_TENSOR_GROUPS, FORMATS, f"{where}, decoders[{key}]")},
            {**layers[i].ops, **_check("op_fidelity", settings.get("op_fidelity", {}), LAYER_OP_GROUPS,
                                       FIDELITY_SETTINGS, f"{where}, decoders[{key}]")})
    lm_head = raw.get("lm_head", "bfp8")
    li_lm_head = raw.get("li_lm_head", "hifi2")
    _check("tensor_precision", {"ff1_3": lm_head}, LAYER_TENSOR_GROUPS, FORMATS, f"{where}, lm_head")
    _check("op_fidelity", {"li_ff1_3": li_lm_head}, LAYER_OP_GROUPS, FIDELITY_SETTINGS, f"{where}, li_lm_head")
    return PrecisionConfig(path.stem, tuple(layers), lm_head, li_lm_head, decoders)


def with_mlp(config: PrecisionConfig, ff1_3: str, ff2: str, name: str) -> PrecisionConfig:
    """The same config with every layer's MLP weights in the given formats (for precision sweeps)."""
    layers = tuple(LayerPrecision({**l.tensors, "ff1_3": ff1_3, "ff2": ff2}, dict(l.ops)) for l in config.layers)
    return replace(config, name=name, layers=layers)
